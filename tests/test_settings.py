"""Settings from SBCT_* variables."""

from __future__ import annotations

import pytest

from sbct_pipeline.settings import Settings, SettingsError


def test_defaults_match_the_contract() -> None:
    """With no variables set the CONTRACT section 2 defaults apply."""
    s = Settings.from_env({})
    assert s.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert s.database_url == "postgresql://postgres@127.0.0.1:5432/sbct"
    assert (s.http_host, s.http_port) == ("127.0.0.1", 8080)
    assert s.admin_token is None
    assert s.single_rate_limit == 1000
    assert s.dedupe_window_s == 600


def test_values_are_cast() -> None:
    """Numbers are parsed; an empty admin token means unset."""
    s = Settings.from_env({"SBCT_HTTP_PORT": "9000", "SBCT_SINGLE_RATE_LIMIT": "0",
                           "SBCT_ADMIN_TOKEN": "", "SBCT_CHUNK_SIZE": "1_000"})
    assert (s.http_port, s.single_rate_limit, s.admin_token, s.chunk_size) == (9000, 0, None,
                                                                                1000)


@pytest.mark.parametrize(("env", "named"), [
    ({"SBCT_HTTP_PORT": "eighty"}, "SBCT_HTTP_PORT"),
    ({"SBCT_HTTP_PORT": "70000"}, "SBCT_HTTP_PORT"),
    ({"SBCT_AMQP_URL": "http://x"}, "SBCT_AMQP_URL"),
    ({"SBCT_QUEUE_TYPE": "stream"}, "SBCT_QUEUE_TYPE"),
    ({"SBCT_CALLBACK_BATCH_SIZE": "5000"}, "SBCT_CALLBACK_BATCH_SIZE"),
    ({"SBCT_CHUNK_SIZ": "5"}, "SBCT_CHUNK_SIZ"),
    ({"SBCT_WORKER_QUEUES": "chunks"}, "SBCT_WORKER_QUEUES"),
    ({"SBCT_WORKER_QUEUES": " , "}, "SBCT_WORKER_QUEUES"),
])
def test_bad_values_name_the_variable(env: dict[str, str], named: str) -> None:
    """A bad or unknown variable fails at start with its name in the message."""
    with pytest.raises(SettingsError) as exc:
        Settings.from_env(env)
    assert named in str(exc.value)


def test_secrets_are_masked() -> None:
    """repr never shows the admin token or URL passwords."""
    s = Settings(admin_token="s3cret", amqp_url="amqp://u:pw@h:5672/")
    assert "s3cret" not in repr(s) and "pw@" not in repr(s)
    assert "s3cret" not in str(s.public())


@pytest.mark.parametrize(("raw", "kinds"), [
    ("single,multi", {"single", "multi"}), ("single", {"single"}), (" multi ", {"multi"}),
    ("multi, single", {"single", "multi"}),
])
def test_worker_queues_are_read_as_a_set(raw: str, kinds: set[str]) -> None:
    """SBCT_WORKER_QUEUES accepts single, multi or both, in any order and spacing."""
    assert Settings.from_env({"SBCT_WORKER_QUEUES": raw}).worker_queue_kinds == kinds
