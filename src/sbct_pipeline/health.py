"""Health: ``/healthz``, ``/readyz`` and ``/metrics`` for processes without the ingress.

Workers and callback consumers serve these on ``SBCT_METRICS_PORT``. The app reuses the
process's own PostgreSQL pool and RabbitMQ connections, so a probe costs one ``SELECT 1``
and no new connection. ``/readyz`` answers ``503`` once the process is draining (SIGTERM
received), when PostgreSQL does not answer, or when a RabbitMQ connection is down. The app
also refreshes ``sbct_queue_depth`` for every main and dead-letter queue (and
``delay.events``, event messages waiting for a retry), so queue depths are scraped from
workers even where no ingress runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import logs, metrics
from .broker import EVENT_RETRY_LEVELS, Broker
from .errors import BrokerUnavailable
from .tasks import Periodic

log = logs.get(__name__)

DEPTH_REFRESH_S = 5.0
PROBE_TIMEOUT_S = 2.0
DEPTH_QUEUES = ("single", "multi", "chunks", "events")
DEAD_QUEUES = ("jobs", "events")


class HealthState:
    """What the probes report beyond dependencies: set ``draining`` when shutdown begins."""

    def __init__(self) -> None:
        self.draining = False


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


class QueueDepths:
    """Refreshes ``sbct_queue_depth{queue}`` for the main and dead-letter queues."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        n = broker.names
        # Gauge label -> full queue name; labels drop the prefix, as the ingress's do.
        self.queues = {k: n.queue(k) for k in DEPTH_QUEUES}
        self.queues |= {f"dead.{k}": n.dead(k) for k in DEAD_QUEUES}
        # Event messages waiting for a retry, summed over the delay levels: the export
        # backlog that no process holds (after a restart during a CleverTap outage, the
        # export lag gauge sees them only when they are due again).
        self.delayed_events = [n.delay("events", s) for s in EVENT_RETRY_LEVELS]

    async def refresh(self) -> None:
        try:
            depths = await self.broker.queue_depths(
                list(self.queues.values()) + self.delayed_events)
        except BrokerUnavailable as exc:
            log.warning("health.depth_unavailable", error=str(exc))
            return
        for label, name in self.queues.items():
            metrics.QUEUE_DEPTH.labels(queue=label).set(depths[name])
        metrics.QUEUE_DEPTH.labels(queue="delay.events").set(
            sum(depths[name] for name in self.delayed_events))


def create_health_app(*, pool: asyncpg.Pool, broker: Broker,
                      state: HealthState | None = None,
                      depth_refresh_s: float = DEPTH_REFRESH_S) -> web.Application:
    """The probe and metrics app of a worker or callback process, on its own resources."""
    state = state or HealthState()

    async def healthz(request: web.Request) -> web.Response:
        return _json({"status": "draining" if state.draining else "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if state.draining:
            return _json({"status": "draining"}, status=503)
        problems: dict[str, str] = {}
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await pool.fetchval("SELECT 1")
        except Exception as exc:
            problems["database"] = repr(exc)
        if not broker.is_connected:
            problems["broker"] = "a RabbitMQ connection is down (reconnecting)"
        if problems:
            return _json({"status": "unavailable", "problems": problems}, status=503)
        return _json({"status": "ok"})

    async def metrics_view(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def depth_refresher(app: web.Application) -> AsyncIterator[None]:
        depths = QueueDepths(broker)
        await depths.refresh()
        task = Periodic("queue-depth", depths.refresh, depth_refresh_s).start()
        yield
        await task.stop()

    app = web.Application()
    app.cleanup_ctx.append(depth_refresher)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app
