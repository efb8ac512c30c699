"""Operations with real processes: probes and metrics over HTTP, graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from sbct_pipeline.settings import Settings
from sbct_pipeline.sim import Simulator

from ..conftest import Api, eventually, free_port, webhook
from .test_single_flow import _wait_http

pytestmark = pytest.mark.e2e

CLI = str(Path(sys.executable).parent / "sbct-pipeline")
DRAIN_S = 10


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SBCT_")}
    env.update({
        "SBCT_DATABASE_URL": settings.database_url, "SBCT_AMQP_URL": settings.amqp_url,
        "SBCT_AMQP_PREFIX": settings.amqp_prefix, "SBCT_LOG_LEVEL": "info",
        "SBCT_DRAIN_TIMEOUT_S": str(DRAIN_S), **extra,
    })
    return env


class Proc:
    """One ``sbct-pipeline`` subprocess with its log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen([CLI, *args], env=env, stdout=out,
                                          stderr=subprocess.STDOUT)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    async def wait_http(self, url: str, timeout: float = 30) -> None:
        await _wait_http(url, self.popen, self.log, timeout)

    async def terminate(self, timeout: float) -> int:
        """SIGTERM, then wait up to ``timeout`` s for the exit code (killed past it)."""
        self.popen.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.popen.wait, timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"no exit within {timeout}s of SIGTERM: {self.tail()}") \
                from None

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def test_worker_sigterm_mid_campaign_loses_and_duplicates_nothing(
        settings: Settings, ingress: Api, pool: asyncpg.Pool, exporter: Any, sim: Simulator,
        tmp_path: Path) -> None:
    """A worker SIGTERMed mid-campaign exits 0 within the drain time; a new one finishes once."""
    app = await ingress.new_app(sim)
    await ingress.template(app["api_token"])
    users = [f"u{i:05d}" for i in range(3000)]
    metrics_port = free_port()
    # Small chunks make many messages; the per-app delivery rate keeps the campaign running
    # long enough (~3 s) that SIGTERM lands in the middle of it.
    env = _env(settings, SBCT_CHUNK_SIZE="20", SBCT_WORKER_PREFETCH="4",
               SBCT_DELIVERY_RATE_LIMIT="1000", SBCT_METRICS_PORT=str(metrics_port),
               SBCT_HTTP_HOST="127.0.0.1")
    first = Proc(["worker"], env, tmp_path / "worker1.log")
    second: Proc | None = None
    try:
        base = f"http://127.0.0.1:{metrics_port}"
        await first.wait_http(base + "/readyz")
        status, body = await ingress.call("POST", "/clevertap/notifications/multi",
                                          token=app["api_token"],
                                          json=webhook(target_id=42, users=users))
        assert status == 200 and body["accepted"] == 3000, body
        request_id = body["request_id"]

        async def delivered() -> int:
            return int(await pool.fetchval(
                "SELECT count(*) FROM notifications WHERE request_id = $1", request_id))

        await eventually(delivered, timeout=30, interval=0.02)
        code = await first.terminate(timeout=DRAIN_S + 10)
        at_stop = await delivered()
        assert code == 0, first.tail()
        assert 0 < at_stop < 3000, f"SIGTERM did not land mid-campaign ({at_stop} delivered)"
        assert "worker.stopped" in first.tail()
        assert "consumer.drain_timeout" not in first.tail(), first.tail()

        second = Proc(["worker"], env, tmp_path / "worker2.log")
        await eventually(lambda: _is(delivered(), 3000), timeout=60, interval=0.1)
        rows = await pool.fetch(
            "SELECT user_id, count(*) AS n FROM notifications WHERE request_id = $1 "
            "GROUP BY user_id", request_id)
        assert {r["user_id"] for r in rows} == set(users)
        assert all(r["n"] == 1 for r in rows)

        # Every user's SENT event reached CleverTap exactly once.
        await eventually(lambda: _true(len(sim.events) >= 3000), timeout=60, interval=0.1)
        await asyncio.sleep(1.0)  # a late duplicate would arrive within the linger time
        per_user = Counter(e["objectId"] for e in sim.events)
        assert set(per_user) == {f"__g{u}" for u in users}
        assert max(per_user.values()) == 1, per_user.most_common(3)
        assert await second.terminate(timeout=DRAIN_S + 10) == 0, second.tail()
    finally:
        first.kill()
        if second is not None:
            second.kill()


