"""The callback consumer against the CleverTap simulator: batching, partial answers, parking."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from sbct_pipeline import metrics
from sbct_pipeline.broker import Broker, retry_delay
from sbct_pipeline.callbacks import Exporter, interpret, retry_after_seconds
from sbct_pipeline.codec import Event, encode_events
from sbct_pipeline.settings import Settings
from sbct_pipeline.sim import Simulator, create_sim_app

from .conftest import Api, eventually, free_port, serve


def _rec(i: int) -> dict[str, Any]:
    return Event("a", i, "SENT", "E", 7, int(time.time()), f"o{i}", None).record()


def test_interpret_success_reads_unprocessed_even_when_status_says_success() -> None:
    """HTTP 200 + status success with failed records: permanent -> dead, others -> retry."""
    recs = [_rec(i) for i in range(4)]
    body = {"status": "success", "processed": 1, "unprocessed": [
        {"status": "fail", "code": 526, "error": "Invalid objectId",
         "record": orjson.dumps(recs[1]).decode()},
        {"status": "fail", "code": 555, "error": "Misc", "record": recs[2]},
        {"status": "fail", "code": 509, "error": "x", "record": orjson.dumps(recs[3]).decode()},
    ]}
    out = interpret(200, body, recs, None)
    assert out.accepted == [0]
    assert [i for i, _ in out.dead] == [1, 3] and "526" in out.dead[0][1]
    assert out.retry == [2]


def test_interpret_http_failures() -> None:
    """429 retries after Retry-After, 5xx and network errors retry, 401 parks, 400 dead."""
    recs = [_rec(0), _rec(1)]
    assert interpret(429, None, recs, 3.0).retry_delay == 3.0
    assert interpret(503, None, recs, None).retry == [0, 1]
    assert interpret(0, "ConnectionError", recs, None).retry == [0, 1]
    assert interpret(401, {"status": "fail"}, recs, None).park_reason is not None
    assert [i for i, _ in interpret(400, {"error": "bad"}, recs, None).dead] == [0, 1]
    # No upload API at the endpoint (a wrong api_endpoint): parked like refused credentials.
    assert "api_endpoint" in (interpret(404, "Not Found", recs, None).park_reason or "")


def test_retry_after_reads_seconds_and_http_dates() -> None:
    """Retry-After is delta-seconds or an HTTP-date (RFC 9110); junk means "not given"."""
    now = 1_764_806_400.0  # Thu, 04 Dec 2025 00:00:00 GMT
    assert retry_after_seconds("7") == 7.0 and retry_after_seconds("-3") == 0.0
    assert retry_after_seconds("Thu, 04 Dec 2025 00:00:30 GMT", now=now) == 30.0
    assert retry_after_seconds("Wed, 03 Dec 2025 23:00:00 GMT", now=now) == 0.0
    assert [retry_after_seconds(v) for v in (None, "", "soon", "nan")] == [None] * 4


async def _publish_events(broker: Broker, app_id: str, n: int, per_message: int) -> None:
    now = int(time.time())
    for start in range(0, n, per_message):
        evs = [Event(app_id, i, "SENT", "Camp", 42, now, f"obj-{i}", None)
               for i in range(start, min(n, start + per_message))]
        await broker.publish("events", encode_events(evs))


async def test_events_are_batched_to_clevertap(
        ingress: Api, exporter: Any, broker: Broker, sim: Simulator) -> None:
    """2,500 events in 5 messages reach the simulator in batches of at most 1,000, once each."""
    app = await ingress.new_app(sim)
    await _publish_events(broker, app["app_id"], 2500, 500)
    await eventually(lambda: _accepted(sim, 2500))
    assert sim.stats()["duplicates"] == 0
    assert sim.answers[200] <= 5
    assert sim.events[0]["evtData"] == {"status": "SENT", "target_id": 42}
    assert sim.events[0]["type"] == "event" and sim.events[0]["evtName"] == "Camp"


async def test_an_outbox_row_published_twice_is_exported_once(
        ingress: Api, exporter: Any, broker: Broker, sim: Simulator) -> None:
    """The sweeper's second publish of an exported outbox row is acked, not sent again.

    It happens when the row could not be deleted after its first publish (the confirm lost
    with a RabbitMQ restart, PostgreSQL down, the worker killed): make reliability saw 500 to
    1,000 duplicate SENT events per such fault before.
    """
    app = await ingress.new_app(sim)
    now = int(time.time())
    payload = encode_events([Event(app["app_id"], i, "SENT", "Camp", 42, now, f"obj-{i}", None)
                             for i in range(50)])
    skipped = metrics.REGISTRY.get_sample_value("sbct_outbox_duplicates_skipped_total") or 0
    await broker.publish("events", payload, message_id="outbox-7")
    await eventually(lambda: _accepted(sim, 50))
    await broker.publish("events", payload, message_id="outbox-7")  # the sweeper's copy
    await eventually(lambda: _true(metrics.REGISTRY.get_sample_value(
        "sbct_outbox_duplicates_skipped_total") == skipped + 1))
    # Another outbox row is exported even with the same content: the id decides.
    await broker.publish("events", payload, message_id="outbox-8")
    await eventually(lambda: _true(len(sim.events) >= 100))
    await asyncio.sleep(0.5)
    assert len(sim.events) == 100, sim.stats()
    assert await broker.queue_depth("events") == 0


async def _true(value: bool) -> bool:
    return value


async def test_one_process_keeps_to_15_requests_in_flight_per_account(
        settings: Settings, pool: asyncpg.Pool, ingress: Api, broker: Broker,
        sim: Simulator) -> None:
    """40 batches ready at once against slow answers: 15 in flight, never a 429."""
    app = await ingress.new_app(sim)
    sim.faults.update({"slow_ms": 300, "slow_rate": 1.0})
    b = Broker(settings)
    await b.connect(consume=True)
    e = Exporter(pool, b, settings.with_overrides(callback_batch_size=50))
    await e.start()
    try:
        await _publish_events(broker, app["app_id"], 2000, 50)
        await eventually(lambda: _accepted(sim, 2000), timeout=60)
    finally:
        await e.stop()
        await b.close()
    assert sim.peak_in_flight == 15 and sim.answers[429] == 0
    assert sim.answers[200] == 40 and sim.stats()["duplicates"] == 0


async def _accepted(sim: Simulator, n: int) -> bool:
    return len(sim.keys) >= n


async def test_transient_failures_are_retried_until_accepted(
        ingress: Api, exporter: Any, broker: Broker, sim: Simulator) -> None:
    """With 50% of requests failing (429/500), every event still arrives."""
    app = await ingress.new_app(sim)
    sim.faults.update({"fail_429": 0.25, "fail_500": 0.25})
    await _publish_events(broker, app["app_id"], 300, 20)
    await eventually(lambda: _accepted(sim, 300), timeout=60)
    assert sim.answers[429] + sim.answers[500] > 0


async def test_permanent_record_errors_are_dead_lettered(
        ingress: Api, exporter: Any, broker: Broker, sim: Simulator) -> None:
    """Records CleverTap refuses for good go to the dead-letter queue with the reason."""
    app = await ingress.new_app(sim)
    sim.faults.update({"reject_rate": 1.0, "reject_code": 526})
    await _publish_events(broker, app["app_id"], 3, 3)
    ch = await broker.consume_connection.channel()
    q = await ch.get_queue(broker.names.dead("events"), ensure=False)
    msg = await eventually(lambda: q.get(fail=False, timeout=5))
    assert "526" in msg.headers["x-reason"]
    assert len(orjson.loads(msg.body)) == 3
    await msg.ack()
    await ch.close()


async def test_bad_credentials_park_events_until_settings_change(
        ingress: Api, exporter: Any, broker: Broker, sim: Simulator, pool: asyncpg.Pool) -> None:
    """A 401 parks the app's events; a new integration setting releases them on their own."""
    app = await ingress.new_app(sim)
    path = f"/v1/apps/{app['app_id']}/integrations/clevertap"
    good = {"event_callback": True, "project_id": sim.account_id, "passcode": sim.passcode,
            "api_endpoint": sim.url}  # type: ignore[attr-defined]
    status, _ = await ingress.call("PUT", path, admin=True, json={**good, "passcode": "wrong"})
    assert status == 200
    exporter.integrations.invalidate(app["app_id"])
    await _publish_events(broker, app["app_id"], 10, 5)
    await eventually(lambda: pool.fetchval("SELECT count(*) = 2 FROM parked_events"))
    assert sim.events == []
    status, _ = await ingress.call("PUT", path, admin=True, json=good)
    assert status == 200
    exporter.integrations.invalidate(app["app_id"])
    await eventually(lambda: _accepted(sim, 10), timeout=30)
    assert await pool.fetchval("SELECT count(*) FROM parked_events") == 0


