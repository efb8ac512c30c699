"""Ingress: the aiohttp application, its error middleware, and the CleverTap webhooks.

A webhook is authenticated, parsed, checked (templates exist, rate limit, queue depth),
published to RabbitMQ as one job message, and answered ``200`` only after the broker's
publisher confirm (CONTRACT section 3). Nothing else happens on the request path: expansion
and delivery are the workers'. Large bodies are decoded, parsed and encoded as a job in
helper processes (:mod:`parsing`, ``SBCT_PARSE_PROCESSES``) so campaigns of any size cannot
hold the event loop away from Journey webhooks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiolimiter import AsyncLimiter

from . import api, dashboard, logs, metrics, openapi, storage, stream
from .auth import Authenticator
from .broker import Broker
from .context import AUTH, BROKER, OUTBOX, POOL, REQUEST_ID, SETTINGS
from .errors import BadRequest, BrokerUnavailable, RateLimited, Unavailable
from .httputil import IN_FLIGHT, InFlight, error_middleware, json_response, read_body
from .outbox import Outbox
from .parsing import ParsePool
from .settings import Settings
from .singleflight import Flights
from .tasks import Periodic, until_up

log = logs.get(__name__)

TEMPLATE_CACHE_TTL_S = 5.0
DEPTH_REFRESH_S = 1.0


class WebhookGuards:
    """Per-process checks of the webhook path: rate limits, template existence, depth."""

    def __init__(self, settings: Settings, pool: Any, broker: Broker) -> None:
        self.settings = settings
        self.pool = pool
        self.broker = broker
        self._limiters: dict[str, AsyncLimiter] = {}
        self._templates: dict[tuple[str, str], float] = {}
        self._template_lookups: Flights[tuple[str, tuple[str, ...]], set[str]] = Flights()
        self.depth: dict[str, int] = {}
        self.depth_ok = True

    async def rate_limit(self, app_id: str) -> None:
        rate = self.settings.single_rate_limit
        if rate <= 0:
            return
        limiter = self._limiters.get(app_id)
        if limiter is None:
            limiter = self._limiters[app_id] = AsyncLimiter(rate, 1.0)
        if not limiter.has_capacity():
            raise RateLimited(f"over {rate:g} single webhooks per second for this app "
                              "(SBCT_SINGLE_RATE_LIMIT)", retry_after=1)
        await limiter.acquire()

    async def templates_exist(self, app_id: str, keys: set[str]) -> None:
        now = time.monotonic()
        unknown = tuple(sorted(k for k in keys if self._templates.get((app_id, k), 0) < now))
        if not unknown:
            return
        # One query per (app, keys) however many requests find the cache expired at once.
        found = await self._template_lookups.run(
            (app_id, unknown), lambda: self._load_templates(app_id, unknown))
        missing = sorted(set(unknown) - found)
        if missing:
            raise BadRequest(f"key_values.template_key names no template of this app: "
                             f"{', '.join(repr(m) for m in missing[:5])}",
                             code="unknown_template")

    async def _load_templates(self, app_id: str, keys: tuple[str, ...]) -> set[str]:
        found = await storage.existing_template_keys(self.pool, app_id, keys)
        until = time.monotonic() + TEMPLATE_CACHE_TTL_S
        for k in found:
            self._templates[(app_id, k)] = until
        return found

    def check_depth(self, kinds: tuple[str, ...]) -> None:
        if not self.depth_ok:
            raise BrokerUnavailable("RabbitMQ is not answering", retry_after=2)
        limit = self.settings.max_queue_depth
        for kind in kinds:
            if self.depth.get(kind, 0) > limit:
                raise Unavailable(f"queue {kind} holds over {limit} messages "
                                  "(SBCT_MAX_QUEUE_DEPTH); retry later",
                                  retry_after=5, code="queue_full")

    async def refresh_depth(self) -> None:
        try:
            for kind in ("single", "multi", "chunks"):
                self.depth[kind] = await self.broker.queue_depth(kind)
                metrics.QUEUE_DEPTH.labels(queue=kind).set(self.depth[kind])
            self.depth_ok = True
        except BrokerUnavailable as exc:
            if self.depth_ok:
                log.warning("ingress.depth_unavailable", error=str(exc))
            self.depth_ok = False


GUARDS = web.AppKey("guards", WebhookGuards)
PARSER = web.AppKey("parser", ParsePool)


async def _webhook(request: web.Request, kind: str) -> web.Response:
    app = request.app
    app_id = await app[AUTH].app_for_token(request.headers.get("Api-token"))
    logs.bind(app_id=app_id)
    guards = app[GUARDS]
    if kind == "single":
        await guards.rate_limit(app_id)
    request_id: str = request[REQUEST_ID]
    # The request_id doubles as the delivery key of every user in this request: a broker
    # redelivery of this job can never make a second feed row.
    hook = await app[PARSER].prepare(await read_body(request), request_id=request_id,
                                     app_id=app_id, received_at=time.time())
    if hook.is_test:
        log.info("webhook.test_request", endpoint=kind)
        return json_response({"request_id": request_id, "accepted": 0, "rejected": 0,
                              "test": True})
    if hook.accepted:
        await guards.templates_exist(app_id, set(hook.template_keys))
    guards.check_depth((kind,) if kind == "single" else ("multi", "chunks"))

    idem_key = request.headers.get("Idempotency-Key")
    pool = app[POOL]
    if idem_key:
        if len(idem_key) > 200:
            raise BadRequest("Idempotency-Key is longer than 200 characters",
                             code="invalid_idempotency_key")
        claimed, previous = await storage.claim_idempotency_key(
            pool, app_id, idem_key, app[SETTINGS].dedupe_window_s)
        if not claimed:
            if previous is None:
                raise Unavailable("a request with this Idempotency-Key is still in progress",
                                  retry_after=1, code="idempotency_in_progress")
            return json_response(previous, headers={"Idempotent-Replayed": "true"})
    result: dict[str, Any] = {"request_id": request_id, "accepted": hook.accepted,
                              "rejected": hook.rejected}
    if hook.rejections:
        result["rejections"] = hook.rejections
    if hook.payload is not None:
        try:
            await app[BROKER].publish(kind, hook.payload, message_id=request_id,
                                      headers={"request_id": request_id, "app_id": app_id})
        except BrokerUnavailable:
            if idem_key:
                await storage.finish_idempotency_key(pool, app_id, idem_key, None)
            raise
    if idem_key:
        await storage.finish_idempotency_key(pool, app_id, idem_key, result)
    metrics.WEBHOOK_RECIPIENTS.labels(endpoint=kind, outcome="accepted").inc(hook.accepted)
    metrics.WEBHOOK_RECIPIENTS.labels(endpoint=kind, outcome="rejected").inc(hook.rejected)
    log.info("webhook.accepted", endpoint=kind, target_id=hook.target_id,
             accepted=hook.accepted, rejected=hook.rejected)
    return json_response(result)


async def single(request: web.Request) -> web.Response:
    return await _webhook(request, "single")


async def multi(request: web.Request) -> web.Response:
    return await _webhook(request, "multi")


# ---------------------------------------------------------------- health

async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    problems = {}
    try:
        async with asyncio.timeout(2):
            await request.app[POOL].fetchval("SELECT 1")
    except Exception as exc:
        problems["database"] = repr(exc)
    if not request.app[GUARDS].depth_ok:
        problems["broker"] = "RabbitMQ is not answering"
    if problems:
        return json_response({"status": "unavailable", "problems": problems}, status=503)
    return json_response({"status": "ok"})


async def metrics_view(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return web.Response(body=generate_latest(metrics.REGISTRY),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


# ---------------------------------------------------------------- app factory

def create_app(settings: Settings) -> web.Application:
    """The ingress application; resources open in cleanup contexts, in dependency order."""
    in_flight = InFlight()
    app = web.Application(middlewares=[in_flight.middleware, error_middleware],
                          client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[IN_FLIGHT] = in_flight

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pool = await until_up("PostgreSQL", lambda: storage.create_pool(settings),
                              settings.startup_wait_s)
        broker = Broker(settings)
        try:
            await until_up("RabbitMQ", broker.connect, settings.startup_wait_s)
        except BaseException:
            await pool.close()
            raise
        app[POOL] = pool
        app[BROKER] = broker
        app[AUTH] = Authenticator(pool, settings.admin_token)
        app[OUTBOX] = Outbox(pool, broker, settings)
        app[GUARDS] = guards = WebhookGuards(settings, pool, broker)
        app[PARSER] = parser = ParsePool(settings.parse_processes)
        await guards.refresh_depth()
        refresher = Periodic("queue-depth", guards.refresh_depth, DEPTH_REFRESH_S).start()
        yield
        await refresher.stop()
        await parser.close()
        await broker.close()
        await pool.close()

    app.cleanup_ctx.append(resources)
    app.cleanup_ctx.append(stream.hub_ctx)
    app.on_shutdown.append(stream.on_shutdown)
    app.router.add_post("/clevertap/notifications/single", single)
    app.router.add_post("/clevertap/notifications/multi", multi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    api.add_routes(app)
    dashboard.add_routes(app)
    openapi.add_routes(app)
    return app
