"""Large webhook bodies are prepared in helper processes, with the same answers and errors."""

from __future__ import annotations

import multiprocessing
import os
import signal

import orjson
import pytest

from sbct_pipeline.broker import Broker
from sbct_pipeline.codec import Job
from sbct_pipeline.errors import BadRequest
from sbct_pipeline.parsing import PROCESS_PARSE_BYTES, ParsePool, prepare

from .conftest import Api, webhook

MULTI = "/clevertap/notifications/multi"


def _big(n: int = 1000, **kw: object) -> dict[str, object]:
    body = webhook(users=[f"u{i}" for i in range(n)], **kw)  # type: ignore[arg-type]
    assert len(orjson.dumps(body)) > PROCESS_PARSE_BYTES
    return body


async def test_a_helper_process_prepares_what_the_ingress_would() -> None:
    """The helper's result equals an inline prepare: counts, rejections, keys, job bytes."""
    body = _big()
    body["profiles"].append({"identity": None})  # type: ignore[attr-defined]
    raw = orjson.dumps(body)
    pool = ParsePool(1)
    try:
        remote = await pool.prepare(raw, request_id="r1", app_id="a1", received_at=1.5)
    finally:
        await pool.close()
    local = prepare(raw, request_id="r1", app_id="a1", received_at=1.5)
    assert remote == local
    assert (remote.accepted, remote.rejected, remote.template_keys) == (1000, 1,
                                                                        {"order_shipped"})
    assert remote.payload is not None
    job = Job.decode(remote.payload)
    assert (job.request_id, job.app_id, len(job.recipients)) == ("r1", "a1", 1000)


@pytest.mark.parametrize(("mutate", "code", "named"), [
    (lambda raw: raw[:-10], "invalid_json", "malformed JSON"),
    (lambda raw: raw.replace(b'"u7"', b'"u\\u0000"'), "invalid_json", "NUL"),
    (lambda raw: raw.replace(b'"targetId":1700000001', b'"targetId":"abc"'),
     "invalid_target_id", "targetId"),
])
async def test_errors_from_a_helper_name_the_problem(mutate: object, code: str,
                                                    named: str) -> None:
    """A bad large body fails in the helper and comes back as the same named 400."""
    raw = mutate(orjson.dumps(_big()))  # type: ignore[operator]
    pool = ParsePool(1)
    try:
        with pytest.raises(BadRequest) as exc:
            await pool.prepare(raw, request_id="r", app_id="a", received_at=0.0)
    finally:
        await pool.close()
    assert exc.value.code == code and named in exc.value.message


async def test_a_large_webhook_with_a_bad_profile_is_a_400_over_http(ingress: Api) -> None:
    """Through the real ingress: a 1,000-profile multi missing a template key is a 400
    naming the profile, and nothing is published."""
    app = await ingress.new_app()
    await ingress.template(app["api_token"])
    body = _big()
    body["key_values"] = {}
    body["profiles"][3]["key_values"] = {"template_key": "order_shipped"}  # type: ignore[index]
    status, res = await ingress.call("POST", MULTI, token=app["api_token"], json=body)
    assert status == 400
    assert res["error"]["code"] == "missing_template_key"
    assert "profiles[0]" in res["error"]["message"]


async def test_a_killed_helper_is_replaced(ingress: Api, broker: Broker) -> None:
    """kill -9 of the parse helper: the next large webhook is still answered 200, and later
    ones go to a new helper."""
    app = await ingress.new_app()
    await ingress.template(app["api_token"])
    status, _ = await ingress.call("POST", MULTI, token=app["api_token"], json=_big())
    assert status == 200
    helpers = multiprocessing.active_children()
    assert helpers
    for p in helpers:
        os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
    for i in range(3):
        status, res = await ingress.call("POST", MULTI, token=app["api_token"],
                                         json=_big(target_id=1 + i))
        assert status == 200 and res["accepted"] == 1000
    assert {p.pid for p in multiprocessing.active_children()}.isdisjoint(
        {p.pid for p in helpers})
    assert await broker.queue_depth("multi") == 4
