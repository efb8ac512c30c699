"""Start-up order: consumers started before PostgreSQL answers wait for it, then work.

Compose, Kubernetes and a database failover all start processes before their dependencies
answer. A worker or callback consumer retries the connection for ``SBCT_STARTUP_WAIT_S``
(logging ``startup.waiting``) instead of exiting on the first refusal; past that it exits
with an error naming what it could not reach. Uses a private PostgreSQL cluster, stopped
while the consumers start.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from ..conftest import Api, webhook
from .conftest import PrivatePostgres, Stack
from .test_outages import wait_complete

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(180)
async def test_consumers_started_before_postgres_wait_for_it(
        pg_stack: Stack, pg_client: Api, private_postgres: PrivatePostgres) -> None:
    await asyncio.to_thread(private_postgres.stop, "fast")
    worker = pg_stack.spawn("worker", "worker", SBCT_STARTUP_WAIT_S="120")
    callbacks = pg_stack.spawn("callbacks", "callbacks", SBCT_STARTUP_WAIT_S="120")
    # Both keep retrying, and say so, while PostgreSQL is down.
    deadline = time.monotonic() + 30
    while not all("startup.waiting" in p.tail() for p in (worker, callbacks)):
        assert worker.alive and callbacks.alive, (worker.tail(), callbacks.tail())
        assert time.monotonic() < deadline, (worker.tail(), callbacks.tail())
        await asyncio.sleep(0.2)
    assert '"dependency":"PostgreSQL"' in worker.tail()
    assert worker.alive and callbacks.alive

    await asyncio.to_thread(private_postgres.start)
    await pg_stack.start_sim()
    await pg_stack.start_ingress()
    app = await pg_stack.setup_app(pg_client)
    status, body = await pg_client.call(
        "POST", "/clevertap/notifications/single", token=app["api_token"],
        json=webhook(target_id=1700000950, users=["late-1"]))
    assert status == 200, body
    # Delivered by the worker and exported by the consumer that both started without a database.
    rows, users, summary = await wait_complete(pg_stack, app["app_id"], 1, 60, settle=0.5)
    assert (rows, users, summary["unique"]) == (1, 1, 1), (summary, worker.tail())


@pytest.mark.timeout(120)
async def test_consumer_gives_up_after_the_startup_wait_naming_postgres(
        pg_stack: Stack, private_postgres: PrivatePostgres) -> None:
    await asyncio.to_thread(private_postgres.stop, "fast")
    worker = pg_stack.spawn("worker", "worker", SBCT_STARTUP_WAIT_S="1")
    code = await asyncio.to_thread(worker.popen.wait, 60)
    assert code != 0
    assert "cannot reach PostgreSQL" in worker.tail(), worker.tail()
