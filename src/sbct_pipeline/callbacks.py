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
  connection errors back off exponentially with jitter, see ``broker.retry_later``), never
  a sleeping consumer;
- parked (``401``/``403``; also ``404``/``405``, no upload API at the configured endpoint):
  kept in ``parked_events`` with the integration settings that were refused, until the
  app's integration settings change; then republished by :meth:`Exporter.resume_parked`.

Only when all of a message's records have ended, and the non-accepted ones are durable
elsewhere (delay queue, dead-letter queue, ``parked_events``), does the message get acked.
If that cannot be done (broker or database down), the message stays unacked while the
exporter keeps trying, so an outage at settle time neither loses records nor re-sends the
accepted ones; a crash then redelivers the whole message (the rare duplicates the contract
allows).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
# Longest pause between two attempts to make a message's leftovers durable.
FINISH_BACKOFF_MAX_S = 5.0
# Outbox message ids (``outbox-<row id>``) of messages this process has exported, newest
# last: a second publish of the same outbox row is not exported again (see _on_message).
EXPORTED_OUTBOX_IDS_MAX = 200_000


@dataclass(eq=False)
class Pending:
    """One broker message's records and what became of them."""

    events: list[Event]
    attempts: int
    first_attempt_at: float
    headers: dict[str, Any]
    remaining: int = 0
    oldest_ts: int = 0
    retry: list[Event] = field(default_factory=list)
    retry_delay: float | None = None
    dead: list[tuple[Event, str]] = field(default_factory=list)
    # (event, reason, integration updated_at that was refused)
    parked: list[tuple[Event, str, datetime | None]] = field(default_factory=list)
    # Steps of _finish already done, so a retried _finish never repeats one.
    retried: bool = False
    dead_lettered: bool = False
    parked_stored: bool = False
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop()
                                       .create_future())

    def ended(self, n: int) -> None:
        self.remaining -= n
        if self.remaining <= 0 and not self.done.done():
            self.done.set_result(None)


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


def _interpret_200(body: dict[str, Any], records: Sequence[dict[str, Any]],
                   out: Outcome) -> Outcome:
    n = len(records)
    unprocessed = body.get("unprocessed") or []
    if not isinstance(unprocessed, list):
        unprocessed = []
    processed = body.get("processed")
    if not unprocessed:
        if isinstance(processed, int) and processed < n:
            # Fewer processed than sent and no record named: we cannot tell which were
            # dropped, so all are sent again (duplicates beat losses).
            log.warning("callbacks.processed_mismatch", sent=n, processed=processed)
            out.retry = list(range(n))
        else:
            out.accepted = list(range(n))
        return out
    by_key: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, sent in enumerate(records):
        by_key[_record_key(sent)].append(i)
    failed: dict[int, tuple[int, str]] = {}
    unmatched = 0
    for entry in unprocessed:
        if not isinstance(entry, dict):
            unmatched += 1
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
        code = int(code) if isinstance(code, int | str) and str(code).isascii() \
            and str(code).isdigit() else 0
        failed[idxs.pop(0)] = (code, str(entry.get("error", "unprocessed")))
    ambiguous = False
    if unmatched:
        # Entries we cannot pin to a record. If the counts say some of ours really failed,
        # every record not known to have failed is sent again rather than lost.
        ambiguous = not (isinstance(processed, int) and processed >= n - len(failed))
        log.warning("callbacks.unmatched_unprocessed", entries=unmatched,
                    retry_all=ambiguous)
    for i in range(n):
        if i not in failed:
            (out.retry if ambiguous else out.accepted).append(i)
        elif failed[i][0] in PERMANENT_CODES:
            out.dead.append((i, f"CleverTap code {failed[i][0]}: {failed[i][1]}"))
        else:
            out.retry.append(i)
    return out


