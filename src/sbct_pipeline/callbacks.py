"""Callbacks: the consumer that exports SENT/READ events to CleverTap's Upload Events API.

Records, not messages, are the unit (CONTRACT section 7). Each broker message (a chunk's or
a read's events) becomes a :class:`Pending` that tracks its records; records are buffered
per app and posted in batches of at most ``SBCT_CALLBACK_BATCH_SIZE`` (1,000) when a batch is
full, when the linger expires, or when every prefetched message is waiting (nothing more can
arrive). At most ``SBCT_CALLBACK_CONCURRENCY`` (15) requests are in flight per CleverTap
account. Each record ends in exactly one of:

- accepted (in ``processed``, or absent from ``unprocessed``);
- dead-lettered (a permanent record code, a ``400``, or retries past
  ``SBCT_CALLBACK_RETRY_MAX_S``) to ``p.dead.events`` with the reason;
- retried: republished to a delay queue (429 honours ``Retry-After``; 5xx, timeouts and
  connection errors back off exponentially with jitter), never a sleeping consumer;
- parked (``401``/``403``): kept in ``parked_events`` until the app's integration settings
  change, then republished by :meth:`Exporter.resume_parked`.

Only when all of a message's records have ended does the message get acked.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import orjson
from aio_pika.abc import AbstractIncomingMessage

from . import logs, metrics, storage
from .broker import Broker, Consumer, attempts_of
from .codec import Event, decode_events, encode_events
from .errors import Unavailable
from .outbox import IntegrationCache
from .settings import Settings
from .tasks import Periodic

log = logs.get(__name__)

# CleverTap record codes that can never succeed as sent (reference: clevertap-apis.md).
PERMANENT_CODES = frozenset({509, 512, 513, 522, 523, 524, 525, 526, 528})


@dataclass(eq=False)
class Pending:
    """One broker message's records and what became of them."""

    events: list[Event]
    attempts: int
    first_attempt_at: float
    headers: dict[str, Any]
    remaining: int = 0
    retry: list[Event] = field(default_factory=list)
    retry_delay: float | None = None
    dead: list[tuple[Event, str]] = field(default_factory=list)
    parked: list[tuple[Event, str]] = field(default_factory=list)
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop()
                                       .create_future())


@dataclass(slots=True)
class Outcome:
    """What a batch's send decided for each of its records."""

    accepted: list[int] = field(default_factory=list)
    retry: list[int] = field(default_factory=list)
    retry_delay: float | None = None
    dead: list[tuple[int, str]] = field(default_factory=list)
    park_reason: str | None = None


def _record_key(rec: dict[str, Any]) -> tuple[Any, ...]:
    data = rec.get("evtData") or {}
    return (rec.get("objectId") or rec.get("identity"), rec.get("evtName"),
            data.get("status") if isinstance(data, dict) else None,
            data.get("target_id") if isinstance(data, dict) else None)


def interpret(status: int, body: Any, records: Sequence[dict[str, Any]],
              retry_after: float | None) -> Outcome:
    """Decide each record's fate from one CleverTap answer (pure; unit-tested)."""
    out = Outcome()
    n = len(records)
    if status == 200 and isinstance(body, dict):
        unprocessed = body.get("unprocessed") or []
        by_key: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for i, sent in enumerate(records):
            by_key[_record_key(sent)].append(i)
        failed: dict[int, tuple[int, str]] = {}
        unmatched = 0
        for entry in unprocessed if isinstance(unprocessed, list) else []:
            if not isinstance(entry, dict):
                continue
            rec: Any = entry.get("record")
            if isinstance(rec, str):
                try:
                    rec = orjson.loads(rec)
                except orjson.JSONDecodeError:
                    rec = None
            idxs = by_key.get(_record_key(rec)) if isinstance(rec, dict) else None
            if not idxs:
                unmatched += 1
                continue
            code = entry.get("code")
            code = int(code) if isinstance(code, int | str) and str(code).isdigit() else 0
            failed[idxs.pop(0)] = (code, str(entry.get("error", "unprocessed")))
        if unmatched:
            log.warning("callbacks.unmatched_unprocessed", entries=unmatched)
        for i in range(n):
            if i not in failed:
                out.accepted.append(i)
            elif failed[i][0] in PERMANENT_CODES:
                out.dead.append((i, f"CleverTap code {failed[i][0]}: {failed[i][1]}"))
            else:
                out.retry.append(i)
        return out
    if status in (401, 403):
        out.park_reason = f"CleverTap answered {status}: credentials refused"
        return out
    if status == 429:
        out.retry = list(range(n))
        out.retry_delay = retry_after if retry_after is not None else 5.0
        return out
    if status >= 500 or status == 0 or status == 408:
        out.retry = list(range(n))
        return out
    # 400 and other 4xx: the request itself is refused; resending cannot help.
    reason = f"CleverTap answered {status}: {str(body)[:300]}"
    out.dead = [(i, reason) for i in range(n)]
    return out


