"""Broker: RabbitMQ topology, confirmed publishing, and the one consumer wrapper.

Topology (every name starts with ``SBCT_AMQP_PREFIX``, here ``p``), declared idempotently by
every process at start::

    exchange p (direct) --single--> p.single    webhook jobs from `single` (Journeys)
                        --multi---> p.multi     webhook jobs from `multi`, expanded to chunks
                        --chunks--> p.chunks    chunks of a multi job, delivered as one batch
                        --events--> p.events    SENT/READ events for the callback consumer
    exchange p.dlx      --jobs----> p.dead.jobs    poison jobs, with an ``x-reason`` header
                        --events--> p.dead.events  records CleverTap refused for good
    p.delay.<queue>.<seconds>   delay queues: per-queue TTL, dead-lettered back to ``p``
                                with the target routing key (retries without sleeping).

Messages are persistent and every publish waits for the publisher confirm, bounded by
``SBCT_PUBLISH_TIMEOUT_S``. :func:`Consumer` turns a handler's outcome into the broker
decision (ack, delayed retry, dead letter); handlers never ack or nack themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from . import logs, metrics
from .errors import BrokerUnavailable, PermanentFailure, RetryLater, Unavailable
from .settings import Settings

log = logs.get(__name__)

JOB_RETRY_LEVELS = (1, 5, 30)
# Event export retries: exponential (doubling) delay queues, then hourly until
# SBCT_CALLBACK_RETRY_MAX_S (see README, "Retry schedule").
EVENT_RETRY_LEVELS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3600)
_BROKER_ERRORS: tuple[type[BaseException], ...] = (
    aio_pika.exceptions.AMQPError, aiormq.exceptions.AMQPError, ConnectionError, OSError,
    asyncio.TimeoutError, RuntimeError,
)
# How long, and for how many messages, a consumer remembers messages it handled but could
# not ack (the connection dropped): their redeliveries are acked without running again.
ACK_LOST_TTL_S = 3600.0
ACK_LOST_MAX = 100_000


@dataclass(frozen=True, slots=True)
class Names:
    """Every exchange and queue name, derived from the prefix."""

    prefix: str

    @property
    def exchange(self) -> str:
        return self.prefix

    @property
    def dlx(self) -> str:
        return f"{self.prefix}.dlx"

    def queue(self, kind: str) -> str:
        return f"{self.prefix}.{kind}"

    def dead(self, kind: str) -> str:
        return f"{self.prefix}.dead.{kind}"

    def delay(self, kind: str, seconds: int) -> str:
        return f"{self.prefix}.delay.{kind}.{seconds}"

    def all_queues(self) -> list[str]:
        out = [self.queue(k) for k in ("single", "multi", "chunks", "events")]
        out += [self.dead("jobs"), self.dead("events")]
        out += [self.delay(k, s) for k in ("single", "multi", "chunks") for s in JOB_RETRY_LEVELS]
        out += [self.delay("events", s) for s in EVENT_RETRY_LEVELS]
        return out


def retry_levels(kind: str) -> tuple[int, ...]:
    return EVENT_RETRY_LEVELS if kind == "events" else JOB_RETRY_LEVELS


async def declare_topology(channel: AbstractChannel, settings: Settings) -> None:
    """Declare exchanges, queues and bindings; safe to run any number of times."""
    n = Names(settings.amqp_prefix)
    qtype: dict[str, Any] = {"x-queue-type": settings.queue_type}
    if settings.queue_type == "quorum":
        # Quorum queues dead-letter at-most-once by default: a delay queue's expired message
        # could vanish if its target queue had no leader at that moment. At-least-once
        # dead-lettering (RabbitMQ >= 3.10) keeps it until the target confirms; it requires
        # the reject-publish overflow mode. Duplicates it may cause are harmless (the feed's
        # unique key, the outbox's ids).
        qtype |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    ex = await channel.declare_exchange(n.exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    dlx = await channel.declare_exchange(n.dlx, aio_pika.ExchangeType.DIRECT, durable=True)
    for kind, dead_key in (("single", "jobs"), ("multi", "jobs"), ("chunks", "jobs"),
                           ("events", "events")):
        q = await channel.declare_queue(n.queue(kind), durable=True, arguments={
            **qtype, "x-dead-letter-exchange": n.dlx, "x-dead-letter-routing-key": dead_key})
        await q.bind(ex, routing_key=kind)
        for seconds in retry_levels(kind):
            await channel.declare_queue(n.delay(kind, seconds), durable=True, arguments={
                **qtype, "x-message-ttl": seconds * 1000,
                "x-dead-letter-exchange": n.exchange, "x-dead-letter-routing-key": kind})
    for kind in ("jobs", "events"):
        q = await channel.declare_queue(n.dead(kind), durable=True, arguments=qtype)
        await q.bind(dlx, routing_key=kind)


async def delete_topology(channel: AbstractChannel, settings: Settings) -> None:
    """Delete every queue and exchange of this prefix (tests and `reset`)."""
    n = Names(settings.amqp_prefix)
    for name in n.all_queues():
        await channel.queue_delete(name)
    for name in (n.exchange, n.dlx):
        await channel.exchange_delete(name)


class Broker:
    """Connections to RabbitMQ: one for publishing (with confirms), one for consuming.

    Two connections so that a publisher blocked by a broker alarm never stalls the acks of
    the consumers (RabbitMQ blocks whole connections).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names = Names(settings.amqp_prefix)
        self._pub_conn: AbstractRobustConnection | None = None
        self._con_conn: AbstractRobustConnection | None = None
        self._pub_channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}

    async def connect(self, *, consume: bool = False) -> None:
        try:
            async with asyncio.timeout(15):
                self._pub_conn = await aio_pika.connect_robust(
                    self.settings.amqp_url, client_properties={"connection_name": "sbct-pub"},
                    reconnect_interval=self.settings.amqp_reconnect_s)
                self._pub_channel = await self._pub_conn.channel(
                    publisher_confirms=True, on_return_raises=True)
                await declare_topology(self._pub_channel, self.settings)
                for name in (self.names.exchange, self.names.dlx):
                    self._exchanges[name] = await self._pub_channel.get_exchange(name)
                self._exchanges[""] = self._pub_channel.default_exchange
                if consume:
                    self._con_conn = await aio_pika.connect_robust(
                        self.settings.amqp_url, client_properties={"connection_name": "sbct-con"},
                        reconnect_interval=self.settings.amqp_reconnect_s)
        except _BROKER_ERRORS as exc:
            await self.close()
            raise BrokerUnavailable(
                f"cannot reach RabbitMQ at {_public(self.settings.amqp_url)}: {exc!r}") from exc

    async def close(self) -> None:
        for conn in (self._con_conn, self._pub_conn):
            if conn is not None and not conn.is_closed:
                await conn.close()
        self._pub_conn = self._con_conn = None

    @property
    def consume_connection(self) -> AbstractRobustConnection:
        assert self._con_conn is not None, "connect(consume=True) first"
        return self._con_conn

    async def publish(self, routing_key: str, body: bytes, *, exchange: str | None = None,
                      headers: dict[str, Any] | None = None, message_id: str | None = None,
                      expiration: float | None = None, wait_s: float | None = None) -> None:
        """Publish persistently and wait for the confirm; BrokerUnavailable on any failure."""
        ex = self._exchanges.get(self.names.exchange if exchange is None else exchange)
        if ex is None:
            raise BrokerUnavailable("not connected to RabbitMQ")
        msg = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                               headers=headers or {}, message_id=message_id,
                               expiration=expiration, content_type="application/json")
        limit = self.settings.publish_timeout_s if wait_s is None else wait_s
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(limit):
                await ex.publish(msg, routing_key=routing_key)
        except TimeoutError as exc:
            metrics.PUBLISH_FAILURES.labels(reason="timeout").inc()
            raise BrokerUnavailable(f"RabbitMQ did not confirm within {limit}s") from exc
        except _BROKER_ERRORS as exc:
            metrics.PUBLISH_FAILURES.labels(reason=type(exc).__name__).inc()
            raise BrokerUnavailable(f"publish to RabbitMQ failed: {exc!r}") from exc
        metrics.PUBLISH_SECONDS.observe(time.perf_counter() - t0)

    @property
    def is_connected(self) -> bool:
        """Whether every connection this broker opened is up (no I/O: cheap for probes)."""
        conns = [c for c in (self._pub_conn, self._con_conn) if c is not None]
        # ``connected`` is cleared while a robust connection is reconnecting.
        return bool(conns) and all(c.connected.is_set() and not c.is_closed for c in conns)

    async def queue_depth(self, kind: str) -> int:
        """Messages ready in queue ``kind`` (passive declare)."""
        depths = await self.queue_depths([self.names.queue(kind)])
        return depths[self.names.queue(kind)]

    async def queue_depths(self, queues: list[str]) -> dict[str, int]:
        """Messages ready in each of ``queues`` (full names), on one short-lived channel."""
        if self._pub_conn is None:
            raise BrokerUnavailable("not connected to RabbitMQ")
        out: dict[str, int] = {}
        try:
            async with asyncio.timeout(self.settings.publish_timeout_s):
                channel = await self._pub_conn.channel(publisher_confirms=False)
                try:
                    for name in queues:
                        q = await channel.declare_queue(name, passive=True)
                        out[name] = int(q.declaration_result.message_count or 0)
                finally:
                    await channel.close()
        except _BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"queue depth unavailable: {exc!r}") from exc
        return out

    async def dead_letter(self, kind: str, body: bytes, *, reason: str,
                          headers: dict[str, Any] | None = None) -> None:
        """Publish to the dead-letter queue ``p.dead.<kind>`` with the reason."""
        await self.publish(kind, body, exchange=self.names.dlx,
                           headers={**(headers or {}), "x-reason": reason[:1000],
                                    "x-dead-at": int(time.time())})

    async def retry_later(self, kind: str, body: bytes, *, attempt: int,
                          headers: dict[str, Any] | None = None,
                          delay: float | None = None) -> float:
        """Publish to the delay queue fitting ``attempt`` (or ``delay``); returns the delay.

        Without ``delay`` the wait doubles per attempt up to the last level ("equal jitter":
        uniform between half the level and the level). With ``delay`` (a ``Retry-After``)
        the wait is at least ``delay`` (up to the longest level). Each delay queue has a
        fixed TTL equal to its level and dead-letters back to the work queue; a message's
        own expiration is never above its queue's TTL, so a message is never held longer
        than its level by one ahead of it (head-of-line blocking is bounded by the TTL).
        """
        level, expiration = retry_delay(kind, attempt, delay)
        await self.publish(self.names.delay(kind, level), body, exchange="",
                           headers={**(headers or {}), "x-attempts": attempt},
                           expiration=expiration)
        return expiration


