"""API: the admin, app and feed routes of CONTRACT sections 4 to 6.

Admin routes take ``Authorization: Bearer $SBCT_ADMIN_TOKEN``; app routes take the app's
``Api-token``; feed routes take the ``Api-token`` or a user's session token
(``Authorization: Bearer sbcs_...``, that user's feed only). Every handler resolves the caller's
app first, and every query is scoped by that app, so no token of app A reaches anything of
app B (``tests/test_api.py`` walks every route to prove it).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from aiohttp import web

from . import storage
from .auth import new_app_id, new_session_token, new_token
from .context import AUTH, OUTBOX, POOL, REQUEST_ID, SETTINGS
from .errors import BadRequest, NotFound
from .httputil import (
    int_query,
    json_response,
    limit_query,
    read_json,
    target_id_param,
    text_param,
)
from .stream import HUB, sse_event
from .templates import TemplateSyntaxError, compile_template

MAX_NAME = 200
MAX_TEXT = 10_000


def _json(data: Any, status: int = 200) -> web.Response:
    return json_response(data, status)


async def _body(request: web.Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_body")
    return body


def _str_field(body: dict[str, Any], name: str, *, required: bool = True, default: str = "",
               max_len: int = MAX_NAME) -> str:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"{name} is required", code="missing_field")
        return default
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string", code="invalid_field")
    if len(value) > max_len:
        raise BadRequest(f"{name} is longer than {max_len} characters", code="invalid_field")
    return value


async def _app_id(request: web.Request) -> str:
    return await request.app[AUTH].app_for_token(request.headers.get("Api-token"))


def _admin(request: web.Request) -> None:
    request.app[AUTH].check_admin(request.headers.get("Authorization"))


def _user_id(request: web.Request) -> str:
    return text_param(request, "user_id", MAX_NAME)


async def _feed_app(request: web.Request) -> tuple[str, str]:
    """(app_id, user_id) of a feed request: the app's token, or that user's session token."""
    user_id = _user_id(request)
    app_id = await request.app[AUTH].feed_app(request.headers.get("Api-token"),
                                              request.headers.get("Authorization"), user_id)
    return app_id, user_id


# ---------------------------------------------------------------- admin

async def create_app(request: web.Request) -> web.Response:
    _admin(request)
    body = await _body(request)
    name = _str_field(body, "name").strip()
    if not name:
        raise BadRequest("name must not be empty", code="invalid_field")
    result = await provision_app(request.app[POOL], name)
    return _json(result, status=201)


async def provision_app(pool: asyncpg.Pool, name: str) -> dict[str, str]:
    """Create an app and its first API token (also used by ``sbct-pipeline app create``)."""
    app_id = new_app_id()
    issued, token_hash = new_token()
    async with storage.guard("create app"), pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO apps (app_id, name) VALUES ($1, $2)", app_id, name)
        await conn.execute(
            "INSERT INTO api_tokens (token_id, app_id, token_hash) VALUES ($1, $2, $3)",
            issued.token_id, app_id, token_hash)
    return {"app_id": app_id, "name": name, "api_token": issued.token,
            "token_id": issued.token_id}


async def get_app(request: web.Request) -> web.Response:
    _admin(request)
    app_id = text_param(request, "app_id")
    row = await storage.get_app(request.app[POOL], app_id)
    if row is None:
        raise NotFound(f"no app {app_id!r}")
    return _json({"app_id": row["app_id"], "name": row["name"],
                  "created_at": row["created_at"].isoformat()})


async def _existing_app(request: web.Request) -> str:
    app_id = text_param(request, "app_id")
    if await storage.get_app(request.app[POOL], app_id) is None:
        raise NotFound(f"no app {app_id!r}")
    return app_id


async def list_api_tokens(request: web.Request) -> web.Response:
    _admin(request)
    app_id = await _existing_app(request)
    rows = await storage.list_tokens(request.app[POOL], app_id)
    return _json({"api_tokens": [{"token_id": r["token_id"],
                                  "created_at": r["created_at"].isoformat()} for r in rows]})


async def create_api_token(request: web.Request) -> web.Response:
    """Issue another token; the app's other tokens keep working until deleted (rotation)."""
    _admin(request)
    app_id = text_param(request, "app_id")
    issued, token_hash = new_token()
    row = await storage.create_token(request.app[POOL], issued.token_id, app_id, token_hash)
    if row is None:
        raise NotFound(f"no app {app_id!r}")
    return _json({"app_id": app_id, "token_id": issued.token_id, "api_token": issued.token,
                  "created_at": row["created_at"].isoformat()}, status=201)


