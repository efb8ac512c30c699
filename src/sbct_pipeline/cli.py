"""CLI: the ``sbct-pipeline`` console script and the lifecycle of each process kind.

This is the only module that reads ``os.environ``. Each long-running command starts its
resources in order, waits for SIGTERM/SIGINT, then stops them in reverse: the ingress stops
accepting and finishes in-flight requests, consumers stop taking messages and drain for up
to ``SBCT_DRAIN_TIMEOUT_S``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import dataclasses
import gc
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol

import orjson
from aiohttp import web

from . import logs, storage
from .broker import Broker
from .errors import PipelineError, Unavailable
from .health import HealthState, create_health_app
from .httputil import IN_FLIGHT
from .settings import Settings, SettingsError
from .tasks import until_up

log = logs.get("sbct_pipeline.cli")


_STOP: contextvars.ContextVar[asyncio.Event] = contextvars.ContextVar("sbct_stop")


async def _with_signals(command: Coroutine[Any, Any, None]) -> None:
    # Handlers go in before anything starts: a SIGTERM during start-up (a pod deleted while
    # it connects) must not kill the process with the default action; the command finishes
    # starting and then stops in order.
    stop = asyncio.Event()
    _STOP.set(stop)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await command


async def _wait_for_signal() -> None:
    await _STOP.get().wait()
    log.info("process.stopping")


@contextlib.asynccontextmanager
async def _site(app: web.Application, host: str, port: int,
                shutdown_timeout: float) -> AsyncIterator[web.AppRunner]:
    """Serve ``app``; on exit stop accepting, let requests finish, then shut down.

    Within ``shutdown_timeout`` in all: the listening socket closes first, requests still
    receiving a body finish (see ``httputil.InFlight``), then aiohttp's own shutdown waits
    for the rest and runs the app's cleanup.
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        log.info("http.listening", host=host, port=port)
        yield runner
        in_flight = app.get(IN_FLIGHT)
        if in_flight is not None:
            t0 = asyncio.get_running_loop().time()
            for s in list(runner.sites):
                await s.stop()
            log.info("http.draining", in_flight=in_flight.count)
            if not await in_flight.wait_idle(shutdown_timeout):
                log.warning("http.drain_timeout", in_flight=in_flight.count)
            # What is left of the budget goes to aiohttp's shutdown.
            runner._shutdown_timeout = max(  # no public setter
                0.1, shutdown_timeout - (asyncio.get_running_loop().time() - t0))
    finally:
        await runner.cleanup()


class _Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@contextlib.asynccontextmanager
async def _connected(settings: Settings) -> AsyncIterator[tuple[Any, Broker]]:
    """The process's PostgreSQL pool and RabbitMQ connections, closed last."""
    wait = settings.startup_wait_s
    pool = await until_up("PostgreSQL", lambda: storage.create_pool(settings, light_reset=True),
                          wait)
    broker = Broker(settings)
    try:
        await until_up("RabbitMQ", lambda: broker.connect(consume=True), wait)
        yield pool, broker
    finally:
        await broker.close()
        await pool.close()


@contextlib.asynccontextmanager
async def _running(component: _Component) -> AsyncIterator[None]:
    # stop() stops consuming, then drains in-flight messages for SBCT_DRAIN_TIMEOUT_S.
    await component.start()
    try:
        yield
    finally:
        await component.stop()


def _make_worker(pool: Any, broker: Broker, settings: Settings) -> _Component:
    from .delivery import Worker

    return Worker(pool, broker, settings)


def _make_exporter(pool: Any, broker: Broker, settings: Settings) -> _Component:
    from .callbacks import Exporter

    return Exporter(pool, broker, settings)


@contextlib.asynccontextmanager
async def _worker(settings: Settings) -> AsyncIterator[None]:
    async with _connected(settings) as (pool, broker), \
            _running(_make_worker(pool, broker, settings)):
        yield


@contextlib.asynccontextmanager
async def _callbacks(settings: Settings) -> AsyncIterator[None]:
    async with _connected(settings) as (pool, broker), \
            _running(_make_exporter(pool, broker, settings)):
        yield


@contextlib.asynccontextmanager
async def _metrics_site(settings: Settings, pool: Any, broker: Broker,
                        state: HealthState) -> AsyncIterator[None]:
    if settings.metrics_port == 0:
        yield
        return
    async with _site(create_health_app(pool=pool, broker=broker, state=state),
                     settings.http_host, settings.metrics_port, shutdown_timeout=1):
        yield


