"""API: token rotation, session tokens, the feed cursor, the SSE stream and campaign stats."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web

from sbct_pipeline import storage
from sbct_pipeline.broker import Broker
from sbct_pipeline.delivery import Worker
from sbct_pipeline.ingress import create_app
from sbct_pipeline.settings import Settings
from sbct_pipeline.stream import HUB, QUEUE_SIZE, Subscriber

from .conftest import Api, eventually, serve, webhook

SINGLE = "/clevertap/notifications/single"
MULTI = "/clevertap/notifications/multi"


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[tuple[web.Application, Api]]:
    """The ingress over real HTTP, with its application object (to look at the stream hub)."""
    settings = settings.with_overrides(stream_heartbeat_s=0.3)
    app = create_app(settings)
    runner = await serve(app, settings.http_port)
    async with aiohttp.ClientSession() as session:
        yield app, Api(f"http://127.0.0.1:{settings.http_port}", session)
    await runner.cleanup()


async def _insert(pool: asyncpg.Pool, app_id: str, user_id: str, n: int,
                  title: str = "t") -> list[int]:
    """Store ``n`` notifications the way a worker does (one batch, one transaction)."""
    rendered = [storage.Rendered(user_id, f"k{i}", "E", None, None, f"{title}{i}", "b", None)
                for i in range(n)]
    async with pool.acquire() as conn:
        done = await storage.deliver_batch(
            conn, app_id=app_id, request_id=str(uuid.uuid4()), target_id=7, rendered=rendered,
            failures=[], dedupe_window_s=0, events=False)
    return done.ids


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------- admin: API tokens

async def test_api_token_rotation_and_deletion(ingress: Api) -> None:
    """A new token works beside the old one; a deleted token stops working at once."""
    app = await ingress.new_app()
    app_id, old = app["app_id"], app["api_token"]
    status, new = await ingress.call("POST", f"/v1/apps/{app_id}/api_tokens", admin=True)
    assert status == 201 and new["api_token"].startswith("sbct_") and new["app_id"] == app_id
    for tok in (old, new["api_token"]):
        status, _ = await ingress.call("GET", "/v1/templates", token=tok)
        assert status == 200
    status, listing = await ingress.call("GET", f"/v1/apps/{app_id}/api_tokens", admin=True)
    assert status == 200
    assert {t["token_id"] for t in listing["api_tokens"]} == {app["token_id"], new["token_id"]}
    assert old not in orjson.dumps(listing).decode()
    assert all(set(t) == {"token_id", "created_at"} for t in listing["api_tokens"])
    # The old token is in the auth cache now; deletion must still take effect at once.
    status, _ = await ingress.call("DELETE", f"/v1/apps/{app_id}/api_tokens/{app['token_id']}",
                                   admin=True)
    assert status == 204
    status, err = await ingress.call("GET", "/v1/templates", token=old)
    assert status == 401 and err["error"]["code"] == "invalid_token"
    status, _ = await ingress.call("GET", "/v1/templates", token=new["api_token"])
    assert status == 200
    status, err = await ingress.call("DELETE", f"/v1/apps/{app_id}/api_tokens/{app['token_id']}",
                                     admin=True)
    assert status == 404 and app["token_id"] in err["error"]["message"]
    status, err = await ingress.call("POST", "/v1/apps/app_nope/api_tokens", admin=True)
    assert status == 404 and "app_nope" in err["error"]["message"]
    status, _ = await ingress.call("POST", f"/v1/apps/{app_id}/api_tokens",
                                   token=new["api_token"])
    assert status == 401


# ---------------------------------------------------------------- session tokens

async def test_session_token_reads_and_marks_only_its_user(ingress: Api,
                                                           pool: asyncpg.Pool) -> None:
    """A session token reads and marks its user's feed; another user's is 403, expiry 401."""
    app = await ingress.new_app()
    tok = app["api_token"]
    ids = await _insert(pool, app["app_id"], "ana", 2)
    await _insert(pool, app["app_id"], "bob", 1)
    status, st = await ingress.call("POST", "/v1/users/ana/session_tokens", token=tok)
    assert status == 201 and st["token"].startswith("sbcs_") and st["expires_in"] == 3600
    stored = await pool.fetchval("SELECT token_hash FROM session_tokens")
    assert bytes(stored) == storage.hash_token(st["token"])
    h = _bearer(st["token"])
    status, feed = await ingress.call("GET", "/v1/users/ana/notifications", headers=h)
    assert status == 200 and [n["id"] for n in feed["notifications"]] == ids[::-1]
    status, n = await ingress.call("POST", f"/v1/users/ana/notifications/{ids[0]}/read",
                                   headers=h)
    assert status == 200 and n["read_at"] is not None
    status, res = await ingress.call("POST", "/v1/users/ana/notifications/read_all", headers=h)
    assert status == 200 and res == {"marked_read": 1}
    for method, path in (("GET", "/v1/users/bob/notifications"),
                         ("POST", "/v1/users/bob/notifications/read_all"),
                         ("GET", "/v1/users/bob/notifications/stream")):
        status, err = await ingress.call(method, path, headers=h)
        assert status == 403 and err["error"]["code"] == "wrong_user", path
    assert await pool.fetchval("SELECT count(*) FROM notifications WHERE user_id = 'bob'"
                               " AND read_at IS NULL") == 1
    # EventSource clients pass the session token in the query; the same scope applies.
    status, err = await ingress.call(
        "GET", f"/v1/users/bob/notifications/stream?access_token={st['token']}")
    assert status == 403 and err["error"]["code"] == "wrong_user"
    async with ingress.session.get(f"{ingress.base}/v1/users/ana/notifications/stream",
                                   params={"access_token": st["token"]}) as resp:
        assert resp.status == 200 and await resp.content.readline() == b": connected\n"
    # A session token is not an app token: it cannot manage templates or mint tokens.
    status, _ = await ingress.call("GET", "/v1/templates", headers=h)
    assert status == 401
    status, _ = await ingress.call("POST", "/v1/users/ana/session_tokens", headers=h)
    assert status == 401
    status, err = await ingress.call("GET", "/v1/users/ana/notifications",
                                     headers=_bearer(st["token"] + "x"))
    assert status == 401 and err["error"]["code"] == "invalid_token"
    status, err = await ingress.call("GET", "/v1/users/ana/notifications")
    assert status == 401 and "session token" in err["error"]["message"]
    # Expiry: a fresh token (not cached yet) whose expiry has passed.
    _, st2 = await ingress.call("POST", "/v1/users/ana/session_tokens", token=tok)
    await pool.execute("UPDATE session_tokens SET expires_at = now() - interval '1 second'"
                       " WHERE token_hash = $1", storage.hash_token(st2["token"]))
    status, err = await ingress.call("GET", "/v1/users/ana/notifications",
                                     headers=_bearer(st2["token"]))
    assert status == 401 and err["error"]["code"] == "token_expired"


# ---------------------------------------------------------------- feed

async def test_cursor_is_stable_while_notifications_arrive(ingress: Api,
                                                           pool: asyncpg.Pool) -> None:
    """Paging with `before` sees each old notification once even as new ones arrive."""
    app = await ingress.new_app()
    tok = app["api_token"]
    old = await _insert(pool, app["app_id"], "p", 7)
    seen: list[int] = []
    cursor = ""
    pages = 0
    while True:
        q = f"?limit=3&before={cursor}" if cursor else "?limit=3"
        status, body = await ingress.call("GET", f"/v1/users/p/notifications{q}", token=tok)
        assert status == 200
        if pages == 0:
            assert body["unread_count"] == 7
        seen.extend(n["id"] for n in body["notifications"])
        pages += 1
        await _insert(pool, app["app_id"], "p", 2, title=f"new{pages}")  # arrives meanwhile
        if not body["next"]:
            break
        cursor = body["next"]
    assert seen == sorted(old, reverse=True)
    _, body = await ingress.call("GET", "/v1/users/p/notifications?limit=100", token=tok)
    assert body["unread_count"] == 7 + 2 * pages and body["next"] is None
    status, err = await ingress.call("GET", "/v1/users/p/notifications?limit=0", token=tok)
    assert status == 400 and "limit" in err["error"]["message"]
    status, err = await ingress.call("GET", "/v1/users/p/notifications?before=x", token=tok)
    assert status == 400 and "before" in err["error"]["message"]


async def test_stream_pushes_each_delivered_notification(
        served: tuple[web.Application, Api], worker: Any, pool: asyncpg.Pool) -> None:
    """A connected SSE client gets one `notification` event per delivery, same JSON as the list."""
    app, api = served
    acct = await api.new_app()
    tok = acct["api_token"]
    await api.template(tok)
    _, st = await api.call("POST", "/v1/users/s1/session_tokens", token=tok)
    url = f"{api.base}/v1/users/s1/notifications/stream"
    async with api.session.get(url, headers=_bearer(st["token"])) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert await resp.content.readline() == b": connected\n"
        # Two deliveries: a Journey (single) and a Campaign (multi, chunked, other users too).
        await api.call("POST", SINGLE, token=tok, json=webhook(users=["s1"], target_id=1))
        await api.call("POST", MULTI, token=tok,
                       json=webhook(users=["x", "s1", "y"], target_id=2))
        events: list[dict[str, Any]] = []
        heartbeats = 0
        async with asyncio.timeout(20):
            while len(events) < 2 or heartbeats == 0:
                line = (await resp.content.readline()).decode()
                if line.startswith(": keepalive"):
                    heartbeats += 1
                elif line.startswith("event:"):
                    assert line == "event: notification\n"
                elif line.startswith("data:"):
                    events.append(orjson.loads(line[5:]))
    assert sorted(e["target_id"] for e in events) == [1, 2]
    _, feed = await api.call("GET", "/v1/users/s1/notifications", token=tok)
    assert sorted(feed["notifications"], key=lambda n: n["id"]) == \
        sorted(events, key=lambda e: e["id"])
    # The client left: its subscription is gone once the next heartbeat fails to write.
    await eventually(lambda: _no_subscribers(app))


async def _no_subscribers(app: web.Application) -> bool:
    return not app[HUB]._subs


async def test_stream_reaches_clients_of_every_ingress_from_any_worker(
        settings: Settings, pool: asyncpg.Pool) -> None:
    """Two ingress processes' streams both see a batch committed by an unrelated connection."""
    apps = [create_app(settings.with_overrides(http_port=0)) for _ in range(2)]
    runners = []
    from .conftest import free_port

    ports = [free_port(), free_port()]
    for a, p in zip(apps, ports, strict=True):
        runners.append(await serve(a, p))
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(f"http://127.0.0.1:{ports[0]}", session)
            acct = await api.new_app()
            tok = acct["api_token"]
            streams = [await session.get(f"http://127.0.0.1:{p}/v1/users/m/notifications/"
                                         "stream", headers={"Api-token": tok}) for p in ports]
            for s in streams:
                assert await s.content.readline() == b": connected\n"
            ids = await _insert(pool, acct["app_id"], "m", 3)  # "another worker process"
            for s in streams:
                got: list[int] = []
                async with asyncio.timeout(10):
                    while len(got) < 3:
                        line = await s.content.readline()
                        if line.startswith(b"data:"):
                            got.append(orjson.loads(line[5:])["id"])
                assert got == ids
            # Commit -> event on the client, one batch at a time (pytest -s prints it).
            loop = asyncio.get_running_loop()
            lags: list[float] = []
            for _ in range(20):
                t0 = loop.time()
                await _insert(pool, acct["app_id"], "m", 1)
                for s in streams:
                    while not (await s.content.readline()).startswith(b"data:"):
                        pass
                    lags.append(loop.time() - t0)
            lags.sort()
            print(f"stream latency batch insert+commit->client over {len(lags)} events: median "
                  f"{lags[len(lags) // 2] * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms")
            for s in streams:
                s.close()
    finally:
        for r in runners:
            await r.cleanup()


