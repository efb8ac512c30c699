"""Reliability fixtures: real pipeline processes, private RabbitMQ and PostgreSQL, figures.

The machine's shared RabbitMQ (5672) and PostgreSQL (5432) are used by other test runs at the
same time, so scenarios that stop a broker or a database start their own: a private RabbitMQ
node (own node name, ports, Mnesia directory and Erlang cookie) and a private PostgreSQL
cluster (``initdb`` in a temporary directory, run as the ``postgres`` user when we are
root). Both are torn down even when a test fails. Every scenario reports one row of figures
through the ``report`` fixture; with ``SBCT_RELIABILITY_REPORT`` set (``make reliability``)
rows are appended to that JSON-lines file, from which ``tests/reliability/report.py`` writes
``docs/reliability.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from sbct_pipeline.settings import Settings

from ..conftest import ADMIN_TOKEN, Api, free_port

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
PG_BIN = Path("/usr/lib/postgresql/15/bin")


# ---------------------------------------------------------------- pipeline processes

class Proc:
    """One ``sbct-pipeline`` subprocess with its log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "sbct_pipeline.cli", *args], env=env,
                stdout=out, stderr=subprocess.STDOUT)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]

    def kill9(self) -> None:
        """SIGKILL: no drain, no acks, no outbox publish; whatever was in flight is cut."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 20) -> int | None:
        if self.alive:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        return self.popen.returncode


class Stack:
    """The processes of one scenario, all on one database, broker and queue prefix."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.settings = settings
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.url = f"http://127.0.0.1:{settings.http_port}"
        self.sim_port = free_port()
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        self.account = ("REL-ACC", "REL-PASS")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SBCT_")}
        s = self.settings
        env.update({
            "SBCT_DATABASE_URL": s.database_url, "SBCT_AMQP_URL": s.amqp_url,
            "SBCT_AMQP_PREFIX": s.amqp_prefix, "SBCT_HTTP_PORT": str(s.http_port),
            "SBCT_ADMIN_TOKEN": ADMIN_TOKEN, "SBCT_CALLBACK_LINGER_S": "0.2",
            "SBCT_OUTBOX_SWEEP_S": "1", "SBCT_METRICS_PORT": "0",
            "SBCT_LOG_LEVEL": os.environ.get("SBCT_REL_LOG_LEVEL", "warning"),
            "SBCT_DRAIN_TIMEOUT_S": "5", "SBCT_SINGLE_RATE_LIMIT": "0",
        })
        env.update(extra)
        return env

    def spawn(self, name: str, *args: str, **extra_env: str) -> Proc:
        p = Proc(name, list(args), self.env(**extra_env), self.tmp / f"{name}.log")
        self.procs.append(p)
        return p

    async def start_sim(self) -> Proc:
        p = self.spawn("sim", "clevertap-sim", "--port", str(self.sim_port), "--account-id",
                       self.account[0], "--passcode", self.account[1], "--seed", "7")
        await wait_http(self.sim_url + "/healthz", p)
        return p

    async def start_ingress(self, **extra_env: str) -> Proc:
        p = self.spawn("ingress", "ingress", **extra_env)
        await wait_http(self.url + "/healthz", p)
        return p

    async def start_consumer(self, name: str, *args: str, **extra_env: str) -> Proc:
        """A ``worker`` or ``callbacks`` process, returned once it holds its connections.

        These processes refuse to start without PostgreSQL and RabbitMQ (they exit naming
        the one that does not answer); a scenario that stops one must wait for this, or a
        slow start on a busy machine meets the outage and the process is simply gone.
        """
        port = free_port()
        p = self.spawn(name, *args, SBCT_METRICS_PORT=str(port), **extra_env)
        await wait_http(f"http://127.0.0.1:{port}/healthz", p)
        return p

    def migrate(self) -> None:
        out = subprocess.run([sys.executable, "-m", "sbct_pipeline.cli", "migrate"],
                             env=self.env(), capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr.decode()[-2000:]

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    async def setup_app(self, api: Api, *, title: str = "Hi {name}",
                        body: str = "Order {order_id} shipped") -> dict[str, Any]:
        """An app whose events go to this stack's simulator, with template order_shipped."""
        status, app = await api.call("POST", "/v1/apps", json={"name": "reliability"},
                                     admin=True)
        assert status == 201, app
        status, b = await api.call(
            "PUT", f"/v1/apps/{app['app_id']}/integrations/clevertap", admin=True,
            json={"event_callback": True, "project_id": self.account[0],
                  "passcode": self.account[1], "api_endpoint": self.sim_url})
        assert status == 200, b
        await api.template(app["api_token"], title=title, body=body)
        return app

    async def sim(self, method: str, path: str, body: Any = None) -> Any:
        async with aiohttp.ClientSession() as s, s.request(
                method, self.sim_url + path,
                data=orjson.dumps(body) if body is not None else None) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def sim_summary(self) -> dict[str, Any]:
        return await self.sim("GET", "/_sim/events?summary=1")  # type: ignore[no-any-return]


async def wait_http(url: str, proc: Proc | None = None, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc is not None and not proc.alive:
                raise AssertionError(f"{proc.name} exited: {proc.tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s"
                         + (f": {proc.tail()}" if proc else ""))


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    """Pipeline processes on this test's database and queue prefix; all stopped afterwards."""
    st = Stack(settings, tmp_path)
    yield st
    st.stop_all()


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(stack.url, session)


async def feed_counts(database_url: str, app_id: str) -> tuple[int, int]:
    """(notification rows, distinct users) of an app."""
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT user_id) AS u FROM notifications "
            "WHERE app_id = $1", app_id)
    finally:
        await conn.close()
    return int(row["n"]), int(row["u"])


