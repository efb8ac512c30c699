"""Storage: the PostgreSQL schema, its migrations, and every query the pipeline runs.

Migrations are numbered SQL files in ``migrations/``, applied in order under an advisory lock
and recorded in ``schema_migrations``, so any number of processes may run ``migrate`` at once.
asyncpg and socket errors are translated here to :class:`StorageUnavailable`; callers never
see a driver exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.resources
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson

from . import logs
from .errors import StorageUnavailable
from .settings import Settings

log = logs.get(__name__)

_MIGRATION_LOCK = 0x5BC7_0001
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
)


@contextlib.asynccontextmanager
async def guard(what: str) -> AsyncIterator[None]:
    """Translate driver and network errors inside the block to StorageUnavailable."""
    try:
        yield
    except _TRANSIENT as exc:
        raise StorageUnavailable(f"database unavailable during {what}: {exc!r}") from exc


def _json_codec(conn: asyncpg.Connection) -> Any:
    return conn.set_type_codec("jsonb", encoder=lambda v: orjson.dumps(v).decode(),
                               decoder=orjson.loads, schema="pg_catalog")


async def _rollback_only(conn: asyncpg.Connection) -> None:
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(settings: Settings, *, min_size: int = 2,
                      light_reset: bool = False) -> asyncpg.Pool:
    """Open a pool; fails with StorageUnavailable naming the URL when PostgreSQL is down.

    ``light_reset``: on release, only roll back a transaction left open, instead of asyncpg's
    full reset query (a round trip per release: 6 % of a worker's time in the fan-out
    profile). Only for processes whose connections never LISTEN, SET or take advisory locks
    (workers and the callback consumer).
    """
    try:
        async with asyncio.timeout(15):
            pool = await asyncpg.create_pool(
                settings.database_url, min_size=min(min_size, settings.db_pool_size),
                max_size=settings.db_pool_size, init=_json_codec, command_timeout=60,
                reset=_rollback_only if light_reset else None)
    except (*_TRANSIENT, asyncpg.exceptions.InvalidCatalogNameError) as exc:
        raise StorageUnavailable(
            f"cannot reach PostgreSQL at {_public_url(settings.database_url)}: {exc}") from exc
    assert pool is not None
    return pool


def _public_url(url: str) -> str:
    p = urlsplit(url)
    host = p.hostname or ""
    return urlunsplit((p.scheme, f"{host}:{p.port or 5432}", p.path, "", ""))


# ---------------------------------------------------------------- migrations

def _migrations() -> list[tuple[int, str, str]]:
    out = []
    for entry in importlib.resources.files("sbct_pipeline.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql"):
            out.append((int(name.split("_", 1)[0]), name, entry.read_text()))
    return sorted(out)


async def ensure_database(settings: Settings) -> bool:
    """Create the database named in the URL if it does not exist; True if created."""
    parts = urlsplit(settings.database_url)
    dbname = parts.path.lstrip("/")
    admin_url = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    try:
        async with asyncio.timeout(15):
            conn = await asyncpg.connect(admin_url)
    except _TRANSIENT as exc:
        raise StorageUnavailable(
            f"cannot reach PostgreSQL at {_public_url(settings.database_url)}: {exc}") from exc
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", dbname)
        if exists:
            return False
        ident = '"' + dbname.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {ident}")
        except asyncpg.exceptions.DuplicateDatabaseError:
            return False
        return True
    finally:
        await conn.close()


async def migrate(settings: Settings) -> list[str]:
    """Create the database if missing and apply pending migrations; returns those applied."""
    created = await ensure_database(settings)
    if created:
        log.info("storage.database_created", database=urlsplit(settings.database_url).path[1:])
    try:
        conn = await asyncpg.connect(settings.database_url)
    except _TRANSIENT as exc:
        raise StorageUnavailable(f"cannot reach PostgreSQL: {exc}") from exc
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version int PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())")
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in _migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    version, name)
            applied.append(name)
            log.info("storage.migration_applied", migration=name)
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    finally:
        await conn.close()
    return applied


# ---------------------------------------------------------------- apps and tokens

def hash_token(secret: str) -> bytes:
    # API tokens carry 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(secret.encode()).digest()


async def create_app(pool: asyncpg.Pool, app_id: str, name: str) -> None:
    async with guard("create app"):
        await pool.execute("INSERT INTO apps (app_id, name) VALUES ($1, $2)", app_id, name)


async def get_app(pool: asyncpg.Pool, app_id: str) -> asyncpg.Record | None:
    async with guard("get app"):
        return await pool.fetchrow(
            "SELECT app_id, name, created_at FROM apps WHERE app_id = $1", app_id)


async def add_token(pool: asyncpg.Pool, token_id: str, app_id: str, token_hash: bytes) -> None:
    async with guard("add token"):
        await pool.execute(
            "INSERT INTO api_tokens (token_id, app_id, token_hash) VALUES ($1, $2, $3)",
            token_id, app_id, token_hash)


async def get_token(pool: asyncpg.Pool, token_id: str) -> asyncpg.Record | None:
    async with guard("get token"):
        return await pool.fetchrow(
            "SELECT token_id, app_id, token_hash FROM api_tokens WHERE token_id = $1", token_id)


async def list_tokens(pool: asyncpg.Pool, app_id: str) -> list[asyncpg.Record]:
    async with guard("list tokens"):
        return list(await pool.fetch(
            "SELECT token_id, created_at FROM api_tokens WHERE app_id = $1"
            " ORDER BY created_at, token_id", app_id))


async def create_token(pool: asyncpg.Pool, token_id: str, app_id: str,
                       token_hash: bytes) -> asyncpg.Record | None:
    """Add a token to an existing app; None when the app does not exist."""
    async with guard("add token"):
        return await pool.fetchrow(
            "INSERT INTO api_tokens (token_id, app_id, token_hash)"
            " SELECT $1, app_id, $3 FROM apps WHERE app_id = $2 RETURNING token_id, created_at",
            token_id, app_id, token_hash)


async def delete_token(pool: asyncpg.Pool, app_id: str, token_id: str) -> bool:
    async with guard("delete token"):
        status = await pool.execute(
            "DELETE FROM api_tokens WHERE app_id = $1 AND token_id = $2", app_id, token_id)
    return bool(status.endswith(" 1"))


async def add_session_token(pool: asyncpg.Pool, token_id: str, app_id: str, user_id: str,
                            token_hash: bytes, ttl_s: float) -> datetime:
    """Store a session token; returns its expiry. Expired tokens of the app are swept here."""
    async with guard("add session token"), pool.acquire() as conn, conn.transaction():
        expires: datetime = await conn.fetchval(
            "INSERT INTO session_tokens (token_id, app_id, user_id, token_hash, expires_at)"
            " VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) RETURNING expires_at",
            token_id, app_id, user_id, token_hash, float(ttl_s))
        await conn.execute(
            "DELETE FROM session_tokens WHERE token_id = ANY(ARRAY(SELECT token_id"
            " FROM session_tokens WHERE app_id = $1 AND expires_at < now() LIMIT 1000))",
            app_id)
    return expires


async def get_session_token(pool: asyncpg.Pool, token_id: str) -> asyncpg.Record | None:
    async with guard("get session token"):
        return await pool.fetchrow(
            "SELECT token_id, app_id, user_id, token_hash, expires_at FROM session_tokens"
            " WHERE token_id = $1", token_id)


# ---------------------------------------------------------------- integrations

@dataclass(frozen=True, slots=True)
class Integration:
    """An app's CleverTap integration settings."""

    app_id: str
    event_callback: bool
    project_id: str
    passcode: str
    api_endpoint: str
    updated_at: datetime | None

    def public(self) -> dict[str, Any]:
        p = self.passcode
        masked = "" if not p else ("*" * (len(p) - 4) + p[-4:] if len(p) > 8 else "****")
        return {"event_callback": self.event_callback, "project_id": self.project_id,
                "passcode": masked, "api_endpoint": self.api_endpoint,
                "updated_at": self.updated_at.isoformat() if self.updated_at else None}