def test_slow_stream_client_is_cut_off_not_buffered() -> None:
    """A subscriber whose queue is full is closed (end marker queued), never grows unbounded."""
    sub = Subscriber("a", "u")
    for i in range(QUEUE_SIZE + 50):
        sub.offer({"id": i + 1})
    assert sub.overflowed and sub.closed
    assert sub.queue.qsize() == QUEUE_SIZE + 1
    items = [sub.queue.get_nowait() for _ in range(QUEUE_SIZE + 1)]
    assert items[-1] is None and [i["id"] for i in items[:-1]] == list(  # type: ignore[index]
        range(1, QUEUE_SIZE + 1))
    sub2 = Subscriber("a", "u")
    sub2.offer({"id": 5})
    sub2.offer({"id": 5})
    assert sub2.queue.qsize() == 1


# ---------------------------------------------------------------- templates and stats

async def test_stats_count_sent_read_and_failed(
        settings: Settings, ingress: Api, pool: asyncpg.Pool) -> None:
    """Missing variables and a template deleted before delivery count as failed, with reasons."""
    acct = await ingress.new_app()
    tok = acct["api_token"]
    await ingress.template(tok)
    await ingress.template(tok, "gone", "Bye {name}", "x")
    status, err = await ingress.call("POST", SINGLE, token=tok,
                                     json=webhook(template_key="never_made"))
    assert status == 400 and "never_made" in err["error"]["message"]
    status, _ = await ingress.call("POST", MULTI, token=tok,
                                   json=webhook(users=["a", "b"], target_id=99))
    assert status == 200
    status, _ = await ingress.call("POST", SINGLE, token=tok, json=webhook(
        users=["c"], target_id=99, variables={"name": "Cy"}))  # no order_id
    assert status == 200
    status, _ = await ingress.call("POST", SINGLE, token=tok,
                                   json=webhook(users=["d"], target_id=99, template_key="gone"))
    assert status == 200
    # Deleted after the ingress accepted it, before any worker ran.
    status, _ = await ingress.call("DELETE", "/v1/templates/gone", token=tok)
    assert status == 204
    b = Broker(settings)
    await b.connect(consume=True)
    w = Worker(pool, b, settings)
    await w.start()
    try:
        await eventually(lambda: pool.fetchval(
            "SELECT (SELECT count(*) FROM notifications) = 2"
            " AND (SELECT count(*) FROM delivery_failures) = 2"))
    finally:
        await w.stop()
        await b.close()
    reasons = dict(await pool.fetch("SELECT user_id, reason FROM delivery_failures"))
    assert "order_id" in reasons["c"] and "'gone' no longer exists" in reasons["d"]
    _, feed = await ingress.call("GET", "/v1/users/a/notifications", token=tok)
    await ingress.call("POST", f"/v1/users/a/notifications/{feed['notifications'][0]['id']}/read",
                       token=tok)
    status, stats = await ingress.call("GET", "/v1/campaigns/99/stats", token=tok)
    assert status == 200
    assert stats == {"target_id": 99, "sent": 2, "read": 1, "failed": 2, "read_rate": 0.5}
    status, stats = await ingress.call("GET", "/v1/campaigns/12345/stats", token=tok)
    assert stats == {"target_id": 12345, "sent": 0, "read": 0, "failed": 0, "read_rate": 0.0}
    status, err = await ingress.call("GET", "/v1/campaigns/abc/stats", token=tok)
    assert status == 400 and "target_id" in err["error"]["message"]


