"""Load held: single webhooks at 80% of the capacity measured in the same run, for 60 s.

Real processes (ingress, worker, callback consumer, simulator) on the shared RabbitMQ and
PostgreSQL. First the capacity: 32 clients post single webhooks back to back for 10 s, and the
capacity is those requests over the time until every one of them is delivered and exported
(the end-to-end rate the pipeline sustains; the ingress alone answers faster). Then an
open loop sends at 80% of that rate for 60 s (requests leave on schedule whether or not
earlier ones have answered, as CleverTap's do), recording each latency. CleverTap counts a
webhook slower than 3 s as failed, so p99 must stay well below that; every request that got
``200`` must end as one notification and one SENT event. ``make reliability`` only.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections import Counter

import aiohttp
import pytest

from ..conftest import Api, webhook
from .conftest import Report, Stack
from .test_outages import wait_complete

pytestmark = [pytest.mark.e2e, pytest.mark.reliability_slow]

SINGLE = "/clevertap/notifications/single"
CLEVERTAP_TIMEOUT_S = 3.0


@pytest.mark.timeout(900)
async def test_single_webhooks_held_at_80_percent_of_capacity(stack: Stack, client: Api,
                                                              report: Report) -> None:
    """At 80% of measured capacity for 60 s: no errors, p99 far below CleverTap's 3 s."""
    await stack.start_sim()
    # The queue-depth guard would turn a worker backlog into 503s; this measures the ingress.
    await stack.start_ingress(SBCT_MAX_QUEUE_DEPTH="100000000")
    stack.spawn("callbacks", "callbacks")
    stack.spawn("worker", "worker")
    app = await stack.setup_app(client)
    tok = app["api_token"]
    counter = 0

    async def post() -> tuple[int, float]:
        nonlocal counter
        counter += 1
        body = webhook(target_id=1700000900, users=[f"l{counter}"])
        t = time.perf_counter()
        try:
            status, _ = await client.call("POST", SINGLE, json=body, token=tok)
        except aiohttp.ClientError:
            status = -1
        return status, time.perf_counter() - t

    # 1. Capacity: closed loop.
    measured: list[tuple[int, float]] = []
    stop_at = time.monotonic() + 10

    async def closed_loop() -> None:
        while time.monotonic() < stop_at:
            measured.append(await post())

    t0 = time.monotonic()
    await asyncio.gather(*(closed_loop() for _ in range(32)))
    burst_ok = sum(1 for s, _ in measured if s == 200)
    ingress_capacity = burst_ok / (time.monotonic() - t0)
    assert burst_ok > 0, Counter(s for s, _ in measured)
    # The ingress alone answers faster than the worker and the callback consumer can follow
    # on the same 2 cores: held at 80% of the ingress burst rate the backlog (and latency)
    # grows for the whole minute. Capacity is therefore the end-to-end rate: the burst's
    # requests over the time until the last of them is in a feed and at the simulator. The
    # held phase then starts from that drained, steady state.
    await wait_complete(stack, app["app_id"], burst_ok, 300, settle=0)
    capacity = burst_ok / (time.monotonic() - t0)
    load_before = os.getloadavg()[0]

    # 2. Held load: open loop at 80% for 60 s.
    rate = 0.8 * capacity
    held: list[tuple[int, float]] = []
    tasks: list[asyncio.Task[None]] = []

    sent_at: list[float] = []

    async def one() -> None:
        sent_at.append(time.monotonic() - start)
        held.append(await post())

    start = time.monotonic()
    n = int(rate * 60)
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    load_after = os.getloadavg()[0]
    # p99 of each 10 s of the held minute (by send time): a spike shows where it was.
    windows: dict[int, list[float]] = {}
    for t, (s, lat) in zip(sent_at, held, strict=True):
        if s == 200:
            windows.setdefault(int(t // 10), []).append(lat)
    p99_by_window = [statistics.quantiles(v, n=100)[98] if len(v) > 1 else v[0]
                     for _, v in sorted(windows.items())]
    statuses = Counter(s for s, _ in held)
    latencies = sorted(lat for s, lat in held if s == 200)
    cuts = statistics.quantiles(latencies, n=100)
    p50, p99 = statistics.median(latencies), cuts[98]
    errors = sum(v for k, v in statuses.items() if k != 200)

    accepted = sum(1 for s, _ in measured + held if s == 200)
    rows, users, summary = await wait_complete(stack, app["app_id"], accepted, 600)
    lost = (accepted - users) + (accepted - summary["unique"])
    report.row(scenario="load held: single webhooks at 80% of capacity",
               load=f"capacity {capacity:.0f}/s end to end (ingress alone {ingress_capacity:.0f}"
                    f"/s, 32 clients, 10 s); held {rate:.0f}/s for 60 s ({n:,} requests)",
               faults="none", accepted=accepted, delivered=users, exported=summary["unique"],
               lost=lost, duplicates=f"{rows - users} feed, {summary['duplicates']} events",
               notes=f"held: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
                     f"max {latencies[-1] * 1000:.0f} ms, errors {errors}; p99 per 10 s "
                     f"{'/'.join(f'{x * 1000:.0f}' for x in p99_by_window)} ms; load average "
                     f"{load_before:.1f} -> {load_after:.1f} (2 cores, shared)")
    assert errors == 0, statuses
    assert p99 < CLEVERTAP_TIMEOUT_S, p99  # a webhook past 3 s counts as failed at CleverTap
    assert lost == 0 and rows == users, (rows, users, summary)
