"""End to end with real processes: `sbct-pipeline run` and `clevertap-sim` over real HTTP."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sbct_pipeline.settings import Settings

from ..conftest import ADMIN_TOKEN, Api, eventually, free_port, webhook

pytestmark = pytest.mark.e2e


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "sbct_pipeline.cli", *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


async def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path,
                     timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"process exited: {_tail(log)}")
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s")


@pytest.fixture
def processes(settings: Settings, tmp_path: Path) -> Iterator[dict[str, Any]]:
    sim_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SBCT_")}
    env.update({
        "SBCT_DATABASE_URL": settings.database_url, "SBCT_AMQP_URL": settings.amqp_url,
        "SBCT_AMQP_PREFIX": settings.amqp_prefix, "SBCT_HTTP_PORT": str(settings.http_port),
        "SBCT_ADMIN_TOKEN": ADMIN_TOKEN, "SBCT_CALLBACK_LINGER_S": "0.2",
        "SBCT_METRICS_PORT": "0",
    })
    sim = _spawn(["clevertap-sim", "--port", str(sim_port), "--account-id", "E2E-ACC",
                  "--passcode", "E2E-PASS"], env, tmp_path / "sim.log")
    run = _spawn(["run"], env, tmp_path / "run.log")
    procs = {"sim": sim, "run": run, "sim_url": f"http://127.0.0.1:{sim_port}",
             "sim_log": tmp_path / "sim.log", "run_log": tmp_path / "run.log",
             "url": f"http://127.0.0.1:{settings.http_port}"}
    yield procs
    for p in (run, sim):
        p.terminate()
    for p in (run, sim):
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
    assert run.returncode == 0, _tail(tmp_path / "run.log")


@pytest.fixture
async def client(processes: dict[str, Any]) -> AsyncIterator[Api]:
    await _wait_http(processes["sim_url"] + "/healthz", processes["sim"], processes["sim_log"])
    await _wait_http(processes["url"] + "/healthz", processes["run"], processes["run_log"])
    async with aiohttp.ClientSession() as session:
        yield Api(processes["url"], session)


async def test_single_webhook_to_feed_to_sent_and_read(
        client: Api, processes: dict[str, Any]) -> None:
    """A single webhook reaches the feed; SENT then READ reach the simulator, fields right."""
    t0 = time.perf_counter()
    status, app = await client.call("POST", "/v1/apps", json={"name": "e2e"}, admin=True)
    assert status == 201
    tok = app["api_token"]
    status, _ = await client.call(
        "PUT", f"/v1/apps/{app['app_id']}/integrations/clevertap", admin=True,
        json={"event_callback": True, "project_id": "E2E-ACC", "passcode": "E2E-PASS",
              "api_endpoint": processes["sim_url"]})
    assert status == 200
    await client.template(tok)
    sent_at = time.perf_counter()
    status, body = await client.call("POST", "/clevertap/notifications/single", token=tok,
                                     json=webhook(users=["user-42"]))
    assert status == 200 and body["accepted"] == 1

    async def feed() -> Any:
        _, b = await client.call("GET", "/v1/users/user-42/notifications", token=tok)
        return b["notifications"]

    (n,) = await eventually(feed)
    to_feed = time.perf_counter() - sent_at
    assert (n["title"], n["body"]) == ("Hi Ana", "Order A-17 shipped")

    async with aiohttp.ClientSession() as s:
        async def sim_events(status: str) -> Any:
            async with s.get(processes["sim_url"] + f"/_sim/events?status={status}") as r:
                return (await r.json())["events"]

        (sent,) = await eventually(lambda: sim_events("SENT"))
        to_sim = time.perf_counter() - sent_at
        assert sent["objectId"] == "__guser-42"
        assert sent["evtName"] == "My First Campaign"
        assert sent["evtData"] == {"status": "SENT", "target_id": 1700000001}
        status, _ = await client.call("POST", f"/v1/users/user-42/notifications/{n['id']}/read",
                                      token=tok)
        assert status == 200
        (read,) = await eventually(lambda: sim_events("READ"))
        assert read["evtData"] == {"status": "READ", "target_id": 1700000001}
        assert read["objectId"] == "__guser-42"
    print(f"\ne2e latency: webhook->feed {to_feed * 1000:.0f} ms, webhook->SENT at sim "
          f"{to_sim * 1000:.0f} ms (linger 0.2 s); whole flow {time.perf_counter() - t0:.2f} s")