async def _serve_consumer(settings: Settings,
                          make: Callable[[Any, Broker, Settings], _Component]) -> None:
    # Order matters: the health site starts before the consumers and stops after they have
    # drained, so /readyz answers 503 "draining" (and /metrics stays scrapable) meanwhile.
    state = HealthState()
    async with _connected(settings) as (pool, broker), \
            _metrics_site(settings, pool, broker, state), \
            _running(make(pool, broker, settings)):
        # Everything alive now lives as long as the process: keep the cyclic GC from
        # rescanning it after every few thousand allocations (a chunk decode makes ~2,000).
        gc.freeze()
        await _wait_for_signal()
        state.draining = True


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    applied = await storage.migrate(settings)
    print(orjson.dumps({"applied": applied}).decode())


async def cmd_ingress(settings: Settings, args: argparse.Namespace) -> None:
    from .ingress import PARSER, create_app

    app = create_app(settings)
    async with _site(app, settings.http_host, settings.http_port, settings.drain_timeout_s):
        await app[PARSER].start()
        await _wait_for_signal()


async def cmd_worker(settings: Settings, args: argparse.Namespace) -> None:
    await _serve_consumer(settings, _make_worker)


async def cmd_callbacks(settings: Settings, args: argparse.Namespace) -> None:
    # The exporter holds up to a prefetch of decoded events (hundreds of thousands of small
    # objects under a backlog); with the default thresholds the cyclic GC scans them every
    # few hundred allocations and takes most of the CPU (measured: 3x slower decoding).
    # Its objects form no cycles, so collecting rarely costs nothing but a little memory.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    await _serve_consumer(settings, _make_exporter)


async def cmd_run(settings: Settings, args: argparse.Namespace) -> None:
    from .ingress import PARSER, create_app

    await storage.migrate(settings)
    app = create_app(settings)
    # Stop order (reverse): ingress first, so nothing new arrives while consumers drain.
    async with _callbacks(settings), _worker(settings), _site(
            app, settings.http_host, settings.http_port, settings.drain_timeout_s):
        await app[PARSER].start()
        print(f"sbct-pipeline running on http://{settings.http_host}:{settings.http_port}",
              file=sys.stderr, flush=True)
        await _wait_for_signal()


async def cmd_app_create(settings: Settings, args: argparse.Namespace) -> None:
    from .api import provision_app

    await storage.migrate(settings)
    pool = await storage.create_pool(settings)
    try:
        result = await provision_app(pool, args.name)
    finally:
        await pool.close()
    print(orjson.dumps({"app_id": result["app_id"], "api_token": result["api_token"]}).decode())


async def cmd_sim(settings: Settings, args: argparse.Namespace) -> None:
    from .sim import Faults, Simulator, create_sim_app

    faults = Faults(fail_429=args.fail_429, fail_500=args.fail_500, slow_ms=args.slow_ms,
                    slow_rate=args.slow_rate, reject_rate=args.reject_rate,
                    reject_code=args.reject_code)
    if args.outage_s:
        faults.update({"outage_s": args.outage_s})
    sim = Simulator(args.account_id, args.passcode, faults, seed=args.seed)
    # The simulator keeps every accepted record: the same GC tuning as `callbacks`.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    async with _site(create_sim_app(sim), args.host, args.port, shutdown_timeout=1):
        print(f"clevertap-sim on http://{args.host}:{args.port} account={args.account_id}",
              file=sys.stderr, flush=True)
        await _wait_for_signal()


async def cmd_deadletters(settings: Settings, args: argparse.Namespace) -> None:
    from . import deadletters

    broker = Broker(settings)
    await broker.connect(consume=True)
    try:
        if args.dl_command == "list":
            items = await deadletters.list_dead(broker, kind=args.kind, limit=args.limit)
            if args.json:
                for item in items:
                    print(orjson.dumps(item.public()).decode())
            else:
                print(_dead_table(items))
        else:
            result = await deadletters.replay(broker, kind=args.kind, app=args.app)
            print(orjson.dumps(dataclasses.asdict(result)).decode())
            if not result.replayed_messages:
                which = f" holds records of app {args.app!r}" if args.app else " is replayable"
                print(f"sbct-pipeline: nothing replayed: no dead letter{which} "
                      f"({result.kept_messages} kept)", file=sys.stderr)
    finally:
        await broker.close()


def _dead_table(items: list[Any]) -> str:
    if not items:
        return "no dead letters"
    rows = [("KIND", "AGE", "APP", "RECORDS", "REPLAY TO", "REASON")]
    for d in items:
        age = "?" if d.age_s is None else _human_age(d.age_s)
        rows.append((d.kind, age, ",".join(d.apps) or "?", str(d.records),
                     d.source if d.replayable and d.source else "-", d.reason[:120]))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True))
                     + "  " + r[5] for r in rows)


