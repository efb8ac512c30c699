"""Outages of PostgreSQL and CleverTap: nothing accepted is lost, nothing doubled.

PostgreSQL is stopped and restarted as a *private* cluster started by the test (the shared
one serves other test runs; RabbitMQ's outage is ``test_broker_outage.py``); CleverTap is
the simulator's outage window and 429 storm. Each scenario runs real ``sbct-pipeline``
processes and ends by counting feed rows per user and distinct ``SENT`` events at the simulator.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from ..conftest import Api, webhook
from .conftest import (
    PrivatePostgres,
    Report,
    Stack,
    feed_counts,
)

pytestmark = pytest.mark.e2e

SINGLE = "/clevertap/notifications/single"
MULTI = "/clevertap/notifications/multi"


async def wait_complete(stack: Stack, app_id: str, expected: int, timeout: float,
                        settle: float = 2.0) -> tuple[int, int, dict[str, Any]]:
    """Wait until ``expected`` users hold a row and have a SENT event; (rows, users, sim)."""
    db = stack.settings.database_url
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows, users = await feed_counts(db, app_id)
        summary = await stack.sim_summary()
        if users >= expected and summary["unique"] >= expected:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(settle)  # a late duplicate (outbox sweep, redelivery) shows up now
    rows, users = await feed_counts(db, app_id)
    return rows, users, await stack.sim_summary()


# ---------------------------------------------------------------- PostgreSQL

async def run_pg_outage(stack: Stack, client: Api, pg: PrivatePostgres, report: Report, *,
                        users: int, down_s: float) -> None:
    await stack.start_sim()
    await stack.start_ingress()
    # Up before the outage: a process still starting when PostgreSQL stops exits at once.
    await stack.start_consumer("callbacks", "callbacks")
    await stack.start_consumer("worker", "worker")
    app = await stack.setup_app(client)
    tok, app_id = app["api_token"], app["app_id"]
    accepted = 0
    for start in range(0, users, 10_000):
        ids = [f"p{i}" for i in range(start, min(users, start + 10_000))]
        status, body = await client.call("POST", MULTI, token=tok,
                                         json=webhook(target_id=1700000700, users=ids))
        assert status == 200, body
        accepted += body["accepted"]
    deadline = time.monotonic() + 60
    while (await feed_counts(stack.settings.database_url, app_id))[0] < users // 5:
        assert time.monotonic() < deadline, "no delivery progress"
        await asyncio.sleep(0.05)
    at_stop = (await feed_counts(stack.settings.database_url, app_id))[0]
    await asyncio.to_thread(pg.stop, "fast")
    await asyncio.sleep(down_s)
    await asyncio.to_thread(pg.start)
    rows, distinct, summary = await wait_complete(stack, app_id, users, 240)
    lost = (users - distinct) + (users - summary["unique"])
    report.row(scenario="PostgreSQL stopped and restarted during delivery",
               load=f"{users:,}-user campaign (multi)",
               faults=f"private PostgreSQL stopped (fast: connections cut) at {at_stop:,} rows, "
                      f"down {down_s:.0f} s",
               accepted=accepted, delivered=distinct, exported=summary["unique"], lost=lost,
               duplicates=f"{rows - distinct} feed, {summary['duplicates']} events")
    assert lost == 0, (rows, distinct, summary)
    assert rows == distinct
    # Cut connections can hit an outbox row between publish and delete: at most the chunks
    # in flight are sent twice (prefetch 4 x chunk 500).
    assert summary["duplicates"] <= 4 * 500, summary


@pytest.mark.timeout(300)
async def test_postgres_restart_during_delivery(pg_stack: Stack, pg_client: Api,
                                                private_postgres: PrivatePostgres,
                                                report: Report) -> None:
    """PostgreSQL cut mid-campaign: workers retry, every user gets one row and one SENT."""
    await run_pg_outage(pg_stack, pg_client, private_postgres, report, users=5_000, down_s=3)


@pytest.mark.reliability_slow
@pytest.mark.timeout(600)
async def test_postgres_long_outage_during_delivery(pg_stack: Stack, pg_client: Api,
                                                    private_postgres: PrivatePostgres,
                                                    report: Report) -> None:
    """A 30 s PostgreSQL outage in a 30,000-user campaign: nothing lost, nothing doubled."""
    await run_pg_outage(pg_stack, pg_client, private_postgres, report, users=30_000,
                        down_s=30)


# ---------------------------------------------------------------- CleverTap

async def run_clevertap_outage(stack: Stack, client: Api, report: Report, *, users: int,
                               outage_s: float, storm_s: float) -> None:
    await stack.start_sim()
    await stack.start_ingress()
    stack.spawn("callbacks", "callbacks")
    stack.spawn("worker", "worker")
    app = await stack.setup_app(client)
    # The outage starts now and lasts at least outage_s, and until the callback consumer
    # has met it (a 503 at the simulator), then ends by setting a zero-length window.
    await stack.sim("POST", "/_sim/faults", {"outage_s": 3600})
    t0 = time.monotonic()
    accepted = 0
    for start in range(0, users, 10_000):  # bodies under 1 MB, as the other scenarios post
        ids = [f"ct{i}" for i in range(start, min(users, start + 10_000))]
        status, body = await client.call("POST", MULTI, token=app["api_token"],
                                         json=webhook(target_id=1700000800, users=ids))
        assert status == 200, body
        accepted += body["accepted"]
    deadline = time.monotonic() + 120
    while (time.monotonic() - t0 < outage_s
           or not (await stack.sim_summary())["requests"].get("503")):
        assert time.monotonic() < deadline, "the callback consumer never met the outage"
        await asyncio.sleep(0.2)
    outage_s = time.monotonic() - t0
    # Recovery, straight into a storm: half the requests answered 429.
    await stack.sim("POST", "/_sim/faults", {"outage_s": 0, "fail_429": 0.5})
    t_recovered = time.monotonic()
    await asyncio.sleep(storm_s)
    await stack.sim("POST", "/_sim/faults", {"fail_429": 0.0})
    rows, distinct, summary = await wait_complete(stack, app["app_id"], users, 400)
    after = time.monotonic() - t_recovered
    lost = (users - distinct) + (users - summary["unique"])
    answers = summary["requests"]
    report.row(scenario="CleverTap down, then 429 storm",
               load=f"{users:,}-user campaign (multi)",
               faults=f"simulator 503 for {outage_s:.0f} s, then 50% 429 for {storm_s:.0f} s",
               accepted=accepted, delivered=distinct, exported=summary["unique"],
               lost=lost, duplicates=f"{rows - distinct} feed, {summary['duplicates']} events",
               notes=f"simulator answers {answers}; all events in {after:.0f} s after recovery")
    assert answers.get("503", 0) > 0 and answers.get("429", 0) > 0, answers
    assert lost == 0, (rows, distinct, summary)
    assert rows == distinct and summary["duplicates"] == 0, summary


@pytest.mark.timeout(300)
async def test_clevertap_outage_then_429_storm(stack: Stack, client: Api,
                                               report: Report) -> None:
    """A short CleverTap outage then 429s: every SENT event arrives once after recovery."""
    await run_clevertap_outage(stack, client, report, users=2_000, outage_s=4, storm_s=4)


@pytest.mark.reliability_slow
@pytest.mark.timeout(900)
async def test_clevertap_60s_outage_then_429_storm(stack: Stack, client: Api,
                                                   report: Report) -> None:
    """CleverTap down for 60 s, then a 429 storm: every SENT event arrives after recovery."""
    await run_clevertap_outage(stack, client, report, users=20_000, outage_s=60, storm_s=20)