async def test_callback_off_sends_nothing(
        ingress: Api, exporter: Any, broker: Broker, sim: Simulator) -> None:
    """With the event callback off, an app's events are consumed and none reach CleverTap."""
    off = await ingress.new_app(sim, callback=False)
    on = await ingress.new_app(sim)
    await _publish_events(broker, off["app_id"], 5, 5)
    # Published after: once these arrived, the first message was consumed too (one consumer).
    now = int(time.time())
    await broker.publish("events", encode_events(
        [Event(on["app_id"], 99, "SENT", "On", 1, now, "obj-on", None)]))
    await eventually(lambda: _accepted(sim, 1))
    assert [e["evtName"] for e in sim.events] == ["On"]
    assert await broker.queue_depth("events") == 0


def test_interpret_cannot_lose_records_it_cannot_identify() -> None:
    """Unprocessed entries naming no record of ours, or a short `processed`, mean resend."""
    recs = [_rec(i) for i in range(3)]
    odd = {"status": "success", "processed": 2,
           "unprocessed": [{"code": 555, "error": "x", "record": "not json"}]}
    assert interpret(200, odd, recs, None).retry == [0, 1, 2]
    noise = {"status": "success", "processed": 3,
             "unprocessed": [{"code": 555, "error": "x", "record": {"objectId": "other"}}]}
    assert interpret(200, noise, recs, None).accepted == [0, 1, 2]
    short = {"status": "success", "processed": 1, "unprocessed": []}
    assert interpret(200, short, recs, None).retry == [0, 1, 2]
    assert interpret(200, "<html>", recs, None).retry == [0, 1, 2]
    assert interpret(200, {"status": "success", "processed": 3}, recs, None).accepted == [0, 1, 2]


