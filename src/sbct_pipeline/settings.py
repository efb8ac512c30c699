"""Settings: every tunable of the pipeline, read once from ``SBCT_*`` environment variables.

Only the entry point (``cli.py``) reads ``os.environ``; everything else receives a
:class:`Settings`. Tests build ``Settings(...)`` directly. A bad value fails at start with a
message naming the variable and the value, never later at first use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

PREFIX = "SBCT_"
WORKER_QUEUES = ("single", "multi")


class SettingsError(ValueError):
    """A ``SBCT_*`` variable holds a value the pipeline cannot use."""


def _secret(value: str | None) -> str:
    return "unset" if not value else "***"


def _mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """The whole configuration; field ``foo_bar`` is read from ``SBCT_FOO_BAR``."""

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/sbct"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    admin_token: str | None = None
    single_rate_limit: float = 1000.0
    log_level: str = "info"
    # Names of every exchange and queue start with this: two pipelines (or two tests) can
    # share one broker without seeing each other's messages.
    amqp_prefix: str = "sbct"
    queue_type: str = "classic"
    dedupe_window_s: float = 600.0
    max_body_bytes: int = 64 * 1024 * 1024
    # Helper processes of each ingress that parse large webhook bodies (0: a thread).
    parse_processes: int = 1
    chunk_size: int = 500
    publish_timeout_s: float = 2.0
    # Seconds between attempts to reconnect to RabbitMQ after a connection was lost.
    amqp_reconnect_s: float = 1.0
    max_queue_depth: int = 20_000
    worker_prefetch: int = 4
    # Which job queues a worker process consumes: "single" (Journeys), "multi" (Campaigns:
    # the multi and chunks queues), or both. Dedicated Journey workers keep campaign
    # rendering off the CPU and event loop that deliver Journeys.
    worker_queues: str = "single,multi"
    delivery_rate_limit: float = 0.0
    max_attempts: int = 5
    drain_timeout_s: float = 20.0
    startup_wait_s: float = 30.0
    metrics_port: int = 9100
    db_pool_size: int = 10
    callback_batch_size: int = 1000
    callback_linger_s: float = 1.0
    callback_concurrency: int = 15
    callback_timeout_s: float = 10.0
    callback_retry_max_s: float = 86_400.0
    outbox_sweep_s: float = 5.0
    session_token_ttl_s: int = 3600
    stream_heartbeat_s: float = 15.0

    def __post_init__(self) -> None:
        problems = list(_validate(self))
        if problems:
            raise SettingsError("; ".join(problems))

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            if f.name == "admin_token":
                value = _secret(value)
            elif f.name in ("amqp_url", "database_url"):
                value = _mask_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    def public(self) -> dict[str, Any]:
        """The settings as a dict safe to log (secrets masked)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            if f.name == "admin_token":
                value = _secret(value)
            elif f.name in ("amqp_url", "database_url"):
                value = _mask_url(value)
            out[f.name] = value
        return out

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from ``SBCT_*`` variables; unknown ``SBCT_*`` names are an error."""
        known = {f.name: f for f in dataclasses.fields(cls) if not f.name.startswith("_")}
        values: dict[str, Any] = {}
        problems: list[str] = []
        for key, raw in environ.items():
            if not key.startswith(PREFIX):
                continue
            name = key[len(PREFIX) :].lower()
            f = known.get(name)
            if f is None:
                problems.append(f"{key} is not a setting this version knows (typo?)")
                continue
            try:
                values[name] = _cast(str(f.type), raw)
            except ValueError as exc:
                problems.append(f"{key}={raw!r}: {exc}")
        if problems:
            raise SettingsError("; ".join(problems))
        return cls(**values)

    @property
    def worker_queue_kinds(self) -> frozenset[str]:
        """``SBCT_WORKER_QUEUES`` as a set of ``single`` and/or ``multi``."""
        return frozenset(q.strip() for q in self.worker_queues.split(",") if q.strip())

    def with_overrides(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _cast(type_name: str, raw: str) -> Any:
    casts: dict[str, Callable[[str], Any]] = {
        "int": _int,
        "float": _float,
        "str": str,
        "str | None": lambda v: v or None,
    }
    return casts[type_name](raw.strip())


def _int(raw: str) -> int:
    try:
        return int(raw.replace("_", ""))
    except ValueError:
        raise ValueError("expected a whole number") from None


def _float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("expected a number") from None


def _validate(s: Settings) -> list[str]:
    problems: list[str] = []

    def need(cond: bool, var: str, value: object, why: str) -> None:
        if not cond:
            problems.append(f"{PREFIX}{var.upper()}={value!r}: {why}")

    need(urlsplit(s.amqp_url).scheme in ("amqp", "amqps"), "amqp_url", _mask_url(s.amqp_url),
         "expected an amqp:// or amqps:// URL")
    need(urlsplit(s.database_url).scheme in ("postgresql", "postgres"), "database_url",
         _mask_url(s.database_url), "expected a postgresql:// URL")
    need(bool(urlsplit(s.database_url).path.strip("/")), "database_url",
         _mask_url(s.database_url), "the URL must name a database")
    need(0 <= s.http_port <= 65535, "http_port", s.http_port, "expected a port 0-65535")
    need(0 <= s.metrics_port <= 65535, "metrics_port", s.metrics_port, "expected a port 0-65535")
    need(s.single_rate_limit >= 0, "single_rate_limit", s.single_rate_limit, "must be >= 0")
    need(s.delivery_rate_limit >= 0, "delivery_rate_limit", s.delivery_rate_limit, "must be >= 0")
    need(s.log_level.lower() in ("debug", "info", "warning", "error"), "log_level", s.log_level,
         "expected debug, info, warning or error")
    need(s.queue_type in ("classic", "quorum"), "queue_type", s.queue_type,
         "expected classic or quorum")
    need(bool(s.amqp_prefix) and all(c.isalnum() or c in "._-" for c in s.amqp_prefix),
         "amqp_prefix", s.amqp_prefix, "letters, digits, '.', '_' and '-' only")
    need(s.dedupe_window_s >= 0, "dedupe_window_s", s.dedupe_window_s, "must be >= 0")
    need(s.max_body_bytes >= 1024, "max_body_bytes", s.max_body_bytes, "must be >= 1024")
    need(0 <= s.parse_processes <= 64, "parse_processes", s.parse_processes,
         "expected 0-64 (0: parse large bodies in a thread of the ingress)")
    need(1 <= s.chunk_size <= 10_000, "chunk_size", s.chunk_size, "expected 1-10000")
    need(s.publish_timeout_s > 0, "publish_timeout_s", s.publish_timeout_s, "must be > 0")
    need(s.amqp_reconnect_s > 0, "amqp_reconnect_s", s.amqp_reconnect_s, "must be > 0")
    need(s.max_queue_depth > 0, "max_queue_depth", s.max_queue_depth, "must be > 0")
    need(s.worker_prefetch >= 1, "worker_prefetch", s.worker_prefetch, "must be >= 1")
    queues = [q.strip() for q in s.worker_queues.split(",") if q.strip()]
    need(bool(queues) and all(q in WORKER_QUEUES for q in queues), "worker_queues",
         s.worker_queues, "expected single, multi or single,multi (comma-separated)")
    need(s.max_attempts >= 1, "max_attempts", s.max_attempts, "must be >= 1")
    need(s.drain_timeout_s >= 0, "drain_timeout_s", s.drain_timeout_s, "must be >= 0")
    need(s.startup_wait_s >= 0, "startup_wait_s", s.startup_wait_s, "must be >= 0")
    need(s.db_pool_size >= 2, "db_pool_size", s.db_pool_size, "must be >= 2")
    need(1 <= s.callback_batch_size <= 1000, "callback_batch_size", s.callback_batch_size,
         "expected 1-1000 (CleverTap takes at most 1000 records a request)")
    need(s.callback_linger_s >= 0, "callback_linger_s", s.callback_linger_s, "must be >= 0")
    need(1 <= s.callback_concurrency <= 15, "callback_concurrency", s.callback_concurrency,
         "expected 1-15 (CleverTap answers 429 past 15 concurrent requests)")
    need(s.callback_timeout_s > 0, "callback_timeout_s", s.callback_timeout_s, "must be > 0")
    need(s.callback_retry_max_s > 0, "callback_retry_max_s", s.callback_retry_max_s,
         "must be > 0")
    need(s.outbox_sweep_s > 0, "outbox_sweep_s", s.outbox_sweep_s, "must be > 0")
    need(s.session_token_ttl_s > 0, "session_token_ttl_s", s.session_token_ttl_s, "must be > 0")
    need(s.stream_heartbeat_s > 0, "stream_heartbeat_s", s.stream_heartbeat_s, "must be > 0")
    return problems
