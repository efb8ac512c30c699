"""A lost RabbitMQ connection: publishing and consuming come back on their own.

The broker is reached through a TCP proxy in the test, so the connection can be cut without
touching the shared RabbitMQ. Regression: consumers took their queue with
``get_queue(ensure=False)``, which a robust channel does not restore, so after a broker
restart the workers stayed connected and idle for good (found by
``tests/reliability/test_broker_outage.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from aio_pika.abc import AbstractIncomingMessage

from sbct_pipeline import metrics
from sbct_pipeline.broker import Broker, Consumer
from sbct_pipeline.errors import BrokerUnavailable
from sbct_pipeline.settings import Settings

from .conftest import AMQP, eventually, free_port


class CuttableProxy:
    """Forwards TCP connections to the broker; ``cut()`` drops every one of them."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.writers: set[asyncio.StreamWriter] = set()
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self.writers -= {writer, up_writer}

    def cut(self) -> None:
        for w in list(self.writers):
            w.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def proxy() -> AsyncIterator[CuttableProxy]:
    u = urlsplit(AMQP)
    p = CuttableProxy((u.hostname or "127.0.0.1", u.port or 5672))
    await p.start()
    yield p
    await p.close()


async def test_consumer_and_publisher_resume_after_connection_loss(
        settings: Settings, proxy: CuttableProxy) -> None:
    """After the connections drop, a message published again is consumed by the same consumer."""
    u = urlsplit(AMQP)
    via_proxy = settings.with_overrides(
        amqp_url=f"amqp://{u.username}:{u.password}@127.0.0.1:{proxy.port}/",
        amqp_reconnect_s=0.2)
    broker = Broker(via_proxy)
    await broker.connect(consume=True)
    got: list[bytes] = []

    async def handler(message: AbstractIncomingMessage) -> None:
        got.append(message.body)

    consumer = Consumer(broker, "single", handler, prefetch=4)
    await consumer.start()
    try:
        await broker.publish("single", b"before")
        await eventually(lambda: _true(got == [b"before"]), timeout=10)
        connections = proxy.accepted

        proxy.cut()
        await eventually(lambda: _true(proxy.accepted >= connections + 2), timeout=10)
        await eventually(lambda: _true(broker.is_connected), timeout=10)

        async def publish_after() -> bool:
            try:
                await broker.publish("single", b"after")
            except BrokerUnavailable:
                return False  # the channel is still being restored
            return True

        await eventually(publish_after, timeout=10, interval=0.2)
        # Without the restored consumer the message stays in the queue for good.
        await eventually(lambda: _true(b"after" in got), timeout=10)
        # "before" may run twice: an ack written just before the cut can be lost in transit,
        # which the client cannot know (handlers are idempotent for this reason).
        assert got.count(b"after") == 1 and 1 <= got.count(b"before") <= 2, got
    finally:
        await consumer.stop(1)
        await broker.close()


@pytest.mark.parametrize("handler_ends", ["before_reconnect", "after_redelivery"])
async def test_redelivery_of_a_handled_message_whose_ack_was_lost_is_not_run_again(
        settings: Settings, proxy: CuttableProxy, handler_ends: str) -> None:
    """Handled, then the connection drops before the ack: the redelivery is acked, not rerun.

    This is what sent the same events to CleverTap twice after a RabbitMQ restart (the
    callback consumer ran the redelivered message again). The handler ends either while the
    connection is down (the redelivery finds it remembered) or only after the redelivery
    has arrived (the redelivery waits for the first run's outcome).
    """
    u = urlsplit(AMQP)
    # 1 s between reconnect attempts: long enough to see the connection down on a busy
    # machine (at 0.2 s the window was missed once).
    via_proxy = settings.with_overrides(
        amqp_url=f"amqp://{u.username}:{u.password}@127.0.0.1:{proxy.port}/",
        amqp_reconnect_s=1.0)
    broker = Broker(via_proxy)
    await broker.connect(consume=True)
    runs: list[tuple[bytes, bool]] = []
    release = asyncio.Event()

    async def handler(message: AbstractIncomingMessage) -> None:
        runs.append((message.body, message.redelivered))
        if message.body == b"slow":
            await release.wait()

    consumer = Consumer(broker, "single", handler, prefetch=4)
    await consumer.start()
    skipped_before = _skipped()
    try:
        await broker.publish("single", b"slow", message_id="m-1")
        await eventually(lambda: _true(len(runs) == 1), timeout=10)
        proxy.cut()  # the handler is still running: its ack will find the channel gone
        await eventually(lambda: _true(not broker.is_connected), timeout=10)
        if handler_ends == "before_reconnect":
            release.set()
        await eventually(lambda: _true(broker.is_connected), timeout=10)
        if handler_ends == "after_redelivery":
            await asyncio.sleep(1)  # the redelivery is in, waiting for the first run
            assert len(runs) == 1, runs
            release.set()

        async def publish_after() -> bool:
            try:
                await broker.publish("single", b"next", message_id="m-2")
            except BrokerUnavailable:
                return False
            return True

        await eventually(publish_after, timeout=10, interval=0.2)
        await eventually(lambda: _true((b"next", False) in runs), timeout=10)
        await asyncio.sleep(0.5)  # the redelivery of "slow" arrived before "next"
        assert runs == [(b"slow", False), (b"next", False)], runs
        assert _skipped() == skipped_before + 1  # it was redelivered, and acked unrun
        assert await broker.queue_depth("single") == 0
    finally:
        release.set()
        await consumer.stop(1)
        await broker.close()


def _skipped() -> float:
    return metrics.REGISTRY.get_sample_value("sbct_redeliveries_skipped_total",
                                             {"queue": "single"}) or 0.0


async def _true(value: bool) -> bool:
    return value