# ---------------------------------------------------------------- multi-tenancy

PUBLIC = {("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics"), ("get", "/openapi.json")}


async def _snapshot(pool: asyncpg.Pool, app_id: str) -> dict[str, Any]:
    """Everything of one app that any route could read or change."""
    q = {
        "app": "SELECT app_id, name FROM apps WHERE app_id = $1",
        "tokens": "SELECT token_id, token_hash FROM api_tokens WHERE app_id = $1 ORDER BY 1",
        "integration": "SELECT event_callback, project_id, passcode, api_endpoint"
                       " FROM integrations WHERE app_id = $1",
        "templates": "SELECT key, title, body, data, updated_at FROM templates"
                     " WHERE app_id = $1 ORDER BY key",
        "feed": "SELECT id, user_id, title, read_at FROM notifications WHERE app_id = $1"
                " ORDER BY id",
        "sessions": "SELECT token_id, user_id FROM session_tokens WHERE app_id = $1 ORDER BY 1",
    }
    return {k: [dict(r) for r in await pool.fetch(sql, app_id)] for k, sql in q.items()}


async def test_no_credential_of_app_b_reaches_app_a_on_any_route(
        settings: Settings, ingress: Api, pool: asyncpg.Pool) -> None:
    """Every route, called with app B's token or session token, shows and changes nothing of A."""
    from .test_openapi import registered_routes

    a = await ingress.new_app()
    status, _ = await ingress.call(
        "PUT", f"/v1/apps/{a['app_id']}/integrations/clevertap", admin=True,
        json={"event_callback": True, "project_id": "PROJ-A", "passcode": "A-PASSCODE-TAIL9",
              "api_endpoint": "https://in1.api.clevertap.com"})
    assert status == 200
    await ingress.template(a["api_token"], "a_tpl", "SECRET-A {name}", "SECRET-A body")
    a_ids = await _insert(pool, a["app_id"], "ua", 2, title="SECRET-A")
    nid = a_ids[0]
    await pool.execute("UPDATE notifications SET target_id = 4242 WHERE app_id = $1",
                       a["app_id"])
    _, a_session = await ingress.call("POST", "/v1/users/ua/session_tokens",
                                      token=a["api_token"])
    b = await ingress.new_app()
    _, b_session = await ingress.call("POST", "/v1/users/ua/session_tokens",
                                      token=b["api_token"])
    before = await _snapshot(pool, a["app_id"])
    markers = ["SECRET-A", "PROJ-A", "AIL9", a["app_id"], a["token_id"], a["api_token"],
               a_session["token"]]
    params = {"app_id": a["app_id"], "key": "a_tpl", "user_id": "ua", "id": str(nid),
              "target_id": "4242", "token_id": a["token_id"],
              "path": "js/main.js"}  # a dashboard file: public, holds nothing of any app
    bodies: dict[str, Any] = {
        "/v1/apps": {"name": "b-made"},
        "/v1/apps/{app_id}/integrations/clevertap": {"event_callback": False},
        "/v1/templates/{key}": {"title": "B was here", "body": "B"},
        "/clevertap/notifications/single": webhook(users=["ua"], template_key="a_tpl",
                                                   target_id=4242),
        "/clevertap/notifications/multi": webhook(users=["ua"], template_key="a_tpl",
                                                  target_id=4242),
    }
    credentials = {"b api token": {"Api-token": b["api_token"]},
                   "b session token": _bearer(b_session["token"])}
    routes = registered_routes(settings)
    walked: set[tuple[str, str]] = set()
    for method, template in sorted(routes):
        names = re.findall(r"{(\w+)}", template)
        unknown = [n for n in names if n not in params]
        assert not unknown, f"{method} {template}: add a value of app A for {unknown}"
        path = template.format(**params)
        for cred_name, headers in credentials.items():
            if template.endswith("/stream"):
                await _stream_sees_only_b(ingress, pool, path, headers, a["app_id"],
                                          b["app_id"], a_ids)
                continue
            status, body = await ingress.call(method.upper(), path, headers=headers,
                                              json=bodies.get(template))
            text = orjson.dumps(body).decode() if not isinstance(body, str) else body
            where = f"{method.upper()} {path} with {cred_name} -> {status}"
            assert status < 500, where
            if (method, template) not in PUBLIC and template.startswith("/v1/apps"):
                assert status == 401, f"{where}: admin routes take only the admin token"
            if 200 <= status < 300:
                leaked = [m for m in markers if m in text]
                assert not leaked, f"{where} leaked {leaked}: {text[:300]}"
        walked.add((method, template))
    assert walked == routes
    assert await _snapshot(pool, a["app_id"]) == before
    # A's own credentials still see all of it: the walk did not just break the app.
    _, feed = await ingress.call("GET", "/v1/users/ua/notifications", token=a["api_token"])
    assert len(feed["notifications"]) == 2 and feed["unread_count"] == 2


