"""The dashboard's pages and its JSON routes (apps list, campaigns list, time series)."""

from __future__ import annotations

import importlib.resources
from datetime import UTC, datetime
from typing import Any

import asyncpg
import yarl

from sbct_pipeline.dashboard import fill_series

from .conftest import Api

FILES = ["index.html", "style.css", "favicon.svg", "js/main.js", "js/api.js", "js/render.js",
         "js/preview.js", "js/pages/apps.js", "js/pages/integrations.js",
         "js/pages/templates.js", "js/pages/builder.js", "js/pages/campaigns.js",
         "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css", "vendor/uPlot.LICENSE.txt"]


async def test_pages_are_served_with_a_strict_policy(ingress: Api) -> None:
    """/dashboard redirects to the page, which loads only same-origin files, all served."""
    async with ingress.session.get(ingress.base + "/dashboard", allow_redirects=False) as r:
        assert r.status == 308 and r.headers["Location"] == "/dashboard/"
    async with ingress.session.get(ingress.base + "/dashboard/") as r:
        html = await r.text()
        assert r.status == 200 and r.content_type == "text/html"
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert '<script type="module" src="/dashboard/static/js/main.js">' in html
    for name in FILES:
        async with ingress.session.get(f"{ingress.base}/dashboard/static/{name}") as r:
            assert r.status == 200, name
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            if name.endswith(".js"):
                assert r.content_type in ("application/javascript", "text/javascript"), name
    # Nothing outside the dashboard's directory, even with encoded dots and slashes (the
    # repository's README.md is three levels up from it in a source checkout).
    for bad in ("..%2F..%2F..%2FREADME.md", "%2E%2E/%2E%2E/%2E%2E/README.md",
                "..%2Fdashboard.py", "js/nope.js"):
        url = yarl.URL(f"{ingress.base}/dashboard/static/{bad}", encoded=True)
        async with ingress.session.get(url) as r:
            body = await r.json()
            assert r.status == 404 and body["error"]["code"] == "not_found", bad


def test_files_are_package_data() -> None:
    """Every dashboard file ships inside the installed package, not only in the source tree."""
    root = importlib.resources.files("sbct_pipeline") / "dashboard_static"
    for name in FILES:
        assert (root / name).is_file(), name


async def test_apps_list_needs_the_admin_token(ingress: Api) -> None:
    """GET /v1/apps lists every app newest first with token count and callback state."""
    status, body = await ingress.call("GET", "/v1/apps")
    assert status == 401 and body["error"]["code"] == "invalid_admin_token"
    first = await ingress.new_app()
    second = await ingress.new_app()
    await ingress.call("PUT", f"/v1/apps/{second['app_id']}/integrations/clevertap", admin=True,
                       json={"event_callback": False})
    status, body = await ingress.call("GET", "/v1/apps", admin=True)
    assert status == 200, body
    assert [a["app_id"] for a in body["apps"]] == [second["app_id"], first["app_id"]]
    assert [(a["tokens"], a["event_callback"]) for a in body["apps"]] == [(1, False), (1, None)]
    status, body = await ingress.call("GET", "/v1/apps?limit=1", admin=True)
    assert [a["app_id"] for a in body["apps"]] == [second["app_id"]]
    status, body = await ingress.call("GET", "/v1/apps?limit=0", admin=True)
    assert status == 400 and "limit must be between 1 and 1000" in body["error"]["message"]


async def _insert(pool: asyncpg.Pool, app_id: str, target_id: int, at: datetime,
                  read_at: datetime | None = None, user: str = "u") -> None:
    await pool.execute(
        "INSERT INTO notifications (app_id, user_id, request_id, template_key, target_id,"
        " event_name, title, body, created_at, read_at)"
        " VALUES ($1, $2, gen_random_uuid(), 't', $3, 'e', 'x', 'y', $4, $5)",
        app_id, user, target_id, at, read_at)


async def _fail(pool: asyncpg.Pool, app_id: str, target_id: int, at: datetime) -> None:
    await pool.execute(
        "INSERT INTO delivery_failures (app_id, request_id, target_id, user_id, template_key,"
        " reason, created_at) VALUES ($1, gen_random_uuid(), $2, 'u', 't', 'missing', $3)",
        app_id, target_id, at)


