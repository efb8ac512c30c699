"""Probe app of workers and callbacks: readiness from the process's own pool and broker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from sbct_pipeline.broker import Broker
from sbct_pipeline.health import HealthState, create_health_app
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