async def get_integration(pool: asyncpg.Pool, app_id: str) -> Integration | None:
    async with guard("get integration"):
        row = await pool.fetchrow(
            "SELECT app_id, event_callback, project_id, passcode, api_endpoint, updated_at"
            " FROM integrations WHERE app_id = $1", app_id)
    return Integration(**dict(row)) if row else None


async def put_integration(pool: asyncpg.Pool, app_id: str, *, event_callback: bool,
                          project_id: str, passcode: str, api_endpoint: str) -> Integration:
    async with guard("put integration"):
        row = await pool.fetchrow(
            "INSERT INTO integrations AS i (app_id, event_callback, project_id, passcode,"
            " api_endpoint, updated_at) VALUES ($1, $2, $3, $4, $5, clock_timestamp())"
            " ON CONFLICT (app_id) DO UPDATE SET event_callback = excluded.event_callback,"
            " project_id = excluded.project_id, passcode = excluded.passcode,"
            " api_endpoint = excluded.api_endpoint, updated_at = excluded.updated_at"
            " RETURNING app_id, event_callback, project_id, passcode, api_endpoint, updated_at",
            app_id, event_callback, project_id, passcode, api_endpoint)
    return Integration(**dict(row))


# ---------------------------------------------------------------- templates

async def put_template(pool: asyncpg.Pool, app_id: str, key: str, *, name: str, title: str,
                       body: str, data: Any, variables: Sequence[str]) -> tuple[asyncpg.Record,
                                                                               bool]:
    async with guard("put template"):
        row = await pool.fetchrow(
            "INSERT INTO templates AS t (app_id, key, name, title, body, data, variables)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (app_id, key) DO UPDATE SET name = excluded.name,"
            " title = excluded.title, body = excluded.body, data = excluded.data,"
            " variables = excluded.variables, updated_at = now()"
            " RETURNING *, (xmax = 0) AS created",
            app_id, key, name, title, body, data, list(variables))
    return row, bool(row["created"])


