"""storage.deliver_batch: the fast statement for new users, the exact one for users seen before.

A chunk is first inserted without ON CONFLICT; if any user was seen before the unique
violation aborts that statement and the exact (ON CONFLICT) form decides user by user. These
tests check what each path commits: feed rows, dedupe rows and the SENT payload.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import orjson

from sbct_pipeline import storage

APP = "app1"


def _rendered(users: list[str], key: str = "promo") -> list[storage.Rendered]:
    return [storage.Rendered(u, key, "Promo", f"__g{u}", u, f"Hi {u}", "b", {"u": u})
            for u in users]


async def _deliver(pool: asyncpg.Pool, users: list[str], *, request_id: str | None = None,
                   window_s: float = 3600, failures: list[tuple[str, str, str]] | None = None,
                   ) -> storage.Delivered:
    async with pool.acquire() as conn:
        return await storage.deliver_batch(
            conn, app_id=APP, request_id=request_id or str(uuid.uuid4()), target_id=9,
            rendered=_rendered(users), failures=failures or [], dedupe_window_s=window_s,
            events=True)


async def _feed_users(pool: asyncpg.Pool) -> list[str]:
    return [r["user_id"] for r in await pool.fetch(
        "SELECT user_id FROM notifications WHERE app_id = $1 ORDER BY user_id", APP)]


def _sent_users(done: storage.Delivered) -> list[str]:
    assert done.payload is not None
    return sorted(e[7] for e in orjson.loads(done.payload))


async def test_new_users_take_the_fast_statement(pool: asyncpg.Pool) -> None:
    done = await _deliver(pool, ["a", "b", "c"])
    assert (done.inserted, done.exact) == (3, False)
    assert _sent_users(done) == ["a", "b", "c"]
    assert await _feed_users(pool) == ["a", "b", "c"]
    assert await pool.fetchval("SELECT count(*) FROM dedupe") == 3
    # The outbox row holds exactly the payload returned (published after commit).
    stored = await pool.fetchval("SELECT payload FROM outbox WHERE id = $1", done.outbox_id)
    assert bytes(stored) == done.payload


async def test_retry_overlapping_a_chunk_inserts_and_reports_only_new_users(
        pool: asyncpg.Pool) -> None:
    """A retried webhook (new request) with two users seen before: only c and d are sent."""
    await _deliver(pool, ["a", "b"])
    done = await _deliver(pool, ["a", "b", "c", "d"])
    assert (done.inserted, done.exact) == (2, True)
    assert _sent_users(done) == ["c", "d"]
    assert await _feed_users(pool) == ["a", "b", "c", "d"]
    # The aborted fast attempt left nothing behind: one dedupe row and one outbox row each.
    assert await pool.fetchval("SELECT count(*) FROM dedupe") == 4
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 2


async def test_redelivery_after_the_dedupe_window_makes_no_second_row(
        pool: asyncpg.Pool) -> None:
    """Same request again once its dedupe rows are gone: the feed's unique key holds."""
    request_id = str(uuid.uuid4())
    await _deliver(pool, ["a", "b"], request_id=request_id)
    await pool.execute("DELETE FROM dedupe")  # what the sweeper does after the window
    done = await _deliver(pool, ["a", "b"], request_id=request_id)
    assert (done.inserted, done.exact, done.payload) == (0, True, None)
    assert await _feed_users(pool) == ["a", "b"]


async def test_seen_before_the_window_is_delivered_again(pool: asyncpg.Pool) -> None:
    """Past the dedupe window the same campaign user is a new notification (exact form)."""
    await _deliver(pool, ["a"])
    await pool.execute("UPDATE dedupe SET seen_at = now() - interval '2 hours'")
    done = await _deliver(pool, ["a", "b"], window_s=3600)
    assert (done.inserted, done.exact) == (2, True)
    assert await _feed_users(pool) == ["a", "a", "b"]


async def test_concurrent_overlapping_chunks_store_each_user_once(pool: asyncpg.Pool) -> None:
    """Two workers deliver overlapping chunks of two requests at once: one row per user."""
    users = [f"u{i}" for i in range(300)]
    for _ in range(3):
        await pool.execute("DELETE FROM notifications; DELETE FROM dedupe; DELETE FROM outbox")
        done = await asyncio.gather(_deliver(pool, users[:200]), _deliver(pool, users[100:]))
        assert await _feed_users(pool) == sorted(users)
        assert sum(d.inserted for d in done) == 300
        assert sorted(_sent_users(done[0]) + _sent_users(done[1])) == sorted(users)


async def test_failures_with_a_seen_user_commit_together(pool: asyncpg.Pool) -> None:
    """With failures to record the exact form runs in their transaction."""
    await _deliver(pool, ["a"])
    done = await _deliver(pool, ["a", "b"],
                          failures=[("c", "promo", "missing template variables: x")])
    assert (done.inserted, done.exact) == (1, True)
    assert await _feed_users(pool) == ["a", "b"]
    assert await pool.fetchval("SELECT reason FROM delivery_failures WHERE user_id = 'c'") \
        == "missing template variables: x"
