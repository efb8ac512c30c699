"""Dashboard: the web pages at ``/dashboard`` and the few read-only JSON routes they need.

The pages are static files shipped as package data in ``dashboard_static/`` (HTML, small ES modules,
a vendored uPlot); every figure on them comes from the JSON API, called by the browser with
the admin token (``Authorization: Bearer``) or the selected app's ``Api-token``. This module
serves the files and adds the routes the API lacked for a dashboard, all read-only:

- ``GET /v1/apps`` (admin): every app, newest first, with its token count and whether the
  CleverTap event callback is on.
- ``GET /v1/campaigns`` (``Api-token``): the app's campaigns (``target_id``) with sent, read,
  failed, read rate, first and last activity; most recent activity first.
- ``GET /v1/campaigns/{target_id}/series?bucket=minute|hour|day`` (``Api-token``): sent,
  read and failed per UTC time bucket, empty buckets filled with zeros, for the chart.

All of them, pages included, are documented in ``openapi.py`` (tag ``dashboard``).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from . import storage
from .context import AUTH, POOL
from .errors import BadRequest, NotFound
from .httputil import json_response, limit_query, target_id_param

STATIC_DIR = Path(__file__).with_name("dashboard_static")
BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}
MAX_APPS = 1000
MAX_CAMPAIGNS = 500
MAX_POINTS = 1440

# The pages load nothing from elsewhere and run no inline script: a stored template shown in
# the page can never execute, even if a rendering bug let markup through.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# ---------------------------------------------------------------- pages

async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html",
                            headers={**_SECURITY_HEADERS, "Content-Type": "text/html"})


async def to_index(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect("/dashboard/")


# Only these kinds of file are served, each with a fixed type (not the host's mime.types).
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
                 ".svg": "image/svg+xml", ".txt": "text/plain", ".md": "text/markdown"}


async def static_file(request: web.Request) -> web.FileResponse:
    """A file of the dashboard; 404 for anything outside its directory or of another kind."""
    rel = request.match_info["path"]
    path = (STATIC_DIR / rel).resolve()
    ctype = CONTENT_TYPES.get(path.suffix)
    if ctype is None or not path.is_relative_to(STATIC_DIR.resolve()) or not path.is_file():
        raise NotFound(f"no dashboard file {rel!r}")
    return web.FileResponse(path, headers={**_SECURITY_HEADERS, "Content-Type": ctype})


# ---------------------------------------------------------------- data routes

_APPS_SQL = """
SELECT a.app_id, a.name, a.created_at,
       (SELECT count(*) FROM api_tokens t WHERE t.app_id = a.app_id) AS tokens,
       i.event_callback
FROM apps a LEFT JOIN integrations i USING (app_id)
ORDER BY a.created_at DESC, a.app_id LIMIT $1
"""


async def list_apps(request: web.Request) -> web.Response:
    request.app[AUTH].check_admin(request.headers.get("Authorization"))
    limit = limit_query(request, MAX_APPS, MAX_APPS)
    async with storage.guard("list apps"):
        rows = await request.app[POOL].fetch(_APPS_SQL, limit)
    return json_response({"apps": [
        {"app_id": r["app_id"], "name": r["name"], "created_at": _iso(r["created_at"]),
         "tokens": int(r["tokens"]), "event_callback": r["event_callback"]}
        for r in rows]})


_CAMPAIGNS_SQL = """
WITH n AS (
    SELECT target_id, count(*) AS sent, count(read_at) AS read,
           min(created_at) AS first_at, max(created_at) AS last_at, max(read_at) AS last_read
    FROM notifications WHERE app_id = $1 GROUP BY target_id
), f AS (
    SELECT target_id, count(*) AS failed, min(created_at) AS first_at,
           max(created_at) AS last_at
    FROM delivery_failures WHERE app_id = $1 GROUP BY target_id
)
SELECT target_id, coalesce(n.sent, 0) AS sent, coalesce(n.read, 0) AS read,
       coalesce(f.failed, 0) AS failed,
       least(n.first_at, f.first_at) AS first_at,
       greatest(n.last_at, n.last_read, f.last_at) AS last_at