async def _stream_sees_only_b(ingress: Api, pool: asyncpg.Pool, path: str,
                              headers: dict[str, str], a_app: str, b_app: str,
                              a_ids: list[int]) -> None:
    """B's stream of user "ua" gets B's deliveries and never A's, delivered just before."""
    async with ingress.session.get(ingress.base + path, headers=headers) as resp:
        assert resp.status == 200
        assert await resp.content.readline() == b": connected\n"
        await _insert(pool, a_app, "ua", 1, title="SECRET-A")
        b_ids = await _insert(pool, b_app, "ua", 1, title="b-own")
        await _insert(pool, a_app, "ua", 1, title="SECRET-A")
        b_ids += await _insert(pool, b_app, "ua", 1, title="b-own")
        got: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while len(got) < 2:
                line = await resp.content.readline()
                if line.startswith(b"data:"):
                    got.append(orjson.loads(line[5:]))
    assert sorted(n["id"] for n in got) == sorted(b_ids)
    assert all("SECRET-A" not in n["title"] for n in got)
    # Undo the two probes of A so the walk can compare A's state before and after.
    await pool.execute("DELETE FROM notifications WHERE app_id = $1 AND id <> ALL($2::bigint[])",
                       a_app, a_ids)


async def test_open_streams_end_cleanly_at_shutdown(settings: Settings) -> None:
    """Server shutdown ends open streams at once (a finished response), not at its timeout."""
    from .conftest import free_port

    port = free_port()
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=600)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stopping: asyncio.Task[None] | None = None
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(f"http://127.0.0.1:{port}", session)
            acct = await api.new_app()
            async with session.get(f"{api.base}/v1/users/z/notifications/stream",
                                   headers={"Api-token": acct["api_token"]}) as resp:
                assert await resp.content.readline() == b": connected\n"
                stopping = asyncio.create_task(runner.cleanup())
                # A handler cut off at the shutdown timeout would end in a payload error;
                # a stream the hub closed finishes its chunked body and reads to EOF.
                rest = await resp.content.read()
                assert rest.replace(b": keepalive", b"").strip() == b""
            await stopping
    finally:
        if stopping is None:
            await runner.cleanup()