def retry_delay(kind: str, attempt: int, delay: float | None = None,
                rand: Callable[[float, float], float] = random.uniform) -> tuple[int, float]:
    """The delay queue level and the message's expiration for a retry (pure)."""
    levels = retry_levels(kind)
    if delay is not None:
        level = next((s for s in levels if s >= delay), levels[-1])
        low = min(max(delay, level / 2), level)
    else:
        level = levels[min(max(attempt, 1), len(levels)) - 1]
        low = level / 2
    return level, rand(low, level)


def _public(url: str) -> str:
    from urllib.parse import urlsplit

    p = urlsplit(url)
    return f"{p.scheme}://{p.hostname}:{p.port or 5672}{p.path}"


def attempts_of(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get("x-attempts", 0)
    return int(value) if isinstance(value, int | float | str) else 0


Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]


class Consumer:
    """Consumes one queue with bounded prefetch and applies the ack policy.

    Outcomes: the handler returns -> ack; :class:`RetryLater` or an unexpected exception ->
    republished to a delay queue (``x-attempts`` + 1), dead-lettered once attempts reach
    ``SBCT_MAX_ATTEMPTS``; :class:`Unavailable` (database or broker down) -> delayed retry
    that does not count as an attempt (an outage must not dead-letter good messages);
    :class:`PermanentFailure` -> dead-lettered with the reason. Only then is the original
    acked, so an effect is never lost between the two.

    When the connection drops between a handler's success and its ack, RabbitMQ redelivers
    the message after the reconnect. The consumer knows the messages it is handling and
    remembers those it handled but could not ack (a digest of body, message id and attempt,
    for ``ACK_LOST_TTL_S``): a redelivery of one of them waits for the first copy's outcome
    and, if that was handled, is acked without running again. Its effects are already
    durable, and for the callback consumer a second run would send the same events to
    CleverTap twice. A crash forgets this (the rare duplicates the contract allows).
    """

    def __init__(self, broker: Broker, kind: str, handler: Handler, *, prefetch: int,
                 dead_kind: str = "jobs") -> None:
        self.broker = broker
        self.kind = kind
        self.handler = handler
        self.prefetch = prefetch
        self.dead_kind = dead_kind
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ack_lost: dict[bytes, float] = {}  # digest -> forget after (monotonic)
        self._running: dict[bytes, asyncio.Future[bool]] = {}  # digest -> handled?

    async def start(self) -> None:
        self._channel = await self.broker.consume_connection.channel()
        await self._channel.set_qos(prefetch_count=self.prefetch)
        # The consumer must come back after RabbitMQ restarts: a robust channel restores
        # only the exchanges, queues and consumers declared on it (``get_queue(ensure=False)``
        # registers nothing, and the process would sit connected and idle for good). So the
        # topology is declared on this channel too (a fresh broker gets it back on
        # reconnect), and the queue taken from it is the registered one.
        await declare_topology(self._channel, self.broker.settings)
        self._queue = await self._channel.declare_queue(self.broker.names.queue(self.kind),
                                                        passive=True)
        self._tag = await self._queue.consume(self._on_message)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.create_task(self._process(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        key = _digest(message)
        if message.redelivered and await self._handled_before(key):
            metrics.REDELIVERIES_SKIPPED.labels(queue=self.kind).inc()
            log.info("consumer.redelivery_skipped", queue=self.kind)
            await self._ack_done(message, key)
            return
        handled = asyncio.get_running_loop().create_future()
        self._running.setdefault(key, handled)
        try:
            await self._handle(message, key)
        finally:
            if self._running.get(key) is handled:
                del self._running[key]
            if not handled.done():
                handled.set_result(False)

    async def _handled_before(self, key: bytes) -> bool:
        """Whether this consumer handled (or is handling, and then did) this message."""
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        return self._ack_lost.pop(key, None) is not None

    async def _handle(self, message: AbstractIncomingMessage, key: bytes) -> None:
        attempt = attempts_of(message) + 1
        try:
            await self.handler(message)
        except PermanentFailure as exc:
            await self._settle(message, key, dead=str(exc))
        except Unavailable as exc:
            log.warning("consumer.dependency_down", queue=self.kind, error=str(exc))
            await self._settle(message, key, retry_attempt=attempt - 1, delay=5)
        except RetryLater as exc:
            counted = attempt if exc.counts_as_attempt else attempt - 1
            if counted >= self.broker.settings.max_attempts:
                await self._settle(message, key, dead=f"gave up after {counted} attempts: {exc}")
            else:
                await self._settle(message, key, retry_attempt=counted, delay=exc.delay)
        except asyncio.CancelledError:
            # Shutdown mid-message: give it back to the queue untouched.
            await _quietly(message.nack(requeue=True))
            raise
        except Exception as exc:
            log.exception("consumer.handler_failed", queue=self.kind, attempt=attempt)
            if attempt >= self.broker.settings.max_attempts:
                await self._settle(message, key, dead=f"failed {attempt} times: {exc!r}")
            else:
                await self._settle(message, key, retry_attempt=attempt)
        else:
            await self._ack_done(message, key)

    async def _ack_done(self, message: AbstractIncomingMessage, key: bytes) -> None:
        """Ack a handled message; if the ack is lost, remember it for its redelivery."""
        running = self._running.get(key)
        if running is not None and not running.done():
            running.set_result(True)
        if await _quietly(message.ack()):
            return
        now = time.monotonic()
        if len(self._ack_lost) >= ACK_LOST_MAX:
            self._ack_lost = {k: t for k, t in self._ack_lost.items() if t > now}
            while len(self._ack_lost) >= ACK_LOST_MAX:  # still full: forget the oldest
                del self._ack_lost[next(iter(self._ack_lost))]
        self._ack_lost[key] = now + ACK_LOST_TTL_S

    async def _settle(self, message: AbstractIncomingMessage, key: bytes, *,
                      dead: str | None = None,
                      retry_attempt: int = 0, delay: float | None = None) -> None:
        headers = dict(message.headers or {})
        try:
            if dead is not None:
                metrics.DEAD_LETTERS.labels(queue=self.kind).inc()
                log.error("consumer.dead_lettered", queue=self.kind, reason=dead)
                await self.broker.dead_letter(
                    self.dead_kind, message.body, reason=dead,
                    headers={**headers, "x-source-queue": self.kind})
            else:
                metrics.RETRIES.labels(queue=self.kind).inc()
                await self.broker.retry_later(self.kind, message.body,
                                              attempt=max(retry_attempt, 1), headers=headers,
                                              delay=delay)
        except BrokerUnavailable:
            # Could not park it elsewhere: leave it on its own queue for another try.
            await _quietly(message.nack(requeue=True))
            return
        # Parked in a delay or dead-letter queue: the redelivery of the original, should
        # this ack be lost, must not run again beside that copy.
        await self._ack_done(message, key)

    async def stop(self, drain_timeout: float) -> None:
        """Stop taking messages, let in-flight ones finish up to ``drain_timeout``."""
        if self._queue is not None and self._tag is not None:
            with contextlib.suppress(*_BROKER_ERRORS):
                await self._queue.cancel(self._tag)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=drain_timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("consumer.drain_timeout", queue=self.kind, cancelled=len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(*_BROKER_ERRORS):
                await self._channel.close()


def _digest(message: AbstractIncomingMessage) -> bytes:
    """Names one message: a retried copy (``x-attempts`` + 1) is another message."""
    h = hashlib.blake2b(message.body, digest_size=16)
    h.update(f"\0{message.message_id}\0{attempts_of(message)}".encode())
    return h.digest()


async def _quietly(aw: Awaitable[Any]) -> bool:
    # An ack on a channel that died is moot: the broker redelivers, and handlers are
    # idempotent. Returns whether it went through.
    try:
        await aw
    except _BROKER_ERRORS as exc:
        log.warning("consumer.settle_failed", error=repr(exc))
        return False
    return True
