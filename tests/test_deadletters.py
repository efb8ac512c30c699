"""Dead letters: listing shows them without removing any; replay moves only what it should."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import orjson

from sbct_pipeline import deadletters
from sbct_pipeline.broker import Broker
from sbct_pipeline.codec import Event, Job
from sbct_pipeline.settings import Settings
from sbct_pipeline.sim import Simulator

from .conftest import Api, eventually


def _events(app_id: str, n: int, start: int = 0) -> list[Event]:
    now = int(time.time())
    return [Event(app_id, i, "SENT", "Camp", 42, now, f"obj-{app_id}-{i}", None)
            for i in range(start, start + n)]


async def _dead_events(broker: Broker, events: list[Event], reason: str) -> None:
    """Dead-letter records the way the exporter does."""
    body = orjson.dumps([[*ev.to_wire(), reason] for ev in events])
    await broker.dead_letter("events", body, reason=reason,
                             headers={"x-format": "events+reason", "x-source-queue": "events"})


async def _depth(broker: Broker, name: str) -> int:
    ch = await broker.consume_connection.channel()
    try:
        q = await ch.declare_queue(name, passive=True)
        return int(q.declaration_result.message_count or 0)
    finally:
        await ch.close()


async def test_list_shows_reason_app_records_age_and_removes_nothing(broker: Broker) -> None:
    """`list` reports each dead letter's reason, app, record count and age; all stay queued."""
    await _dead_events(broker, _events("app_a", 3), "CleverTap code 526: Invalid objectId")
    job = Job(request_id="r1", app_id="app_b", target_id=7, recipients=[], received_at=0.0)
    await broker.dead_letter("jobs", job.encode(), reason="gave up after 5 attempts",
                             headers={"x-source-queue": "single", "x-attempts": 5})
    items = await deadletters.list_dead(broker)
    assert [(d.kind, d.apps, d.records, d.source) for d in items] == [
        ("events", ["app_a"], 3, "events"), ("jobs", ["app_b"], 0, "single")]
    assert "526" in items[0].reason and items[1].reason.startswith("gave up")
    assert all(d.age_s is not None and 0 <= d.age_s < 60 for d in items)
    assert [d.kind for d in await deadletters.list_dead(broker, kind="jobs")] == ["jobs"]
    assert len(await deadletters.list_dead(broker, kind="events", limit=1)) == 1
    assert await _depth(broker, broker.names.dead("events")) == 1
    assert await _depth(broker, broker.names.dead("jobs")) == 1


async def test_replay_one_app_leaves_the_others_dead(
        ingress: Api, exporter: Any, broker: Broker, sim: Simulator) -> None:
    """Replay --app sends that app's records again; other apps' records stay dead-lettered."""
    a = (await ingress.new_app(sim))["app_id"]
    b = (await ingress.new_app(sim))["app_id"]
    await _dead_events(broker, _events(a, 4), "CleverTap code 555: x")
    # A mixed message: only a's part may leave the dead-letter queue.
    await _dead_events(broker, _events(a, 2, start=10) + _events(b, 3), "CleverTap code 555: y")
    await _dead_events(broker, _events(b, 5, start=20), "CleverTap code 555: z")
    result = await deadletters.replay(broker, kind="events", app=a)
    assert (result.replayed_messages, result.replayed_records, result.kept_messages) == (2, 6, 1)
    await eventually(lambda: _unique(sim, 6))
    assert {e["objectId"].split("-")[1] for e in sim.events} == {a}
    left = await deadletters.list_dead(broker, kind="events")
    assert sorted((d.apps, d.records) for d in left) == [([b], 3), ([b], 5)]
    result = await deadletters.replay(broker)
    assert result.replayed_records == 8
    await eventually(lambda: _unique(sim, 14))
    assert await deadletters.list_dead(broker) == []
    assert sim.stats()["duplicates"] == 0


async def _unique(sim: Simulator, n: int) -> bool:
    return len(sim.keys) >= n


async def test_replayed_job_goes_back_to_its_source_queue_with_attempts_reset(
        broker: Broker) -> None:
    """A dead job returns to the queue named by x-source-queue, attempts reset; unknown stays."""
    job = Job(request_id="r2", app_id="app_c", target_id=7, recipients=[], received_at=0.0)
    await broker.dead_letter("jobs", job.encode(), reason="boom",
                             headers={"x-source-queue": "chunks", "x-attempts": 5})
    await broker.dead_letter("jobs", b"{}", reason="no source")
    result = await deadletters.replay(broker, kind="jobs")
    assert (result.replayed_messages, result.kept_messages) == (1, 1)
    assert result.by_queue == {"chunks": 1}
    ch = await broker.consume_connection.channel()
    q = await ch.get_queue(broker.names.queue("chunks"), ensure=False)
    msg = await eventually(lambda: q.get(fail=False, timeout=5))
    assert Job.decode(msg.body).request_id == "r2"
    assert "x-attempts" not in msg.headers and "x-replayed-at" in msg.headers
    await msg.ack()
    await ch.close()
    assert [d.reason for d in await deadletters.list_dead(broker)] == ["no source"]


async def test_replay_of_an_app_with_nothing_dead_keeps_everything(broker: Broker) -> None:
    """Replay for an app that has no dead letters moves nothing and loses nothing."""
    await _dead_events(broker, _events("app_x", 2), "r")
    result = await deadletters.replay(broker, app="app_other")
    assert (result.replayed_messages, result.kept_messages) == (0, 1)
    assert await _depth(broker, broker.names.dead("events")) == 1
    assert await _depth(broker, broker.names.queue("events")) == 0


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SBCT_")}
    env.update({"SBCT_DATABASE_URL": settings.database_url, "SBCT_AMQP_URL": settings.amqp_url,
                "SBCT_AMQP_PREFIX": settings.amqp_prefix})
    return subprocess.run([sys.executable, "-m", "sbct_pipeline.cli", "deadletters", *args],
                          env=env, capture_output=True, text=True, timeout=60, check=False)


async def test_cli_list_and_replay(settings: Settings, broker: Broker) -> None:
    """`sbct-pipeline deadletters list|replay` print the dead letters and what was replayed."""
    await _dead_events(broker, _events("app_cli", 3), "CleverTap code 526: Invalid objectId")
    out = _cli(settings, "list")
    assert out.returncode == 0, out.stderr
    assert "app_cli" in out.stdout and "526" in out.stdout and "REASON" in out.stdout
    out = _cli(settings, "list", "--json", "--kind", "events")
    assert orjson.loads(out.stdout.splitlines()[0])["records"] == 3
    bad = _cli(settings, "list", "--limit", "0")
    assert bad.returncode == 2 and "--limit" in bad.stderr
    bad = _cli(settings, "replay", "--app", "")
    assert bad.returncode == 2 and "--app" in bad.stderr and "empty" in bad.stderr
    out = _cli(settings, "replay", "--app", "app_other")
    assert out.returncode == 0 and orjson.loads(out.stdout)["kept_messages"] == 1
    assert "nothing replayed" in out.stderr and "app_other" in out.stderr
    out = _cli(settings, "replay", "--app", "app_cli")
    assert out.returncode == 0, out.stderr
    assert orjson.loads(out.stdout)["replayed_records"] == 3
    assert await _depth(broker, broker.names.queue("events")) == 1
    assert await _depth(broker, broker.names.dead("events")) == 0