async def _is(aw: Any, expected: int) -> bool:
    return bool(await aw == expected)


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize("command", ["worker", "callbacks"])
async def test_consumer_process_serves_probes_and_metrics(
        settings: Settings, tmp_path: Path, command: str) -> None:
    """Worker and callbacks processes answer /healthz, /readyz and /metrics on their port."""
    port = free_port()
    proc = Proc([command], _env(settings, SBCT_METRICS_PORT=str(port)),
                tmp_path / f"{command}.log")
    try:
        base = f"http://127.0.0.1:{port}"
        await proc.wait_http(base + "/healthz")
        assert await _get(base + "/healthz") == (200, '{"status":"ok"}')
        assert await _get(base + "/readyz") == (200, '{"status":"ok"}')
        status, text = await _get(base + "/metrics")
        assert status == 200
        # The refresher publishes the depth of every main and dead-letter queue.
        for queue in ("single", "multi", "chunks", "events", "dead.jobs", "dead.events",
                      "delay.events"):
            assert f'sbct_queue_depth{{queue="{queue}"}} 0.0' in text, text
        for series in ("sbct_deliveries_total", "sbct_retries_total", "sbct_dead_letters_total",
                       "sbct_events_exported_total", "sbct_export_lag_seconds",
                       "sbct_http_request_seconds", "sbct_publish_seconds"):
            assert f"# TYPE {series}" in text, series
        assert await proc.terminate(timeout=DRAIN_S + 10) == 0, proc.tail()
    finally:
        proc.kill()


async def test_ingress_metrics_count_requests_by_route_and_status(
        settings: Settings, ingress: Api) -> None:
    """The ingress's /metrics counts and times requests by route and status, queue depths too."""
    assert (await ingress.call("GET", "/readyz"))[0] == 200
    status, _ = await ingress.call("POST", "/clevertap/notifications/single", token="bad",
                                   json=webhook())
    assert status == 401
    status, text = await ingress.call("GET", "/metrics")
    assert status == 200
    route = "/clevertap/notifications/single"
    assert (f'sbct_http_requests_total{{method="POST",route="{route}",status="401"}}'
            in text), text
    assert f'sbct_http_request_seconds_count{{route="{route}",status="401"}}' in text
    assert 'sbct_queue_depth{queue="single"}' in text


async def test_ingress_sigterm_finishes_the_request_in_flight_and_refuses_new_ones(
        settings: Settings, ingress: Api, pool: asyncpg.Pool, tmp_path: Path) -> None:
    """On SIGTERM the ingress closes its port but still answers the request it is reading."""
    app = await ingress.new_app()  # set up through the in-process ingress (same database)
    await ingress.template(app["api_token"])
    port = free_port()
    proc = Proc(["ingress"], _env(settings, SBCT_HTTP_PORT=str(port),
                                  SBCT_ADMIN_TOKEN="unused"), tmp_path / "ingress.log")
    try:
        base = f"http://127.0.0.1:{port}"
        await proc.wait_http(base + "/readyz")
        body = orjson.dumps(webhook(target_id=7, users=[f"s{i}" for i in range(2000)]))
        half = len(body) // 2
        first_half_sent, terminated = asyncio.Event(), asyncio.Event()

        async def slow_body() -> Any:
            yield body[:half]
            first_half_sent.set()
            await terminated.wait()
            yield body[half:]

        async with aiohttp.ClientSession() as s:
            # With Expect: 100-continue the client sends the body only once the server has
            # routed the request: when the first half is out, the handler is in progress.
            request = asyncio.create_task(s.post(
                base + "/clevertap/notifications/multi", data=slow_body(), expect100=True,
                headers={"Api-token": app["api_token"], "Content-Type": "application/json",
                         "Content-Length": str(len(body))}))
            await asyncio.wait_for(first_half_sent.wait(), 10)
            proc.popen.send_signal(signal.SIGTERM)

            async def refused() -> bool:
                try:
                    async with aiohttp.ClientSession() as fresh, fresh.get(base + "/healthz"):
                        return False
                except aiohttp.ClientConnectionError:
                    return True

            await eventually(refused, timeout=10)
            terminated.set()
            async with await request as resp:
                assert resp.status == 200, await resp.text()
                answer = await resp.json()
        assert answer["accepted"] == 2000
        assert await asyncio.to_thread(proc.popen.wait, DRAIN_S + 10) == 0, proc.tail()
        # The accepted job is on the broker: the in-process ingress's depth check sees it.
        depth = await _queue_depth(settings, "multi")
        assert depth == 1
    finally:
        proc.kill()


async def _queue_depth(settings: Settings, kind: str) -> int:
    from sbct_pipeline.broker import Broker

    b = Broker(settings)
    await b.connect()
    try:
        return await b.queue_depth(kind)
    finally:
        await b.close()
