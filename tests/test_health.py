"""Probe app of workers and callbacks: readiness from the process's own pool and broker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from sbct_pipeline import metrics
from sbct_pipeline.broker import Broker
from sbct_pipeline.health import HealthState, QueueDepths, create_health_app
from sbct_pipeline.settings import Settings

from .conftest import free_port, serve


@pytest.fixture
async def probe(pool: asyncpg.Pool, settings: Settings
                ) -> AsyncIterator[tuple[str, HealthState, Broker]]:
    """The health app over real HTTP on its own broker (so the test may close it)."""
    broker = Broker(settings)
    await broker.connect(consume=True)
    state = HealthState()
    port = free_port()
    runner = await serve(create_health_app(pool=pool, broker=broker, state=state), port)
    yield f"http://127.0.0.1:{port}", state, broker
    await runner.cleanup()
    await broker.close()


async def _get(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.json()


async def test_readyz_turns_503_while_draining(
        probe: tuple[str, HealthState, Broker]) -> None:
    """Once shutdown begins, /readyz answers 503 draining while /healthz stays 200."""
    base, state, _ = probe
    assert await _get(base + "/readyz") == (200, {"status": "ok"})
    state.draining = True
    assert await _get(base + "/readyz") == (503, {"status": "draining"})
    assert await _get(base + "/healthz") == (200, {"status": "draining"})


async def test_readyz_names_a_broker_that_is_down(
        probe: tuple[str, HealthState, Broker]) -> None:
    """With the process's RabbitMQ connections closed, /readyz answers 503 naming the broker."""
    base, _, broker = probe
    await broker.close()
    status, body = await _get(base + "/readyz")
    assert status == 503
    assert body["status"] == "unavailable"
    assert set(body["problems"]) == {"broker"}  # type: ignore[arg-type]


async def test_queue_depths_count_event_messages_waiting_for_a_retry(broker: Broker) -> None:
    """``sbct_queue_depth{queue="delay.events"}`` sums the event delay queues: a backlog that
    no process holds, visible even after the callbacks process that sent it restarted."""
    await broker.retry_later("events", b"[]", attempt=12)  # the 2048 s level
    await broker.retry_later("events", b"[]", attempt=1, delay=3000.0)  # the 3600 s level
    await QueueDepths(broker).refresh()
    assert metrics.QUEUE_DEPTH.labels(queue="delay.events")._value.get() == 2
    assert metrics.QUEUE_DEPTH.labels(queue="events")._value.get() == 0