async def get_template(pool: asyncpg.Pool, app_id: str, key: str) -> asyncpg.Record | None:
    async with guard("get template"):
        return await pool.fetchrow(
            "SELECT * FROM templates WHERE app_id = $1 AND key = $2", app_id, key)


async def get_templates(pool: asyncpg.Pool, app_id: str,
                        keys: Sequence[str]) -> list[asyncpg.Record]:
    async with guard("get templates"):
        return list(await pool.fetch(
            "SELECT * FROM templates WHERE app_id = $1 AND key = ANY($2::text[])",
            app_id, list(keys)))


async def existing_template_keys(pool: asyncpg.Pool, app_id: str,
                                 keys: Sequence[str]) -> set[str]:
    async with guard("check templates"):
        rows = await pool.fetch(
            "SELECT key FROM templates WHERE app_id = $1 AND key = ANY($2::text[])",
            app_id, list(keys))
    return {r["key"] for r in rows}


async def list_templates(pool: asyncpg.Pool, app_id: str) -> list[asyncpg.Record]:
    async with guard("list templates"):
        return list(await pool.fetch(
            "SELECT * FROM templates WHERE app_id = $1 ORDER BY key", app_id))


async def delete_template(pool: asyncpg.Pool, app_id: str, key: str) -> bool:
    async with guard("delete template"):
        status = await pool.execute(
            "DELETE FROM templates WHERE app_id = $1 AND key = $2", app_id, key)
    return bool(status.endswith(" 1"))


# ---------------------------------------------------------------- feed

NOTIFICATION_COLUMNS = ("id, template_key, title, body, data, target_id, created_at, read_at")

# LISTEN/NOTIFY channel of the real-time feed streams (see stream.py for why NOTIFY).
FEED_CHANNEL = "sbct_feed"

