"""Outbox: SENT/READ events written with the feed change, published after commit.

CONTRACT section 9, first trap: a feed row committed but its event never published. Events
are written to the ``outbox`` table in the same transaction as the rows they describe,
published to the events queue after commit (with a confirm), and the outbox row is deleted
only then. If the process dies in between, :meth:`Outbox.sweep_forever` (running in every
worker, rows claimed with ``FOR UPDATE SKIP LOCKED``) republishes what is older than a few
seconds. The rare duplicate this can make (published, then the delete lost) is what the
contract allows; the callback consumer counts it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from . import logs, metrics, storage
from .broker import Broker
from .codec import Event, encode_events
from .errors import Unavailable
from .settings import Settings

log = logs.get(__name__)

INTEGRATION_TTL_S = 2.0


class IntegrationCache:
    """An app's integration settings, cached for a couple of seconds."""

    def __init__(self, pool: asyncpg.Pool, ttl: float = INTEGRATION_TTL_S) -> None:
        self.pool = pool
        self.ttl = ttl
        self._cache: dict[str, tuple[storage.Integration | None, float]] = {}

    async def get(self, app_id: str) -> storage.Integration | None:
        now = time.monotonic()
        hit = self._cache.get(app_id)
        if hit is not None and hit[1] > now:
            return hit[0]
        value = await storage.get_integration(self.pool, app_id)
        self._cache[app_id] = (value, now + self.ttl)
        return value

    def invalidate(self, app_id: str) -> None:
        self._cache.pop(app_id, None)


def _ts(value: datetime | None) -> int:
    return int(value.timestamp()) if value is not None else int(time.time())


def events_for(app_id: str, status: str, rows: Sequence[asyncpg.Record],
               request_id: str | None = None) -> list[Event]:
    """Events for feed rows; rows with neither objectId nor identity are counted, not sent."""
    out: list[Event] = []
    skipped = 0
    for r in rows:
        if not r["object_id"] and not r["identity"]:
            skipped += 1
            continue
        when = r["created_at"] if status == "SENT" else r["read_at"]
        out.append(Event(app_id=app_id, notification_id=r["id"], status=status,
                         evt_name=r["event_name"], target_id=r["target_id"], ts=_ts(when),
                         object_id=r["object_id"], identity=r["identity"],
                         request_id=request_id))
    if skipped:
        metrics.EVENTS_NO_IDENTIFIER.inc(skipped)
        log.warning("outbox.no_identifier", app_id=app_id, status=status, notifications=skipped)
    return out


class Outbox:
    """Builds event payloads for a transaction and publishes them after commit."""

    def __init__(self, pool: asyncpg.Pool, broker: Broker, settings: Settings) -> None:
        self.pool = pool
        self.broker = broker
        self.settings = settings
        self.integrations = IntegrationCache(pool)

    async def callback_enabled(self, app_id: str) -> bool:
        integ = await self.integrations.get(app_id)
        return bool(integ and integ.event_callback)

    @staticmethod
    def payload(app_id: str, status: str, rows: Sequence[asyncpg.Record],
                request_id: str | None = None) -> bytes | None:
        events = events_for(app_id, status, rows, request_id)
        return encode_events(events) if events else None

    async def publish(self, outbox_id: int | None, payload: bytes | None,
                      request_id: str | None = None) -> None:
        """Publish a committed outbox row and delete it; on failure the sweeper takes over."""
        if outbox_id is None or payload is None:
            return
        try:
            await self.broker.publish("events", payload,
                                      headers={"request_id": request_id or ""},
                                      message_id=f"outbox-{outbox_id}")
            await storage.delete_outbox(self.pool, outbox_id)
        except Unavailable as exc:
            log.warning("outbox.publish_deferred", outbox_id=outbox_id, error=str(exc))

    async def sweep_once(self, older_than_s: float) -> int:
        """Republish outbox rows left behind; returns how many were published."""
        total = 0
        async with storage.guard("outbox sweep"), self.pool.acquire() as conn, \
                conn.transaction():
            rows = await storage.stale_outbox(conn, older_than_s)
            for row in rows:
                await self.broker.publish("events", bytes(row["payload"]),
                                          message_id=f"outbox-{row['id']}")
                await conn.execute("DELETE FROM outbox WHERE id = $1", row["id"])
                total += 1
        if total:
            metrics.OUTBOX_REPUBLISHED.inc(total)
            log.info("outbox.republished", rows=total)
        return total

    async def sweep(self) -> None:
        """One sweeper round: orphaned outbox rows, then expired dedupe rows."""
        while await self.sweep_once(older_than_s=self.settings.outbox_sweep_s * 2) > 0:
            pass
        await storage.sweep_dedupe(self.pool, self.settings.dedupe_window_s)