FROM n FULL JOIN f USING (target_id)
ORDER BY last_at DESC, target_id DESC LIMIT $2
"""


def _campaign_json(r: asyncpg.Record) -> dict[str, Any]:
    sent, read = int(r["sent"]), int(r["read"])
    return {"target_id": r["target_id"], "sent": sent, "read": read, "failed": int(r["failed"]),
            "read_rate": round(read / sent, 4) if sent else 0.0,
            "first_at": _iso(r["first_at"]), "last_at": _iso(r["last_at"])}


async def list_campaigns(request: web.Request) -> web.Response:
    app_id = await request.app[AUTH].app_for_token(request.headers.get("Api-token"))
    limit = limit_query(request, 50, MAX_CAMPAIGNS)
    async with storage.guard("list campaigns"):
        rows = await request.app[POOL].fetch(_CAMPAIGNS_SQL, app_id, limit)
    return json_response({"campaigns": [_campaign_json(r) for r in rows]})


# Sent counts a row at its creation, read at its read_at, failed at the failure's time.
_SERIES_SQL = """
WITH ev AS (
    SELECT date_trunc($3, created_at, 'UTC') AS b, 1 AS s, 0 AS r, 0 AS f
    FROM notifications WHERE app_id = $1 AND target_id = $2
    UNION ALL
    SELECT date_trunc($3, read_at, 'UTC'), 0, 1, 0
    FROM notifications WHERE app_id = $1 AND target_id = $2 AND read_at IS NOT NULL
    UNION ALL
    SELECT date_trunc($3, created_at, 'UTC'), 0, 0, 1
    FROM delivery_failures WHERE app_id = $1 AND target_id = $2
)
SELECT extract(epoch FROM b)::bigint AS t, sum(s)::bigint AS sent, sum(r)::bigint AS read,
       sum(f)::bigint AS failed
FROM ev GROUP BY b ORDER BY b DESC LIMIT $4
"""


def fill_series(rows: list[tuple[int, int, int, int]], step: int,
                limit: int) -> list[dict[str, int]]:
    """Buckets ascending with the empty ones between the first and last as zeros.

    ``rows`` are (epoch, sent, read, failed), newest first; at most ``limit`` buckets, the
    newest kept.
    """
    if not rows:
        return []
    by_t = {t: (s, r, f) for t, s, r, f in rows}
    last = rows[0][0]
    first = max(rows[-1][0], last - step * (limit - 1))
    out = []
    for t in range(first, last + 1, step):
        s, r, f = by_t.get(t, (0, 0, 0))
        out.append({"t": t, "sent": s, "read": r, "failed": f})
    return out


async def campaign_series(request: web.Request) -> web.Response:
    app_id = await request.app[AUTH].app_for_token(request.headers.get("Api-token"))
    target_id = target_id_param(request)
    bucket = request.query.get("bucket", "minute")
    if bucket not in BUCKETS:
        raise BadRequest(f"query parameter bucket must be one of {', '.join(BUCKETS)}, "
                         f"not {bucket!r}", code="invalid_param")
    limit = limit_query(request, MAX_POINTS, MAX_POINTS)
    async with storage.guard("campaign series"):
        rows = await request.app[POOL].fetch(_SERIES_SQL, app_id, target_id, bucket, limit)
    points = fill_series([(r["t"], r["sent"], r["read"], r["failed"]) for r in rows],
                         BUCKETS[bucket], limit)
    return json_response({"target_id": target_id, "bucket": bucket, "points": points})


# ---------------------------------------------------------------- registration

ROUTES = (
    ("GET", "/v1/apps", list_apps),
    ("GET", "/v1/campaigns", list_campaigns),
    ("GET", "/v1/campaigns/{target_id}/series", campaign_series),
)


def add_routes(app: web.Application) -> None:
    """Register the dashboard's pages, static files and data routes on the ingress app."""
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    app.router.add_get("/dashboard", to_index)
    app.router.add_get("/dashboard/", index)
    app.router.add_get("/dashboard/static/{path:.+}", static_file)