async def users_with_rows(database_url: str, app_id: str) -> dict[str, int]:
    """Notification rows per user of an app."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT user_id, count(*) AS n FROM notifications "
                                "WHERE app_id = $1 GROUP BY user_id", app_id)
    finally:
        await conn.close()
    return {r["user_id"]: int(r["n"]) for r in rows}


async def sent_users(stack: Stack) -> Counter[str]:
    """SENT events per user at the simulator (objectId ``__g<user>``, as ``webhook`` makes)."""
    async with aiohttp.ClientSession() as s, s.get(
            stack.sim_url + "/_sim/events?status=SENT") as r:
        assert r.status == 200, await r.text()
        data = orjson.loads(await r.read())
    return Counter(e["objectId"][3:] for e in data["events"])


async def wait_users(stack: Stack, app_id: str, users: set[str], timeout: float,
                     settle: float = 2.0) -> tuple[dict[str, int], Counter[str]]:
    """Wait until each of ``users`` has a feed row and a SENT event; (rows, SENT) per user.

    By set, not by count: users the test did not count as accepted (a 503 whose message the
    broker had kept) may be delivered too, and must not hide a missing one.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await users_with_rows(stack.settings.database_url, app_id)
        sent = await sent_users(stack)
        if not (users - rows.keys()) and not (users - sent.keys()):
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(settle)  # a late duplicate (outbox sweep, redelivery) shows up now
    return await users_with_rows(stack.settings.database_url, app_id), await sent_users(stack)


# ---------------------------------------------------------------- private RabbitMQ

