"""CleverTap simulator: a local stand-in for the Upload Events API, with failure injection.

``POST /1/upload`` checks ``X-CleverTap-Account-Id`` / ``X-CleverTap-Passcode`` (401 with
CleverTap's body otherwise), enforces 15 concurrent requests per account (429 beyond, as
CleverTap does), validates each record the way CleverTap documents (``identity`` or
``objectId``, ``type: event``, ``evtName``, ``evtData``, epoch-seconds ``ts``; at most 1,000
records) and answers ``{"status", "processed", "unprocessed"}`` with HTTP 200 even when
records failed, like the real API.

Control and inspection (not part of CleverTap):

- ``GET /_sim/events`` accepted records (``?summary=1`` for counts only; ``?status=SENT``);
- ``GET /_sim/stats`` requests by answer, records, duplicates, peak concurrency;
- ``POST /_sim/faults`` ``{"fail_429": 0.1, "fail_500": 0.05, "slow_ms": 500,
  "slow_rate": 0.2, "outage_s": 30, "reject_rate": 0.01, "reject_code": 526}`` sets faults
  (``outage_s`` starts an outage window now); ``POST /_sim/reset`` clears everything.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from aiohttp import web

MAX_RECORDS = 1000
MAX_CONCURRENT = 15
ERROR_TEXT = {509: "Event name is mandatory", 512: "Invalid structure",
              522: "Too many event properties", 523: "Identity/objectId missing or too long",
              524: "Neither event nor profile", 525: "Timestamp is not in epoch seconds",
              526: "Invalid objectId", 555: "Miscellaneous error"}


@dataclass
class Faults:
    """Failure injection; every rate is a probability per request (or per record)."""

    fail_429: float = 0.0
    fail_500: float = 0.0
    slow_ms: float = 0.0
    slow_rate: float = 0.0
    outage_until: float = 0.0
    reject_rate: float = 0.0
    reject_code: int = 555

    def update(self, body: dict[str, Any]) -> None:
        for name in ("fail_429", "fail_500", "slow_ms", "slow_rate", "reject_rate"):
            if name in body:
                value = float(body[name])
                if value < 0 or (name != "slow_ms" and value > 1):
                    raise ValueError(f"{name} out of range: {value}")
                setattr(self, name, value)
        if "reject_code" in body:
            self.reject_code = int(body["reject_code"])
        if "outage_s" in body:
            self.outage_until = time.monotonic() + float(body["outage_s"])


class Simulator:
    """State of one simulated CleverTap account."""

    def __init__(self, account_id: str, passcode: str, faults: Faults | None = None,
                 seed: int | None = None) -> None:
        self.account_id = account_id
        self.passcode = passcode
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.reset()

    def reset(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.keys: Counter[tuple[Any, ...]] = Counter()
        self.answers: Counter[int] = Counter()
        self.records_seen = 0
        self.rejected = 0
        self.in_flight = 0
        self.peak_in_flight = 0

    def stats(self) -> dict[str, Any]:
        dups = sum(c - 1 for c in self.keys.values() if c > 1)
        return {"requests": {str(k): v for k, v in sorted(self.answers.items())},
                "records_seen": self.records_seen, "accepted": len(self.events),
                "unique": len(self.keys), "duplicates": dups, "rejected": self.rejected,
                "peak_in_flight": self.peak_in_flight,
                "faults": {k: v for k, v in asdict(self.faults).items() if k != "outage_until"}
                | {"outage_left_s": max(0.0, self.faults.outage_until - time.monotonic())}}

    def check_record(self, rec: Any) -> tuple[int, str] | None:
        if not isinstance(rec, dict):
            return 512, ERROR_TEXT[512]
        ident = rec.get("objectId", rec.get("identity"))
        if ident is None or not isinstance(ident, str | int) or len(str(ident)) > 120 \
                or str(ident) == "":
            return 523, ERROR_TEXT[523]
        if rec.get("type") != "event":
            return 524, ERROR_TEXT[524]
        if not isinstance(rec.get("evtName"), str) or not rec["evtName"]:
            return 509, ERROR_TEXT[509]
        data = rec.get("evtData")
        if not isinstance(data, dict):
            return 512, ERROR_TEXT[512]
        if len(data) > 100:
            return 522, ERROR_TEXT[522]
        ts = rec.get("ts")
        if ts is not None and (not isinstance(ts, int) or isinstance(ts, bool)
                               or not 1_000_000_000 <= ts < 10_000_000_000):
            return 525, ERROR_TEXT[525]
        return None

    async def upload(self, request: web.Request) -> web.Response:
        f = self.faults
        if time.monotonic() < f.outage_until:
            return self._answer(503, {"status": "fail", "error": "Service Unavailable"})
        if self.in_flight >= MAX_CONCURRENT:
            return self._answer(429, {"status": "fail",
                                      "error": "Too many concurrent requests"},
                                {"Retry-After": "1"})
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if f.slow_ms and self.rng.random() < (f.slow_rate or 1.0):
                await asyncio.sleep(f.slow_ms / 1000)
            # Credentials are checked after the delay: a slow answer may be a refusal too.
            if (request.headers.get("X-CleverTap-Account-Id") != self.account_id
                    or request.headers.get("X-CleverTap-Passcode") != self.passcode):
                return self._answer(401, {"status": "fail", "code": 401,
                                          "error": "Account ID is not valid"})
            roll = self.rng.random()
            if roll < f.fail_429:
                return self._answer(429, {"status": "fail", "error": "Rate limit exceeded"},
                                    {"Retry-After": "1"})
            if roll < f.fail_429 + f.fail_500:
                return self._answer(500, {"status": "fail", "error": "Internal error"})
            try:
                body = orjson.loads(await request.read())
            except orjson.JSONDecodeError:
                return self._answer(400, {"status": "fail", "error": "Invalid JSON"})
            records = body.get("d") if isinstance(body, dict) else None
            if not isinstance(records, list):
                return self._answer(400, {"status": "fail", "error": "'d' must be an array"})
            if len(records) > MAX_RECORDS:
                return self._answer(400, {"status": "fail",
                                          "error": f"at most {MAX_RECORDS} records"})
            unprocessed = []
            processed = 0
            for rec in records:
                self.records_seen += 1
                problem = self.check_record(rec)
                if problem is None and f.reject_rate and self.rng.random() < f.reject_rate:
                    problem = (f.reject_code, ERROR_TEXT.get(f.reject_code, "Rejected"))
                if problem is not None:
                    self.rejected += 1
                    unprocessed.append({"status": "fail", "code": problem[0],
                                        "error": problem[1],
                                        "record": orjson.dumps(rec).decode()})
                    continue
                processed += 1
                self.events.append(rec)
                data = rec["evtData"]
                self.keys[(rec.get("objectId") or rec.get("identity"), rec["evtName"],
                           data.get("status"), data.get("target_id"))] += 1
            return self._answer(200, {"status": "success", "processed": processed,
                                      "unprocessed": unprocessed})
        finally:
            self.in_flight -= 1

    def _answer(self, status: int, body: Any,
                headers: dict[str, str] | None = None) -> web.Response:
        self.answers[status] += 1
        return web.Response(status=status, body=orjson.dumps(body), headers=headers,
                            content_type="application/json")

    async def list_events(self, request: web.Request) -> web.Response:
        status = request.query.get("status")
        out: dict[str, Any] = self.stats()
        if request.query.get("summary") not in ("1", "true"):
            events = self.events
            if status:
                events = [e for e in events if e["evtData"].get("status") == status]
            out["events"] = events
        return web.Response(body=orjson.dumps(out), content_type="application/json")

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.stats()), content_type="application/json")

    async def set_faults(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            self.faults.update(body)
        except (ValueError, TypeError) as exc:
            return web.Response(status=400, content_type="application/json",
                                body=orjson.dumps({"error": {"code": "bad_request",
                                                             "message": str(exc)}}))
        return await self.get_stats(request)

    async def do_reset(self, request: web.Request) -> web.Response:
        self.reset()
        self.faults = Faults()
        return await self.get_stats(request)


def create_sim_app(sim: Simulator) -> web.Application:
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/1/upload", sim.upload)
    app.router.add_get("/_sim/events", sim.list_events)
    app.router.add_get("/_sim/stats", sim.get_stats)
    app.router.add_post("/_sim/faults", sim.set_faults)
    app.router.add_post("/_sim/reset", sim.do_reset)
    app.router.add_get("/healthz", sim.get_stats)
    return app