def _human_age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sbct-pipeline", description=(
        "CleverTap webhooks -> in-app notification feeds -> SENT/READ events to CleverTap. "
        "Configured by SBCT_* environment variables (see README)."))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("migrate", help="create the database if missing and apply migrations")
    sub.add_parser("ingress", help="the HTTP server (webhooks, APIs)")
    sub.add_parser("worker", help="delivery consumers (single, multi expansion, chunks)")
    sub.add_parser("callbacks", help="the consumer that exports events to CleverTap")
    sub.add_parser("run", help="migrate, then ingress + worker + callbacks in one process")
    app = sub.add_parser("app", help="manage apps")
    app_sub = app.add_subparsers(dest="app_command", required=True, metavar="ACTION")
    create = app_sub.add_parser("create", help='print {"app_id", "api_token"} of a new app')
    create.add_argument("--name", required=True)
    from .bench import add_arguments as bench_arguments

    bench_arguments(sub.add_parser(
        "bench", help="measure fan-out, ingress and single latency against baselines"))
    dl = sub.add_parser("deadletters", help="list or replay dead-lettered messages")
    dl_sub = dl.add_subparsers(dest="dl_command", required=True, metavar="ACTION")
    dl_list = dl_sub.add_parser("list", help="reason, app, records and age of dead letters")
    dl_list.add_argument("--kind", choices=("events", "jobs"), default=None,
                         help="only this dead-letter queue (default: both)")
    dl_list.add_argument("--limit", type=_positive_int, default=100,
                         help="at most N messages per queue (default 100)")
    dl_list.add_argument("--json", action="store_true", help="one JSON object per line")
    dl_replay = dl_sub.add_parser("replay", help="republish dead letters to their queues")
    dl_replay.add_argument("--app", type=_app_id, default=None,
                           help="only this app's messages/records")
    dl_replay.add_argument("--kind", choices=("events", "jobs"), default=None,
                           help="only this dead-letter queue (default: both)")
    sim = sub.add_parser("clevertap-sim", help="a local stand-in for CleverTap's upload API")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8090)
    sim.add_argument("--account-id", default="TEST-ACCOUNT")
    sim.add_argument("--passcode", default="TEST-PASSCODE")
    sim.add_argument("--fail-429", type=float, default=0.0, help="share of requests -> 429")
    sim.add_argument("--fail-500", type=float, default=0.0, help="share of requests -> 500")
    sim.add_argument("--slow-ms", type=float, default=0.0, help="delay of slow answers")
    sim.add_argument("--slow-rate", type=float, default=0.0, help="share of slow answers")
    sim.add_argument("--outage-s", type=float, default=0.0, help="503 for N s from start")
    sim.add_argument("--reject-rate", type=float, default=0.0,
                     help="share of records rejected in 'unprocessed'")
    sim.add_argument("--reject-code", type=int, default=555)
    sim.add_argument("--seed", type=int, default=None)
    return p


async def cmd_bench(settings: Settings, args: argparse.Namespace) -> None:
    from .bench import run_bench

    await run_bench(args, settings, sys.argv[2:])


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, None]]] = {
    "migrate": cmd_migrate, "ingress": cmd_ingress, "worker": cmd_worker,
    "callbacks": cmd_callbacks, "run": cmd_run, "app": cmd_app_create,
    "clevertap-sim": cmd_sim, "bench": cmd_bench, "deadletters": cmd_deadletters,
}


def _app_id(raw: str) -> str:
    if not raw.strip():
        raise argparse.ArgumentTypeError("an app id (app_...) is required, got an empty string")
    return raw


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        print(f"sbct-pipeline: bad configuration: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        asyncio.run(_with_signals(COMMANDS[args.command](settings, args)))
    except Unavailable as exc:
        print(f"sbct-pipeline: {exc.message}\n{_start_hint(exc)}", file=sys.stderr)
        return 3
    except PipelineError as exc:
        print(f"sbct-pipeline: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _start_hint(exc: Unavailable) -> str:
    if exc.code == "storage_unavailable":
        return ("Start PostgreSQL (e.g. `pg_ctlcluster --skip-systemctl-redirect "
                "$(ls /etc/postgresql) main start`) or set SBCT_DATABASE_URL.")
    if exc.code == "broker_unavailable":
        return "Start RabbitMQ (e.g. `rabbitmq-server -detached`) or set SBCT_AMQP_URL."
    return ""


if __name__ == "__main__":
    sys.exit(main())
