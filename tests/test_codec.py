"""Webhook parsing (CONTRACT section 3) and broker message round trips."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sbct_pipeline.codec import Event, Job, decode_events, encode_events, parse_webhook
from sbct_pipeline.errors import BadRequest


def _kv(**extra: str) -> dict[str, str]:
    return {"template_key": "t", "event_name": "E", "variables": '{"a": "1"}', **extra}


def test_array_profiles_with_top_level_key_values() -> None:
    """A broadcast body: profiles array, key_values at the top level."""
    hook = parse_webhook({"targetId": 5, "key_values": _kv(), "profiles": [
        {"objectId": "o1", "identity": "i1", "profileData": {"SendbirdID": "u1"}},
        {"ObjectId": "o2", "Identity": 22}]})
    assert hook.target_id == 5
    assert [(r.user_id, r.object_id, r.identity) for r in hook.recipients] == [
        ("u1", "o1", "i1"), ("22", "o2", "22")]
    assert hook.recipients[0].variables == {"a": "1"}
    assert hook.recipients[0].event_name == "E"


def test_single_profile_object_and_profile_key_values_win() -> None:
    """profiles may be one object; its own key_values override the top-level ones."""
    hook = parse_webhook({"TargetId": "77", "key_values": _kv(**{"var.b": "top"}),
                          "Profiles": {"Identity": "x", "ProfileData": {"sendbirdid": "u"},
                                       "key_values": {"template_key": "t2", "var.b": "own"}}})
    (r,) = hook.recipients
    assert (r.user_id, r.template_key, r.event_name) == ("u", "t2", "E")
    assert r.variables == {"a": "1", "b": "own"}


def test_user_id_falls_back_to_key_values_then_identity() -> None:
    """SendbirdID from profileData, else key_values, else identity; none -> rejected."""
    hook = parse_webhook({"targetId": 1, "key_values": _kv(SendbirdID="kv-user"),
                          "profiles": [{"identity": "i"}, {"email": "x@y"}]})
    assert [r.user_id for r in hook.recipients] == ["kv-user", "kv-user"]
    hook = parse_webhook({"targetId": 1, "key_values": _kv(),
                          "profiles": [{"identity": "i"}, {"email": "x@y"}, 5]})
    assert [r.user_id for r in hook.recipients] == ["i"]
    assert [x["index"] for x in hook.rejected] == [1, 2]


def test_event_name_defaults_to_template_key() -> None:
    """Without event_name the template key names the CleverTap event."""
    hook = parse_webhook({"targetId": 1, "profiles": [
        {"identity": "u", "key_values": {"template_key": "welcome"}}]})
    assert hook.recipients[0].event_name == "welcome"


def test_clevertap_test_request_is_recognised() -> None:
    """The body CleverTap sends when a webhook is saved is a test, not a delivery."""
    hook = parse_webhook({"is_test": True, "targetId": 1234, "key_values": {"key": "value"},
                          "profiles": [{"Identity": "UserId", "Email": "e", "push_token": "t"}]})
    assert hook.is_test and not hook.recipients


@pytest.mark.parametrize(("raw", "expected"), [
    (1700000001, 1700000001), ("1700000001", 1700000001), (" -42 ", -42), (7.0, 7)])
def test_target_id_integer_or_numeric_string(raw: Any, expected: int) -> None:
    hook = parse_webhook({"targetId": raw, "key_values": _kv(), "profiles": [{"identity": "u"}]})
    assert hook.target_id == expected


@pytest.mark.parametrize(("body", "field"), [
    ([], "body"),
    ({"profiles": []}, "targetId"),
    ({"targetId": "abc", "profiles": []}, "targetId"),
    ({"targetId": True, "profiles": []}, "targetId"),
    # str.isdigit() takes these, int() does not (or reads other scripts' digits): were 500s
    # (found by the hypothesis pass in tests/reliability/test_bad_input.py).
    ({"targetId": "\u00b2", "profiles": []}, "targetId"),
    ({"targetId": "--5", "profiles": []}, "targetId"),
    ({"targetId": "\u0661\u0662", "profiles": []}, "targetId"),
    ({"targetId": 1}, "profiles"),
    ({"targetId": 1, "profiles": "x"}, "profiles"),
    ({"targetId": 1, "profiles": [{"identity": "u"}]}, "template_key"),
    ({"targetId": 1, "key_values": "x", "profiles": []}, "key_values"),
    ({"targetId": 1, "key_values": {"template_key": "t", "variables": "{bad"},
      "profiles": [{"identity": "u"}]}, "variables"),
    ({"targetId": 1, "key_values": {"template_key": "t", "variables": "[1]"},
      "profiles": [{"identity": "u"}]}, "variables"),
])
def test_schema_errors_name_the_field(body: Any, field: str) -> None:
    """Each schema error is a BadRequest whose message names the offending field."""
    with pytest.raises(BadRequest) as exc:
        parse_webhook(body)
    assert field in exc.value.message


def test_job_and_events_round_trip() -> None:
    """Jobs and events survive encoding for the broker unchanged."""
    hook = parse_webhook({"targetId": 9, "key_values": _kv(), "profiles": [{"identity": "u"}]})
    job = Job("00000000-0000-0000-0000-000000000001", "app", 9, hook.recipients, 1.5, chunk=3)
    assert Job.decode(job.encode()) == job
    ev = Event("app", 1, "SENT", "E", 9, 1_700_000_000, None, "crm-1")
    assert decode_events(encode_events([ev])) == [ev]
    assert ev.record() == {"identity": "crm-1", "type": "event", "evtName": "E",
                           "evtData": {"status": "SENT", "target_id": 9}, "ts": 1_700_000_000}
    assert orjson.loads(orjson.dumps(ev.record()))["evtData"]["status"] == "SENT"
