"""Bench section ``export``: events/s exported to ``clevertap-sim`` in 1,000-record batches.

Measured beside the simulator's own capacity in the same run, so the ratio says how much
of the simulator's headroom the exporter uses:

1. baseline: a bare client in the bench process posts pre-encoded 1,000-record bodies to
   the simulator (15 in flight, as CleverTap allows) for a few seconds: the simulator's
   requests/s and records/s when nothing else limits it;
2. the exporter: N events are queued on ``<prefix>.events`` first (messages of 500, as a
   chunk of ``SBCT_CHUNK_SIZE`` users yields), then one ``sbct-pipeline callbacks``
   subprocess drains them; events/s = N / (first consumer attached -> the simulator
   accepted the N-th unique record), with the simulator's request rate over the same time.

The target (issue 4) is 50,000 events/s on the 2-core development machine.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson

from . import storage
from .broker import Broker
from .codec import Event, encode_events

if TYPE_CHECKING:
    from .bench import Bench

TARGET_EVENTS_S = 50_000
PER_MESSAGE = 500
BATCH = 1000
IN_FLIGHT = 15


def _body(start: int) -> bytes:
    now = int(time.time())
    return orjson.dumps({"d": [
        {"objectId": f"__gbase{i}", "type": "event", "evtName": "Bench Campaign",
         "evtData": {"status": "SENT", "target_id": 1}, "ts": now}
        for i in range(start, start + BATCH)]})


async def sim_capacity(b: Bench, seconds: float) -> tuple[float, float]:
    """The simulator alone: (requests/s, records/s) at 15 in flight with 1,000 records."""
    bodies = [_body(k * BATCH) for k in range(8)]
    headers = {"X-CleverTap-Account-Id": "BENCH", "X-CleverTap-Passcode": "BENCH-PASS",
               "Content-Type": "application/json; charset=utf-8"}
    done = 0
    stop_at = time.perf_counter() + seconds

    async def one() -> None:
        nonlocal done
        k = 0
        while time.perf_counter() < stop_at:
            k += 1
            async with b.http.post(b.sim_url + "/1/upload", data=bodies[k % len(bodies)],
                                   headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"simulator answered {r.status}")
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(IN_FLIGHT)))
    elapsed = time.perf_counter() - t0
    return done / elapsed, done * BATCH / elapsed


async def _queue_events(b: Bench, app_id: str, n: int) -> None:
    broker = Broker(b.settings)
    await broker.connect()
    try:
        now = int(time.time())
        sem = asyncio.Semaphore(32)

        async def one(start: int) -> None:
            evs = [Event(app_id, i, "SENT", "Bench Campaign", 1_700_000_001, now, f"__gu{i}",
                         None) for i in range(start, min(n, start + PER_MESSAGE))]
            async with sem:
                await broker.publish("events", encode_events(evs), wait_s=30)

        await asyncio.gather(*(one(s) for s in range(0, n, PER_MESSAGE)))
    finally:
        await broker.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used (Linux ``/proc``)."""
    import os

    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _sim(b: Bench, path: str, body: Any = None) -> dict[str, Any]:
    async with b.http.post(b.sim_url + path, data=orjson.dumps(body or {})) as r:
        out: dict[str, Any] = orjson.loads(await r.read())
        return out


async def measure_export(b: Bench, events: int, sim_pid: int) -> dict[str, float]:
    """Queue ``events`` events, drain them with one callbacks process; figures in a dict."""
    app_id = f"app_bench_export_{b.tag}"
    await storage.create_app(b.pool, app_id, "bench-export")
    await storage.put_integration(b.pool, app_id, event_callback=True, project_id="BENCH",
                                  passcode="BENCH-PASS", api_endpoint=b.sim_url)
    await _sim(b, "/_sim/reset")
    await _queue_events(b, app_id, events)
    sim_cpu0 = cpu_seconds(sim_pid)
    cb = await b.start_callbacks()
    t0 = time.perf_counter()
    cb_cpu0 = cpu_seconds(cb.popen.pid)
    stats: dict[str, Any] = {}
    while True:
        await asyncio.sleep(0.25)
        async with b.http.get(b.sim_url + "/_sim/stats") as r:
            stats = orjson.loads(await r.read())
        if stats["unique"] >= events:
            break
        if time.perf_counter() - t0 > 600:
            raise RuntimeError(f"export did not finish in 600 s: {stats}")
    elapsed = time.perf_counter() - t0
    cb_cpu = cpu_seconds(cb.popen.pid) - cb_cpu0
    sim_cpu = cpu_seconds(sim_pid) - sim_cpu0
    requests = sum(stats["requests"].values())
    return {"events": events, "seconds": elapsed, "events_s": events / elapsed,
            "requests_s": requests / elapsed, "duplicates": stats["duplicates"],
            "non_200": requests - stats["requests"].get("200", 0),
            "callbacks_cpu_us": cb_cpu / events * 1e6, "sim_cpu_us": sim_cpu / events * 1e6}


async def section_export(b: Bench) -> None:
    """Events/s from the events queue to the simulator, beside the simulator's capacity."""
    events = 100_000 if b.quick else 500_000
    sim = await b.start_sim()
    await sim_capacity(b, 1.0)  # warm-up
    base_req_s, base_rec_s = await sim_capacity(b, 3.0 if b.quick else 8.0)
    got = await measure_export(b, events, sim.popen.pid)
    ratio = got["events_s"] / base_rec_s if base_rec_s else 0.0
    b.row("export", f"events/s to the simulator ({events:,} events, 1,000/request)",
          f"{got['events_s']:,.0f}", f"{base_rec_s:,.0f}", f"{ratio:.2f}",
          f">= {TARGET_EVENTS_S:,}", got["events_s"] >= TARGET_EVENTS_S)
    b.row("export", "simulator requests/s while exporting",
          f"{got['requests_s']:,.1f}", f"{base_req_s:,.1f}", f"{got['requests_s'] / base_req_s:.2f}"
          if base_req_s else "")
    # CPU per event is what noise on a shared machine changes least: one core's worth of
    # CPU time spent by the callbacks process (and the simulator) per exported event.
    b.row("export", "callbacks CPU per event (us) -> events/s per core",
          f"{got['callbacks_cpu_us']:.1f}", f"{1e6 / got['callbacks_cpu_us']:,.0f}/core"
          if got["callbacks_cpu_us"] else "")
    b.row("export", "simulator CPU per event (us)", f"{got['sim_cpu_us']:.1f}")
    b.row("export", "duplicates seen by the simulator", f"{got['duplicates']:,}",
          target="0", met=got["duplicates"] == 0)
    b.notes.append(
        "export: baseline = a bare client posting pre-encoded 1,000-record bodies to the "
        "simulator at 15 in flight (the simulator's own capacity); value = one `callbacks` "
        f"process draining {events:,} queued events (messages of {PER_MESSAGE}); "
        f"{got['non_200']} non-200 answers.")