# One statement per chunk, so one round trip and its own transaction: content dedupe
# (CleverTap's retried webhooks), the feed insert (broker redeliveries: unique per request and
# user), the chunk's SENT events built by PostgreSQL from the rows actually inserted and written
# to the outbox, and the feed streams' NOTIFY (sent only if the statement commits). No Python
# work per inserted row: the events payload comes back as bytes, ready to publish.
# The payload is a JSON array of Event wire lists (codec.Event.to_wire); ``ts`` is the row's
# created_at in whole epoch seconds; rows with neither objectId nor identity get no event.
#
# Two forms of the statement. The fast one (the common case: no user of the chunk seen
# before) inserts without ON CONFLICT: speculative insertion checks every arbiter index before
# each row and joins the dedupe result back to the input, about a fifth of PostgreSQL's time
# per user. If any user was seen before (a retried webhook, a redelivered chunk, two workers on
# overlapping chunks), a unique violation aborts the whole statement, nothing of it is
# committed, and the exact form runs instead: ON CONFLICT decides user by user.
# Parameters: $1 app, $2 request, $3 target, $4 batch (JSON), $5 events on, $6 NOTIFY
# channel, and for the exact form $7 the dedupe window in seconds.
_DELIVER_TEMPLATE = """
WITH input AS (
    SELECT u AS user_id, k AS template_key, e AS event_name, o AS object_id, i AS identity,
           t AS title, b AS body, d AS data
    FROM json_to_recordset($4::json)
        AS r(u text, k text, e text, o text, i text, t text, b text, d jsonb)
), fresh AS (
    INSERT INTO dedupe AS d (app_id, target_id, user_id, template_key, request_id, seen_at)
    SELECT $1::text, $3::bigint, user_id, template_key, $2::uuid, now() FROM input
    {dedupe_conflict}
    RETURNING user_id, template_key
), ins AS (
    INSERT INTO notifications (app_id, request_id, target_id, user_id, template_key,
                               event_name, object_id, identity, title, body, data)
    SELECT $1::text, $2::uuid, $3::bigint, i.user_id, i.template_key, i.event_name,
           i.object_id, i.identity, i.title, i.body, i.data
    {ins_from}
    RETURNING id, event_name, object_id, identity, created_at
), events AS (
    SELECT json_agg(json_build_array($1::text, id, 'SENT', event_name, $3::bigint,
                                     floor(extract(epoch FROM created_at))::bigint,
                                     object_id, identity, $2::uuid::text) ORDER BY id) AS payload
    FROM ins WHERE $5::boolean AND (object_id IS NOT NULL OR identity IS NOT NULL)
), ob AS (
    INSERT INTO outbox (app_id, payload)
    SELECT $1::text, convert_to(payload::text, 'UTF8') FROM events WHERE payload IS NOT NULL
    RETURNING id, payload
), done AS (
    SELECT count(*) AS n, min(id) AS lo, max(id) AS hi, array_agg(id ORDER BY id) AS ids,
           count(*) FILTER (WHERE object_id IS NULL AND identity IS NULL) AS no_identifier
    FROM ins
)
SELECT done.n, done.ids, done.no_identifier, ob.id AS outbox_id, ob.payload,
       CASE WHEN done.n > 0 THEN pg_notify($6::text, json_build_object(
           'a', $1::text, 'r', $2::uuid::text, 'lo', done.lo, 'hi', done.hi)::text)
       END AS notified
FROM done LEFT JOIN ob ON true
"""

# Exact: a user seen within the window (dedupe row kept) or already in this request's feed
# rows (redelivery) is skipped; only the rows actually inserted get a SENT event.
_DELIVER_SQL = _DELIVER_TEMPLATE.format(
    dedupe_conflict="""ON CONFLICT (app_id, target_id, user_id, template_key) DO UPDATE
        SET request_id = excluded.request_id, seen_at = excluded.seen_at
        WHERE d.seen_at < now() - make_interval(secs => $7::float8)""",
    ins_from="""FROM input i JOIN fresh f USING (user_id, template_key)
    ON CONFLICT (app_id, request_id, user_id, template_key) DO NOTHING""")

# Fast: every user must be new (else a unique violation aborts it). The EXISTS makes the
# dedupe insert run first, so a retried chunk fails on its first row, before the feed insert.
_DELIVER_FAST_SQL = _DELIVER_TEMPLATE.format(
    dedupe_conflict="", ins_from="FROM input i WHERE EXISTS (SELECT FROM fresh)")

_FAILURES_SQL = """
INSERT INTO delivery_failures (app_id, request_id, target_id, user_id, template_key, reason)
SELECT $1, $2, $3, u, t, r FROM unnest($4::text[], $5::text[], $6::text[]) AS x(u, t, r)
ON CONFLICT DO NOTHING
"""


@dataclass(slots=True)
class Rendered:
    """One user's rendered notification, ready to insert."""

    user_id: str
    template_key: str
    event_name: str
    object_id: str | None
    identity: str | None
    title: str
    body: str
    data: Any


@dataclass(slots=True)
class Delivered:
    """What one batch did: rows inserted, and the outbox row holding their SENT events."""

    inserted: int = 0
    ids: list[int] = field(default_factory=list)
    no_identifier: int = 0
    outbox_id: int | None = None
    payload: bytes | None = None
    exact: bool = False  # the statement's exact (ON CONFLICT) form ran


