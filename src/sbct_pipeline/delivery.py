"""Delivery: the worker's consumers, from webhook jobs to feed rows and SENT events.

Three queues, three consumers, so a running million-user campaign never delays a Journey:

- ``single``: a Journey webhook's job (one or few users), delivered directly;
- ``multi``: a Campaign webhook's job, split into chunk messages of ``SBCT_CHUNK_SIZE`` users
  (published with confirms before the job is acked; a redelivered job republishes the same
  chunks, which the feed's unique key makes harmless);
- ``chunks``: one chunk delivered as one batch: render every user, one multi-row insert with
  dedupe, one outbox row for the chunk's SENT events, published after commit.

``SBCT_WORKER_QUEUES`` picks the consumers of a process: ``single``, ``multi`` (multi and
chunks) or both (the default), so Journeys can have worker processes of their own.

Rendering failures (a missing variable, a template deleted since the webhook) are recorded
per user in ``delivery_failures`` and counted as ``failed``; they never fail the batch.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from aiolimiter import AsyncLimiter

from . import logs, metrics, storage
from .broker import Broker, Consumer
from .codec import Job
from .outbox import Outbox
from .settings import Settings
from .tasks import Periodic
from .templates import CompiledTemplate, MissingVariables, compile_template

log = logs.get(__name__)

TEMPLATE_TTL_S = 5.0


class TemplateCache:
    """Compiled templates per (app, key), reloaded after a few seconds."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._cache: dict[tuple[str, str], tuple[CompiledTemplate | None, float]] = {}

    async def get_many(self, app_id: str,
                       keys: set[str]) -> dict[str, CompiledTemplate | None]:
        now = time.monotonic()
        out: dict[str, CompiledTemplate | None] = {}
        stale = []
        for k in keys:
            hit = self._cache.get((app_id, k))
            if hit is not None and hit[1] > now:
                out[k] = hit[0]
            else:
                stale.append(k)
        if stale:
            rows = {r["key"]: r for r in await storage.get_templates(self.pool, app_id, stale)}
            for k in stale:
                row = rows.get(k)
                tpl = (compile_template(k, row["title"], row["body"], row["data"])
                       if row is not None else None)
                self._cache[(app_id, k)] = (tpl, now + TEMPLATE_TTL_S)
                out[k] = tpl
        return out


class Deliverer:
    """Renders and stores batches of recipients; shared by the single and chunk consumers."""

    def __init__(self, pool: asyncpg.Pool, broker: Broker, outbox: Outbox,
                 settings: Settings) -> None:
        self.pool = pool
        self.broker = broker
        self.outbox = outbox
        self.settings = settings
        self.templates = TemplateCache(pool)
        self._limiters: dict[str, AsyncLimiter] = {}

    async def _throttle(self, app_id: str, n: int) -> None:
        rate = self.settings.delivery_rate_limit
        if rate <= 0:
            return
        limiter = self._limiters.get(app_id)
        if limiter is None:
            limiter = self._limiters[app_id] = AsyncLimiter(rate, 1.0)
        step = max(1, int(rate))
        while n > 0:
            take = min(n, step)
            await limiter.acquire(take)
            n -= take

    async def deliver(self, job: Job, queue: str) -> dict[str, int]:
        """Deliver one job or chunk; idempotent under redelivery."""
        t0 = time.perf_counter()
        seen: set[tuple[str, str]] = set()
        recipients = []
        for r in job.recipients:
            k = (r.user_id, r.template_key)
            if k not in seen:
                seen.add(k)
                recipients.append(r)
        await self._throttle(job.app_id, len(recipients))
        templates = await self.templates.get_many(job.app_id,
                                                  {r.template_key for r in recipients})
        rendered: list[storage.Rendered] = []
        failures: list[tuple[str, str, str]] = []
        for r in recipients:
            tpl = templates.get(r.template_key)
            if tpl is None:
                failures.append((r.user_id, r.template_key,
                                 f"template {r.template_key!r} no longer exists"))
                continue
            try:
                title, body, data = tpl.render(r.variables)
            except MissingVariables as exc:
                failures.append((r.user_id, r.template_key, str(exc)))
                continue
            rendered.append(storage.Rendered(r.user_id, r.template_key, r.event_name,
                                             r.object_id, r.identity, title, body, data))
        enabled = await self.outbox.callback_enabled(job.app_id)
        async with storage.guard("deliver"), self.pool.acquire() as conn:
            done = await storage.deliver_batch(
                conn, app_id=job.app_id, request_id=job.request_id, target_id=job.target_id,
                rendered=rendered, failures=failures,
                dedupe_window_s=self.settings.dedupe_window_s, events=enabled)
        await self.outbox.publish(done.outbox_id, done.payload, job.request_id)
        if enabled and done.no_identifier:
            metrics.EVENTS_NO_IDENTIFIER.inc(done.no_identifier)
            log.warning("outbox.no_identifier", app_id=job.app_id, status="SENT",
                        notifications=done.no_identifier)
        await self.on_delivered(job, done)
        counts = {"delivered": done.inserted, "skipped": len(rendered) - done.inserted,
                  "failed": len(failures)}
        for outcome, n in counts.items():
            if n:
                metrics.DELIVERIES.labels(outcome=outcome).inc(n)
        elapsed = time.perf_counter() - t0
        metrics.BATCH_SECONDS.labels(queue=queue).observe(elapsed)
        log.info("delivery.batch_done", queue=queue, target_id=job.target_id, chunk=job.chunk,
                 users=len(job.recipients), ms=round(elapsed * 1000, 2), exact=done.exact,
                 **counts)
        if failures:
            log.warning("delivery.failures", target_id=job.target_id,
                        sample=[f"{u}: {why}" for u, _, why in failures[:3]])
        return counts

    async def on_delivered(self, job: Job, done: storage.Delivered) -> None:
        """Hook for what follows a committed batch (real-time feed streams)."""


