"""The callback consumer under CleverTap's failures, injected at the simulator.

Each test publishes events, injects a failure (outage, 429 bursts, concurrency past 15,
per-record rejections, slow answers, timeouts, a publisher outage at settle time) and checks
that every event arrives: the simulator's unique ``(objectId, evtName, status, target_id)``
count equals what was published. Duplicates the simulator saw are printed (``pytest -s``)
and bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from sbct_pipeline import deadletters, metrics
from sbct_pipeline.broker import Broker
from sbct_pipeline.callbacks import Exporter
from sbct_pipeline.codec import Event, encode_events
from sbct_pipeline.outbox import INTEGRATION_TTL_S
from sbct_pipeline.settings import Settings
from sbct_pipeline.sim import Simulator

from .conftest import Api, eventually


async def _publish(broker: Broker, app_id: str, n: int, per_message: int, *,
                   headers: dict[str, Any] | None = None) -> None:
    now = int(time.time())
    for start in range(0, n, per_message):
        evs = [Event(app_id, i, "SENT", "Camp", 42, now, f"obj-{i}", None)
               for i in range(start, min(n, start + per_message))]
        await broker.publish("events", encode_events(evs), headers=headers)


def _report(name: str, sim: Simulator, published: int) -> dict[str, Any]:
    stats = sim.stats()
    print(f"\n[fault:{name}] published={published} unique={stats['unique']} "
          f"duplicates={stats['duplicates']} requests={stats['requests']} "
          f"rejected={stats['rejected']} peak_in_flight={stats['peak_in_flight']}")
    return stats


async def _all_arrived(sim: Simulator, n: int) -> bool:
    return len(sim.keys) >= n


@contextlib.asynccontextmanager
async def _exporter(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Exporter]:
    b = Broker(settings)
    await b.connect(consume=True)
    e = Exporter(pool, b, settings)
    await e.start()
    try:
        yield e
    finally:
        await e.stop()
        await b.close()


@pytest.mark.timeout(240)
async def test_outage_of_twenty_seconds_loses_nothing(
        ingress: Api, exporter: Exporter, broker: Broker, sim: Simulator) -> None:
    """A 20 s outage (503): events back off through delay queues and all arrive after it."""
    app = (await ingress.new_app(sim))["app_id"]
    sim.faults.update({"outage_s": 20})
    await _publish(broker, app, 3000, 500)
    await eventually(lambda: _gauge(metrics.EXPORT_LAG, app, above=2.0), timeout=30)
    assert _counter(metrics.EXPORT_RETRIES, app, "503") > 0
    await eventually(lambda: _all_arrived(sim, 3000), timeout=150, interval=0.2)
    stats = _report("outage-20s", sim, 3000)
    assert sim.answers[503] > 0
    assert stats["duplicates"] == 0  # a 503 processes nothing: nothing to duplicate
    await eventually(lambda: _gauge(metrics.EXPORT_LAG, app, below=0.5), timeout=10)


async def test_429_bursts_honour_retry_after_and_lose_nothing(
        settings: Settings, pool: asyncpg.Pool, ingress: Api, broker: Broker,
        sim: Simulator) -> None:
    """With 60% of requests answered 429 (Retry-After: 1), every event arrives once."""
    app = (await ingress.new_app(sim))["app_id"]
    sim.faults.update({"fail_429": 0.6})
    async with _exporter(settings.with_overrides(callback_batch_size=100), pool):
        await _publish(broker, app, 2000, 100)
        await eventually(lambda: _all_arrived(sim, 2000), timeout=90, interval=0.2)
    stats = _report("429-bursts", sim, 2000)
    assert sim.answers[429] > 0 and stats["duplicates"] == 0


async def test_two_consumers_past_the_concurrency_limit_lose_nothing(
        settings: Settings, pool: asyncpg.Pool, ingress: Api, broker: Broker,
        sim: Simulator) -> None:
    """Two callback processes (30 requests in flight) against 15 allowed: 429s, no loss."""
    app = (await ingress.new_app(sim))["app_id"]
    sim.faults.update({"slow_ms": 300, "slow_rate": 1.0})
    s = settings.with_overrides(callback_batch_size=50)
    async with _exporter(s, pool), _exporter(s, pool):
        await _publish(broker, app, 4000, 50)
        await eventually(lambda: _all_arrived(sim, 4000), timeout=90, interval=0.2)
    stats = _report("concurrency-429", sim, 4000)
    assert sim.peak_in_flight == 15 and sim.answers[429] > 0
    assert stats["duplicates"] == 0


@pytest.mark.timeout(180)
async def test_partial_failures_retry_transient_and_dead_letter_permanent(
        ingress: Api, exporter: Exporter, broker: Broker, sim: Simulator) -> None:
    """Per-record rejections: transient ones (555) retried until accepted, 526 dead-lettered."""
    app = (await ingress.new_app(sim))["app_id"]
    sim.faults.update({"reject_rate": 0.2, "reject_code": 555})
    await _publish(broker, app, 1000, 250)
    await eventually(lambda: _all_arrived(sim, 1000), timeout=100, interval=0.2)
    stats = _report("partial-transient", sim, 1000)
    assert stats["rejected"] > 0 and stats["duplicates"] == 0
    sim.reset()
    sim.faults.update({"reject_rate": 0.2, "reject_code": 526})
    await _publish(broker, app, 1000, 250)

    async def accounted() -> tuple[int, int] | None:
        dead = sum(d.records for d in await deadletters.list_dead(broker, kind="events"))
        return (len(sim.keys), dead) if len(sim.keys) + dead == 1000 else None

    accepted, dead = await eventually(accounted, timeout=30, interval=0.3)
    assert accepted == 1000 - dead
    _report("partial-permanent", sim, 1000)
    assert dead == sim.rejected and 0 < dead < 1000
    assert all("526" in d.reason for d in await deadletters.list_dead(broker))
    assert _counter(metrics.EXPORT_DEAD_LETTERS, app) == dead


@pytest.mark.timeout(240)
async def test_slow_answers_and_timeouts_lose_nothing_and_duplicate_little(
        settings: Settings, pool: asyncpg.Pool, ingress: Api, broker: Broker,
        sim: Simulator) -> None:
    """Slow answers past the request timeout are retried: all arrive, few duplicates."""
    app = (await ingress.new_app(sim))["app_id"]
    # A third of the answers take 1.5 s against a 1 s timeout: the simulator processes
    # them after we gave up (as a slow CleverTap may), so duplicates are expected. Retry
    # delays double from 1 s, so a record that times out several times in a row waits
    # tens of seconds: the wait is generous (it once passed 90 s on a loaded machine).
    sim.faults.update({"slow_ms": 1500, "slow_rate": 0.33})
    s = settings.with_overrides(callback_timeout_s=1.0)
    await _publish(broker, app, 3000, 100)
    async with _exporter(s, pool):
        await eventually(lambda: _all_arrived(sim, 3000), timeout=150, interval=0.2)
        sim.faults.update({"slow_ms": 0, "slow_rate": 0})
    stats = _report("slow-timeouts", sim, 3000)
    # Only records of timed-out requests can be duplicated, each once per timeout.
    timed_out = _counter(metrics.EXPORT_RETRIES, app, "network")
    assert timed_out > 0
    assert stats["duplicates"] <= timed_out


async def test_publisher_outage_at_settle_time_keeps_the_message_and_resends_nothing(
        ingress: Api, exporter: Exporter, broker: Broker, sim: Simulator) -> None:
    """If the retry cannot be published, the message stays unacked until it can; no loss."""
    app = (await ingress.new_app(sim))["app_id"]
    # Half the records are refused (transiently), so settling needs a publish to a delay
    # queue; the exporter's publishing connection is down, its consuming one is fine.
    sim.faults.update({"reject_rate": 0.5, "reject_code": 555})
    pub = exporter.broker._pub_conn
    assert pub is not None
    await pub.close()
    await _publish(broker, app, 200, 200)
    await eventually(lambda: _first_answer(sim))
    first = len(sim.keys)
    assert 0 < first < 200
    # Held, neither acked (lost) nor requeued (re-sent whole): nothing ready in the queue.
    await eventually(lambda: _unacked(broker, 1))
    await exporter.broker.connect(consume=False)  # the publisher is back
    sim.faults.update({"reject_rate": 0.0})
    await eventually(lambda: _all_arrived(sim, 200), timeout=30)
    stats = _report("publisher-outage", sim, 200)
    assert stats["duplicates"] == 0


async def _unacked(broker: Broker, n: int) -> bool:
    ch = await broker.consume_connection.channel()
    try:
        q = await ch.declare_queue(broker.names.queue("events"), passive=True)
        return q.declaration_result.message_count == 0 and \
            q.declaration_result.consumer_count == 1
    finally:
        await ch.close()


async def _first_answer(sim: Simulator) -> bool:
    return sim.answers[200] >= 1


async def test_retries_stop_after_the_retry_window_and_dead_letter(
        ingress: Api, exporter: Exporter, broker: Broker, sim: Simulator) -> None:
    """Records still failing past SBCT_CALLBACK_RETRY_MAX_S are dead-lettered, not dropped."""
    app = (await ingress.new_app(sim))["app_id"]
    sim.faults.update({"fail_500": 1.0})
    await _publish(broker, app, 5, 5, headers={"x-first-attempt-at": time.time() - 90_000,
                                               "x-attempts": 30})
    items = await eventually(lambda: deadletters.list_dead(broker, kind="events"))
    assert items[0].records == 5 and "still failing after" in items[0].reason


@pytest.mark.timeout(60)
async def test_a_full_prefetch_flushes_without_waiting_for_the_linger(
        settings: Settings, pool: asyncpg.Pool, ingress: Api, broker: Broker,
        sim: Simulator) -> None:
    """With every prefetch slot holding a one-event message, the batch goes out at once."""
    app = (await ingress.new_app(sim))["app_id"]
    async with _exporter(settings.with_overrides(callback_linger_s=600), pool) as e:
        await _publish(broker, app, e.prefetch, 1)
        await eventually(lambda: _all_arrived(sim, e.prefetch), timeout=30)
    assert sim.stats()["duplicates"] == 0


async def test_callback_off_then_on_sends_events_from_then_on(
        ingress: Api, exporter: Exporter, broker: Broker, sim: Simulator) -> None:
    """Events of an app with the callback off are not sent; after turning it on they are."""
    app = await ingress.new_app(sim, callback=False)
    path = f"/v1/apps/{app['app_id']}/integrations/clevertap"
    await _publish(broker, app["app_id"], 20, 10)
    await eventually(lambda: _queue_empty(broker))
    await eventually(lambda: _off_counted(app["app_id"], 20))
    assert sim.events == []
    status, _ = await ingress.call("PUT", path, admin=True, json={
        "event_callback": True, "project_id": sim.account_id, "passcode": sim.passcode,
        "api_endpoint": sim.url})  # type: ignore[attr-defined]
    assert status == 200
    # No invalidation: like another process, the exporter sees the change once its cached
    # settings expire (INTEGRATION_TTL_S, the documented bound).
    await asyncio.sleep(INTEGRATION_TTL_S)
    now = int(time.time())
    await broker.publish("events", encode_events(
        [Event(app["app_id"], 1000 + i, "READ", "Camp", 42, now, f"new-{i}", None)
         for i in range(5)]))
    await eventually(lambda: _all_arrived(sim, 5))
    assert sorted(e["objectId"] for e in sim.events) == [f"new-{i}" for i in range(5)]


async def _queue_empty(broker: Broker) -> bool:
    return await broker.queue_depth("events") == 0


async def _off_counted(app_id: str, n: int) -> bool:
    return _counter(metrics.EVENTS_EXPORTED, app_id, "callback_off") >= n


def _counter(metric: Any, *labels: str) -> float:
    return float(metric.labels(*labels)._value.get())


async def _gauge(metric: Any, app_id: str, *, above: float | None = None,
                 below: float | None = None) -> bool:
    value = float(metric.labels(app_id)._value.get())
    return (above is None or value > above) and (below is None or value < below)
