"""The webhook ingress over real HTTP, with the real broker and database."""

from __future__ import annotations

import orjson

from sbct_pipeline.broker import Broker
from sbct_pipeline.codec import Job
from sbct_pipeline.settings import Settings

from .conftest import Api, webhook

SINGLE = "/clevertap/notifications/single"
MULTI = "/clevertap/notifications/multi"


async def _depth(broker: Broker, kind: str) -> int:
    return await broker.queue_depth(kind)


async def test_single_is_confirmed_then_enqueued(ingress: Api, broker: Broker) -> None:
    """A valid single webhook answers 200 with counts, and its job is on the queue."""
    app = await ingress.new_app()
    await ingress.template(app["api_token"])
    status, body = await ingress.call("POST", SINGLE, token=app["api_token"],
                                      json=webhook(users=["u1", "u2"]))
    assert status == 200, body
    assert (body["accepted"], body["rejected"]) == (2, 0)
    assert await _depth(broker, "single") == 1
    ch = await broker.consume_connection.channel()
    q = await ch.get_queue(broker.names.queue("single"), ensure=False)
    msg = await q.get(timeout=5)
    job = Job.decode(msg.body)
    assert job.request_id == body["request_id"]
    assert [r.user_id for r in job.recipients] == ["u1", "u2"]
    assert job.app_id == app["app_id"]
    await msg.ack()
    await ch.close()


async def test_multi_accepts_ten_thousand_profiles(ingress: Api, broker: Broker) -> None:
    """A 10,000-profile campaign body is accepted as one job on the multi queue."""
    app = await ingress.new_app()
    await ingress.template(app["api_token"])
    users = [f"user-{i}" for i in range(10_000)]
    status, body = await ingress.call("POST", MULTI, token=app["api_token"],
                                      json=webhook(users=users))
    assert status == 200, body
    assert body["accepted"] == 10_000
    assert await _depth(broker, "multi") == 1


async def test_clevertap_test_request_gets_200_and_delivers_nothing(
        ingress: Api, broker: Broker) -> None:
    """CleverTap's save-time test request is answered 200 after the token check, nothing queued."""
    app = await ingress.new_app()
    body = {"is_test": True, "targetId": 1234, "key_values": {"key": "value"},
            "profiles": [{"Identity": "UserId", "Email": "a@b", "push_token": "Token"}]}
    status, resp = await ingress.call("POST", SINGLE, token=app["api_token"], json=body)
    assert status == 200 and resp["test"] is True
    status, _ = await ingress.call("POST", SINGLE, token="sbct_x.y", json=body)
    assert status == 401
    assert await _depth(broker, "single") == 0


async def test_bad_input_is_rejected_with_named_errors(ingress: Api, broker: Broker) -> None:
    """Every bad request gets the right 4xx, a JSON error naming the problem, and no job."""
    app = await ingress.new_app()
    tok = app["api_token"]
    await ingress.template(tok)
    cases = [
        (dict(data=b"{not json", headers={"Content-Type": "application/json"}, token=tok),
         400, "invalid_json", "malformed JSON"),
        (dict(json={"targetId": "x", "profiles": []}, token=tok), 400, "invalid_target_id",
         "targetId"),
        (dict(json={"targetId": 1, "profiles": [{"identity": "u"}]}, token=tok), 400,
         "missing_template_key", "template_key"),
        (dict(json=webhook(template_key="nope"), token=tok), 400, "unknown_template", "nope"),
        (dict(json=webhook()), 401, "missing_token", "Api-token"),
        (dict(json=webhook(), token="sbct_abc.def"), 401, "invalid_token", "not valid"),
        (dict(data=b"x=1", headers={"Content-Type": "text/plain"}, token=tok), 415,
         "unsupported_media_type", "application/json"),
        (dict(data=b"", headers={"Content-Type": "application/json"}, token=tok), 400,
         "invalid_json", "empty"),
    ]
    for kwargs, status, code, words in cases:
        got, body = await ingress.call("POST", SINGLE, **kwargs)  # type: ignore[arg-type]
        assert got == status, (kwargs, body)
        assert body["error"]["code"] == code, body
        assert words in body["error"]["message"], body
    assert await _depth(broker, "single") == 0