class Worker:
    """The worker process's consumers; ``start``/``stop`` bracket their life."""

    def __init__(self, pool: asyncpg.Pool, broker: Broker, settings: Settings) -> None:
        self.settings = settings
        self.broker = broker
        self.outbox = Outbox(pool, broker, settings)
        self.deliverer = Deliverer(pool, broker, self.outbox, settings)
        kinds = settings.worker_queue_kinds
        self.consumers = []
        if "single" in kinds:
            self.consumers.append(Consumer(broker, "single", self._on_single,
                                           prefetch=max(8, settings.worker_prefetch)))
        if "multi" in kinds:
            self.consumers += [
                Consumer(broker, "multi", self._on_multi, prefetch=1),
                Consumer(broker, "chunks", self._on_chunk, prefetch=settings.worker_prefetch),
            ]
        self._sweeper = Periodic("outbox-sweeper", self.outbox.sweep, settings.outbox_sweep_s)

    async def start(self) -> None:
        for c in self.consumers:
            await c.start()
        self._sweeper.start()
        log.info("worker.started", prefix=self.settings.amqp_prefix,
                 queues=[c.kind for c in self.consumers])

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop(self.settings.drain_timeout_s) for c in self.consumers))
        await self._sweeper.stop()
        log.info("worker.stopped")

    @staticmethod
    def _bind(message: AbstractIncomingMessage, job: Job) -> None:
        logs.bind(clear=True, request_id=job.request_id, app_id=job.app_id,
                  message_id=message.message_id)

    async def _on_single(self, message: AbstractIncomingMessage) -> None:
        job = Job.decode(message.body)
        self._bind(message, job)
        await self.deliverer.deliver(job, "single")

    async def _on_chunk(self, message: AbstractIncomingMessage) -> None:
        job = Job.decode(message.body)
        self._bind(message, job)
        await self.deliverer.deliver(job, "chunks")

    async def _on_multi(self, message: AbstractIncomingMessage) -> None:
        # Split without building a Recipient per user: a 10,000-profile job is sliced as raw
        # wire lists, so expansion costs one JSON decode and one encode per chunk.
        head, chunks = Job.split(message.body, self.settings.chunk_size)
        logs.bind(clear=True, request_id=head.request_id, app_id=head.app_id,
                  message_id=message.message_id)
        headers: dict[str, Any] = {"request_id": head.request_id, "app_id": head.app_id}
        await asyncio.gather(*(self.broker.publish(
            "chunks", body, headers=headers, message_id=f"{head.request_id}:{i}")
            for i, body in enumerate(chunks)))
        log.info("delivery.expanded", target_id=head.target_id, users=head.users,
                 chunks=len(chunks))
