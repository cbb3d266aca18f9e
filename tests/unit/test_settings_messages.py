"""A refused setting says, in its one line, the variable, the value as written and what is
expected; a URL in a message or log line never shows its password."""

from __future__ import annotations

import pytest

from taskbus.errors import ConfigError
from taskbus.settings import Settings, mask_url

CASES = {
    "CONCURRENCY": ("abc", "expected an integer"),
    "LEASE_S": ("-1", "expected a number > 0"),
    "GRACE_S": ("-0.5", "expected a number >= 0"),
    "CHANNEL": ("rabbitmq", "expected redis or kafka"),
    "ENQUEUE_FSYNC": ("maybe", "expected true or false"),
    "LOG_LEVEL": ("loud", "expected one of DEBUG"),
    "QUEUES": ("a b", "expected comma-separated names"),
    "PORT": ("70000", "expected a TCP port"),
    "BLOCK_MS": ("900", "below REDIS_SOCKET_TIMEOUT_S"),
    "DEFAULT_MAX_ATTEMPTS": ("0", "expected an integer 1-100"),
    "REDIS_URL": ("localhost:6379", "expected redis://"),
    "PRIORITY_MAX_DELAY_S": ("0", "expected a number > 0"),
}


@pytest.mark.parametrize("variable", CASES)
def test_the_message_names_variable_value_and_expectation(variable: str) -> None:
    value, expected = CASES[variable]
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({variable: value})
    message = str(refused.value)
    assert message.startswith(f"{variable}={value!r} is invalid: "), message
    assert expected in message and "\n" not in message


def test_kafka_without_servers_says_which_variable_to_set() -> None:
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS is empty: expected host:port"):
        Settings.from_env({"CHANNEL": "kafka"})


def test_a_bad_redis_url_is_shown_without_its_password() -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"REDIS_URL": "http://user:hunter2@host:6379"})
    assert "hunter2" not in str(refused.value) and "user:***@host" in str(refused.value)


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:secret@h:6379/0", "redis://:***@h:6379/0"),
    ("rediss://default:p%40ss@h:6380", "rediss://default:***@h:6380"),
    ("redis://token@h/1", "redis://***@h/1"),
    ("unix:///run/redis.sock?db=1&password=x", "unix:///run/redis.sock?db=1&password=***"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
])
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown
