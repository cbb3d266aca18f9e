"""REDIS_CLUSTER, the `redis+cluster://` URL form and ENQUEUE_REPLICAS: what they accept, what
they refuse (one line naming the variable), and how the URL becomes redis-py's seed nodes."""

from __future__ import annotations

import pytest

from taskbus.errors import ConfigError
from taskbus.settings import Settings
from taskbus.state.client import cluster_url, seed_url


@pytest.mark.parametrize("env", [
    {"REDIS_CLUSTER": "true", "REDIS_URL": "redis://10.0.0.1:7000"},
    {"REDIS_URL": "redis+cluster://10.0.0.1:7000,10.0.0.2:7001/0"},
    {"REDIS_URL": "rediss+cluster://:pw@cache.example:6380"},
])
def test_a_cluster_is_named_by_the_setting_or_the_url(env: dict[str, str]) -> None:
    assert Settings.from_env(env).cluster


def test_standalone_stays_the_default() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/3"})
    assert not settings.cluster and settings.enqueue_replicas == 0
    assert seed_url(settings) == "redis://127.0.0.1:6379/3"


@pytest.mark.parametrize("env", [
    {"REDIS_CLUSTER": "true", "REDIS_URL": "redis://10.0.0.1:7000/1"},
    {"REDIS_URL": "redis+cluster://:secret@10.0.0.1:7000/2"},
    {"REDIS_CLUSTER": "true", "REDIS_URL": "unix:///run/redis.sock"},
    {"REDIS_URL": "redis+cluster://a.example:7000,b.example:port"},
])
def test_a_cluster_url_with_another_db_is_refused_in_one_line(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    message = str(refused.value)
    assert message.startswith("REDIS_URL=") and "db 0" in message and "\n" not in message
    assert "secret" not in message


def test_enqueue_replicas_below_zero_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^ENQUEUE_REPLICAS='-1' is invalid: expected an integer >= 0$"):
        Settings.from_env({"ENQUEUE_REPLICAS": "-1"})


def test_the_url_becomes_the_first_seed_and_the_others() -> None:
    settings = Settings.from_env({"REDIS_URL": "rediss+cluster://user:pw@a.example:7000,b.example:7001,c.example/0"})
    assert cluster_url(settings) == ("rediss://user:pw@a.example:7000/0", [("b.example", 7001), ("c.example", 6379)])
    assert seed_url(settings) == "rediss://user:pw@a.example:7000/0"
