"""Shared fixtures: real PostgreSQL and RabbitMQ, isolated per test.

Each test gets its own database (cloned from a template migrated once per session) and its
own broker prefix, so queue and exchange names never collide; both are removed afterwards.
The suite can run twice in a row, in any order, beside a running dev pipeline.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web

from sbct_pipeline import storage
from sbct_pipeline.broker import Broker, delete_topology
from sbct_pipeline.settings import Settings
from sbct_pipeline.sim import Simulator, create_sim_app

PG_ADMIN = os.environ.get("SBCT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP = os.environ.get("SBCT_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
ADMIN_TOKEN = "test-admin-token"
SESSION = uuid.uuid4().hex[:8]
TEMPLATE_DB = f"sbct_tmpl_{SESSION}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def db_url(name: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


async def _admin_exec(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db() -> Any:
    """A database migrated once; each test clones it (CREATE DATABASE ... TEMPLATE)."""
    asyncio.run(storage.migrate(Settings(database_url=db_url(TEMPLATE_DB))))
    yield TEMPLATE_DB
    asyncio.run(_admin_exec(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)'))


@pytest.fixture
async def settings(template_db: str) -> AsyncIterator[Settings]:
    """Settings naming a fresh database and broker prefix for this test alone."""
    tag = uuid.uuid4().hex[:10]
    name = f"sbct_t_{tag}"
    await _admin_exec(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    s = Settings(database_url=db_url(name), amqp_url=AMQP, amqp_prefix=f"t_{tag}",
                 admin_token=ADMIN_TOKEN, http_port=free_port(), metrics_port=0,
                 callback_linger_s=0.2, outbox_sweep_s=0.5, drain_timeout_s=5)
    yield s
    conn = None
    try:
        import aio_pika

        conn = await aio_pika.connect(AMQP)
        ch = await conn.channel()
        await delete_topology(ch, s)
    finally:
        if conn is not None:
            await conn.close()
    await _admin_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await storage.create_pool(settings)
    yield p
    await p.close()


@pytest.fixture
async def broker(settings: Settings) -> AsyncIterator[Broker]:
    b = Broker(settings)
    await b.connect(consume=True)
    yield b
    await b.close()


async def serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """An in-process CleverTap simulator on a free port (``sim.url``)."""
    s = Simulator("TEST-ACCOUNT", "TEST-PASSCODE", seed=7)
    port = free_port()
    runner = await serve(create_sim_app(s), port)
    s.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield s
    await runner.cleanup()


class Api:
    """A small HTTP client for the ingress under test."""

    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.session = session

    async def call(self, method: str, path: str, *, json: Any = None, data: bytes | None = None,
                   token: str | None = None, admin: bool = False,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        h = dict(headers or {})
        if token:
            h["Api-token"] = token
        if admin:
            h["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        if json is not None:
            data = orjson.dumps(json)
            h.setdefault("Content-Type", "application/json")
        async with self.session.request(method, self.base + path, data=data, headers=h) as r:
            raw = await r.read()
            self.last_headers = r.headers
            try:
                return r.status, orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                return r.status, raw.decode()

    async def new_app(self, sim: Simulator | None = None, callback: bool = True) -> dict[str, Any]:
        status, app = await self.call("POST", "/v1/apps", json={"name": "test"}, admin=True)
        assert status == 201, app
        if sim is not None:
            status, body = await self.call(
                "PUT", f"/v1/apps/{app['app_id']}/integrations/clevertap", admin=True,
                json={"event_callback": callback, "project_id": sim.account_id,
                      "passcode": sim.passcode, "api_endpoint": sim.url})  # type: ignore[attr-defined]
            assert status == 200, body
        return app

    async def template(self, token: str, key: str = "order_shipped",
                       title: str = "Hi {name}", body: str = "Order {order_id} shipped",
                       data: Any = None) -> dict[str, Any]:
        status, tpl = await self.call("PUT", f"/v1/templates/{key}", token=token,
                                      json={"title": title, "body": body, "data": data})
        assert status in (200, 201), tpl
        return tpl  # type: ignore[no-any-return]


@pytest.fixture
async def ingress(settings: Settings) -> AsyncIterator[Api]:
    """The ingress app served over real HTTP on a free port."""
    from sbct_pipeline.ingress import create_app

    runner = await serve(create_app(settings), settings.http_port)
    async with aiohttp.ClientSession() as session:
        yield Api(f"http://127.0.0.1:{settings.http_port}", session)
    await runner.cleanup()


@pytest.fixture
async def worker(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Any]:
    from sbct_pipeline.delivery import Worker

    b = Broker(settings)
    await b.connect(consume=True)
    w = Worker(pool, b, settings)
    await w.start()
    yield w
    await w.stop()
    await b.close()


@pytest.fixture
async def exporter(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Any]:
    from sbct_pipeline.callbacks import Exporter

    b = Broker(settings)
    await b.connect(consume=True)
    e = Exporter(pool, b, settings)
    await e.start()
    yield e
    await e.stop()
    await b.close()


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 15.0,
                     interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns a truthy value; fail with its last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


def webhook(target_id: int = 1700000001, users: list[str] | None = None,
            template_key: str = "order_shipped", event_name: str = "My First Campaign",
            variables: dict[str, str] | None = None) -> dict[str, Any]:
    """A CleverTap-shaped webhook body for ``users``."""
    vs = variables if variables is not None else {"order_id": "A-17", "name": "Ana"}
    return {
        "targetId": target_id,
        "key_values": {"template_key": template_key, "event_name": event_name,
                       "variables": orjson.dumps(vs).decode()},
        "profiles": [{"objectId": f"__g{u}", "identity": f"crm-{u}",
                      "profileData": {"SendbirdID": u}} for u in (users or ["user-42"])],
    }