async def test_body_over_the_limit_is_413(settings: Settings, template_db: str) -> None:
    """A body over SBCT_MAX_BODY_BYTES is refused with 413 and a JSON error."""
    import aiohttp

    from sbct_pipeline.ingress import create_app

    from .conftest import serve

    small = settings.with_overrides(max_body_bytes=4096)
    runner = await serve(create_app(small), small.http_port)
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(f"http://127.0.0.1:{small.http_port}", session)
            app = await api.new_app()
            status, body = await api.call("POST", MULTI, token=app["api_token"],
                                          json=webhook(users=[f"u{i}" for i in range(500)]))
            assert status == 413
            assert body["error"]["code"] == "payload_too_large"
            assert "SBCT_MAX_BODY_BYTES" in body["error"]["message"]
    finally:
        await runner.cleanup()


async def test_single_rate_limit_answers_429(settings: Settings, template_db: str) -> None:
    """Past SBCT_SINGLE_RATE_LIMIT per second an app gets 429 with Retry-After."""
    import aiohttp

    from sbct_pipeline.ingress import create_app

    from .conftest import serve

    limited = settings.with_overrides(single_rate_limit=3)
    runner = await serve(create_app(limited), limited.http_port)
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(f"http://127.0.0.1:{limited.http_port}", session)
            app = await api.new_app()
            await api.template(app["api_token"])
            statuses = []
            for _ in range(6):
                status, body = await api.call("POST", SINGLE, token=app["api_token"],
                                              json=webhook())
                statuses.append(status)
            assert statuses.count(200) == 3 and statuses.count(429) == 3, statuses
            assert api.last_headers["Retry-After"] == "1"
            assert body["error"]["code"] == "rate_limited"
    finally:
        await runner.cleanup()


async def test_idempotency_key_replays_the_first_answer(ingress: Api, broker: Broker) -> None:
    """A retried request with the same Idempotency-Key gets the same answer and no new job."""
    app = await ingress.new_app()
    await ingress.template(app["api_token"])
    h = {"Idempotency-Key": "retry-1"}
    s1, b1 = await ingress.call("POST", SINGLE, token=app["api_token"], json=webhook(),
                                headers=h)
    s2, b2 = await ingress.call("POST", SINGLE, token=app["api_token"], json=webhook(),
                                headers=h)
    assert (s1, s2) == (200, 200)
    assert b1 == b2
    assert ingress.last_headers.get("Idempotent-Replayed") == "true"
    assert await _depth(broker, "single") == 1


async def test_admin_api_requires_the_admin_token(ingress: Api) -> None:
    """Admin routes answer 401 without the bearer token, and mask the passcode on read."""
    status, body = await ingress.call("POST", "/v1/apps", json={"name": "x"})
    assert status == 401 and body["error"]["code"] == "invalid_admin_token"
    app = await ingress.new_app()
    path = f"/v1/apps/{app['app_id']}/integrations/clevertap"
    status, body = await ingress.call("PUT", path, admin=True, json={
        "event_callback": True, "project_id": "P", "passcode": "supersecretcode",
        "api_endpoint": "ftp://x"})
    assert status == 400 and "api_endpoint" in body["error"]["message"]
    for url in ("https://in1.api.clevertap.com/?region=in1", "https://x.example/#a"):
        status, body = await ingress.call("PUT", path, admin=True, json={
            "event_callback": True, "project_id": "P", "passcode": "supersecretcode",
            "api_endpoint": url})
        assert status == 400 and "without '?query'" in body["error"]["message"], body
    status, body = await ingress.call("PUT", path, admin=True, json={
        "event_callback": True, "project_id": "P", "passcode": "supersecretcode",
        "api_endpoint": "https://in1.api.clevertap.com/"})
    assert status == 200
    status, body = await ingress.call("GET", path, admin=True)
    assert status == 200
    assert body["passcode"].endswith("code") and "supersecret" not in orjson.dumps(body).decode()
    assert body["api_endpoint"] == "https://in1.api.clevertap.com"


async def test_template_syntax_error_is_400_naming_the_place(ingress: Api) -> None:
    """Saving a template with broken placeholders says where; a good one lists variables."""
    app = await ingress.new_app()
    status, body = await ingress.call("PUT", "/v1/templates/t", token=app["api_token"],
                                      json={"title": "Hi {name", "body": "x"})
    assert status == 400 and "title" in body["error"]["message"]
    assert "character 3" in body["error"]["message"]
    tpl = await ingress.template(app["api_token"], "t", "Hi {name}", "{{x}} {order}")
    assert tpl["variables"] == ["name", "order"]


async def test_unknown_routes_and_methods_are_json_errors(ingress: Api) -> None:
    """404 and 405 come back as the JSON error body too."""
    status, body = await ingress.call("GET", "/nope")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await ingress.call("GET", SINGLE)
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
