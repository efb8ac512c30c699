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
from .conftest import Report, Stack, wait_users

pytestmark = [pytest.mark.e2e, pytest.mark.reliability_slow]

SINGLE = "/clevertap/notifications/single"
CLEVERTAP_TIMEOUT_S = 3.0


@pytest.mark.timeout(900)
async def test_single_webhooks_held_at_80_percent_of_capacity(stack: Stack, client: Api,
                                                              report: Report) -> None:
    """At 80% of measured capacity for 60 s: p99 below CleverTap's 3 s, nothing lost."""
    await stack.start_sim()
    # The queue-depth guard would turn a worker backlog into 503s; this measures the ingress.
    await stack.start_ingress(SBCT_MAX_QUEUE_DEPTH="100000000")
    stack.spawn("callbacks", "callbacks")
    stack.spawn("worker", "worker")
    app = await stack.setup_app(client)
    tok = app["api_token"]
    counter = 0
    codes: Counter[str] = Counter()

    async def post() -> tuple[int, float, str]:
        nonlocal counter
        counter += 1
        user = f"l{counter}"
        body = webhook(target_id=1700000900, users=[user])
        t = time.perf_counter()
        try:
            status, answer = await client.call("POST", SINGLE, json=body, token=tok)
            if status == 503:
                assert client.last_headers.get("Retry-After"), answer
                codes[answer["error"]["code"]] += 1
        except aiohttp.ClientError:
            status = -1
        return status, time.perf_counter() - t, user

    # 1. Capacity: closed loop.
    measured: list[tuple[int, float, str]] = []
    stop_at = time.monotonic() + 10

    async def closed_loop() -> None:
        while time.monotonic() < stop_at:
            measured.append(await post())

    t0 = time.monotonic()
    await asyncio.gather(*(closed_loop() for _ in range(32)))
    burst_ok = sum(1 for s, _, _ in measured if s == 200)
    ingress_capacity = burst_ok / (time.monotonic() - t0)
    assert burst_ok > 0, Counter(s for s, _, _ in measured)
    # The ingress alone answers faster than the worker and the callback consumer can follow
    # on the same 2 cores: held at 80% of the ingress burst rate the backlog (and latency)
    # grows for the whole minute. Capacity is therefore the end-to-end rate: the burst's
    # requests over the time until the last of them is in a feed and at the simulator. The
    # held phase then starts from that drained, steady state.
    await wait_users(stack, app["app_id"], {u for s, _, u in measured if s == 200}, 300,
                     settle=0)
    capacity = burst_ok / (time.monotonic() - t0)
    load_before = os.getloadavg()[0]

    # 2. Held load: open loop at 80% for 60 s.
    rate = 0.8 * capacity
    held: list[tuple[int, float, str]] = []
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
    for t, (s, lat, _) in zip(sent_at, held, strict=True):
        if s == 200:
            windows.setdefault(int(t // 10), []).append(lat)
    p99_by_window = [statistics.quantiles(v, n=100)[98] if len(v) > 1 else v[0]
                     for _, v in sorted(windows.items())]
    statuses = Counter(s for s, _, _ in held)
    latencies = sorted(lat for s, lat, _ in held if s == 200)
    cuts = statistics.quantiles(latencies, n=100)
    p50, p99 = statistics.median(latencies), cuts[98]
    errors = sum(v for k, v in statuses.items() if k != 200)

    accepted = {u for s, _, u in measured + held if s == 200}
    refused = {u for s, _, u in measured + held if s != 200}
    rows, sent = await wait_users(stack, app["app_id"], accepted, 600)
    lost = len(accepted - rows.keys()) + len(accepted - sent.keys())
    dup_rows = sum(n - 1 for n in rows.values())
    dup_events = sum(n - 1 for n in sent.values())
    report.row(scenario="load held: single webhooks at 80% of capacity",
               load=f"capacity {capacity:.0f}/s end to end (ingress alone {ingress_capacity:.0f}"
                    f"/s, 32 clients, 10 s); held {rate:.0f}/s for 60 s ({n:,} requests)",
               faults="none", accepted=len(accepted), delivered=len(accepted & rows.keys()),
               exported=len(accepted & sent.keys()), lost=lost,
               duplicates=f"{dup_rows} feed, {dup_events} events",
               notes=f"held: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
                     f"max {latencies[-1] * 1000:.0f} ms, errors {errors} "
                     f"({dict(statuses - Counter({200: statuses[200]}))}, {dict(codes)}; "
                     f"{len(refused & rows.keys())} of them delivered anyway); p99 per 10 s "
                     f"{'/'.join(f'{x * 1000:.0f}' for x in p99_by_window)} ms; load average "
                     f"{load_before:.1f} -> {load_after:.1f} (2 cores, shared)")
    # The only error allowed is the contract's answer to a publisher confirm that did not
    # come within SBCT_PUBLISH_TIMEOUT_S: the RabbitMQ here is shared with other test runs
    # and stalls now and then (69 such 503s in 2 s were seen once). CleverTap retries a 503.
    assert set(statuses) <= {200, 503}, statuses
    assert set(codes) <= {"broker_unavailable"}, codes
    assert errors * 100 <= n, statuses  # at most 1% of the held requests
    assert p99 < CLEVERTAP_TIMEOUT_S, p99  # a webhook past 3 s counts as failed at CleverTap
    assert lost == 0 and dup_rows == 0, (lost, dup_rows)
