"""Workers: from jobs on the broker to feed rows and SENT events, exactly once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import orjson

from sbct_pipeline.broker import Broker
from sbct_pipeline.codec import Job, parse_webhook
from sbct_pipeline.sim import Simulator

from .conftest import Api, eventually, webhook

SINGLE = "/clevertap/notifications/single"
MULTI = "/clevertap/notifications/multi"


async def _count(pool: asyncpg.Pool, sql: str, *args: Any) -> int:
    return int(await pool.fetchval(sql, *args))


async def _outbox_events(broker: Broker) -> list[Any]:
    """Drain the events queue (no callback consumer runs in these tests)."""
    ch = await broker.consume_connection.channel()
    q = await ch.get_queue(broker.names.queue("events"), ensure=False)
    out: list[Any] = []
    while (msg := await q.get(fail=False, timeout=5)) is not None:
        out.extend(orjson.loads(msg.body))
        await msg.ack()
    await ch.close()
    return out


async def test_single_webhook_lands_in_the_feed(ingress: Api, worker: Any, sim: Simulator,
                                                broker: Broker) -> None:
    """A single webhook is rendered into the user's feed and yields one SENT event."""
    app = await ingress.new_app(sim)
    tok = app["api_token"]
    await ingress.template(tok)
    status, _ = await ingress.call("POST", SINGLE, token=tok, json=webhook())
    assert status == 200

    async def feed() -> Any:
        _, body = await ingress.call("GET", "/v1/users/user-42/notifications", token=tok)
        return body["notifications"]

    (n,) = await eventually(feed)
    assert (n["title"], n["body"], n["target_id"]) == ("Hi Ana", "Order A-17 shipped",
                                                       1700000001)
    events = await eventually(lambda: _outbox_events(broker))
    assert [(e[2], e[3], e[6]) for e in events] == [("SENT", "My First Campaign", "__guser-42")]


async def test_multi_campaign_is_chunked_and_delivered_once_per_user(
        ingress: Api, worker: Any, pool: asyncpg.Pool, broker: Broker, sim: Simulator) -> None:
    """A 1,200-user campaign is expanded into chunks; each user gets exactly one row and event."""
    app = await ingress.new_app(sim)
    await ingress.template(app["api_token"])
    users = [f"u{i}" for i in range(1200)]
    status, body = await ingress.call("POST", MULTI, token=app["api_token"],
                                      json=webhook(users=users))
    assert status == 200 and body["accepted"] == 1200
    await eventually(lambda: _count(pool, "SELECT count(*) = 1200 FROM notifications"
                                    " WHERE target_id = 1700000001"))
    assert await _count(pool, "SELECT count(DISTINCT user_id) FROM notifications") == 1200
    events: list[Any] = []

    async def drained() -> bool:
        events.extend(await _outbox_events(broker))
        return len(events) >= 1200

    await eventually(drained)
    assert len({e[1] for e in events}) == 1200 == len(events)


async def test_redelivered_job_never_makes_a_second_row(
        worker: Any, pool: asyncpg.Pool, broker: Broker, ingress: Api, sim: Simulator) -> None:
    """Publishing the same job twice (a broker redelivery) stores each user once, one SENT."""
    app = await ingress.new_app(sim)
    await ingress.template(app["api_token"])
    hook = parse_webhook(webhook(users=["a", "b"]))
    job = Job(str(uuid.uuid4()), app["app_id"], hook.target_id, hook.recipients, 0.0)
    await broker.publish("single", job.encode())
    await broker.publish("single", job.encode())
    await eventually(lambda: _count(pool, "SELECT count(*) FROM notifications"))
    # Both messages are consumed (nothing ready, nothing unacked) before counting.
    await eventually(lambda: _count(pool, "SELECT count(*) = 0 FROM outbox"))
    events: list[Any] = []

    async def two_events() -> bool:
        events.extend(await _outbox_events(broker))
        return len(events) >= 2

    await eventually(two_events)
    assert await _count(pool, "SELECT count(*) FROM notifications") == 2
    assert sorted(e[6] for e in events) == ["__ga", "__gb"]


async def test_retried_webhook_within_window_is_skipped(
        ingress: Api, worker: Any, pool: asyncpg.Pool) -> None:
    """CleverTap's retry of the same webhook (a new request) does not notify a user twice."""
    app = await ingress.new_app()
    await ingress.template(app["api_token"])
    for _ in range(3):
        status, _ = await ingress.call("POST", SINGLE, token=app["api_token"], json=webhook())
        assert status == 200
    await eventually(lambda: _count(pool, "SELECT count(*) FROM notifications"))
    await asyncio.sleep(1.0)  # let the two retries be consumed too
    assert await _count(pool, "SELECT count(*) FROM notifications") == 1
    # A different campaign (targetId) for the same user is a new notification.
    await ingress.call("POST", SINGLE, token=app["api_token"], json=webhook(target_id=2))
    await eventually(lambda: _count(pool, "SELECT count(*) = 2 FROM notifications"))


