# sbct-pipeline image: one image, every process kind (`migrate`, `ingress`, `worker`,
# `callbacks`, `run`, `clevertap-sim`), chosen by the command.
#
# Multi-stage: the build stage installs the package and its dependencies into a virtualenv
# (compilers and pip caches stay there); the runtime stage copies only that virtualenv onto a
# slim base and runs as an unprivileged numeric user (Kubernetes' runAsNonRoot can verify a
# numeric USER, not a name).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/sbct
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so code changes reuse this layer.
COPY pyproject.toml README.md ./
RUN mkdir -p src/sbct_pipeline && touch src/sbct_pipeline/__init__.py \
    && /opt/sbct/bin/pip install . \
    && /opt/sbct/bin/pip uninstall --yes sbct-pipeline
COPY src ./src
RUN /opt/sbct/bin/pip install --no-deps . && /opt/sbct/bin/sbct-pipeline --help >/dev/null

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/sbct/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SBCT_HTTP_HOST=0.0.0.0
RUN groupadd --system --gid 10001 sbct \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home sbct
COPY --from=build /opt/sbct /opt/sbct
WORKDIR /app
USER 10001:10001
# 8080: ingress HTTP (SBCT_HTTP_PORT); 9100: worker/callbacks probes + metrics
# (SBCT_METRICS_PORT); 8090: clevertap-sim.
EXPOSE 8080 9100
# Exec form: the process is PID 1 and receives SIGTERM itself (graceful drain, see
# docs/operations.md). Give it more than SBCT_DRAIN_TIMEOUT_S before SIGKILL.
STOPSIGNAL SIGTERM
ENTRYPOINT ["sbct-pipeline"]
CMD ["run"]