async def deliver_batch(
    conn: asyncpg.Connection, *, app_id: str, request_id: str, target_id: int,
    rendered: Sequence[Rendered], failures: Sequence[tuple[str, str, str]],
    dedupe_window_s: float, events: bool,
) -> Delivered:
    """Insert a batch atomically, its SENT events (``events``: callback on) in the outbox."""
    out = Delivered()
    async with guard("deliver batch"), contextlib.AsyncExitStack() as stack:
        if failures:  # rare: two statements, so an explicit transaction
            await stack.enter_async_context(conn.transaction())
            await conn.execute(_FAILURES_SQL, app_id, request_id, target_id,
                               [f[0] for f in failures], [f[1] for f in failures],
                               [f[2] for f in failures])
        if rendered:
            # The batch travels as one JSON document (orjson, then PostgreSQL's parser, both
            # C) rather than eight arrays: asyncpg's array encoder checks every element
            # against abstract base classes, 20 % of a worker's time in the fan-out profile.
            batch = orjson.dumps([{"u": r.user_id, "k": r.template_key, "e": r.event_name,
                                   "o": r.object_id, "i": r.identity, "t": r.title,
                                   "b": r.body, "d": r.data} for r in rendered]).decode()
            args = (app_id, request_id, target_id, batch, events, FEED_CHANNEL)
            row = None
            # Inside an explicit transaction (failures to record, or the caller's) a failed
            # statement would abort it: the exact form only.
            if not failures and not conn.is_in_transaction():
                try:
                    row = await conn.fetchrow(_DELIVER_FAST_SQL, *args)
                except asyncpg.exceptions.UniqueViolationError:
                    out.exact = True  # someone was seen before: decide user by user
            else:
                out.exact = True
            if row is None:
                row = await conn.fetchrow(_DELIVER_SQL, *args, dedupe_window_s)
            out.inserted, out.no_identifier = int(row["n"]), int(row["no_identifier"])
            out.ids = list(row["ids"] or ())
            out.outbox_id = row["outbox_id"]
            out.payload = bytes(row["payload"]) if row["payload"] is not None else None
    return out


async def batch_rows_for_users(pool: asyncpg.Pool, app_id: str, request_id: str, lo: int,
                               hi: int, users: Sequence[str]) -> list[asyncpg.Record]:
    """The rows of one delivered batch that belong to ``users``.

    A batch is named by the NOTIFY that ``_DELIVER_SQL`` sends on commit: app, request and
    the lowest and highest row id (small whatever the batch size; payloads stop at 8,000
    bytes).
    """
    async with guard("stream rows"):
        return list(await pool.fetch(
            f"SELECT user_id, {NOTIFICATION_COLUMNS} FROM notifications"
            " WHERE app_id = $1 AND request_id = $2::uuid AND user_id = ANY($3::text[])"
            " AND id BETWEEN $4 AND $5 ORDER BY id", app_id, request_id, list(users), lo, hi))


async def list_feed(pool: asyncpg.Pool, app_id: str, user_id: str, *, limit: int,
                    before: int | None) -> tuple[list[asyncpg.Record], int]:
    async with guard("list feed"):
        rows = await pool.fetch(
            f"SELECT {NOTIFICATION_COLUMNS} FROM notifications"
            " WHERE app_id = $1 AND user_id = $2 AND ($3::bigint IS NULL OR id < $3)"
            " ORDER BY id DESC LIMIT $4", app_id, user_id, before, limit)
        unread = await pool.fetchval(
            "SELECT count(*) FROM notifications WHERE app_id = $1 AND user_id = $2"
            " AND read_at IS NULL", app_id, user_id)
    return list(rows), int(unread)


async def feed_after(pool: asyncpg.Pool, app_id: str, user_id: str, after: int,
                     limit: int) -> list[asyncpg.Record]:
    """The newest ``limit`` notifications with an id above ``after``, oldest first."""
    async with guard("feed after"):
        rows = await pool.fetch(
            f"SELECT {NOTIFICATION_COLUMNS} FROM notifications"
            " WHERE app_id = $1 AND user_id = $2 AND id > $3 ORDER BY id DESC LIMIT $4",
            app_id, user_id, after, limit)
    return list(reversed(rows))


async def mark_read(pool: asyncpg.Pool, app_id: str, user_id: str, ids: Sequence[int] | None,
                    make_events: Any) -> tuple[list[asyncpg.Record], int | None, bytes | None]:
    """Mark read (``ids`` None: all unread); returns (newly read rows, outbox id, payload).

    Only a row whose ``read_at`` was NULL is returned, so each yields at most one READ.
    """
    async with guard("mark read"), pool.acquire() as conn, conn.transaction():
        rows = list(await conn.fetch(
            "UPDATE notifications SET read_at = now()"
            " WHERE app_id = $1 AND user_id = $2 AND read_at IS NULL"
            " AND ($3::bigint[] IS NULL OR id = ANY($3::bigint[]))"
            " RETURNING id, user_id, template_key, event_name, object_id, identity, target_id,"
            " read_at", app_id, user_id, list(ids) if ids is not None else None))
        outbox_id = None
        payload = make_events(rows) if rows else None
        if payload is not None:
            outbox_id = await conn.fetchval(
                "INSERT INTO outbox (app_id, payload) VALUES ($1, $2) RETURNING id",
                app_id, payload)
    return rows, outbox_id, payload