async def test_stream_survives_a_lost_listen_connection(
        served: tuple[web.Application, Api], pool: asyncpg.Pool) -> None:
    """If PostgreSQL drops the LISTEN connection, the hub reconnects and streams go on."""
    app, api = served
    acct = await api.new_app()

    async def listener_pids() -> list[int]:
        return [r["pid"] for r in await pool.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE 'LISTEN %'")]

    (old,) = await eventually(listener_pids)
    async with api.session.get(f"{api.base}/v1/users/r/notifications/stream",
                               headers={"Api-token": acct["api_token"]}) as resp:
        assert await resp.content.readline() == b": connected\n"
        await pool.execute("SELECT pg_terminate_backend($1)", old)

        async def relistening() -> bool:
            pids = await listener_pids()
            return bool(pids) and old not in pids and app[HUB].listening.is_set()

        await eventually(relistening)
        ids = await _insert(pool, acct["app_id"], "r", 1)
        async with asyncio.timeout(10):
            while not (line := await resp.content.readline()).startswith(b"data:"):
                pass
        assert orjson.loads(line[5:])["id"] == ids[0]


async def test_reconnect_with_last_event_id_gets_what_was_missed(
        ingress: Api, pool: asyncpg.Pool) -> None:
    """A client reconnecting with Last-Event-ID first gets the notifications after that id."""
    acct = await ingress.new_app()
    ids = await _insert(pool, acct["app_id"], "l", 4)
    async with ingress.session.get(
            f"{ingress.base}/v1/users/l/notifications/stream",
            headers={"Api-token": acct["api_token"], "Last-Event-ID": str(ids[1])}) as resp:
        assert await resp.content.readline() == b": connected\n"
        # The first batch's NOTIFY arriving only now (a busy hub fetches it late): the rows
        # up to Last-Event-ID are the client's already, the newer ones came in the catch-up.
        request_id = await pool.fetchval("SELECT request_id::text FROM notifications"
                                         " WHERE id = $1", ids[0])
        await pool.execute("SELECT pg_notify($1, $2)", storage.FEED_CHANNEL, orjson.dumps(
            {"a": acct["app_id"], "r": request_id, "lo": ids[0], "hi": ids[-1]}).decode())
        newer = await _insert(pool, acct["app_id"], "l", 1)
        got: list[int] = []
        event_ids: list[str] = []
        async with asyncio.timeout(10):
            while len(got) < 3:
                line = (await resp.content.readline()).decode()
                if line.startswith("id: "):
                    event_ids.append(line[4:].strip())
                elif line.startswith("data:"):
                    got.append(orjson.loads(line[5:])["id"])
    assert got == [ids[2], ids[3], newer[0]]
    assert event_ids == [str(i) for i in got]
    status, err = await ingress.call("GET", "/v1/users/l/notifications/stream",
                                     token=acct["api_token"], headers={"Last-Event-ID": "x"})
    assert status == 400 and "Last-Event-ID" in err["error"]["message"]
