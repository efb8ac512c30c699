"""Codec: CleverTap webhook bodies -> typed recipients, and broker message bodies <-> jobs.

Parsing follows CONTRACT section 3: ``profiles`` as an array or one object, field names in
any casing, ``key_values`` at the top level and/or per profile (the profile's win), template
variables from ``key_values.variables`` (a JSON object in a string) merged with ``var.<name>``
entries. Every schema error raises :class:`BadRequest` naming the field's path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import BadRequest

MAX_KEY_LEN = 200


@dataclass(slots=True)
class Recipient:
    """One user to notify, as parsed from one webhook profile."""

    user_id: str
    object_id: str | None
    identity: str | None
    template_key: str
    event_name: str
    variables: dict[str, str]

    def to_wire(self) -> list[Any]:
        return [self.user_id, self.object_id, self.identity, self.template_key,
                self.event_name, self.variables]

    @classmethod
    def from_wire(cls, item: list[Any]) -> Recipient:
        return cls(item[0], item[1], item[2], item[3], item[4], item[5])


@dataclass(slots=True)
class Webhook:
    """A parsed webhook body."""

    target_id: int
    is_test: bool
    recipients: list[Recipient] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    @property
    def template_keys(self) -> set[str]:
        return {r.template_key for r in self.recipients}


def _lower(obj: Mapping[str, Any]) -> dict[str, Any]:
    # First spelling wins when a body carries both (e.g. "identity" and "Identity").
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out.setdefault(k.lower(), v)
    return out


def _as_id(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        value = str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None


def _as_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


_ASCII_INT = re.compile(r"-?[0-9]+")


def parse_target_id(value: Any) -> int:
    if isinstance(value, bool) or value is None:
        raise BadRequest("targetId is required: the campaign or journey ID, an integer",
                         code="invalid_target_id")
    if isinstance(value, int):
        target = value
    elif isinstance(value, str) and _ASCII_INT.fullmatch(value.strip()):
        # ASCII digits only: str.isdigit() also takes '²' (int() refuses it: a 500) and
        # int() takes other scripts' digits, which CleverTap never sends.
        target = int(value.strip())
    elif isinstance(value, float) and value.is_integer():
        target = int(value)
    else:
        raise BadRequest(f"targetId must be an integer or a numeric string, got {value!r:.60}",
                         code="invalid_target_id")
    if not -(2**63) <= target < 2**63:
        raise BadRequest("targetId is out of the 64-bit range", code="invalid_target_id")
    return target


def _key_values(raw: Any, path: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequest(f"{path} must be an object of key-value pairs", code="invalid_field")
    return raw


def _variables(kv: Mapping[str, Any], path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    raw = kv.get("variables")
    if raw is not None and raw != "":
        if isinstance(raw, str):
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"{path}.variables is not valid JSON: {exc}",
                                 code="invalid_variables") from None
        else:
            parsed = raw
        if not isinstance(parsed, dict):
            raise BadRequest(f"{path}.variables must be a JSON object (encoded in a string)",
                             code="invalid_variables")
        for k, v in parsed.items():
            out[k] = v if isinstance(v, str) else ("" if v is None else _as_str(v))
    for k, v in kv.items():
        if k.startswith("var.") and len(k) > 4:
            out[k[4:]] = v if isinstance(v, str) else _as_str(v)
    return out


def parse_webhook(body: Any) -> Webhook:
    """Parse a decoded webhook body; raises BadRequest naming the field on schema errors."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_body")
    top = _lower(body)
    is_test = top.get("is_test") is True
    if is_test:
        return Webhook(target_id=0, is_test=True)
    if "targetid" not in top:
        raise BadRequest("targetId is required: the campaign or journey ID",
                         code="invalid_target_id")
    target_id = parse_target_id(top["targetid"])
    top_kv = _key_values(top.get("key_values"), "key_values")
    profiles = top.get("profiles")
    if isinstance(profiles, dict):
        profiles = [profiles]
    elif profiles is None:
        raise BadRequest("profiles is required: an array of profiles or one profile object",
                         code="invalid_profiles")
    elif not isinstance(profiles, list):
        raise BadRequest("profiles must be an array or an object", code="invalid_profiles")
    hook = Webhook(target_id=target_id, is_test=False)
    top_vars = _variables(top_kv, "key_values") if top_kv else {}
    for i, raw in enumerate(profiles):
        path = f"profiles[{i}]"
        if not isinstance(raw, dict):
            hook.rejected.append({"index": i, "reason": f"{path} is not an object"})
            continue
        p = _lower(raw)
        own_kv = _key_values(p.get("key_values"), f"{path}.key_values")
        kv = {**top_kv, **own_kv} if own_kv else top_kv
        template_key = kv.get("template_key")
        if not isinstance(template_key, str) or not template_key.strip():
            raise BadRequest(
                f"{path}.key_values.template_key is required (top-level key_values or the"
                " profile's own): the key of the template to render",
                code="missing_template_key")
        template_key = template_key.strip()
        if len(template_key) > MAX_KEY_LEN:
            raise BadRequest(f"{path}.key_values.template_key is longer than {MAX_KEY_LEN}",
                             code="invalid_template_key")
        event_name = kv.get("event_name")
        if not isinstance(event_name, str) or not event_name.strip():
            event_name = template_key
        variables = _variables(own_kv, f"{path}.key_values") if own_kv else top_vars
        if own_kv and top_kv:
            variables = {**top_vars, **variables}
        pdata = p.get("profiledata")
        pdata = _lower(pdata) if isinstance(pdata, dict) else {}
        identity = _as_id(p.get("identity"))
        user_id = (_as_id(pdata.get("sendbirdid")) or _as_id(kv.get("SendbirdID"))
                   or identity)
        if user_id is None:
            hook.rejected.append({"index": i, "reason": f"{path} has no user ID"
                                  " (profileData.SendbirdID, key_values.SendbirdID or identity)"})
            continue
        if len(user_id) > MAX_KEY_LEN:
            hook.rejected.append({"index": i, "reason": f"{path} user ID is longer than"
                                  f" {MAX_KEY_LEN} characters"})
            continue
        hook.recipients.append(Recipient(
            user_id=user_id, object_id=_as_id(p.get("objectid")), identity=identity,
            template_key=template_key, event_name=event_name.strip()[:MAX_KEY_LEN],
            variables=variables))
    return hook


