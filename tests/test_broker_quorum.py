"""Quorum queues (SBCT_QUEUE_TYPE=quorum) on the local RabbitMQ: topology, retries, delivery."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiormq
import asyncpg
import pytest
from aio_pika.abc import AbstractIncomingMessage

from sbct_pipeline.broker import Broker, Consumer, attempts_of, retry_levels
from sbct_pipeline.errors import RetryLater
from sbct_pipeline.settings import Settings

from .conftest import AMQP, Api, eventually, webhook


@pytest.fixture
async def settings(settings: Settings) -> AsyncIterator[Settings]:
    """This module's tests run with quorum queues (same per-test prefix and database)."""
    yield settings.with_overrides(queue_type="quorum", max_attempts=2)


def _expected_arguments(broker: Broker) -> dict[str, dict[str, Any]]:
    """The arguments each queue must carry with quorum queues (at-least-once dead letters)."""
    n = broker.names
    quorum = {"x-queue-type": "quorum", "x-dead-letter-strategy": "at-least-once",
              "x-overflow": "reject-publish"}
    out: dict[str, dict[str, Any]] = {}
    for kind, dead_key in (("single", "jobs"), ("multi", "jobs"), ("chunks", "jobs"),
                           ("events", "events")):
        out[n.queue(kind)] = {**quorum, "x-dead-letter-exchange": n.dlx,
                              "x-dead-letter-routing-key": dead_key}
        for seconds in retry_levels(kind):
            out[n.delay(kind, seconds)] = {**quorum, "x-message-ttl": seconds * 1000,
                                           "x-dead-letter-exchange": n.exchange,
                                           "x-dead-letter-routing-key": kind}
    for kind in ("jobs", "events"):
        out[n.dead(kind)] = quorum
    return out


async def test_quorum_setting_declares_quorum_queues(broker: Broker) -> None:
    """Every queue is a quorum queue: the same arguments as classic are refused by the broker."""
    expected = _expected_arguments(broker)
    assert set(expected) == set(broker.names.all_queues())
    conn = await aio_pika.connect(AMQP)
    try:
        for name, arguments in expected.items():
            ch = await conn.channel()
            # Equivalent arguments: accepted (this pins what declare_topology sets).
            await ch.declare_queue(name, durable=True, arguments=arguments)
            with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed,
                               match="inequivalent arg 'x-queue-type'"):
                await ch.declare_queue(name, durable=True,
                                       arguments={**arguments, "x-queue-type": "classic"})
    finally:
        await conn.close()


async def test_quorum_delay_queue_returns_a_retried_message_then_dead_letters(
        broker: Broker) -> None:
    """A retried message comes back through a quorum delay queue; past the limit it is dead."""
    seen: list[int] = []

    async def always_retry(message: AbstractIncomingMessage) -> None:
        seen.append(attempts_of(message))
        raise RetryLater("try again", delay=1)

    consumer = Consumer(broker, "single", always_retry, prefetch=1)
    await consumer.start()
    try:
        await broker.publish("single", b'{"probe": 1}', message_id="probe-1")

        async def dead() -> Any:
            ch = await broker.consume_connection.channel()
            try:
                q = await ch.get_queue(broker.names.dead("jobs"), ensure=False)
                msg = await q.get(fail=False, timeout=5)
                if msg is not None:
                    await msg.ack()
                return msg
            finally:
                await ch.close()

        msg = await eventually(dead, timeout=20, interval=0.2)
    finally:
        await consumer.stop(5)
    # First delivery (no attempts yet), then the one back from the 1 s delay queue.
    assert seen == [0, 1]
    assert msg.body == b'{"probe": 1}'
    assert "gave up after 2 attempts" in str(msg.headers["x-reason"])
    assert msg.headers["x-source-queue"] == "single"


async def test_quorum_webhooks_reach_the_feed(ingress: Api, worker: Any,
                                              pool: asyncpg.Pool) -> None:
    """Single and multi webhooks are delivered end to end on quorum queues."""
    app = await ingress.new_app()
    await ingress.template(app["api_token"])
    for path, users in (("single", ["q-1"]), ("multi", [f"q-m{i}" for i in range(50)])):
        status, body = await ingress.call("POST", f"/clevertap/notifications/{path}",
                                          token=app["api_token"], json=webhook(users=users))
        assert status == 200 and body["accepted"] == len(users), body

    async def delivered() -> bool:
        return int(await pool.fetchval("SELECT count(*) FROM notifications")) == 51

    await eventually(delivered)
