"""Bad CleverTap credentials with real processes: events park, a settings change releases them."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import pytest

from ..conftest import Api, eventually, webhook
from .test_single_flow import client, processes  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e


async def test_refused_credentials_park_events_until_the_settings_are_fixed(
        client: Api, processes: dict[str, Any], pool: asyncpg.Pool) -> None:  # noqa: F811
    """`sbct-pipeline run` parks SENT events on a 401 and sends them once the passcode is fixed."""
    status, app = await client.call("POST", "/v1/apps", json={"name": "e2e-park"}, admin=True)
    assert status == 201
    path = f"/v1/apps/{app['app_id']}/integrations/clevertap"
    good = {"event_callback": True, "project_id": "E2E-ACC", "passcode": "E2E-PASS",
            "api_endpoint": processes["sim_url"]}
    status, _ = await client.call("PUT", path, admin=True, json={**good, "passcode": "old"})
    assert status == 200
    await client.template(app["api_token"])
    users = [f"u{i}" for i in range(5)]
    status, body = await client.call("POST", "/clevertap/notifications/multi",
                                     token=app["api_token"], json=webhook(users=users))
    assert status == 200 and body["accepted"] == 5
    await eventually(lambda: pool.fetchval(
        "SELECT count(*) > 0 FROM parked_events WHERE app_id = $1", app["app_id"]), timeout=30)

    async with aiohttp.ClientSession() as s:
        async def sim_events() -> Any:
            async with s.get(processes["sim_url"] + "/_sim/events") as r:
                return (await r.json())["events"]

        assert await sim_events() == []
        status, _ = await client.call("PUT", path, admin=True, json=good)
        assert status == 200
        events = await eventually(lambda: _five(sim_events), timeout=30)
    assert sorted(e["objectId"] for e in events) == [f"__g{u}" for u in users]
    assert await pool.fetchval("SELECT count(*) FROM parked_events") == 0


async def _five(fetch: Any) -> Any:
    events = await fetch()
    return events if len(events) >= 5 else None