class Exporter:
    """Buffers, sends and settles event records; one per callback consumer process."""

    def __init__(self, pool: asyncpg.Pool, broker: Broker, settings: Settings) -> None:
        self.pool = pool
        self.broker = broker
        self.settings = settings
        self.integrations = IntegrationCache(pool)
        self.session: aiohttp.ClientSession | None = None
        self.prefetch = 512
        self._buffers: dict[str, list[tuple[Event, Pending]]] = defaultdict(list)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting = 0  # messages received and not yet settled
        self._parked: dict[str, Any] = {}  # app_id -> integration.updated_at when parked
        self.consumer = Consumer(broker, "events", self._on_message, prefetch=self.prefetch,
                                 dead_kind="events")
        self._resumer = Periodic("resume-parked", self.resume_parked, 2.0)

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.callback_timeout_s),
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=64),
            json_serialize=lambda o: orjson.dumps(o).decode())
        await self.consumer.start()
        self._resumer.start()
        log.info("callbacks.started")

    async def stop(self) -> None:
        # Flush what is buffered so in-flight messages can settle within the drain timeout.
        for app_id in list(self._buffers):
            self._flush(app_id, force=True)
        await self.consumer.stop(self.settings.drain_timeout_s)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._resumer.stop()
        if self.session is not None:
            await self.session.close()
        log.info("callbacks.stopped")

    # ------------------------------------------------------------ intake

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        events = decode_events(message.body)
        headers = dict(message.headers or {})
        first = headers.get("x-first-attempt-at")
        pending = Pending(events=events, attempts=attempts_of(message),
                          first_attempt_at=float(first) if isinstance(first, int | float)
                          else time.time(), headers=headers)
        pending.remaining = len(events)
        if not events:
            return
        self._waiting += 1
        try:
            for ev in events:
                await self._admit(ev, pending)
            if self._waiting >= self.prefetch:
                for app_id in list(self._buffers):
                    self._flush(app_id, force=True)
            await pending.done
        finally:
            self._waiting -= 1

    async def _admit(self, ev: Event, pending: Pending) -> None:
        integ = await self.integrations.get(ev.app_id)
        if integ is None or not integ.event_callback:
            metrics.EVENTS_EXPORTED.labels(app_id=ev.app_id, outcome="callback_off").inc()
            await self._settle(pending, [ev], "accepted")
            return
        parked_at = self._parked.get(ev.app_id)
        if parked_at is not None:
            if parked_at == integ.updated_at:
                await self._settle(pending, [ev], "parked",
                                   reason="credentials refused earlier; waiting for new "
                                   "integration settings")
                return
            del self._parked[ev.app_id]
        buf = self._buffers[ev.app_id]
        buf.append((ev, pending))
        if len(buf) >= self.settings.callback_batch_size:
            self._flush(ev.app_id)
        elif ev.app_id not in self._timers:
            loop = asyncio.get_running_loop()
            self._timers[ev.app_id] = loop.call_later(
                self.settings.callback_linger_s, self._flush, ev.app_id, True)

    def _flush(self, app_id: str, force: bool = False) -> None:
        timer = self._timers.pop(app_id, None)
        if timer is not None:
            timer.cancel()
        buf = self._buffers.get(app_id)
        size = self.settings.callback_batch_size
        while buf and (len(buf) >= size or force):
            batch, buf[:] = buf[:size], buf[size:]
            task = asyncio.create_task(self._send(app_id, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if buf:
            loop = asyncio.get_running_loop()
            self._timers[app_id] = loop.call_later(self.settings.callback_linger_s,
                                                   self._flush, app_id, True)
        else:
            self._buffers.pop(app_id, None)

    # ------------------------------------------------------------ sending

    async def _send(self, app_id: str, batch: list[tuple[Event, Pending]]) -> None:
        integ = await self.integrations.get(app_id)
        if integ is None or not integ.event_callback:
            for ev, p in batch:
                await self._settle(p, [ev], "accepted")
            return
        account = integ.project_id
        sem = self._semaphores.setdefault(
            account, asyncio.Semaphore(self.settings.callback_concurrency))
        records = [ev.record() for ev, _ in batch]
        now = time.time()
        metrics.EXPORT_LAG.labels(app_id=app_id).set(max(now - ev.ts for ev, _ in batch))
        status, body, retry_after = 0, None, None
        async with sem:
            assert self.session is not None
            t0 = time.perf_counter()
            try:
                async with self.session.post(
                    integ.api_endpoint + "/1/upload",
                    data=orjson.dumps({"d": records}),
                    headers={"X-CleverTap-Account-Id": integ.project_id,
                             "X-CleverTap-Passcode": integ.passcode,
                             "Content-Type": "application/json; charset=utf-8"},
                ) as resp:
                    status = resp.status
                    raw = await resp.read()
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
                try:
                    body = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    body = raw[:300].decode(errors="replace")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status, body = 0, repr(exc)
            metrics.EXPORT_SECONDS.observe(time.perf_counter() - t0)
        out = interpret(status, body, records, retry_after)
        log.info("callbacks.batch_sent", app_id=app_id, records=len(records), status=status,
                 accepted=len(out.accepted), retry=len(out.retry), dead=len(out.dead),
                 parked=out.park_reason is not None)
        if out.park_reason is not None:
            self._parked[app_id] = integ.updated_at
            for ev, p in batch:
                await self._settle(p, [ev], "parked", reason=out.park_reason)
            return
        for i in out.accepted:
            await self._settle(batch[i][1], [batch[i][0]], "accepted")
        for i, reason in out.dead:
            await self._settle(batch[i][1], [batch[i][0]], "dead", reason=reason)
        for i in out.retry:
            await self._settle(batch[i][1], [batch[i][0]], "retry", delay=out.retry_delay,
                               reason=f"CleverTap answered {status}")

    # ------------------------------------------------------------ settling

    async def _settle(self, p: Pending, events: list[Event], outcome: str, *,
                      reason: str = "", delay: float | None = None) -> None:
        for ev in events:
            metrics.EVENTS_EXPORTED.labels(app_id=ev.app_id, outcome=outcome).inc()
            if outcome == "retry":
                p.retry.append(ev)
                if delay is not None:
                    p.retry_delay = max(p.retry_delay or 0, delay)
            elif outcome == "dead":
                p.dead.append((ev, reason))
            elif outcome == "parked":
                p.parked.append((ev, reason))
        p.remaining -= len(events)
        if p.remaining <= 0 and not p.done.done():
            try:
                await self._finish(p)
            except Unavailable as exc:
                p.done.set_exception(exc)
            else:
                p.done.set_result(None)

    async def _finish(self, p: Pending) -> None:
        """Make the message's non-accepted records durable elsewhere, so it can be acked."""
        if p.retry:
            elapsed = time.time() - p.first_attempt_at
            if elapsed > self.settings.callback_retry_max_s:
                p.dead.extend((ev, f"still failing after {elapsed:.0f}s of retries")
                              for ev in p.retry)
            else:
                headers = {**p.headers, "x-first-attempt-at": p.first_attempt_at}
                await self.broker.retry_later("events", encode_events(p.retry),
                                              attempt=p.attempts + 1, headers=headers,
                                              delay=p.retry_delay)
                metrics.RETRIES.labels(queue="events").inc()
        if p.dead:
            metrics.DEAD_LETTERS.labels(queue="events").inc(len(p.dead))
            body = orjson.dumps([[*ev.to_wire(), why] for ev, why in p.dead])
            await self.broker.dead_letter("events", body, reason=p.dead[0][1],
                                          headers={"x-format": "events+reason"})
            log.error("callbacks.dead_lettered", records=len(p.dead), reason=p.dead[0][1])
        if p.parked:
            by_app: dict[str, list[Event]] = defaultdict(list)
            for ev, _ in p.parked:
                by_app[ev.app_id].append(ev)
            async with storage.guard("park events"):
                for app_id, evs in by_app.items():
                    await self.pool.execute(
                        "INSERT INTO parked_events (app_id, payload, reason) VALUES ($1, $2, $3)",
                        app_id, encode_events(evs), p.parked[0][1])
            log.warning("callbacks.parked", records=len(p.parked), reason=p.parked[0][1])

    # ------------------------------------------------------------ parked events

    async def resume_parked_once(self) -> int:
        """Republish parked events of apps whose integration changed since; returns rows."""
        moved = 0
        async with storage.guard("resume parked"), self.pool.acquire() as conn, \
                conn.transaction():
            rows = await conn.fetch(
                "SELECT p.id, p.app_id, p.payload FROM parked_events p"
                " JOIN integrations i USING (app_id)"
                " WHERE i.updated_at > p.parked_at AND i.event_callback"
                " ORDER BY p.id LIMIT 200 FOR UPDATE OF p SKIP LOCKED")
            for row in rows:
                await self.broker.publish("events", bytes(row["payload"]),
                                          headers={"x-resumed": True})
                await conn.execute("DELETE FROM parked_events WHERE id = $1", row["id"])
                self._parked.pop(row["app_id"], None)
                self.integrations.invalidate(row["app_id"])
                moved += 1
        if moved:
            log.info("callbacks.resumed_parked", rows=moved)
        return moved

    async def resume_parked(self) -> None:
        while await self.resume_parked_once():
            pass


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
