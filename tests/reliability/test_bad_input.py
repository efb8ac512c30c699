"""Bad input at a real ingress process: the right 4xx with a JSON error, and it keeps serving.

One ``sbct-pipeline ingress`` subprocess (with a worker, so that what is accepted is also
delivered) receives malformed and truncated JSON, wrong types, deep nesting, huge strings,
bodies over the limit, odd Unicode, missing templates and variables, injection strings,
missing, wrong and other-app tokens, wrong content types and methods. Then a property-based
pass (hypothesis) throws generated webhook bodies at it: only ``200`` or a ``4xx`` with the
JSON error shape, never a ``500``, and the process stays up.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..conftest import Api, eventually, webhook
from .conftest import Report, Stack

pytestmark = pytest.mark.e2e

SINGLE = "/clevertap/notifications/single"
MULTI = "/clevertap/notifications/multi"
BODY_LIMIT = 1_000_000
INJECTIONS = [
    "'; DROP TABLE notifications; --",
    "\" OR 1=1 --",
    "<script>alert('x')</script>",
    "{order_id}{{name}}",
    "${jndi:ldap://127.0.0.1/x}",
    "../../../../etc/passwd",
    "%s%s%n%x",
    "$(rm -rf /)",
    "\\u0000\\x00",
]
ODD_UNICODE = ["Ana \U0001f680\U0001f469\u200d\U0001f469\u200d\U0001f467",
               "\u05e2\u05d1\u05e8\u05d9\u05ea RTL \u202e", "zero\u200bwidth",
               "e\u0301\u0301\u0301", "\U0001f600" * 50, "\U0001d518\U0001d52b\U0001d526",
               "\ufeffBOM", "\u00a0nbsp"]


class Sync:
    """A blocking HTTP client (http.client), so hypothesis can drive it from a plain test."""

    def __init__(self, port: int) -> None:
        self.port = port

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            raw = r.read()
            ctype = r.getheader("Content-Type", "")
        finally:
            conn.close()
        assert "application/json" in ctype, (r.status, ctype, raw[:200])
        return r.status, json.loads(raw)


@pytest.fixture
async def served(stack: Stack, client: Api) -> AsyncIterator[dict[str, Any]]:
    """An ingress (body limit 1 MB) and a worker, two apps, and a template on the first."""
    await stack.start_sim()
    ingress = await stack.start_ingress(SBCT_MAX_BODY_BYTES=str(BODY_LIMIT))
    stack.spawn("worker", "worker")
    app = await stack.setup_app(client)
    other = await stack.setup_app(client)
    await client.call("DELETE", "/v1/templates/order_shipped", token=other["api_token"])
    yield {"app": app, "other": other, "ingress": ingress, "token": app["api_token"]}
    assert ingress.alive, ingress.tail()


def is_error(status: int, body: Any, expected: int, code: str | None = None) -> bool:
    return (status == expected and isinstance(body, dict) and isinstance(body.get("error"), dict)
            and isinstance(body["error"].get("message"), str) and body["error"]["message"] != ""
            and (code is None or body["error"].get("code") == code))


async def test_bad_bodies_get_400_with_json_error(served: dict[str, Any], client: Api,
                                                  report: Report) -> None:
    """Malformed, truncated, mistyped and deeply nested bodies get 400 naming the problem."""
    tok = served["token"]
    good = orjson.dumps(webhook())
    bad: list[tuple[str, bytes, str]] = [
        ("malformed", b'{"targetId": 1,', "invalid_json"),
        ("truncated", good[: len(good) // 2], "invalid_json"),
        ("empty", b"", "invalid_json"),
        ("not utf-8", b'{"targetId": "\xff\xfe"}', "invalid_json"),
        ("lone surrogate", b'{"targetId": 1, "profiles": [{"identity": "\\ud800"}]}',
         "invalid_json"),
        ("array body", b"[1, 2]", "invalid_body"),
        ("string body", b'"hello"', "invalid_body"),
        ("deep nesting", b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        ("deep nesting in object", b'{"a":' * 5000 + b"1" + b"}" * 5000, "invalid_json"),
        ("huge integer", b'{"targetId": 1' + b"0" * 400 + b"}", "invalid_json"),
    ]
    for target in ("abc", True, None, {}, [], 1.5, "1e3", 2**64):
        bad.append((f"targetId={target!r}",
                    orjson.dumps({**webhook(), "targetId": target}) if target != 2**64 else
                    orjson.dumps({**webhook(), "targetId": str(target)}), "invalid_target_id"))
    for profiles in ("x", 5, True):
        bad.append((f"profiles={profiles!r}", orjson.dumps({**webhook(), "profiles": profiles}),
                    "invalid_profiles"))
    bad.append(("no profiles", orjson.dumps({"targetId": 1, "key_values": {}}),
                "invalid_profiles"))
    bad.append(("key_values a list", orjson.dumps({**webhook(), "key_values": [1]}),
                "invalid_field"))
    for variables in ("{not json", "[1, 2]", "42"):
        h = webhook()
        h["key_values"]["variables"] = variables
        bad.append((f"variables={variables!r}", orjson.dumps(h), "invalid_variables"))
    h = webhook()
    del h["key_values"]["template_key"]
    bad.append(("no template_key", orjson.dumps(h), "missing_template_key"))
    bad.append(("template_key 10k chars", orjson.dumps(webhook(template_key="k" * 10_000)),
                "invalid_template_key"))
    bad.append(("unknown template", orjson.dumps(webhook(template_key="nope")),
                "unknown_template"))
    for name, body, code in bad:
        for path in (SINGLE, MULTI):
            status, answer = await client.call("POST", path, data=body, token=tok,
                                               headers={"Content-Type": "application/json"})
            assert is_error(status, answer, 400, code), (name, path, status, answer)
    status, _ = await client.call("POST", SINGLE, json=webhook(users=["after-bad"]), token=tok)
    assert status == 200
    report.row(scenario="bad bodies", load=f"{len(bad) * 2} requests",
               faults="malformed/truncated JSON, wrong types, deep nesting, huge strings",
               accepted=0, delivered=0, exported=0, lost=0, duplicates=0,
               notes="every one 400 with its code; a good request after them 200")


async def test_auth_media_type_method_and_size(served: dict[str, Any], client: Api) -> None:
    """Token, content type, method and size errors get 401/415/405/413 with a JSON error."""
    tok, other = served["token"], served["other"]["api_token"]
    body = orjson.dumps(webhook())
    j = {"Content-Type": "application/json"}
    cases: list[tuple[str, str, str, bytes | None, dict[str, str], int]] = [
        ("no token", "POST", SINGLE, body, j, 401),
        ("wrong token", "POST", SINGLE, body, {**j, "Api-token": "sbct_nope.nope"}, 401),
        ("garbage token", "POST", MULTI, body, {**j, "Api-token": "A" * 5000}, 401),
        ("text/plain", "POST", SINGLE, body, {"Content-Type": "text/plain", "Api-token": tok},
         415),
        ("form", "POST", MULTI, b"a=1", {"Content-Type": "application/x-www-form-urlencoded",
                                         "Api-token": tok}, 415),
        ("xml", "POST", SINGLE, b"<a/>", {"Content-Type": "application/xml", "Api-token": tok},
         415),
        ("GET", "GET", SINGLE, None, {"Api-token": tok}, 405),
        ("PUT", "PUT", MULTI, body, {**j, "Api-token": tok}, 405),
        ("DELETE", "DELETE", SINGLE, None, {"Api-token": tok}, 405),
        ("over limit", "POST", MULTI, b" " * (BODY_LIMIT + 1), {**j, "Api-token": tok}, 413),
    ]
    for name, method, path, data, headers, expected in cases:
        status, answer = await client.call(method, path, data=data, headers=headers)
        assert is_error(status, answer, expected), (name, status, answer)

    # Over the limit without a Content-Length (chunked): still 413, not a dropped connection.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 100_000

    async with client.session.post(client.base + MULTI, data=chunks(),
                                   headers={**j, "Api-token": tok}) as r:
        answer = await r.json()
        assert is_error(r.status, answer, 413), (r.status, answer)

    # Another app's token: that app has no such template, and sees none of this app's feed.
    status, answer = await client.call("POST", SINGLE, json=webhook(users=["x-app"]),
                                       token=other)
    assert is_error(status, answer, 400, "unknown_template"), answer
    status, _ = await client.call("POST", SINGLE, json=webhook(users=["x-app"]), token=tok)
    assert status == 200

    async def delivered() -> Any:
        _, b = await client.call("GET", "/v1/users/x-app/notifications", token=tok)
        return b["notifications"]

    await eventually(delivered)
    status, feed = await client.call("GET", "/v1/users/x-app/notifications", token=other)
    assert status == 200 and feed["notifications"] == []
    status, _ = await client.call("POST", SINGLE, json=webhook(users=["after-auth"]), token=tok)
    assert status == 200


async def test_injection_and_odd_unicode_stored_verbatim(served: dict[str, Any], client: Api,
                                                         report: Report) -> None:
    """Injection strings and odd Unicode in variables and user IDs come back byte for byte."""
    tok, app_id = served["token"], served["app"]["app_id"]
    values = INJECTIONS + ODD_UNICODE + ["x" * 100_000]
    users = [f"inj-{i}" for i in range(len(values))] + [v[:200] for v in ODD_UNICODE]
    for i, v in enumerate(values):
        status, answer = await client.call(
            "POST", SINGLE, token=tok,
            json=webhook(target_id=1700000200 + i, users=[users[i]],
                         variables={"name": v, "order_id": v}))
        assert status == 200 and answer["accepted"] == 1, answer
    for j, u in enumerate(users[len(values):]):
        status, answer = await client.call("POST", MULTI, token=tok,
                                           json=webhook(target_id=1700000300 + j, users=[u]))
        assert status == 200 and answer["accepted"] == 1, (u, answer)

    for i, v in enumerate(values):
        async def feed(user: str = users[i]) -> Any:
            _, b = await client.call("GET", f"/v1/users/{_quote(user)}/notifications",
                                     token=tok)
            return b["notifications"]

        (n,) = await eventually(feed)
        assert n["title"] == f"Hi {v}" and n["body"] == f"Order {v} shipped", (v, n)
    for u in users[len(values):]:
        # User IDs are trimmed of surrounding whitespace (codec), nothing else.
        async def ufeed(user: str = u.strip()) -> Any:
            _, b = await client.call("GET", f"/v1/users/{_quote(user)}/notifications",
                                     token=tok)
            return b["notifications"]

        (n,) = await eventually(ufeed)
        assert n["title"] == "Hi Ana"
    # The tables the injection strings name are intact.
    status, tpl = await client.call("GET", "/v1/templates/order_shipped", token=tok)
    assert status == 200 and tpl["title"] == "Hi {name}"
    report.row(scenario="injection strings and odd Unicode",
               load=f"{len(values) + len(users) - len(values)} webhooks",
               faults="SQL/HTML/format/template injection, emoji, RTL, zero-width, 100 kB value",
               accepted=len(users), delivered=len(users), exported="n/a", lost=0,
               duplicates=0, notes=f"stored and returned verbatim (app {app_id})")


async def test_missing_variables_fail_the_delivery_not_the_batch(served: dict[str, Any],
                                                                 client: Api) -> None:
    """A profile lacking a template variable is counted failed; its batch-mates are delivered."""
    tok = served["token"]
    h = webhook(target_id=1700000400, users=["mv-1", "mv-2"], variables={"name": "Ana"})
    h["profiles"][1]["key_values"] = {"var.order_id": "B-2"}
    status, answer = await client.call("POST", MULTI, json=h, token=tok)
    assert status == 200 and answer["accepted"] == 2, answer

    async def stats() -> Any:
        _, b = await client.call("GET", "/v1/campaigns/1700000400/stats", token=tok)
        return b if b["sent"] + b["failed"] == 2 else None

    s = await eventually(stats)
    assert (s["sent"], s["failed"]) == (1, 1), s


async def test_nul_character_is_refused_before_it_reaches_a_batch(served: dict[str, Any],
                                                                   client: Api) -> None:
    """U+0000 (PostgreSQL cannot store it) gets 400 naming it; a clean retry is delivered."""
    tok = served["token"]
    h = webhook(target_id=1700000500, users=["nul-1", "nul-2", "nul-3"])
    h["profiles"][1]["key_values"] = {"var.name": "A\x00na"}
    for path in (SINGLE, MULTI):
        status, answer = await client.call("POST", path, json=h, token=tok)
        assert is_error(status, answer, 400) and "NUL" in answer["error"]["message"], answer
    del h["profiles"][1]["key_values"]
    status, answer = await client.call("POST", MULTI, json=h, token=tok)
    assert status == 200 and answer["accepted"] == 3, answer

    async def stats() -> Any:
        _, b = await client.call("GET", "/v1/campaigns/1700000500/stats", token=tok)
        return b if b["sent"] == 3 else None

    s = await eventually(stats)
    assert s["failed"] == 0, s


def _quote(user: str) -> str:
    from urllib.parse import quote

    return quote(user, safe="")


# ---------------------------------------------------------------- property-based pass

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30))
json_any = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20)
key_values = st.fixed_dictionaries({}, optional={
    "template_key": st.one_of(st.just("order_shipped"), st.just("nope"), json_leaf),
    "event_name": json_any,
    # stdlib json: orjson refuses integers past 64 bits, which json_leaf holds on purpose.
    "variables": st.one_of(st.builds(lambda d: json.dumps(d, ensure_ascii=False),
                                     st.dictionaries(st.text(max_size=8), json_leaf)), json_any),
    "var.name": json_any,
    "SendbirdID": json_leaf,
})
profile = st.fixed_dictionaries({}, optional={
    "objectId": json_leaf, "identity": json_leaf, "Identity": json_leaf,
    "profileData": st.one_of(st.fixed_dictionaries({}, optional={"SendbirdID": json_leaf,
                                                                  "Name": json_leaf}), json_any),
    "key_values": st.one_of(key_values, json_any),
    "email": json_leaf,
})
webhook_body = st.one_of(
    st.fixed_dictionaries({}, optional={
        "targetId": st.one_of(st.integers(-(2**65), 2**65), st.text(max_size=25), json_leaf),
        "profiles": st.one_of(st.lists(profile, max_size=5), profile, json_any),
        "key_values": st.one_of(key_values, json_any),
        "is_test": st.one_of(st.booleans(), json_leaf),
    }),
    json_any,
)


@pytest.fixture
def sync_served(served: dict[str, Any], stack: Stack) -> Iterator[tuple[Sync, str]]:
    yield Sync(stack.settings.http_port), served["token"]


@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=webhook_body, path=st.sampled_from([SINGLE, MULTI]),
       raw_cut=st.one_of(st.none(), st.integers(0, 200)))
def test_generated_webhooks_never_500(sync_served: tuple[Sync, str], body: Any, path: str,
                                      raw_cut: int | None) -> None:
    """Generated webhook bodies (also cut short) get 200 or a 4xx JSON error, never a 500."""
    http, tok = sync_served
    raw = json.dumps(body, ensure_ascii=False).encode()  # stdlib: integers past 64 bits too
    if raw_cut is not None:
        raw = raw[:raw_cut]
    status, answer = http.call("POST", path, body=raw,
                               headers={"Api-token": tok, "Content-Type": "application/json"})
    if status == 200:
        assert {"request_id", "accepted", "rejected"} <= set(answer), answer
    else:
        assert 400 <= status < 500 and is_error(status, answer, status), (status, answer)
