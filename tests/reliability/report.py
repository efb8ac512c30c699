"""Writes docs/reliability.md from the figures a reliability run collected.

Usage: ``python -m tests.reliability.report RESULTS.jsonl docs/reliability.md`` (``make
reliability`` does it). Each line of RESULTS is one scenario's row (see ``Report`` in
``conftest.py``); the last row of each test wins.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import orjson

HEADER = """# Reliability figures

Written by `make reliability` (`tests/reliability/`, real `sbct-pipeline` processes, real
RabbitMQ and PostgreSQL; scenarios that stop the broker or the database stop private
instances started by the test, never the shared ones). The fast subset also runs in
`make test`; rows marked *(full)* run only in `make reliability`.

- **accepted**: recipients the ingress answered `200` for; **delivered**: users with a
  notification in their feed; **exported**: distinct `SENT` events the CleverTap simulator
  accepted; **lost**: accepted but missing from the feed or from the simulator (must be 0);
  **duplicates**: extra feed rows / extra events at the simulator.

Run: {when}, {machine}.

"""
COLUMNS = ("scenario", "load", "faults injected", "requests accepted",
           "notifications delivered", "events exported", "lost", "duplicates", "notes")


def _cell(value: object) -> str:
    text = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def render(rows: list[dict[str, object]]) -> str:
    latest: dict[str, dict[str, object]] = {}
    for row in rows:
        latest[str(row["test"])] = row
    out = HEADER.format(when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        machine=f"{platform.machine()}, {_cpus()} CPUs, Python "
                                f"{platform.python_version()}")
    out += "| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|\n"
    for row in latest.values():
        name = str(row["scenario"]) + (" *(full)*" if row.get("slow") else "")
        out += "| " + " | ".join(_cell(v) for v in (
            name, row["load"], row["faults"], row["accepted"], row["delivered"],
            row["exported"], row["lost"], row["duplicates"], row.get("notes", ""))) + " |\n"
    return out


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def main(argv: list[str]) -> int:
    src, dst = Path(argv[0]), Path(argv[1])
    rows = [orjson.loads(line) for line in src.read_bytes().splitlines() if line.strip()]
    if not rows:
        print("no reliability figures collected", file=sys.stderr)
        return 1
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(render(rows))
    print(f"wrote {dst} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
