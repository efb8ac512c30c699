"""Cold caches under concurrency: one PostgreSQL query per key, observed on the real pool.

The queries are counted with asyncpg's query logger on every connection of a real pool (what
the driver actually sent to PostgreSQL), not with a stand-in for our own code.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from sbct_pipeline import auth, storage
from sbct_pipeline.api import provision_app
from sbct_pipeline.auth import Authenticator
from sbct_pipeline.errors import BadRequest, Unauthorized
from sbct_pipeline.ingress import WebhookGuards
from sbct_pipeline.settings import Settings

N = 64


class Counted:
    """A real pool whose connections report every statement they send."""

    def __init__(self) -> None:
        self.queries: list[str] = []
        self.pool: asyncpg.Pool

    def count(self, needle: str) -> int:
        return sum(needle in q for q in self.queries)

    async def _init(self, conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda q: self.queries.append(q.query))


@pytest.fixture
async def counted(settings: Settings) -> AsyncIterator[Counted]:
    c = Counted()
    c.pool = await asyncpg.create_pool(settings.database_url, min_size=10, max_size=10,
                                       init=c._init)
    yield c
    await c.pool.close()


async def test_concurrent_requests_on_a_cold_token_cache_make_one_query(
        counted: Counted, monkeypatch: pytest.MonkeyPatch) -> None:
    """64 requests with one token on a cold (then expired) cache query api_tokens once each time."""
    app = await provision_app(counted.pool, "t")
    a = Authenticator(counted.pool, None)
    counted.queries.clear()
    got = await asyncio.gather(*(a.app_for_token(app["api_token"]) for _ in range(N)))
    assert got == [app["app_id"]] * N
    assert counted.count("FROM api_tokens") == 1
    # Warm: no query at all.
    await asyncio.gather(*(a.app_for_token(app["api_token"]) for _ in range(N)))
    assert counted.count("FROM api_tokens") == 1
    # Expired under load: one refresh again.
    monkeypatch.setattr(auth, "CACHE_TTL_S", 0.05)
    a.forget()
    await a.app_for_token(app["api_token"])
    await asyncio.sleep(0.1)
    await asyncio.gather(*(a.app_for_token(app["api_token"]) for _ in range(N)))
    assert counted.count("FROM api_tokens") == 3


async def test_concurrent_requests_with_a_bad_token_all_get_401_from_one_query(
        counted: Counted) -> None:
    """A wrong secret for a real token id: every concurrent request is refused, one query."""
    app = await provision_app(counted.pool, "t")
    wrong = app["api_token"].rsplit(".", 1)[0] + ".wrong-secret"
    a = Authenticator(counted.pool, None)
    counted.queries.clear()
    results = await asyncio.gather(*(a.app_for_token(wrong) for _ in range(N)),
                                   return_exceptions=True)
    assert all(isinstance(r, Unauthorized) and r.code == "invalid_token" for r in results)
    assert counted.count("FROM api_tokens") == 1


async def test_a_token_forgotten_during_its_lookup_is_not_cached(counted: Counted) -> None:
    """forget() while a look-up waits: the look-up answers its callers but caches nothing."""
    app = await provision_app(counted.pool, "t")
    a = Authenticator(counted.pool, None)
    async with counted.pool.acquire() as locker:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE api_tokens IN ACCESS EXCLUSIVE MODE")
        counted.queries.clear()
        waiting = asyncio.gather(*(a.app_for_token(app["api_token"]) for _ in range(8)))
        await asyncio.sleep(0.2)  # the look-up is now blocked on the lock
        a.forget(app["token_id"])
        await tx.rollback()
        assert await waiting == [app["app_id"]] * 8
    assert counted.count("FROM api_tokens") == 1
    await a.app_for_token(app["api_token"])
    assert counted.count("FROM api_tokens") == 2, "the forgotten look-up filled the cache"


async def test_concurrent_webhooks_on_a_cold_template_cache_make_one_query(
        counted: Counted, settings: Settings) -> None:
    """64 webhooks naming the same templates on a cold cache check them with one query."""
    app = await provision_app(counted.pool, "t")
    for key in ("a", "b"):
        await storage.put_template(counted.pool, app["app_id"], key, name=key, title="t",
                                   body="b", data=None, variables=[])
    guards = WebhookGuards(settings, counted.pool, broker=None)  # type: ignore[arg-type]
    counted.queries.clear()
    await asyncio.gather(*(guards.templates_exist(app["app_id"], {"a", "b"})
                           for _ in range(N)))
    assert counted.count("FROM templates") == 1
    # An unknown key is still refused, naming it, for every caller of the shared query.
    results = await asyncio.gather(*(guards.templates_exist(app["app_id"], {"a", "zz"})
                                     for _ in range(N)), return_exceptions=True)
    assert all(isinstance(r, BadRequest) and "'zz'" in r.message for r in results)
    assert counted.count("FROM templates") == 2