def _t(hh: int, mm: int) -> datetime:
    return datetime(2026, 12, 1, hh, mm, 30, tzinfo=UTC)


async def test_campaigns_list_and_series(ingress: Api, pool: asyncpg.Pool) -> None:
    """Campaigns are listed per target_id with figures; the series buckets sent, read and
    failed by UTC minute or hour, zero-filling gaps; other apps' rows never count."""
    app = await ingress.new_app()
    other = await ingress.new_app()
    tok = app["api_token"]
    await _insert(pool, app["app_id"], 7, _t(10, 0), read_at=_t(10, 3))
    await _insert(pool, app["app_id"], 7, _t(10, 0))
    await _insert(pool, app["app_id"], 7, _t(10, 2))
    await _fail(pool, app["app_id"], 7, _t(10, 2))
    await _insert(pool, app["app_id"], 8, _t(9, 0))
    await _fail(pool, app["app_id"], 9, _t(11, 0))  # only failures
    await _insert(pool, other["app_id"], 7, _t(10, 0))

    status, body = await ingress.call("GET", "/v1/campaigns", token=tok)
    assert status == 200, body
    rows = [(c["target_id"], c["sent"], c["read"], c["failed"], c["read_rate"])
            for c in body["campaigns"]]
    assert rows == [(9, 0, 0, 1, 0.0), (7, 3, 1, 1, 0.3333), (8, 1, 0, 0, 0.0)]
    seven = body["campaigns"][1]
    assert (seven["first_at"], seven["last_at"]) == (_t(10, 0).isoformat(),
                                                      _t(10, 3).isoformat())
    status, body = await ingress.call("GET", "/v1/campaigns?limit=1", token=tok)
    assert [c["target_id"] for c in body["campaigns"]] == [9]

    status, body = await ingress.call("GET", "/v1/campaigns/7/series", token=tok)
    assert status == 200, body
    base = int(datetime(2026, 12, 1, 10, 0, tzinfo=UTC).timestamp())
    assert body["bucket"] == "minute"
    assert body["points"] == [
        {"t": base, "sent": 2, "read": 0, "failed": 0},
        {"t": base + 60, "sent": 0, "read": 0, "failed": 0},
        {"t": base + 120, "sent": 1, "read": 0, "failed": 1},
        {"t": base + 180, "sent": 0, "read": 1, "failed": 0},
    ]
    status, body = await ingress.call("GET", "/v1/campaigns/7/series?bucket=hour", token=tok)
    assert body["points"] == [{"t": base, "sent": 3, "read": 1, "failed": 1}]
    status, body = await ingress.call("GET", "/v1/campaigns/7/series?limit=2", token=tok)
    assert [p["t"] for p in body["points"]] == [base + 120, base + 180]
    status, body = await ingress.call("GET", "/v1/campaigns/404/series", token=tok)
    assert status == 200 and body["points"] == []


async def test_campaign_routes_reject_bad_input(ingress: Api) -> None:
    """Bad bucket, target_id or token get a 400/401 naming what is wrong."""
    app = await ingress.new_app()
    tok = app["api_token"]
    cases: list[tuple[str, str | None, int, str]] = [
        ("/v1/campaigns/7/series?bucket=week", tok, 400,
         "bucket must be one of minute, hour, day, not 'week'"),
        ("/v1/campaigns/x/series", tok, 400, "target_id must be an integer"),
        ("/v1/campaigns/7/series?limit=99999", tok, 400, "limit must be between 1 and 1440"),
        ("/v1/campaigns", None, 401, "Api-token header is required"),
        ("/v1/campaigns", "sbct_nope.x", 401, "Api-token is not valid"),
    ]
    for path, token, want_status, message in cases:
        status, body = await ingress.call("GET", path, token=token)
        assert status == want_status, (path, body)
        assert message in body["error"]["message"], (path, body)


def test_fill_series_keeps_the_newest_buckets() -> None:
    """Zero-filling never produces more than ``limit`` buckets and keeps the newest."""
    rows: list[tuple[int, int, int, int]] = [(600, 1, 0, 0), (0, 2, 0, 0)]
    points: list[dict[str, Any]] = fill_series(rows, 60, 3)
    assert [(p["t"], p["sent"]) for p in points] == [(480, 0), (540, 0), (600, 1)]
    assert len(fill_series(rows, 60, 1440)) == 11
    assert fill_series([], 60, 10) == []
