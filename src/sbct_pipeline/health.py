"""Health: ``/healthz``, ``/readyz`` and ``/metrics`` for processes without the ingress.

Workers and callback consumers serve these on ``SBCT_METRICS_PORT``; ``/readyz`` checks that
PostgreSQL and RabbitMQ answer.
"""

from __future__ import annotations

import asyncio

import aio_pika
import asyncpg
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import metrics
from .settings import Settings


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def create_health_app(settings: Settings) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        problems: dict[str, str] = {}
        try:
            async with asyncio.timeout(2):
                conn = await asyncpg.connect(settings.database_url)
                await conn.close()
        except Exception as exc:
            problems["database"] = repr(exc)
        try:
            async with asyncio.timeout(2):
                amqp = await aio_pika.connect(settings.amqp_url)
                await amqp.close()
        except Exception as exc:
            problems["broker"] = repr(exc)
        if problems:
            return _json({"status": "unavailable", "problems": problems}, status=503)
        return _json({"status": "ok"})

    async def metrics_view(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app
