"""Bench: ``sbct-pipeline bench [--quick]``, the pipeline measured against baselines.

Runs on the local RabbitMQ and PostgreSQL with its own database (``sbct_bench_<tag>``) and
AMQP prefix (``bench_<tag>``), both created at start and dropped at the end. The pipeline
runs as real processes: ``clevertap-sim``, ``ingress``, the workers and one ``callbacks``
subprocess, started the way an operator starts them (``python -m sbct_pipeline.cli``). The
workers are laid out as docs/operations.md recommends: ``--workers`` campaign workers
(``SBCT_WORKER_QUEUES=multi``) and ``--journey-workers`` (default 1) Journey workers
(``SBCT_WORKER_QUEUES=single``); ``--journey-workers 0`` runs every worker on every queue. The
load generators, the probes and the baselines run in this process, so every ratio compares
two things measured in the same run on the same (noisy, shared) machine.

Sections, in order (:data:`SECTIONS`):

- ``ingress``: single webhooks/s and p50/p99 at 64 concurrent connections against the real
  ingress, beside a minimal aiohttp handler (a subprocess too) that only publishes the body
  with a publisher confirm; no worker runs meanwhile.
- ``fanout``: a campaign (1,000,000 users as 1,000 ``multi`` webhooks of 1,000 profiles;
  ``--quick``: 200,000) through ingress, workers, callbacks and the simulator: deliveries/s,
  time from the first webhook to the last ``SENT`` accepted by the simulator, worker peak
  RSS; then a PostgreSQL ``COPY`` of the same rows into an identical notifications table
  (``LIKE notifications INCLUDING ALL``), and the ratio. While the campaign drains, a probe
  sends a ``single`` webhook every 100 ms and times webhook -> feed row (p50/p99), beside
  the same probe on the idle pipeline before the campaign, split into the ingress's answer
  and the rest (broker, worker, PostgreSQL).

Adding a section (the hook for other issues, e.g. an ``export`` section measuring events/s
to ``clevertap-sim``): write ``async def my_section(b: Bench) -> None`` that uses what
:class:`Bench` offers (``b.settings``/``b.env`` for this run's database and prefix,
``b.spawn(...)``/``b.start_workers(n)``/``b.start_callbacks()`` for processes,
``b.new_app(callback=...)`` for an app with a template, ``b.http``, ``b.pool``,
``b.sim_url``, ``b.quick``, ``b.webhook(...)`` which retries 503/429 like CleverTap) and
reports with ``b.row(section, metric, value, baseline, ratio, target, met)``; then append
``("export", my_section)`` to :data:`SECTIONS`. ``--only NAME`` runs one section. Processes a
section starts are stopped by :meth:`Bench.stop_all` between sections. The table goes to
``--out`` (``docs/benchmarks.md``); text from an ``## Analysis`` heading on is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from . import storage
from .bench_export import cpu_seconds, section_export
from .settings import Settings

ADMIN = "bench-admin"
SINGLE = "/clevertap/notifications/single"
MULTI = "/clevertap/notifications/multi"
CONCURRENCY = 64


@dataclass
class Row:
    """One figure of the table."""

    section: str
    metric: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: str = ""


@dataclass
class Scale:
    users: int
    per_webhook: int
    ingress_s: float
    idle_probes: int

    @classmethod
    def of(cls, quick: bool) -> Scale:
        if quick:
            # 200 webhooks: enough drain time (~10 s) for ~50 single probes, so the quick
            # single p99 is more than the maximum of a handful.
            return cls(users=200_000, per_webhook=1000, ingress_s=3.0, idle_probes=20)
        return cls(users=1_000_000, per_webhook=1000, ingress_s=10.0, idle_probes=50)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, in MB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Bench:
    """One benchmark run: its settings, processes, clients and results."""

    quick: bool
    workers: int
    base: Settings
    journey_workers: int
    out: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    rows: list[Row] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    retries: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scale = Scale.of(self.quick)
        db = self.base.database_url.rsplit("/", 1)[0] + f"/sbct_bench_{self.tag}"
        self.settings = self.base.with_overrides(
            database_url=db, amqp_prefix=f"bench_{self.tag}", http_port=_free_port(),
            admin_token=ADMIN, metrics_port=0, single_rate_limit=0.0,
            max_queue_depth=10_000_000)
        self.sim_url = f"http://127.0.0.1:{_free_port()}"
        self.url = f"http://127.0.0.1:{self.settings.http_port}"
        self.logdir = Path(tempfile.mkdtemp(prefix="sbct-bench-"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SBCT_")}
        self.env.update({
            "SBCT_DATABASE_URL": self.settings.database_url,
            "SBCT_AMQP_URL": self.settings.amqp_url,
            "SBCT_AMQP_PREFIX": self.settings.amqp_prefix,
            "SBCT_HTTP_PORT": str(self.settings.http_port),
            "SBCT_ADMIN_TOKEN": ADMIN, "SBCT_METRICS_PORT": "0",
            "SBCT_SINGLE_RATE_LIMIT": "0", "SBCT_MAX_QUEUE_DEPTH": "10000000",
            "SBCT_LOG_LEVEL": os.environ.get("SBCT_LOG_LEVEL", "info"),
        })

    # ------------------------------------------------------------ reporting

    def row(self, section: str, metric: str, value: str, baseline: str = "", ratio: str = "",
            target: str = "", met: bool | None = None) -> None:
        self.rows.append(Row(section, metric, value, baseline, ratio, target,
                             "" if met is None else ("yes" if met else "**no**")))
        print(f"  {section:8} {metric:44} {value:>14} {baseline:>14} {ratio:>6} "
              f"{target:>12} {self.rows[-1].met}", flush=True)

    def table(self) -> str:
        head = ("| section | metric | value | baseline | ratio | target | met |\n"
                "|---|---|---|---|---|---|---|\n")
        return head + "".join(
            f"| {r.section} | {r.metric} | {r.value} | {r.baseline} | {r.ratio} | {r.target} "
            f"| {r.met} |\n" for r in self.rows)

    # ------------------------------------------------------------ processes

    def spawn(self, name: str, *args: str, env: dict[str, str] | None = None,
              module: str = "sbct_pipeline.cli") -> Proc:
        log = self.logdir / f"{name}.log"
        with log.open("wb") as out:
            p = subprocess.Popen([sys.executable, "-m", module, *args],
                                 env={**self.env, **(env or {})}, stdout=out,
                                 stderr=subprocess.STDOUT)
        proc = Proc(name, p, log)
        self.procs.append(proc)
        return proc

    async def wait_http(self, url: str, proc: Proc, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited: {proc.log.read_text()[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with self.http.get(url) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{proc.name}: {url} did not answer within {within}s")

    async def start_sim(self) -> Proc:
        port = self.sim_url.rsplit(":", 1)[1]
        p = self.spawn("sim", "clevertap-sim", "--port", port, "--account-id", "BENCH",
                       "--passcode", "BENCH-PASS")
        await self.wait_http(self.sim_url + "/healthz", p)
        return p

    async def start_ingress(self) -> Proc:
        p = self.spawn("ingress", "ingress")
        await self.wait_http(self.url + "/healthz", p)
        return p

    async def start_workers(self, n: int) -> list[Proc]:
        """``n`` campaign workers, plus ``--journey-workers`` Journey workers if any.

        With Journey workers the campaign workers run ``SBCT_WORKER_QUEUES=multi`` and the
        others ``single``; without, every worker consumes every queue (the default).
        """
        journeys = self.journey_workers
        env = {"SBCT_WORKER_QUEUES": "multi"} if journeys else None
        out = [self.spawn(f"worker{i}", "worker", env=env) for i in range(n)]
        out += [self.spawn(f"journeys{i}", "worker", env={"SBCT_WORKER_QUEUES": "single"})
                for i in range(journeys)]
        await self._wait_consumers("chunks", n)
        await self._wait_consumers("single", n * (not journeys) + journeys)
        return out

    async def start_callbacks(self) -> Proc:
        p = self.spawn("callbacks", "callbacks")
        await self._wait_consumers("events", 1)
        return p

    async def _wait_consumers(self, kind: str, n: int, within: float = 30) -> None:
        import aio_pika

        deadline = time.monotonic() + within
        conn = await aio_pika.connect(self.settings.amqp_url)
        try:
            ch = await conn.channel()
            while time.monotonic() < deadline:
                q = await ch.declare_queue(f"{self.settings.amqp_prefix}.{kind}", passive=True)
                if (q.declaration_result.consumer_count or 0) >= n:
                    return
                for p in self.procs:
                    if p.popen.poll() is not None:
                        raise RuntimeError(f"{p.name} exited: {p.log.read_text()[-2000:]}")
                await asyncio.sleep(0.1)
        finally:
            await conn.close()
        raise RuntimeError(f"{n} consumers on {kind} did not start within {within}s")

    async def stop(self, procs: list[Proc]) -> None:
        for p in procs:
            if p.popen.poll() is None:
                p.popen.terminate()
        for p in procs:
            try:
                await asyncio.to_thread(p.popen.wait, 30)
            except subprocess.TimeoutExpired:
                p.popen.kill()
            if p in self.procs:
                self.procs.remove(p)

    async def stop_all(self) -> None:
        await self.stop(list(self.procs))

    # ------------------------------------------------------------ fixtures

    async def call(self, method: str, path: str, body: Any = None, *,
                   token: str | None = None, admin: bool = False) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Api-token"] = token
        if admin:
            headers["Authorization"] = f"Bearer {ADMIN}"
        data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
        async with self.http.request(method, self.url + path, data=data, headers=headers) as r:
            raw = await r.read()
            return r.status, orjson.loads(raw) if raw else None

    async def webhook(self, path: str, body: bytes, token: str) -> tuple[int, Any]:
        """POST a webhook as CleverTap does: a 503 or 429 is retried after Retry-After."""
        for _ in range(60):
            t0 = time.perf_counter()
            headers = {"Content-Type": "application/json", "Api-token": token}
            async with self.http.post(self.url + path, data=body, headers=headers) as r:
                raw = await r.read()
                if r.status not in (429, 503):
                    return r.status, orjson.loads(raw) if raw else None
                self.retries[r.status] = self.retries.get(r.status, 0) + 1
                wait = float(r.headers.get("Retry-After", "1"))
            await asyncio.sleep(max(0.0, wait - (time.perf_counter() - t0)))
        raise RuntimeError(f"{path}: still refused after 60 retries")

    async def new_app(self, *, callback: bool) -> dict[str, Any]:
        """An app with template ``bench`` ("Hi {name}" / "Order {order_id} shipped")."""
        status, app = await self.call("POST", "/v1/apps", {"name": "bench"}, admin=True)
        assert status == 201, app
        status, res = await self.call(
            "PUT", f"/v1/apps/{app['app_id']}/integrations/clevertap", admin=True, body={
                "event_callback": callback, "project_id": "BENCH", "passcode": "BENCH-PASS",
                "api_endpoint": self.sim_url})
        assert status == 200, res
        status, res = await self.call("PUT", "/v1/templates/bench", token=app["api_token"],
                                      body={"title": "Hi {name}",
                                            "body": "Order {order_id} shipped"})
        assert status in (200, 201), res
        return dict(app)

    async def sim_stats(self) -> dict[str, Any]:
        async with self.http.get(self.sim_url + "/_sim/stats") as r:
            stats: dict[str, Any] = orjson.loads(await r.read())
            return stats

    async def purge(self, kind: str) -> None:
        import aio_pika

        conn = await aio_pika.connect(self.settings.amqp_url)
        try:
            ch = await conn.channel()
            q = await ch.declare_queue(f"{self.settings.amqp_prefix}.{kind}", passive=True)
            await q.purge()
        finally:
            await conn.close()

    # ------------------------------------------------------------ lifecycle

    async def setup(self) -> None:
        await storage.migrate(self.settings)
        self.pool = await storage.create_pool(self.settings, min_size=2)
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONCURRENCY + 16))

    async def teardown(self) -> None:
        await self.stop_all()
        with contextlib.suppress(Exception):
            await self.http.close()
        with contextlib.suppress(Exception):
            await self.pool.close()
        import aio_pika

        from .broker import delete_topology

        with contextlib.suppress(Exception):
            conn = await aio_pika.connect(self.settings.amqp_url)
            try:
                ch = await conn.channel()
                await delete_topology(ch, self.settings)
                await ch.queue_delete(f"{self.settings.amqp_prefix}.minimal")
            finally:
                await conn.close()
        admin = self.settings.database_url.rsplit("/", 1)[0] + "/postgres"
        conn2 = await asyncpg.connect(admin)
        try:
            await conn2.execute(f'DROP DATABASE IF EXISTS "sbct_bench_{self.tag}" WITH (FORCE)')
        finally:
            await conn2.close()


# ---------------------------------------------------------------- bodies

def single_body(user: str) -> bytes:
    return orjson.dumps({
        "targetId": 42, "key_values": {"template_key": "bench", "event_name": "Bench Journey",
                                       "variables": '{"name": "Ana", "order_id": "A-1"}'},
        "profiles": [{"objectId": f"__g{user}", "identity": user,
                      "profileData": {"SendbirdID": user}}]})


def multi_body(target_id: int, first: int, n: int) -> bytes:
    """What a CleverTap broadcast sends: top-level key-values, one profile per user."""
    return orjson.dumps({
        "targetId": target_id,
        "key_values": {"template_key": "bench", "event_name": "Bench Campaign",
                       "variables": '{"name": "Ana", "order_id": "A-17"}'},
        "profiles": [{"objectId": f"__gu{i}", "identity": f"crm-{i}",
                      "email": f"u{i}@example.com", "profileData": {"SendbirdID": f"u{i}"}}
                     for i in range(first, first + n)]})


# ---------------------------------------------------------------- ingress section

async def _load(b: Bench, url: str, headers: dict[str, str], seconds: float,
                bodies: Callable[[int], bytes]) -> tuple[float, list[float], int]:
    """64 connections posting for ``seconds``: (requests/s, latencies in s, non-200)."""
    latencies: list[float] = []
    errors = 0
    counter = 0
    stop_at = time.perf_counter() + seconds

    async def one_conn() -> None:
        nonlocal errors, counter
        while time.perf_counter() < stop_at:
            counter += 1
            body = bodies(counter)
            t0 = time.perf_counter()
            async with b.http.post(url, data=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one_conn() for _ in range(CONCURRENCY)))
    return len(latencies) / (time.perf_counter() - t0), latencies, errors


async def section_ingress(b: Bench) -> None:
    """Single webhooks/s and latency: the real ingress beside a publish-only handler."""
    ingress = await b.start_ingress()
    app = await b.new_app(callback=False)
    mport = _free_port()
    minimal = b.spawn("minimal", "--minimal-server", str(mport), b.settings.amqp_url,
                      f"{b.settings.amqp_prefix}.minimal", module="sbct_pipeline.bench")
    await b.wait_http(f"http://127.0.0.1:{mport}/", minimal)
    headers = {"Content-Type": "application/json", "Api-token": app["api_token"]}
    pre = [single_body(f"s{i}") for i in range(1000)]

    def bodies(i: int) -> bytes:
        return pre[i % len(pre)]

    secs = b.scale.ingress_s
    # Warm both (connections, caches), then measure them in turn.
    await _load(b, f"http://127.0.0.1:{mport}/", headers, 1.0, bodies)
    await _load(b, b.url + SINGLE, headers, 1.0, bodies)
    # Four alternating rounds each, so a burst of load from elsewhere on the machine hits
    # both sides alike rather than one of them.
    m_n = i_n = m_err = i_err = 0
    m_t = i_t = m_cpu = i_cpu = 0.0
    m_lat: list[float] = []
    i_lat: list[float] = []
    for _ in range(4):
        cpu0 = cpu_seconds(minimal.popen.pid)
        rate, lat, err = await _load(b, f"http://127.0.0.1:{mport}/", headers, secs / 4, bodies)
        m_cpu += cpu_seconds(minimal.popen.pid) - cpu0
        m_n, m_t, m_err = m_n + len(lat), m_t + len(lat) / rate, m_err + err
        m_lat += lat
        cpu0 = cpu_seconds(ingress.popen.pid)
        rate, lat, err = await _load(b, b.url + SINGLE, headers, secs / 4, bodies)
        i_cpu += cpu_seconds(ingress.popen.pid) - cpu0
        i_n, i_t, i_err = i_n + len(lat), i_t + len(lat) / rate, i_err + err
        i_lat += lat
    m_rate, i_rate = m_n / m_t, i_n / i_t
    ratio = i_rate / m_rate if m_rate else 0.0
    b.row("ingress", "single webhooks/s (64 connections)", f"{i_rate:,.0f}", f"{m_rate:,.0f}",
          f"{ratio:.2f}", ">= 0.8", ratio >= 0.8)
    # CPU time per request: what a loaded machine changes least (a process waiting for a
    # core still serves fewer requests per second, but spends the same CPU on each).
    i_us, m_us = i_cpu / i_n * 1e6, m_cpu / m_n * 1e6
    b.row("ingress", "CPU per single webhook (us) -> ratio of minimal/ingress", f"{i_us:.0f}",
          f"{m_us:.0f}", f"{m_us / i_us:.2f}")
    b.row("ingress", "single latency p50 (ms)", f"{pct(i_lat, 50) * 1000:.1f}",
          f"{pct(m_lat, 50) * 1000:.1f}")
    b.row("ingress", "single latency p99 (ms)", f"{pct(i_lat, 99) * 1000:.1f}",
          f"{pct(m_lat, 99) * 1000:.1f}")
    if i_err or m_err:
        b.notes.append(f"ingress: {i_err} non-200 answers from the ingress, {m_err} from the "
                       "minimal handler")
    await b.stop([ingress, minimal])
    await b.purge("single")


# ---------------------------------------------------------------- fan-out section

async def _probe(b: Bench, token: str, app_id: str, user: str) -> tuple[float, float]:
    """One single webhook: (seconds to its 200 answer, seconds from sending to its feed row).

    The answer is the ingress's share; the rest (broker, worker, PostgreSQL) the worker's.
    """
    t0 = time.perf_counter()
    status, body = await b.webhook(SINGLE, single_body(user), token)
    if status != 200:
        raise RuntimeError(f"probe webhook answered {status}: {body}")
    answered = time.perf_counter() - t0
    # Polling is the measurement here (no notification to wait on): 2 ms resolution.
    while not await b.pool.fetchval(  # noqa: ASYNC110
            "SELECT 1 FROM notifications WHERE app_id = $1 AND user_id = $2", app_id, user):
        await asyncio.sleep(0.002)
    return answered, time.perf_counter() - t0


async def _copy_baseline(b: Bench, app_id: str, target: int, name: str) -> float:
    """Seconds to COPY the campaign's rows, rendered, into a copy of the notifications table.

    The copy has every index and constraint of the real one (``LIKE ... INCLUDING ALL``);
    building the rows in Python is not timed, encoding and sending them is.
    """
    sc = b.scale
    rows = [(app_id, f"u{i}", uuid.UUID(int=i // sc.per_webhook), "bench", target,
             "Bench Campaign", f"__gu{i}", f"crm-{i}", "Hi Ana", "Order A-17 shipped")
            for i in range(sc.users)]
    cols = ["app_id", "user_id", "request_id", "template_key", "target_id", "event_name",
            "object_id", "identity", "title", "body"]  # data: NULL, as in the campaign
    table = f"notifications_copy_{name}"
    async with b.pool.acquire() as conn:
        await conn.execute(f"CREATE TABLE {table} (LIKE notifications INCLUDING ALL)")
        await conn.execute("CHECKPOINT")
        t0 = time.perf_counter()
        for i in range(0, len(rows), 100_000):
            await conn.copy_records_to_table(table, records=rows[i : i + 100_000],
                                             columns=cols)
        elapsed = time.perf_counter() - t0
        await conn.execute(f"DROP TABLE {table}")
    return elapsed


async def section_fanout(b: Bench) -> None:
    """A campaign through the whole pipeline, beside COPY; single latency while it drains."""
    sc = b.scale
    await b.start_sim()
    await b.start_ingress()
    workers = await b.start_workers(b.workers)
    await b.start_callbacks()
    campaign = await b.new_app(callback=True)
    probe_app = await b.new_app(callback=False)
    ptok, pid = probe_app["api_token"], probe_app["app_id"]

    idle = [await _probe(b, ptok, pid, f"idle-{i}") for i in range(sc.idle_probes)]
    copy_before = await _copy_baseline(b, campaign["app_id"], 1_700_000_000, "before")

    target = 1_700_000_000
    hooks = sc.users // sc.per_webhook
    sent_counter = iter(range(hooks))
    t_first = time.time()
    p_first = time.perf_counter()
    accept_s: list[float] = []

    async def sender() -> None:
        for k in sent_counter:
            body = await asyncio.to_thread(multi_body, target, k * sc.per_webhook,
                                           sc.per_webhook)
            t0 = time.perf_counter()
            status, res = await b.webhook(MULTI, body, campaign["api_token"])
            if status != 200:
                raise RuntimeError(f"multi webhook {k} answered {status}: {res}")
            accept_s.append(time.perf_counter() - t0)

    draining = asyncio.Event()
    busy: list[tuple[float, float]] = []

    async def prober() -> None:
        i = 0
        while not draining.is_set():
            busy.append(await _probe(b, ptok, pid, f"busy-{i}"))
            i += 1
            await asyncio.sleep(0.1)

    probe_task = asyncio.create_task(prober())
    await asyncio.gather(*(sender() for _ in range(4)))
    p_sent = time.perf_counter()
    timeout = 1800 if not b.quick else 120
    stored = 0
    while stored < sc.users:
        if time.perf_counter() - p_first > timeout:
            b.notes.append(f"fanout: only {stored} of {sc.users} rows after {timeout}s")
            break
        await asyncio.sleep(0.5)
        stored = await b.pool.fetchval(
            "SELECT count(*) FROM notifications WHERE app_id = $1", campaign["app_id"])
    draining.set()
    await probe_task
    first, last = await b.pool.fetchrow(
        "SELECT min(created_at), max(created_at) FROM notifications WHERE app_id = $1",
        campaign["app_id"])
    exported = 0
    while exported < stored and time.perf_counter() - p_first < timeout * 2:
        exported = (await b.sim_stats())["accepted"]
        if exported < stored:
            await asyncio.sleep(0.25)
    t_sent = time.perf_counter() - p_first
    rss = max(peak_rss_mb(w.popen.pid) for w in workers)
    await b.stop_all()

    copy_s = [copy_before, await _copy_baseline(b, campaign["app_id"], target, "after")]
    copy_rate = sc.users / statistics.mean(copy_s)
    drain_s = (last - datetime.fromtimestamp(t_first, UTC)).total_seconds()
    span_s = (last - first).total_seconds()
    rate = stored / span_s if span_s > 0 else 0.0
    ratio = rate / copy_rate
    b.row("fanout", f"deliveries/s, first to last row ({stored:,} users, {b.workers} workers)",
          f"{rate:,.0f}", f"{copy_rate:,.0f} COPY", f"{ratio:.2f}", ">= 50,000; >= 0.3",
          rate >= 50_000 and ratio >= 0.3)
    b.notes.append("fanout: COPY of the same rows into an identical table took "
                   f"{copy_s[0]:.1f} s before and {copy_s[1]:.1f} s after the campaign; the "
                   "baseline is their mean")
    b.row("fanout", "first webhook -> last feed row (s)", f"{drain_s:.1f}",
          f"{statistics.mean(copy_s):.1f} COPY")
    b.row("fanout", f"first webhook -> last SENT at sim (s), {exported:,} events",
          f"{t_sent:.1f}")
    b.row("fanout", f"{hooks} multi webhooks accepted in (s)", f"{p_sent - p_first:.1f}")
    b.row("fanout", "multi webhook answer p50 / p99 (ms)",
          f"{pct(accept_s, 50) * 1000:.0f} / {pct(accept_s, 99) * 1000:.0f}")
    b.row("fanout", "worker peak RSS (MB)", f"{rss:.0f}", target="< 300", met=rss < 300)
    if b.retries:
        b.notes.append("fanout: webhooks answered 503/429 and retried after Retry-After, as "
                       f"CleverTap does: {b.retries}")
    busy_total, idle_total = [t for _, t in busy], [t for _, t in idle]
    b.row("single", f"webhook -> feed row p50, while draining (ms, n={len(busy)})",
          f"{pct(busy_total, 50) * 1000:.0f}", f"{pct(idle_total, 50) * 1000:.0f} idle")
    p99 = pct(busy_total, 99) * 1000
    b.row("single", "webhook -> feed row p99, while draining (ms)", f"{p99:.0f}",
          f"{pct(idle_total, 99) * 1000:.0f} idle", target="< 250", met=p99 < 250)
    # Where the time goes: the ingress's answer, then broker + worker + PostgreSQL.
    for name, of_busy, of_idle in (
            ("webhook answered (ingress)", [a for a, _ in busy], [a for a, _ in idle]),
            ("answer -> feed row (worker)", [t - a for a, t in busy], [t - a for a, t in idle])):
        b.row("single", f"  of which {name} p50 / p99 (ms)",
              f"{pct(of_busy, 50) * 1000:.0f} / {pct(of_busy, 99) * 1000:.0f}",
              f"{pct(of_idle, 50) * 1000:.0f} / {pct(of_idle, 99) * 1000:.0f} idle")


ANALYSIS = "## Analysis"
Section = Callable[[Bench], Awaitable[None]]
SECTIONS: list[tuple[str, Section]] = [
    ("ingress", section_ingress),
    ("fanout", section_fanout),
    ("export", section_export),  # bench_export.py (issue 4)
]


def _layout(b: Bench) -> str:
    if not b.journey_workers:
        return f"{b.workers} worker (every queue)"
    return (f"{b.workers} campaign worker (`SBCT_WORKER_QUEUES=multi`) and "
            f"{b.journey_workers} Journey worker (`SBCT_WORKER_QUEUES=single`)")


def _render_doc(b: Bench, started: datetime, argv: list[str]) -> str:
    return (
        "# Benchmarks\n\n"
        f"Run `{' '.join(['sbct-pipeline bench', *argv])}` on {started:%Y-%m-%d %H:%M} UTC, "
        f"{platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()}), "
        "local RabbitMQ and PostgreSQL shared with other work on the machine: absolute "
        "figures are noisy, ratios to the baseline measured in the same run are what "
        "count.\n\n"
        f"Processes: clevertap-sim, ingress, {_layout(b)}, callbacks as subprocesses; "
        "load, probes and baselines in the bench process. Bench settings: "
        "`SBCT_SINGLE_RATE_LIMIT=0`, `SBCT_MAX_QUEUE_DEPTH=10000000`, other settings at "
        "their defaults.\n\n" + b.table() + "\n"
        + "".join(f"- {n}\n" for n in b.notes)
        + "\nSee `src/sbct_pipeline/bench.py` for what each figure measures.\n")


async def run_bench(args: argparse.Namespace, settings: Settings,
                    argv: list[str]) -> Bench:
    b = Bench(quick=args.quick, workers=args.workers, base=settings, out=Path(args.out),
              journey_workers=args.journey_workers)
    started = datetime.now(UTC)
    print(f"bench: database sbct_bench_{b.tag}, prefix {b.settings.amqp_prefix}, "
          f"logs in {b.logdir}", flush=True)
    print(f"  {'section':8} {'metric':44} {'value':>14} {'baseline':>14} {'ratio':>6} "
          f"{'target':>12} met", flush=True)
    await b.setup()
    try:
        for name, fn in SECTIONS:
            if args.only and name not in args.only:
                continue
            await fn(b)
            await b.stop_all()
    finally:
        await b.teardown()
    print("\n" + b.table())
    for n in b.notes:
        print(f"note: {n}")
    if args.out:
        b.out.parent.mkdir(parents=True, exist_ok=True)
        # A hand-written analysis below the table (from its heading on) survives a rerun.
        old = b.out.read_text() if b.out.exists() else ""
        kept = old[old.index(ANALYSIS):] if ANALYSIS in old else ""
        b.out.write_text(_render_doc(b, started, argv) + ("\n" + kept if kept else ""))
        print(f"written to {b.out}")
    return b


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="scaled down: under a minute")
    p.add_argument("--workers", type=int, default=2,
                   help="campaign worker processes (default 2)")
    p.add_argument("--journey-workers", type=int, default=1,
                   help="worker processes with SBCT_WORKER_QUEUES=single beside them, the "
                        "campaign workers then taking SBCT_WORKER_QUEUES=multi (default 1; "
                        "0: every worker consumes every queue)")
    p.add_argument("--only", action="append", choices=[n for n, _ in SECTIONS],
                   help="run only this section (repeatable)")
    p.add_argument("--out", default="docs/benchmarks.md",
                   help="markdown file to write ('' for none)")


# ---------------------------------------------------------------- the minimal baseline

async def _minimal_server(port: int, amqp_url: str, queue: str) -> None:
    """The baseline ingress: read the body, publish it with a confirm, answer 200."""
    import aio_pika
    from aiohttp import web

    conn = await aio_pika.connect_robust(amqp_url)
    ch = await conn.channel(publisher_confirms=True)
    await ch.declare_queue(queue, durable=True)
    ex = ch.default_exchange

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        await ex.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                         routing_key=queue)
        return web.json_response({"ok": True})

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/", handle)
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--minimal-server":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_minimal_server(int(sys.argv[2]), sys.argv[3], sys.argv[4]))
    else:
        print("usage: python -m sbct_pipeline.bench --minimal-server PORT AMQP_URL QUEUE "
              "(use `sbct-pipeline bench` for the benchmark)", file=sys.stderr)
        sys.exit(2)