# ---------------------------------------------------------------- broker messages

@dataclass(slots=True)
class Job:
    """What travels on the broker: one webhook (single/multi) or one chunk of it."""

    request_id: str
    app_id: str
    target_id: int
    recipients: list[Recipient]
    received_at: float
    chunk: int = 0

    def encode(self) -> bytes:
        return orjson.dumps({
            "v": 1, "request_id": self.request_id, "app_id": self.app_id,
            "target_id": self.target_id, "received_at": self.received_at, "chunk": self.chunk,
            "recipients": [r.to_wire() for r in self.recipients],
        })

    @staticmethod
    def split(body: bytes, size: int) -> tuple[JobHead, list[bytes]]:
        """A job's encoded chunks of ``size`` recipients (chunk ``i`` numbered ``i``)."""
        d = orjson.loads(body)
        recipients = d.pop("recipients")
        head = JobHead(d["request_id"], d["app_id"], d["target_id"], len(recipients))
        return head, [orjson.dumps({**d, "chunk": n, "recipients": recipients[i : i + size]})
                      for n, i in enumerate(range(0, len(recipients), size))]

    @classmethod
    def decode(cls, body: bytes) -> Job:
        d = orjson.loads(body)
        return cls(request_id=d["request_id"], app_id=d["app_id"], target_id=d["target_id"],
                   recipients=[Recipient.from_wire(r) for r in d["recipients"]],
                   received_at=d["received_at"], chunk=d.get("chunk", 0))


@dataclass(frozen=True, slots=True)
class JobHead:
    """A job's identity without its recipients."""

    request_id: str
    app_id: str
    target_id: int
    users: int


@dataclass(slots=True)
class Event:
    """A SENT or READ event to export to CleverTap."""

    app_id: str
    notification_id: int
    status: str
    evt_name: str
    target_id: int
    ts: int
    object_id: str | None
    identity: str | None
    request_id: str | None = None

    def to_wire(self) -> list[Any]:
        return [self.app_id, self.notification_id, self.status, self.evt_name, self.target_id,
                self.ts, self.object_id, self.identity, self.request_id]

    @classmethod
    def from_wire(cls, item: list[Any]) -> Event:
        return cls(*item)

    def record(self) -> dict[str, Any]:
        """The CleverTap upload record (CONTRACT section 7)."""
        # One dict literal per branch: this runs for every exported event (hot path).
        if self.object_id:
            return {"objectId": self.object_id, "type": "event", "evtName": self.evt_name,
                    "evtData": {"status": self.status, "target_id": self.target_id},
                    "ts": self.ts}
        return {"identity": self.identity, "type": "event", "evtName": self.evt_name,
                "evtData": {"status": self.status, "target_id": self.target_id}, "ts": self.ts}


def encode_events(events: list[Event]) -> bytes:
    return orjson.dumps([e.to_wire() for e in events])


def decode_events(body: bytes) -> list[Event]:
    return [Event(*item) for item in orjson.loads(body)]