async def test_missing_variable_fails_that_user_only(
        ingress: Api, worker: Any, pool: asyncpg.Pool) -> None:
    """A user whose variables miss a placeholder is recorded as failed, others are delivered."""
    app = await ingress.new_app()
    tok = app["api_token"]
    await ingress.template(tok)
    body = webhook(users=["ok"], variables={"name": "Ana"})
    body["profiles"][0]["key_values"] = {"var.order_id": "A-1"}
    body["profiles"].append({"identity": "bad"})
    status, _ = await ingress.call("POST", MULTI, token=tok, json=body)
    assert status == 200
    await eventually(lambda: _count(pool, "SELECT count(*) FROM delivery_failures"))
    reason = await pool.fetchval("SELECT reason FROM delivery_failures WHERE user_id = 'bad'")
    assert "order_id" in reason
    status, stats = await ingress.call("GET", "/v1/campaigns/1700000001/stats", token=tok)
    assert (stats["sent"], stats["failed"]) == (1, 1)


async def test_outbox_left_behind_is_republished(
        worker: Any, pool: asyncpg.Pool, broker: Broker) -> None:
    """An outbox row whose publisher died (rows committed, no event sent) is swept and sent."""
    payload = orjson.dumps([["app", 1, "SENT", "E", 5, 1_700_000_000, "o", None, None]])
    await pool.execute("INSERT INTO outbox (app_id, payload, created_at)"
                       " VALUES ('app', $1, now() - interval '1 minute')", payload)
    events = await eventually(lambda: _outbox_events(broker))
    assert events == orjson.loads(payload)
    assert await _count(pool, "SELECT count(*) FROM outbox") == 0


async def test_read_yields_one_read_event(
        ingress: Api, worker: Any, broker: Broker, sim: Simulator) -> None:
    """Marking read twice yields a single READ event; read_all marks the rest."""
    app = await ingress.new_app(sim)
    tok = app["api_token"]
    await ingress.template(tok)
    await ingress.call("POST", MULTI, token=tok, json=webhook(users=["r"]))
    await ingress.call("POST", MULTI, token=tok, json=webhook(users=["r"], target_id=2))

    async def feed() -> Any:
        _, body = await ingress.call("GET", "/v1/users/r/notifications", token=tok)
        return body if len(body["notifications"]) == 2 else None

    body = await eventually(feed)
    assert body["unread_count"] == 2
    first = body["notifications"][1]["id"]
    for _ in range(2):
        status, n = await ingress.call("POST", f"/v1/users/r/notifications/{first}/read",
                                       token=tok)
        assert status == 200 and n["read_at"] is not None
    status, res = await ingress.call("POST", "/v1/users/r/notifications/read_all", token=tok)
    assert res == {"marked_read": 1}
    events: list[Any] = []

    async def four() -> bool:
        events.extend(await _outbox_events(broker))
        return len(events) >= 4

    await eventually(four)
    assert sorted(e[2] for e in events) == ["READ", "READ", "SENT", "SENT"]
    _, body = await ingress.call("GET", "/v1/users/r/notifications", token=tok)
    assert body["unread_count"] == 0
    status, err = await ingress.call("POST", "/v1/users/r/notifications/999999/read",
                                     token=tok)
    assert status == 404 and err["error"]["code"] == "not_found"


async def test_feed_pagination_is_stable(ingress: Api, worker: Any, pool: asyncpg.Pool) -> None:
    """The before cursor pages newest-first without gaps or repeats."""
    app = await ingress.new_app()
    tok = app["api_token"]
    await ingress.template(tok)
    for t in range(5):
        await ingress.call("POST", SINGLE, token=tok, json=webhook(users=["p"], target_id=t))
    await eventually(lambda: _count(pool, "SELECT count(*) = 5 FROM notifications"))
    seen: list[int] = []
    cursor = ""
    while True:
        _, body = await ingress.call(
            "GET", f"/v1/users/p/notifications?limit=2{'&before=' + cursor if cursor else ''}",
            token=tok)
        seen.extend(n["id"] for n in body["notifications"])
        if not body["next"]:
            break
        cursor = body["next"]
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == 5


async def test_dedicated_workers_consume_only_their_queues(
        ingress: Api, settings: Any, pool: asyncpg.Pool, broker: Broker) -> None:
    """A SBCT_WORKER_QUEUES=single worker delivers Journeys and leaves campaigns queued; a
    multi worker then delivers the campaign."""
    from sbct_pipeline.delivery import Worker

    app = await ingress.new_app()
    tok = app["api_token"]
    await ingress.template(tok)
    journeys = Worker(pool, broker, settings.with_overrides(worker_queues="single"))
    await journeys.start()
    try:
        status, _ = await ingress.call("POST", MULTI, token=tok,
                                       json=webhook(users=["c1", "c2"]))
        assert status == 200
        status, _ = await ingress.call("POST", SINGLE, token=tok, json=webhook(users=["j1"]))
        assert status == 200
        await eventually(lambda: _count(pool, "SELECT count(*) FROM notifications"
                                        " WHERE user_id = 'j1'"))
        assert await broker.queue_depth("multi") == 1
        assert await _count(pool, "SELECT count(*) FROM notifications"
                            " WHERE user_id LIKE 'c%'") == 0
    finally:
        await journeys.stop()
    campaigns = Worker(pool, broker, settings.with_overrides(worker_queues="multi"))
    await campaigns.start()
    try:
        await eventually(lambda: _count(pool, "SELECT count(*) = 2 FROM notifications"
                                        " WHERE user_id LIKE 'c%'"))
        assert [c.kind for c in campaigns.consumers] == ["multi", "chunks"]
    finally:
        await campaigns.stop()
