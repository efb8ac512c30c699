"""The multi path: large bodies, once per user despite retries and redelivery, backpressure."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import orjson
from aiohttp import ClientSession

from sbct_pipeline.broker import Broker
from sbct_pipeline.codec import Job, parse_webhook
from sbct_pipeline.ingress import create_app
from sbct_pipeline.settings import Settings
from sbct_pipeline.sim import Simulator

from .conftest import Api, eventually, free_port, serve, webhook
from .test_delivery import _outbox_events

SINGLE = "/clevertap/notifications/single"
MULTI = "/clevertap/notifications/multi"


async def _count(pool: asyncpg.Pool, sql: str, *args: Any) -> int:
    return int(await pool.fetchval(sql, *args))


async def _events(broker: Broker, at_least: int) -> list[Any]:
    """Drain the events queue until ``at_least`` events came, then once more for extras."""
    events: list[Any] = []

    async def enough() -> bool:
        events.extend(await _outbox_events(broker))
        return len(events) >= at_least

    await eventually(enough, timeout=30)
    await asyncio.sleep(0.5)
    events.extend(await _outbox_events(broker))
    return events


async def test_retried_multi_webhook_notifies_each_user_once(
        ingress: Api, worker: Any, pool: asyncpg.Pool, broker: Broker, sim: Simulator) -> None:
    """CleverTap sending a 1,200-user campaign three times: one row and one SENT per user."""
    app = await ingress.new_app(sim)
    await ingress.template(app["api_token"])
    body = webhook(users=[f"u{i}" for i in range(1200)])
    ids = set()
    for _ in range(3):
        status, res = await ingress.call("POST", MULTI, token=app["api_token"], json=body)
        assert status == 200 and res["accepted"] == 1200
        ids.add(res["request_id"])
    assert len(ids) == 3  # three distinct requests: only the content dedupe can catch them
    events = await _events(broker, 1200)
    # All three jobs consumed: nothing left in the outbox, no failures.
    await eventually(lambda: _count(pool, "SELECT count(*) = 0 FROM outbox"))
    assert await _count(pool, "SELECT count(*) FROM notifications") == 1200
    assert await _count(pool, "SELECT count(DISTINCT user_id) FROM notifications") == 1200
    assert len(events) == 1200 == len({e[6] for e in events})
    app_id, nid, status, name, target, ts, object_id, identity, request_id = events[0]
    assert (app_id, status, name, target) == (app["app_id"], "SENT", "My First Campaign",
                                              1700000001)
    assert isinstance(nid, int) and isinstance(ts, int) and ts > 1_700_000_000
    assert object_id == "__g" + identity[len("crm-"):] and request_id in ids


async def test_redelivered_chunks_and_jobs_add_nothing(
        worker: Any, pool: asyncpg.Pool, broker: Broker, ingress: Api, sim: Simulator) -> None:
    """A chunk delivered twice and a job expanded twice store each user once, with one SENT each."""
    app = await ingress.new_app(sim)
    await ingress.template(app["api_token"])
    hook = parse_webhook(webhook(users=[f"c{i}" for i in range(700)]))
    job = Job(str(uuid.uuid4()), app["app_id"], hook.target_id, hook.recipients, 0.0)
    chunk = Job(job.request_id, job.app_id, job.target_id, job.recipients[:300], 0.0, chunk=0)
    # The chunk first, twice (a redelivery after a lost ack), then the whole job twice: its
    # expansion republishes that same chunk again, plus the rest twice.
    await broker.publish("chunks", chunk.encode())
    await broker.publish("chunks", chunk.encode())
    await broker.publish("multi", job.encode())
    await broker.publish("multi", job.encode())
    events = await _events(broker, 700)
    await eventually(lambda: _count(pool, "SELECT count(*) = 0 FROM outbox"))
    assert await _count(pool, "SELECT count(*) FROM notifications") == 700
    assert sorted(e[6] for e in events) == sorted(f"__gc{i}" for i in range(700))


async def test_redelivery_after_the_dedupe_window_still_adds_nothing(
        worker: Any, pool: asyncpg.Pool, broker: Broker, ingress: Api, sim: Simulator) -> None:
    """A chunk redelivered after its dedupe rows were swept is still stopped by the request key."""
    app = await ingress.new_app(sim)
    await ingress.template(app["api_token"])
    hook = parse_webhook(webhook(users=["late1", "late2"]))
    chunk = Job(str(uuid.uuid4()), app["app_id"], hook.target_id, hook.recipients, 0.0)
    await broker.publish("chunks", chunk.encode())
    await _events(broker, 2)
    await pool.execute("DELETE FROM dedupe")  # the window passed and the sweeper ran
    await broker.publish("chunks", chunk.encode())
    await eventually(lambda: _count(pool, "SELECT count(*) = 2 FROM dedupe"))
    assert await _count(pool, "SELECT count(*) FROM notifications") == 2
    assert await _outbox_events(broker) == []


async def test_profiles_without_user_id_are_counted_rejected(ingress: Api, worker: Any,
                                                             pool: asyncpg.Pool) -> None:
    """A multi body mixing good profiles and profiles with no user ID delivers the good ones."""
    app = await ingress.new_app()
    await ingress.template(app["api_token"])
    body = webhook(users=["g1", "g2"])
    body["profiles"] += [{"email": "x@example.com"}, {"profileData": {"Name": "No Id"}}]
    status, res = await ingress.call("POST", MULTI, token=app["api_token"], json=body)
    assert status == 200 and (res["accepted"], res["rejected"]) == (2, 2)
    assert [r["index"] for r in res["rejections"]] == [2, 3]
    await eventually(lambda: _count(pool, "SELECT count(*) = 2 FROM notifications"))


async def test_single_webhooks_answer_while_a_10k_multi_is_processed(
        ingress: Api, pool: asyncpg.Pool) -> None:
    """Single webhooks keep being answered while a 10,000-profile multi body is being handled."""
    app = await ingress.new_app()
    tok = app["api_token"]
    await ingress.template(tok)
    big = orjson.dumps(webhook(users=[f"big{i}" for i in range(10_000)]))
    assert len(big) > 800_000  # several hundred KB: parsed in a helper process
    lags: list[float] = []
    stop = asyncio.Event()

    async def sample_lag() -> None:
        # The ingress serves in this event loop: oversleeping a 1 ms sleep is loop lag.
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - t0 - 0.001)

    sampler = asyncio.create_task(sample_lag())
    multi = asyncio.create_task(ingress.call(
        "POST", MULTI, data=big, token=tok, headers={"Content-Type": "application/json"}))
    singles: list[tuple[int, Any]] = []
    while not multi.done():
        singles.append(await ingress.call("POST", SINGLE, token=tok,
                                          json=webhook(users=[f"s{len(singles)}"])))
    stop.set()
    await sampler
    status, res = multi.result()
    assert status == 200 and res["accepted"] == 10_000
    assert singles and all(s == 200 for s, _ in singles)
    print(f"\n10k-profile multi: {len(singles)} single webhooks answered meanwhile; "
          f"max event-loop lag {max(lags) * 1000:.1f} ms over {len(lags)} samples")


async def test_queue_over_its_depth_limit_answers_503(settings: Settings, broker: Broker) -> None:
    """Past SBCT_MAX_QUEUE_DEPTH ready jobs (no worker draining) webhooks get 503 + Retry-After."""
    s = settings.with_overrides(max_queue_depth=3, http_port=free_port())
    runner = await serve(create_app(s), s.http_port)
    try:
        async with ClientSession() as session:
            api = Api(f"http://127.0.0.1:{s.http_port}", session)
            app = await api.new_app()
            await api.template(app["api_token"])
            statuses = []
            for i in range(4):
                status, _ = await api.call("POST", SINGLE, token=app["api_token"],
                                           json=webhook(users=[f"bp{i}"]))
                statuses.append(status)
            assert statuses == [200] * 4

            async def refused() -> Any:
                status, body = await api.call("POST", SINGLE, token=app["api_token"],
                                              json=webhook(users=["late"]))
                return (status, body, api.last_headers) if status == 503 else None

            status, body, headers = await eventually(refused)
            assert body["error"]["code"] == "queue_full"
            assert "SBCT_MAX_QUEUE_DEPTH" in body["error"]["message"]
            assert int(headers["Retry-After"]) > 0
            # multi checks its own queues: the single backlog does not refuse a campaign.
            status, _ = await api.call("POST", MULTI, token=app["api_token"],
                                       json=webhook(users=["m1"]))
            assert status == 200
    finally:
        await runner.cleanup()