def test_interpret_odd_record_codes_are_transient_not_a_crash() -> None:
    """A code that is not ASCII digits ('\u00b2' passes str.isdigit, not int) means retry."""
    recs = [_rec(0), _rec(1)]
    body = {"status": "success", "processed": 0, "unprocessed": [
        {"code": "\u00b2", "error": "x", "record": recs[0]},
        {"code": "\u0665\u0660\u0669", "error": "x", "record": recs[1]},  # Arabic-Indic 509
    ]}
    assert interpret(200, body, recs, None).retry == [0, 1]


def test_retry_schedule_doubles_with_jitter_and_honours_retry_after() -> None:
    """Delays double per attempt (equal jitter) up to hourly; Retry-After is a floor."""
    low = [retry_delay("events", a, rand=lambda lo, hi: lo)[1] for a in range(1, 16)]
    high = [retry_delay("events", a, rand=lambda lo, hi: hi)[1] for a in range(1, 16)]
    assert high[:13] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3600]
    assert high[13:] == [3600, 3600] and low[0] == 0.5 and low[12] == 1800
    # Retry-After 3 s: the 4 s queue, never earlier than 3 s.
    assert retry_delay("events", 1, 3.0, rand=lambda lo, hi: lo) == (4, 3.0)
    assert retry_delay("events", 9, 1.0, rand=lambda lo, hi: hi) == (1, 1)
    # Past the longest level: the longest level.
    assert retry_delay("events", 1, 99_999.0, rand=lambda lo, hi: lo) == (3600, 3600)
    # About 24 h of retries take ~34 attempts: 4095 s of doubling, then hourly.
    total, attempt = 0.0, 0
    while total < 86_400:
        attempt += 1
        total += retry_delay("events", attempt)[1]
    assert 30 <= attempt <= 50


