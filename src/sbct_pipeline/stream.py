"""Stream: real-time feed delivery to clients over Server-Sent Events.

Why PostgreSQL LISTEN/NOTIFY and not a RabbitMQ fanout exchange: the feed row and its
notification must agree. ``storage.deliver_batch`` issues one ``pg_notify`` per batch
*inside* the delivery statement, and PostgreSQL delivers a NOTIFY only when (and
only if) that transaction commits: no event for a row that was rolled back, no committed row
whose event was lost because a worker died between commit and publish. The payload is tiny
and bounded whatever the batch size (app, request, lowest and highest row id); a RabbitMQ
fanout would need an outbox of its own to give the same guarantee, and a queue per ingress
process. NOTIFY is per database, so every worker process writing to it reaches every ingress
process listening to it.

Each ingress process holds one LISTEN connection (:class:`FeedHub`), reconnecting with
backoff if it drops. On a notification for an app with connected streams, it reads the
batch's rows of the subscribed users (one indexed query) and fans them out to each stream's
bounded queue. A client too slow to drain its queue is disconnected (it reconnects and lists
the feed) rather than let memory grow. Notifications delivered while a client was not
connected are not pushed; a client reconnecting with ``Last-Event-ID`` gets them first (up
to 100, see ``api.stream_notifications``), or lists the feed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from . import logs, storage
from .settings import Settings

log = logs.get(__name__)

CHANNEL = storage.FEED_CHANNEL
QUEUE_SIZE = 256
RECENT_IDS = 512


class Subscriber:
    """One connected stream: a bounded queue of notification dicts; None ends the stream."""

    def __init__(self, app_id: str, user_id: str) -> None:
        self.app_id = app_id
        self.user_id = user_id
        # Bounded by offer() (QUEUE_SIZE items), so the end marker always fits.
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.overflowed = False
        self.closed = False
        # Two batches of one request can overlap in id range; never send a row twice.
        self._recent: dict[int, None] = {}

    def offer(self, item: dict[str, Any]) -> None:
        nid = int(item["id"])
        if self.closed or nid in self._recent:
            return
        self._recent[nid] = None
        if len(self._recent) > RECENT_IDS:
            self._recent.pop(next(iter(self._recent)))
        if self.queue.qsize() >= QUEUE_SIZE:
            self.overflowed = True
            self.close()
            return
        self.queue.put_nowait(item)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)


class FeedHub:
    """One LISTEN connection per ingress process, fanning notifications out to streams."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.pool = pool
        self._subs: dict[str, dict[str, set[Subscriber]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()

    # ------------------------------------------------------------ subscriptions

    @contextlib.contextmanager
    def subscribe(self, app_id: str, user_id: str) -> Iterator[Subscriber]:
        sub = Subscriber(app_id, user_id)
        self._subs.setdefault(app_id, {}).setdefault(user_id, set()).add(sub)
        try:
            yield sub
        finally:
            users = self._subs.get(app_id, {})
            subs = users.get(user_id, set())
            subs.discard(sub)
            if not subs:
                users.pop(user_id, None)
            if not users:
                self._subs.pop(app_id, None)

    def close_all(self) -> None:
        """End every stream (process shutdown): handlers return, the server can stop."""
        self._stop.set()
        for users in self._subs.values():
            for subs in users.values():
                for sub in subs:
                    sub.close()

    # ------------------------------------------------------------ listening

    async def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="feed-listener")
        # Streams opened right after start must not miss a delivery: wait (bounded) until
        # LISTEN is in place. If PostgreSQL is down the runner keeps retrying.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.listening.wait()

    async def stop(self) -> None:
        self.close_all()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            lost = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                async with asyncio.timeout(10):
                    conn = await asyncpg.connect(self.settings.database_url)
                conn.add_termination_listener(lambda _c, ev=lost: ev.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                self.listening.set()
                backoff = 0.5
                log.info("stream.listening", channel=CHANNEL)
                while not lost.is_set():
                    # A dead TCP peer may never report termination; probe now and then.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(15):
                            await lost.wait()
                    if not lost.is_set():
                        async with asyncio.timeout(5):
                            await conn.fetchval("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("stream.listen_lost", error=repr(exc), retry_in=backoff)
            finally:
                self.listening.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._stop.wait()
            backoff = min(backoff * 2, 10.0)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            msg = orjson.loads(payload)
            app_id, request_id = str(msg["a"]), str(msg["r"])
            lo, hi = int(msg["lo"]), int(msg["hi"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("stream.bad_notify", payload=payload[:200])
            return
        users = self._subs.get(app_id)
        if not users:
            return
        task = asyncio.create_task(self._fan_out(app_id, request_id, lo, hi, list(users)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fan_out(self, app_id: str, request_id: str, lo: int, hi: int,
                       users: list[str]) -> None:
        try:
            rows = await storage.batch_rows_for_users(self.pool, app_id, request_id, lo, hi,
                                                      users)
        except Exception as exc:
            log.warning("stream.fetch_failed", error=repr(exc))
            return
        for row in rows:
            item = storage.notification_json(row)
            for sub in list(self._subs.get(app_id, {}).get(row["user_id"], ())):
                was = sub.overflowed
                sub.offer(item)
                if sub.overflowed and not was:
                    log.warning("stream.client_too_slow", app_id=app_id,
                                user_id=row["user_id"])


HUB = web.AppKey("feed_hub", FeedHub)


async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the process's LISTEN connection (after the pool is open)."""
    from .context import POOL, SETTINGS

    hub = FeedHub(app[SETTINGS], app[POOL])
    await hub.start()
    app[HUB] = hub
    yield
    await hub.stop()


async def on_shutdown(app: web.Application) -> None:
    # Runs before aiohttp waits for in-flight handlers: open streams end now instead of
    # holding the shutdown for the whole shutdown timeout.
    if HUB in app:
        app[HUB].close_all()


def sse_event(item: dict[str, Any]) -> bytes:
    return (b"id: " + str(item["id"]).encode() + b"\nevent: notification\ndata: "
            + orjson.dumps(item) + b"\n\n")
