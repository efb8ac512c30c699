# sbct-pipeline developer commands. `make run` and `make test` are all a fresh clone needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test reliability lint fmt dev dev-down bench clean services browser vendor-uplot

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Migrates, then runs ingress + worker + callbacks in one process on the local RabbitMQ and
# PostgreSQL (SBCT_* variables override the defaults; see README).
run: install
	$(BIN)/sbct-pipeline run

test: install browser
	$(BIN)/pytest $(PYTEST_ARGS)

# The dashboard tests drive Debian's chromium headless; installs it when missing (needs root
# and apt, as in CI). Does nothing when chromium is already there.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  test -n "$$SBCT_TEST_CHROMIUM" || \
	  { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	    apt-get update -q && apt-get install -y -q chromium; } || \
	  { echo "make: the dashboard tests need chromium: install it (Debian/Ubuntu: sudo apt-get install chromium)" \
	         "or point SBCT_TEST_CHROMIUM at a Chrome/Chromium binary" >&2; exit 1; }

# Re-vendor the dashboard's chart library from the npm registry (needs npm).
UPLOT_VERSION ?= 1.6.32
vendor-uplot:
	rm -rf build/uplot && mkdir -p build/uplot
	cd build/uplot && npm pack --silent uplot@$(UPLOT_VERSION) && tar xzf uplot-$(UPLOT_VERSION).tgz
	cp build/uplot/package/dist/uPlot.iife.min.js build/uplot/package/dist/uPlot.min.css \
	  src/sbct_pipeline/dashboard_static/vendor/
	cp build/uplot/package/LICENSE src/sbct_pipeline/dashboard_static/vendor/uPlot.LICENSE.txt
	sha256sum build/uplot/uplot-$(UPLOT_VERSION).tgz

# The reliability suite: every scenario of tests/reliability (slow ones included), then its
# figures into docs/reliability.md. `make test` runs only the fast ones.
reliability: install
	rm -f .reliability.jsonl
	SBCT_RELIABILITY_REPORT=$(CURDIR)/.reliability.jsonl $(BIN)/pytest -p no:cacheprovider \
		-m "" tests/reliability $(PYTEST_ARGS)
	$(BIN)/python -m tests.reliability.report .reliability.jsonl docs/reliability.md

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff check --fix src tests

# The benchmark (docs/benchmarks.md): `make bench` is the full million-user run (minutes);
# `make bench BENCH_ARGS=--quick` runs it scaled down in under a minute.
bench: install
	$(BIN)/sbct-pipeline bench $(BENCH_ARGS)

# The whole stack in containers (needs Docker with compose).
dev:
	docker compose up --build

dev-down:
	docker compose down -v

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