async def test_settings_changed_while_a_refused_request_was_in_flight_release_it(
        ingress: Api, exporter: Any, broker: Broker, sim: Simulator, pool: asyncpg.Pool) -> None:
    """A 401 that arrives after the settings were already fixed does not park events forever."""
    app = await ingress.new_app(sim)
    path = f"/v1/apps/{app['app_id']}/integrations/clevertap"
    good = {"event_callback": True, "project_id": sim.account_id, "passcode": sim.passcode,
            "api_endpoint": sim.url}  # type: ignore[attr-defined]
    await ingress.call("PUT", path, admin=True, json={**good, "passcode": "wrong"})
    exporter.integrations.invalidate(app["app_id"])
    sim.faults.update({"slow_ms": 1500, "slow_rate": 1.0})
    await _publish_events(broker, app["app_id"], 10, 10)
    await eventually(lambda: _in_flight(sim))
    status, _ = await ingress.call("PUT", path, admin=True, json=good)  # fixed meanwhile
    assert status == 200
    await eventually(lambda: _answered(sim, 401))
    sim.faults.update({"slow_ms": 0})
    await eventually(lambda: _accepted(sim, 10), timeout=30)
    assert await pool.fetchval("SELECT count(*) FROM parked_events") == 0


async def _in_flight(sim: Simulator) -> bool:
    return sim.in_flight > 0


async def _answered(sim: Simulator, status: int) -> bool:
    return sim.answers[status] > 0


async def test_a_base_url_with_a_path_works_and_a_wrong_one_parks_until_fixed(
        ingress: Api, exporter: Any, broker: Broker, sim: Simulator, pool: asyncpg.Pool) -> None:
    """Any http(s) base URL works (here with a path, as behind a proxy); one with no upload
    API (404) parks the app's events, and correcting api_endpoint releases them."""
    outer = web.Application()
    outer.add_subapp("/clevertap/", create_sim_app(sim))
    port = free_port()
    runner = await serve(outer, port)
    try:
        app = await ingress.new_app(sim)
        path = f"/v1/apps/{app['app_id']}/integrations/clevertap"
        settings = {"event_callback": True, "project_id": sim.account_id,
                    "passcode": sim.passcode}
        status, _ = await ingress.call("PUT", path, admin=True, json={
            **settings, "api_endpoint": f"http://127.0.0.1:{port}/wrong-path/"})
        assert status == 200
        exporter.integrations.invalidate(app["app_id"])
        await _publish_events(broker, app["app_id"], 10, 5)
        await eventually(lambda: pool.fetchval("SELECT count(*) = 2 FROM parked_events"))
        reason = await pool.fetchval("SELECT reason FROM parked_events LIMIT 1")
        assert "404" in reason and "api_endpoint" in reason and sim.events == []
        status, body = await ingress.call("PUT", path, admin=True, json={
            **settings, "api_endpoint": f"http://127.0.0.1:{port}/clevertap/"})
        assert status == 200 and body["api_endpoint"] == f"http://127.0.0.1:{port}/clevertap"
        await eventually(lambda: _accepted(sim, 10), timeout=30)
        assert await pool.fetchval("SELECT count(*) FROM parked_events") == 0
        assert sim.stats()["duplicates"] == 0
    finally:
        await runner.cleanup()