class PrivateRabbit:
    """A RabbitMQ node of our own: own name, ports, Mnesia directory and Erlang cookie.

    The node is started in the foreground under ``Popen`` (not ``-detached``) so that we hold
    its process and can always kill it. ``stop()`` and ``start()`` keep the node name and the
    Mnesia directory, so durable queues and persistent messages survive a restart.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sbct-rel-rmq-"))
        self.name = f"sbctrel{secrets.token_hex(4)}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        home = self.dir / "home"
        home.mkdir()
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "env.conf").write_text("")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n")
        self.env = {**os.environ, "HOME": str(home), "RABBITMQ_NODENAME": self.name,
                    "RABBITMQ_NODE_PORT": str(self.port),
                    "RABBITMQ_DIST_PORT": str(self.dist_port),
                    "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
                    "RABBITMQ_LOG_BASE": str(self.dir / "log"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
                    "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
                    "RABBITMQ_CONF_ENV_FILE": str(self.dir / "env.conf"),
                    "RABBITMQ_PID_FILE": str(self.dir / "pid"),
                    "ERL_EPMD_ADDRESS": "127.0.0.1"}
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.name, *args],
                              env=self.env, capture_output=True, timeout=timeout)

    def start(self) -> None:
        with (self.dir / "server.log").open("ab") as out:
            self.proc = subprocess.Popen([str(RABBITMQ_BIN / "rabbitmq-server")],
                                         env=self.env, cwd=self.dir, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("private RabbitMQ exited: "
                                     + (self.dir / "server.log").read_text()[-2000:])
            if self._amqp_answers():
                return
            time.sleep(0.3)
        raise AssertionError("private RabbitMQ did not start within 90 s")

    def _amqp_answers(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"AMQP\x00\x00\x09\x01")
                return len(s.recv(8)) > 0
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the node cleanly (``rabbitmqctl stop``); kill it if that fails."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._ctl("stop", timeout=60)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_rabbit() -> Iterator[PrivateRabbit]:
    """A started private RabbitMQ node, removed after the test whatever happened."""
    node = PrivateRabbit()
    try:
        node.start()
        yield node
    finally:
        node.destroy()


# ---------------------------------------------------------------- private PostgreSQL

class PrivatePostgres:
    """A PostgreSQL cluster of our own in a temporary directory, on a free port."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sbct-rel-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user: str | None = None
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as postgres.
            self.user = "postgres"
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/sbct"

    def _run(self, *cmd: str, timeout: float = 60) -> None:
        full = [*(["runuser", "-u", self.user, "--"] if self.user else []), *cmd]
        out = subprocess.run(full, capture_output=True, timeout=timeout, cwd=self.dir)
        assert out.returncode == 0, (out.stdout + out.stderr).decode()[-2000:]

    def init(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=trust", "-N")

    def start(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "pg.log"),
                  "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                  "-c fsync=off -c max_connections=200", "start")

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started private PostgreSQL cluster, removed after the test whatever happened."""
    pg = PrivatePostgres()
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def pg_stack(private_postgres: PrivatePostgres, settings: Settings,
             tmp_path: Path) -> Iterator[Stack]:
    """A stack of pipeline processes on the private PostgreSQL cluster, migrated."""
    st = Stack(settings.with_overrides(database_url=private_postgres.url), tmp_path)
    st.migrate()
    yield st
    st.stop_all()


@pytest.fixture
async def pg_client(pg_stack: Stack) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(pg_stack.url, session)


@pytest.fixture
def rmq_stack(private_rabbit: PrivateRabbit, settings: Settings,
              tmp_path: Path) -> Iterator[Stack]:
    """A stack of pipeline processes on the private RabbitMQ node."""
    st = Stack(settings.with_overrides(amqp_url=private_rabbit.url), tmp_path)
    yield st
    st.stop_all()


@pytest.fixture
async def rmq_client(rmq_stack: Stack) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as session:
        yield Api(rmq_stack.url, session)


# ---------------------------------------------------------------- figures

REPORT_COLUMNS = ("scenario", "load", "faults", "accepted", "delivered", "exported", "lost",
                  "duplicates", "notes")


class Report:
    """Collects one row of figures per scenario (see the module docstring)."""

    def __init__(self, node: str, slow: bool) -> None:
        self.node = node
        self.slow = slow

    def row(self, **fields: Any) -> None:
        missing = set(REPORT_COLUMNS) - set(fields) - {"notes"}
        assert not missing, f"report row lacks {missing}"
        fields.setdefault("notes", "")
        fields["test"] = self.node
        fields["slow"] = self.slow
        fields["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        print("\nreliability:", orjson.dumps(fields).decode())
        path = os.environ.get("SBCT_RELIABILITY_REPORT")
        if path:
            with open(path, "ab") as f:
                f.write(orjson.dumps(fields) + b"\n")


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    return Report(request.node.nodeid,
                  request.node.get_closest_marker("reliability_slow") is not None)
