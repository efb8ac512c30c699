"""Dead letters: list what sits in ``p.dead.events`` / ``p.dead.jobs`` and replay it.

Two producers write there: the consumer wrapper (``broker.Consumer``: a job or an events
message that failed for good; body unchanged, header ``x-source-queue``) and the callback
exporter (records CleverTap refused for good; body ``[[*event, reason], ...]``, header
``x-format: events+reason``). Both carry ``x-reason`` and ``x-dead-at``.

Messages are read with ``basic.get`` without acking. Listing never acks, so closing the
channel puts every message back. Replaying publishes a message to its original queue (with
a publisher confirm, attempts and retry clock reset) and only then acks it; whatever is not
replayed (another app, an unknown source) stays unacked and returns to the dead-letter queue
when the channel closes. At most the number of messages present at the start is read, so
a message that fails again while the replay runs is not replayed twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from aio_pika.abc import AbstractIncomingMessage

from . import logs
from .broker import _BROKER_ERRORS, Broker
from .errors import BrokerUnavailable

log = logs.get(__name__)

KINDS = ("events", "jobs")
JOB_QUEUES = ("single", "multi", "chunks")
# Headers that describe the failed life of a message, dropped when it is replayed.
_RESET_HEADERS = ("x-reason", "x-dead-at", "x-attempts", "x-first-attempt-at", "x-death",
                  "x-format", "x-first-death-exchange", "x-first-death-queue",
                  "x-first-death-reason")


@dataclass(slots=True)
class DeadLetter:
    """What one dead-lettered message holds, as ``deadletters list`` shows it."""

    kind: str
    reason: str
    apps: list[str]
    records: int
    age_s: float | None
    source: str | None
    replayable: bool = True
    # Event records per app (events kind), to split a message when replaying one app.
    by_app: dict[str, list[list[Any]]] = field(default_factory=dict, repr=False)

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        del out["by_app"]
        return out


def describe(kind: str, message: AbstractIncomingMessage) -> DeadLetter:
    """Read a dead-lettered message without changing it."""
    headers = dict(message.headers or {})
    reason = str(headers.get("x-reason", "unknown"))
    dead_at = headers.get("x-dead-at")
    age = round(time.time() - float(dead_at), 1) if isinstance(dead_at, int | float) else None
    source = headers.get("x-source-queue")
    source = str(source) if source else ("events" if kind == "events" else None)
    dl = DeadLetter(kind=kind, reason=reason, apps=[], records=0, age_s=age, source=source)
    try:
        body = orjson.loads(message.body)
    except orjson.JSONDecodeError:
        dl.replayable = source is not None
        return dl
    if kind == "events" and isinstance(body, list):
        strip = headers.get("x-format") == "events+reason"
        for item in body:
            if not isinstance(item, list) or not item:
                continue
            wire = item[:-1] if strip else item
            dl.by_app.setdefault(str(wire[0]), []).append(wire)
        dl.apps = sorted(dl.by_app)
        dl.records = sum(len(v) for v in dl.by_app.values())
    elif isinstance(body, dict):
        if "app_id" in body:
            dl.apps = [str(body["app_id"])]
        recipients = body.get("recipients")
        dl.records = len(recipients) if isinstance(recipients, list) else 1
    if kind == "jobs" and source not in JOB_QUEUES:
        dl.replayable = False
    return dl


def _replay_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    headers = {k: v for k, v in (message.headers or {}).items() if k not in _RESET_HEADERS}
    headers["x-replayed-at"] = int(time.time())
    return headers


def _kinds(kind: str | None) -> Iterable[str]:
    return KINDS if kind is None else (kind,)


async def list_dead(broker: Broker, *, kind: str | None = None,
                    limit: int = 100) -> list[DeadLetter]:
    """Up to ``limit`` dead letters per kind, oldest first; none is removed."""
    out: list[DeadLetter] = []
    for k in _kinds(kind):
        channel = await broker.consume_connection.channel()
        try:
            queue = await channel.get_queue(broker.names.dead(k), ensure=False)
            for _ in range(limit):
                msg = await queue.get(no_ack=False, fail=False)
                if msg is None:
                    break
                out.append(describe(k, msg))
        except _BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"cannot read {broker.names.dead(k)}: {exc!r}") from exc
        finally:
            # Never acked: closing the channel returns every message to the queue.
            await channel.close()
    return out


@dataclass(slots=True)
class ReplayResult:
    """What ``deadletters replay`` did."""

    replayed_messages: int = 0
    replayed_records: int = 0
    kept_messages: int = 0
    by_queue: dict[str, int] = field(default_factory=dict)


async def replay(broker: Broker, *, kind: str | None = None,
                 app: str | None = None) -> ReplayResult:
    """Republish dead letters (of ``app`` only, if given) to their original queues."""
    result = ReplayResult()
    for k in _kinds(kind):
        channel = await broker.consume_connection.channel()
        try:
            queue = await channel.declare_queue(broker.names.dead(k), passive=True)
            present = int(queue.declaration_result.message_count or 0)
            for _ in range(present):
                msg = await queue.get(no_ack=False, fail=False)
                if msg is None:
                    break
                if await _replay_one(broker, k, msg, app, result):
                    await msg.ack()
                else:
                    result.kept_messages += 1
        except _BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"cannot replay {broker.names.dead(k)}: {exc!r}") from exc
        finally:
            # Messages not acked (kept, or in flight when something failed) go back.
            await channel.close()
    log.info("deadletters.replayed", app=app, kind=kind, **asdict(result))
    return result


async def _replay_one(broker: Broker, kind: str, msg: AbstractIncomingMessage,
                      app: str | None, result: ReplayResult) -> bool:
    """Replay one message; True when it may be acked (everything in it is safe elsewhere)."""
    dl = describe(kind, msg)
    if not dl.replayable or dl.source is None:
        return False
    if app is not None and app not in dl.apps:
        return False
    headers = _replay_headers(msg)
    if kind == "events" and dl.by_app:
        chosen = dl.by_app if app is None else {app: dl.by_app[app]}
        body = orjson.dumps([w for ws in chosen.values() for w in ws])
        rest = {a: ws for a, ws in dl.by_app.items() if a not in chosen}
        await broker.publish(dl.source, body, headers=headers)
        if rest:
            # The other apps' records stay dead, in a message of their own.
            leftover = orjson.dumps([[*w, dl.reason] for ws in rest.values() for w in ws])
            await broker.publish(kind, leftover, exchange=broker.names.dlx, headers={
                **dict(msg.headers or {}), "x-format": "events+reason"})
        records = sum(len(ws) for ws in chosen.values())
    else:
        await broker.publish(dl.source, msg.body, headers=headers)
        records = dl.records
    result.replayed_messages += 1
    result.replayed_records += records
    result.by_queue[dl.source] = result.by_queue.get(dl.source, 0) + 1
    return True