async def delete_api_token(request: web.Request) -> web.Response:
    _admin(request)
    app_id = text_param(request, "app_id")
    token_id = text_param(request, "token_id")
    if not await storage.delete_token(request.app[POOL], app_id, token_id):
        raise NotFound(f"app {app_id!r} has no API token {token_id!r}")
    # At once on this process; other ingress processes drop it when their cache entry
    # expires (auth.CACHE_TTL_S).
    request.app[AUTH].forget(token_id)
    return web.Response(status=204)


def _validate_endpoint(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest("api_endpoint must be an http(s) base URL, e.g. "
                         "https://in1.api.clevertap.com", code="invalid_field")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        # "/1/upload" is appended to the base URL: after a query or fragment it would not be
        # part of the path, and every upload would go to the wrong place.
        raise BadRequest("api_endpoint must be a base URL without '?query' or '#fragment' "
                         "(the path /1/upload is appended to it), got " + repr(value[:100]),
                         code="invalid_field")
    return value.rstrip("/")


async def put_integration(request: web.Request) -> web.Response:
    _admin(request)
    app_id = await _existing_app(request)
    pool = request.app[POOL]
    body = await _body(request)
    callback = body.get("event_callback", False)
    if not isinstance(callback, bool):
        raise BadRequest("event_callback must be true or false", code="invalid_field")
    project_id = _str_field(body, "project_id", required=callback)
    passcode = _str_field(body, "passcode", required=callback)
    endpoint = _str_field(body, "api_endpoint", required=callback, max_len=500)
    if endpoint or callback:
        endpoint = _validate_endpoint(endpoint)
    if callback and (not project_id or not passcode):
        raise BadRequest("project_id and passcode are required when event_callback is on",
                         code="missing_field")
    integ = await storage.put_integration(pool, app_id, event_callback=callback,
                                          project_id=project_id, passcode=passcode,
                                          api_endpoint=endpoint)
    request.app[OUTBOX].integrations.invalidate(app_id)
    return _json(integ.public())


async def get_integration(request: web.Request) -> web.Response:
    _admin(request)
    app_id = text_param(request, "app_id")
    integ = await storage.get_integration(request.app[POOL], app_id)
    if integ is None:
        raise NotFound(f"app {app_id!r} has no CleverTap integration (PUT it first)")
    return _json(integ.public())


# ---------------------------------------------------------------- templates

def _template_json(row: asyncpg.Record) -> dict[str, Any]:
    return {"key": row["key"], "name": row["name"], "title": row["title"],
            "body": row["body"], "data": row["data"], "variables": list(row["variables"]),
            "created_at": row["created_at"].isoformat(),
            "updated_at": row["updated_at"].isoformat()}


def _template_key(request: web.Request) -> str:
    return text_param(request, "key", MAX_NAME)


async def put_template(request: web.Request) -> web.Response:
    app_id = await _app_id(request)
    key = _template_key(request)
    body = await _body(request)
    title = _str_field(body, "title", max_len=MAX_TEXT)
    text = _str_field(body, "body", max_len=MAX_TEXT)
    name = _str_field(body, "name", required=False, default=key)
    data = body.get("data")
    if data is not None and not isinstance(data, dict):
        raise BadRequest("data must be a JSON object", code="invalid_field")
    try:
        compiled = compile_template(key, title, text, data)
    except TemplateSyntaxError as exc:
        raise BadRequest(f"template syntax: {exc}", code="template_syntax") from None
    row, created = await storage.put_template(
        request.app[POOL], app_id, key, name=name, title=title, body=text, data=data,
        variables=compiled.variables)
    return _json(_template_json(row), status=201 if created else 200)


async def get_template(request: web.Request) -> web.Response:
    app_id = await _app_id(request)
    key = _template_key(request)
    row = await storage.get_template(request.app[POOL], app_id, key)
    if row is None:
        raise NotFound(f"no template {key!r}")
    return _json(_template_json(row))


async def list_templates(request: web.Request) -> web.Response:
    app_id = await _app_id(request)
    rows = await storage.list_templates(request.app[POOL], app_id)
    return _json({"templates": [_template_json(r) for r in rows]})


async def delete_template(request: web.Request) -> web.Response:
    app_id = await _app_id(request)
    key = _template_key(request)
    if not await storage.delete_template(request.app[POOL], app_id, key):
        raise NotFound(f"no template {key!r}")
    return web.Response(status=204)


# ---------------------------------------------------------------- feed

async def list_notifications(request: web.Request) -> web.Response:
    app_id, user_id = await _feed_app(request)
    limit = limit_query(request, 20, 100)
    before = int_query(request, "before", None, 1, 2**63 - 1)
    rows, unread = await storage.list_feed(request.app[POOL], app_id, user_id, limit=limit,
                                           before=before)
    nxt = str(rows[-1]["id"]) if len(rows) == limit else None
    return _json({"notifications": [storage.notification_json(r) for r in rows],
                  "next": nxt, "unread_count": unread})


async def _mark(request: web.Request, app_id: str, user_id: str,
                ids: list[int] | None) -> list[asyncpg.Record]:
    outbox = request.app[OUTBOX]
    enabled = await outbox.callback_enabled(app_id)

    def make(rows: list[asyncpg.Record]) -> bytes | None:
        return outbox.payload(app_id, "READ", rows, request[REQUEST_ID]) if enabled else None

    rows, outbox_id, payload = await storage.mark_read(request.app[POOL], app_id, user_id,
                                                       ids, make)
    await outbox.publish(outbox_id, payload, request[REQUEST_ID])
    return rows


async def read_notification(request: web.Request) -> web.Response:
    app_id, user_id = await _feed_app(request)
    try:
        nid = int(request.match_info["id"])
    except ValueError:
        raise NotFound("notification ids are integers") from None
    if not 1 <= nid < 2**63:
        raise NotFound(f"user {user_id!r} has no notification {nid}")
    await _mark(request, app_id, user_id, [nid])
    row = await storage.get_notification(request.app[POOL], app_id, user_id, nid)
    if row is None:
        raise NotFound(f"user {user_id!r} has no notification {nid}")
    return _json(storage.notification_json(row))


async def read_all(request: web.Request) -> web.Response:
    app_id, user_id = await _feed_app(request)
    rows = await _mark(request, app_id, user_id, None)
    return _json({"marked_read": len(rows)})


CATCH_UP_LIMIT = 100


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest("Last-Event-ID must be a notification id (an integer)",
                         code="invalid_param") from None
    if not 0 <= value < 2**63:
        raise BadRequest("Last-Event-ID is out of range", code="invalid_param")
    return value


async def stream_notifications(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: one ``notification`` event per new notification (see stream.py).

    Browsers' EventSource cannot set headers, so the session token may also come as the
    ``access_token`` query parameter (this route only). A reconnecting client that sends
    ``Last-Event-ID`` (EventSource does) first gets what it missed, up to the newest
    ``CATCH_UP_LIMIT``; with more missed it should list the feed.
    """
    user_id = _user_id(request)
    authorization = request.headers.get("Authorization")
    if not authorization and request.query.get("access_token"):
        authorization = "Bearer " + request.query["access_token"]
    app_id = await request.app[AUTH].feed_app(request.headers.get("Api-token"), authorization,
                                              user_id)
    hub = request.app[HUB]
    heartbeat = request.app[SETTINGS].stream_heartbeat_s
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    last_id = _last_event_id(request)
    with hub.subscribe(app_id, user_id) as sub:
        # Subscribed first, then caught up: nothing committed in between is missed, and
        # what both paths carry is sent once.
        missed = [] if last_id is None else await storage.feed_after(
            request.app[POOL], app_id, user_id, last_id, CATCH_UP_LIMIT)
        resp.headers["X-Request-Id"] = request[REQUEST_ID]
        await resp.prepare(request)
        try:
            # A comment at once: proxies and clients see the stream is open.
            await resp.write(b": connected\n\n")
            sent: set[int] = set()
            for row in missed:
                caught_up = storage.notification_json(row)
                sent.add(caught_up["id"])
                await resp.write(sse_event(caught_up))
            while True:
                try:
                    async with asyncio.timeout(heartbeat):
                        item = await sub.queue.get()
                except TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                if item is None:
                    if sub.overflowed:
                        await resp.write(b": too slow; reconnect and list the feed\n\n")
                    break
                # A NOTIFY can reach the hub after this subscription although its rows were
                # committed before the client's Last-Event-ID: the client has those.
                if item["id"] not in sent and (last_id is None or item["id"] > last_id):
                    await resp.write(sse_event(item))
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away; leaving the block unsubscribes it
    return resp


async def create_session_token(request: web.Request) -> web.Response:
    """A token a client app uses to read and mark this one user's feed, until it expires."""
    app_id = await _app_id(request)
    user_id = _user_id(request)
    issued, token_hash = new_session_token()
    ttl = request.app[SETTINGS].session_token_ttl_s
    expires = await storage.add_session_token(request.app[POOL], issued.token_id, app_id,
                                              user_id, token_hash, ttl)
    return _json({"token": issued.token, "user_id": user_id,
                  "expires_at": expires.isoformat(), "expires_in": ttl}, status=201)


async def campaign_stats(request: web.Request) -> web.Response:
    app_id = await _app_id(request)
    target_id = target_id_param(request)
    stats = await storage.campaign_stats(request.app[POOL], app_id, target_id)
    rate = stats["read"] / stats["sent"] if stats["sent"] else 0.0
    return _json({"target_id": target_id, **stats, "read_rate": round(rate, 4)})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/apps", create_app)
    r.add_get("/v1/apps/{app_id}", get_app)
    r.add_get("/v1/apps/{app_id}/api_tokens", list_api_tokens)
    r.add_post("/v1/apps/{app_id}/api_tokens", create_api_token)
    r.add_delete("/v1/apps/{app_id}/api_tokens/{token_id}", delete_api_token)
    r.add_put("/v1/apps/{app_id}/integrations/clevertap", put_integration)
    r.add_get("/v1/apps/{app_id}/integrations/clevertap", get_integration)
    r.add_get("/v1/templates", list_templates)
    r.add_put("/v1/templates/{key}", put_template)
    r.add_get("/v1/templates/{key}", get_template)
    r.add_delete("/v1/templates/{key}", delete_template)
    r.add_get("/v1/users/{user_id}/notifications", list_notifications)
    r.add_post("/v1/users/{user_id}/notifications/read_all", read_all)
    r.add_post("/v1/users/{user_id}/notifications/{id}/read", read_notification)
    r.add_get("/v1/users/{user_id}/notifications/stream", stream_notifications)
    r.add_post("/v1/users/{user_id}/session_tokens", create_session_token)
    r.add_get("/v1/campaigns/{target_id}/stats", campaign_stats)