def interpret(status: int, body: Any, records: Sequence[dict[str, Any]],
              retry_after: float | None) -> Outcome:
    """Decide each record's fate from one CleverTap answer (pure; unit-tested)."""
    out = Outcome()
    n = len(records)
    if status == 200 and isinstance(body, dict):
        return _interpret_200(body, records, out)
    if status == 200:
        # 200 with a body we cannot read: nothing says the records were processed.
        out.retry = list(range(n))
        return out
    if status in (401, 403):
        out.park_reason = f"CleverTap answered {status}: credentials refused"
        return out
    if status in (404, 405):
        # No upload route at this address: the api_endpoint is wrong (a typo, a path), a
        # settings problem like refused credentials, so the events wait for new settings
        # rather than being dead-lettered one batch after another.
        out.park_reason = (f"CleverTap answered {status}: no upload API at this api_endpoint "
                           "(check the integration's api_endpoint)")
        return out
    if status == 429:
        out.retry = list(range(n))
        out.retry_delay = retry_after if retry_after is not None else 5.0
        return out
    if status >= 500 or status == 0 or status == 408:
        out.retry = list(range(n))
        if retry_after is not None:
            out.retry_delay = retry_after
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
        self._exported_outbox: dict[str, None] = {}  # insertion-ordered: oldest first
        # Export lag: messages held per app, and records sent to a delay queue
        # (app_id -> (oldest ts, when they are due back)).
        self._held: dict[str, set[Pending]] = defaultdict(set)
        self._retrying: dict[str, tuple[int, float]] = {}
        self._stopping = False
        self._lag_apps: set[str] = set()
        self._parked_gauge_apps: set[str] = set()
        self.consumer = Consumer(broker, "events", self._on_message, prefetch=self.prefetch,
                                 dead_kind="events")
        self._resumer = Periodic("resume-parked", self.resume_parked, 2.0)
        self._lag = Periodic("export-lag", self.update_lag, 1.0)

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.callback_timeout_s),
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=64),
            json_serialize=lambda o: orjson.dumps(o).decode())
        await self.consumer.start()
        self._resumer.start()
        self._lag.start()
        log.info("callbacks.started")

    async def stop(self) -> None:
        self._stopping = True
        # Flush what is buffered so in-flight messages can settle within the drain timeout.
        for app_id in list(self._buffers):
            self._flush(app_id, force=True)
        await self.consumer.stop(self.settings.drain_timeout_s)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._resumer.stop()
        await self._lag.stop()
        if self.session is not None:
            await self.session.close()
        log.info("callbacks.stopped")

    # ------------------------------------------------------------ intake

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Only the outbox publishes with an ``outbox-<id>`` message id, and every publish of
        # one row carries the same events. A second one comes when the first publish reached
        # RabbitMQ but the row could not be deleted after it (the confirm lost with the
        # connection, PostgreSQL down, the worker killed): the sweeper publishes it again.
        # If this process has exported the first, the second would only duplicate it at
        # CleverTap. (Retries, parked and replayed events are published without this id.)
        outbox_id = message.message_id
        if outbox_id and outbox_id.startswith("outbox-") and outbox_id in self._exported_outbox:
            metrics.OUTBOX_DUPLICATES_SKIPPED.inc()
            log.info("callbacks.outbox_duplicate_skipped", message_id=outbox_id)
            return
        events = decode_events(message.body)
        if not events:
            return
        headers = dict(message.headers or {})
        first = headers.get("x-first-attempt-at")
        pending = Pending(events=events, attempts=attempts_of(message),
                          first_attempt_at=float(first) if isinstance(first, int | float)
                          else time.time(), headers=headers, remaining=len(events),
                          oldest_ts=min(ev.ts for ev in events))
        # Look every app up before admitting anything: a database error here retries the
        # message without having sent part of it.
        integs = {app_id: await self.integrations.get(app_id)
                  for app_id in {ev.app_id for ev in events}}
        apps = list(integs)
        self._waiting += 1
        for app_id in apps:
            self._held[app_id].add(pending)
        try:
            for ev in events:
                self._admit(ev, pending, integs[ev.app_id])
            if self._waiting >= self.prefetch:
                for app_id in list(self._buffers):
                    self._flush(app_id, force=True)
            await pending.done
            await self._finish_durably(pending)
            if outbox_id and outbox_id.startswith("outbox-"):
                if len(self._exported_outbox) >= EXPORTED_OUTBOX_IDS_MAX:
                    del self._exported_outbox[next(iter(self._exported_outbox))]
                self._exported_outbox[outbox_id] = None
        finally:
            self._waiting -= 1
            for app_id in apps:
                self._held[app_id].discard(pending)

    def _admit(self, ev: Event, pending: Pending, integ: storage.Integration | None) -> None:
        if integ is None or not integ.event_callback:
            metrics.EVENTS_EXPORTED.labels(app_id=ev.app_id, outcome="callback_off").inc()
            pending.ended(1)
            return
        parked_at = self._parked.get(ev.app_id)
        if parked_at is not None:
            if parked_at == integ.updated_at:
                metrics.EVENTS_EXPORTED.labels(app_id=ev.app_id, outcome="parked").inc()
                pending.parked.append((ev, "credentials refused earlier; waiting for new "
                                       "integration settings", parked_at))
                pending.ended(1)
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
        try:
            await self._send_batch(app_id, batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Whatever went wrong (the database answering the integration lookup, a bug),
            # the records must end somewhere, or their messages would wait forever.
            log.exception("callbacks.send_failed", app_id=app_id, records=len(batch))
            self._settle(app_id, batch, range(len(batch)), "retry",
                         reason=f"send failed: {exc!r}")

    async def _send_batch(self, app_id: str, batch: list[tuple[Event, Pending]]) -> None:
        integ = await self.integrations.get(app_id)
        if integ is None or not integ.event_callback:
            self._settle(app_id, batch, range(len(batch)), "callback_off")
            return
        account = integ.project_id
        sem = self._semaphores.setdefault(
            account, asyncio.Semaphore(self.settings.callback_concurrency))
        records = [ev.record() for ev, _ in batch]
        payload = orjson.dumps({"d": records})
        status, body, retry_after = 0, None, None
        async with sem:
            assert self.session is not None
            t0 = time.perf_counter()
            try:
                async with self.session.post(
                    integ.api_endpoint + "/1/upload", data=payload,
                    headers={"X-CleverTap-Account-Id": integ.project_id,
                             "X-CleverTap-Passcode": integ.passcode,
                             "Content-Type": "application/json; charset=utf-8"},
                ) as resp:
                    status = resp.status
                    raw = await resp.read()
                    retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
                try:
                    body = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    body = raw[:300].decode(errors="replace")
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status, body = 0, repr(exc)
            metrics.EXPORT_SECONDS.observe(time.perf_counter() - t0)
        out = interpret(status, body, records, retry_after)
        request_ids = {ev.request_id for ev, _ in batch[:50] if ev.request_id}
        log.info("callbacks.batch_sent", app_id=app_id, records=len(records), status=status,
                 accepted=len(out.accepted), retry=len(out.retry), dead=len(out.dead),
                 parked=out.park_reason is not None, request_ids=sorted(request_ids)[:5])
        if out.park_reason is not None:
            self._parked[app_id] = integ.updated_at
            self._settle(app_id, batch, range(len(batch)), "parked", reason=out.park_reason,
                         settings_at=integ.updated_at)
            return
        if out.accepted:
            self._settle(app_id, batch, out.accepted, "accepted")
        for i, reason in out.dead:
            self._settle(app_id, batch, (i,), "dead", reason=reason)
        if out.retry:
            self._settle(app_id, batch, out.retry, "retry", delay=out.retry_delay,
                         reason=f"CleverTap answered {status or body}")

    # ------------------------------------------------------------ settling

    def _settle(self, app_id: str, batch: list[tuple[Event, Pending]], idxs: Sequence[int],
                outcome: str, *, reason: str = "", delay: float | None = None,
                settings_at: datetime | None = None) -> None:
        """Record ``outcome`` for ``batch[i]`` for each i; a message ends with its last."""
        metrics.EVENTS_EXPORTED.labels(app_id=app_id, outcome=outcome).inc(len(idxs))
        if outcome == "retry":
            metrics.EXPORT_RETRIES.labels(app_id=app_id, reason=_reason_label(reason)).inc(
                len(idxs))
        counts: dict[Pending, int] = defaultdict(int)
        for i in idxs:
            ev, p = batch[i]
            counts[p] += 1
            if outcome == "retry":
                p.retry.append(ev)
                if delay is not None:
                    p.retry_delay = max(p.retry_delay or 0, delay)
            elif outcome == "dead":
                p.dead.append((ev, reason))
            elif outcome == "parked":
                p.parked.append((ev, reason, settings_at))
        for p, n in counts.items():
            p.ended(n)

    async def _finish_durably(self, p: Pending) -> None:
        """Retry :meth:`_finish` until it succeeds; the message stays unacked meanwhile."""
        pause = 0.5
        while True:
            try:
                await self._finish(p)
                return
            except Unavailable as exc:
                if self._stopping:
                    raise  # the consumer wrapper requeues the message
                log.warning("callbacks.settle_deferred", error=str(exc), retry_in=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, FINISH_BACKOFF_MAX_S)

    async def _finish(self, p: Pending) -> None:
        """Make the message's non-accepted records durable elsewhere, so it can be acked."""
        if p.retry and not p.retried:
            elapsed = time.time() - p.first_attempt_at
            if elapsed > self.settings.callback_retry_max_s:
                p.dead.extend((ev, f"still failing after {elapsed:.0f}s of retries "
                               f"(SBCT_CALLBACK_RETRY_MAX_S)") for ev in p.retry)
            else:
                headers = {**p.headers, "x-first-attempt-at": p.first_attempt_at}
                delay = await self.broker.retry_later(
                    "events", encode_events(p.retry), attempt=p.attempts + 1,
                    headers=headers, delay=p.retry_delay)
                metrics.RETRIES.labels(queue="events").inc()
                oldest = min(ev.ts for ev in p.retry)
                for app_id in {ev.app_id for ev in p.retry}:
                    prev = self._retrying.get(app_id)
                    due = time.monotonic() + delay + self.settings.callback_linger_s + 1
                    self._retrying[app_id] = ((min(prev[0], oldest), max(prev[1], due))
                                              if prev else (oldest, due))
            p.retried = True
        if p.dead and not p.dead_lettered:
            body = orjson.dumps([[*ev.to_wire(), why] for ev, why in p.dead])
            await self.broker.dead_letter("events", body, reason=p.dead[0][1],
                                          headers={"x-format": "events+reason",
                                                   "x-source-queue": "events"})
            p.dead_lettered = True
            metrics.DEAD_LETTERS.labels(queue="events").inc(len(p.dead))
            per_app: dict[str, int] = defaultdict(int)
            for ev, _ in p.dead:
                per_app[ev.app_id] += 1
            for app_id, n in per_app.items():
                metrics.EXPORT_DEAD_LETTERS.labels(app_id=app_id).inc(n)
                log.error("callbacks.dead_lettered", app_id=app_id, records=n,
                          reason=p.dead[0][1])
        if p.parked and not p.parked_stored:
            groups: dict[tuple[str, datetime | None], list[Event]] = defaultdict(list)
            for ev, _, settings_at in p.parked:
                groups[(ev.app_id, settings_at)].append(ev)
            async with storage.guard("park events"), self.pool.acquire() as conn, \
                    conn.transaction():
                for (app_id, settings_at), evs in groups.items():
                    await conn.execute(
                        "INSERT INTO parked_events (app_id, payload, reason, settings_at,"
                        " oldest_ts) VALUES ($1, $2, $3, $4, $5)",
                        app_id, encode_events(evs), p.parked[0][1], settings_at,
                        min(ev.ts for ev in evs))
            p.parked_stored = True
            log.warning("callbacks.parked", records=len(p.parked), reason=p.parked[0][1])

    # ------------------------------------------------------------ export lag

    async def update_lag(self) -> None:
        """Set ``sbct_export_lag_seconds`` per app: age of the oldest event not yet accepted.

        Counts events this process holds (buffered, in flight, settling), events it sent to
        a delay queue until they are due back, and parked events (from the database).
        """
        now = time.time()
        oldest: dict[str, float] = {}
        for app_id, held in list(self._held.items()):
            if held:
                oldest[app_id] = min(p.oldest_ts for p in held)
            else:
                del self._held[app_id]
        mono = time.monotonic()
        for app_id, (ts, due) in list(self._retrying.items()):
            if due < mono:
                del self._retrying[app_id]
            else:
                oldest[app_id] = min(oldest.get(app_id, ts), ts)
        with contextlib.suppress(Unavailable):
            async with storage.guard("parked lag"):
                rows = await self.pool.fetch(
                    "SELECT app_id, min(coalesce(oldest_ts, extract(epoch FROM parked_at)))"
                    " AS ts, count(*) AS n FROM parked_events GROUP BY app_id")
            parked_apps = set()
            for r in rows:
                parked_apps.add(r["app_id"])
                oldest[r["app_id"]] = min(oldest.get(r["app_id"], float(r["ts"])),
                                          float(r["ts"]))
                metrics.EXPORT_PARKED.labels(app_id=r["app_id"]).set(r["n"])
            for app_id in self._parked_gauge_apps - parked_apps:
                metrics.EXPORT_PARKED.labels(app_id=app_id).set(0)
            self._parked_gauge_apps = parked_apps
        for app_id in self._lag_apps - set(oldest):
            metrics.EXPORT_LAG.labels(app_id=app_id).set(0)
        for app_id, since in oldest.items():
            metrics.EXPORT_LAG.labels(app_id=app_id).set(max(0.0, now - since))
        self._lag_apps = set(oldest)

    # ------------------------------------------------------------ parked events

    async def resume_parked_once(self) -> int:
        """Republish parked events of apps whose integration changed since; returns rows."""
        moved = 0
        async with storage.guard("resume parked"), self.pool.acquire() as conn, \
                conn.transaction():
            # settings_at: the integration settings CleverTap refused. Any change since
            # releases them, even one made while the refused request was in flight.
            rows = await conn.fetch(
                "SELECT p.id, p.app_id, p.payload FROM parked_events p"
                " JOIN integrations i USING (app_id)"
                " WHERE i.event_callback AND CASE WHEN p.settings_at IS NULL"
                "   THEN i.updated_at > p.parked_at"
                "   ELSE i.updated_at IS DISTINCT FROM p.settings_at END"
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


def _reason_label(reason: str) -> str:
    # A bounded label set: "CleverTap answered 429", "CleverTap answered 503", "send failed".
    if reason.startswith("CleverTap answered "):
        tail = reason[len("CleverTap answered "):]
        if tail[:3] == "200":
            return "record"  # a transient code on some records of an accepted request
        return tail[:3] if tail[:3].isdigit() else "network"
    return "error"


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP-date (RFC 9110); None if absent
    or unreadable (then the caller's own backoff applies)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return None if math.isnan(seconds) else max(0.0, seconds)