async def get_notification(pool: asyncpg.Pool, app_id: str, user_id: str,
                           notification_id: int) -> asyncpg.Record | None:
    async with guard("get notification"):
        return await pool.fetchrow(
            f"SELECT {NOTIFICATION_COLUMNS} FROM notifications"
            " WHERE app_id = $1 AND user_id = $2 AND id = $3", app_id, user_id, notification_id)


def notification_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"], "template_key": row["template_key"], "title": row["title"],
        "body": row["body"], "data": row["data"], "target_id": row["target_id"],
        "created_at": row["created_at"].isoformat(),
        "read_at": row["read_at"].isoformat() if row["read_at"] else None,
    }


# ---------------------------------------------------------------- outbox

async def delete_outbox(pool: asyncpg.Pool, outbox_id: int) -> None:
    async with guard("delete outbox"):
        await pool.execute("DELETE FROM outbox WHERE id = $1", outbox_id)


async def stale_outbox(conn: asyncpg.Connection, older_than_s: float,
                       limit: int = 100) -> list[asyncpg.Record]:
    """Outbox rows left behind (the publisher died); locked for this transaction."""
    return list(await conn.fetch(
        "SELECT id, app_id, payload FROM outbox"
        " WHERE created_at < now() - make_interval(secs => $1)"
        " ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED", older_than_s, limit))


async def sweep_dedupe(pool: asyncpg.Pool, window_s: float, limit: int = 50_000) -> int:
    """Delete dedupe rows older than the window, a bounded batch at a time."""
    async with guard("sweep dedupe"):
        status = await pool.execute(
            "DELETE FROM dedupe WHERE ctid = ANY(ARRAY(SELECT ctid FROM dedupe"
            " WHERE seen_at < now() - make_interval(secs => $1) LIMIT $2))", window_s, limit)
    return int(status.split()[-1])


# ---------------------------------------------------------------- idempotency keys

async def claim_idempotency_key(pool: asyncpg.Pool, app_id: str, key: str,
                                window_s: float) -> tuple[bool, Any]:
    """Claim ``key``; returns (claimed, stored response of an earlier claim or None)."""
    async with guard("idempotency key"):
        row = await pool.fetchrow(
            "INSERT INTO idempotency_keys AS k (app_id, key) VALUES ($1, $2)"
            " ON CONFLICT (app_id, key) DO UPDATE SET response = NULL, created_at = now()"
            " WHERE k.created_at < now() - make_interval(secs => $3)"
            " RETURNING response", app_id, key, window_s)
        if row is not None:
            return True, None
        prev = await pool.fetchval(
            "SELECT response FROM idempotency_keys WHERE app_id = $1 AND key = $2", app_id, key)
    return False, prev


async def finish_idempotency_key(pool: asyncpg.Pool, app_id: str, key: str,
                                 response: Any | None) -> None:
    """Store the answer for a claimed key, or release the claim (response None)."""
    async with guard("idempotency key"):
        if response is None:
            await pool.execute(
                "DELETE FROM idempotency_keys WHERE app_id = $1 AND key = $2", app_id, key)
        else:
            await pool.execute(
                "UPDATE idempotency_keys SET response = $3 WHERE app_id = $1 AND key = $2",
                app_id, key, response)


# ---------------------------------------------------------------- stats

async def campaign_stats(pool: asyncpg.Pool, app_id: str, target_id: int) -> dict[str, int]:
    async with guard("campaign stats"):
        row = await pool.fetchrow(
            "SELECT count(*) AS sent, count(read_at) AS read FROM notifications"
            " WHERE app_id = $1 AND target_id = $2", app_id, target_id)
        failed = await pool.fetchval(
            "SELECT count(*) FROM delivery_failures WHERE app_id = $1 AND target_id = $2",
            app_id, target_id)
    return {"sent": int(row["sent"]), "read": int(row["read"]), "failed": int(failed)}
