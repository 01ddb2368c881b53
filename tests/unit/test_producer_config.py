"""ProducerConfig reads the same LEADSYNC_ variables as the worker's Settings, with the
same defaults and limits, using the standard library only."""

from __future__ import annotations

import dataclasses

import pytest

from producers.config import ProducerConfig
from producers.errors import ConfigError, InvalidLead, LeadsyncError
from worker import errors as worker_errors
from worker.settings import Settings

#: ProducerConfig field -> the Settings attribute it mirrors.
SHARED = {
    "redis_url": "redis_url",
    "key_prefix": "key_prefix",
    "shards": "shards",
    "known_fields": "known_field_names",
    "redis_socket_timeout_s": "redis_socket_timeout_s",
    "redis_connect_timeout_s": "redis_connect_timeout_s",
    "marketo_api": "marketo_api",
    "marketo_lookup_field": "marketo_lookup_field",
    "enqueue_replicas": "enqueue_replicas",
    "replica_wait_s": "replica_wait_s",
    "max_shard_backlog": "max_shard_backlog",
    "memory_high_water": "memory_high_water",
    "backpressure_retry_s": "backpressure_retry_s",
    "max_bulk_backlog": "max_bulk_backlog",
    "live_memory_reserve": "live_memory_reserve",
}


def test_every_producer_config_field_mirrors_a_settings_field() -> None:
    assert {f.name for f in dataclasses.fields(ProducerConfig)} == set(SHARED)


def test_producer_config_defaults_equal_the_worker_settings_defaults() -> None:
    config, settings = ProducerConfig.from_env({}), Settings()
    for name, attribute in SHARED.items():
        assert getattr(config, name) == getattr(settings, attribute), name


def test_producer_config_reads_the_variables_settings_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {
        "LEADSYNC_REDIS_URL": "redis://cache:6380/2",
        "LEADSYNC_KEY_PREFIX": "tenant7",
        "LEADSYNC_SHARDS": "3",
        "LEADSYNC_KNOWN_FIELDS": "FirstName, LastName,,",
        "LEADSYNC_REDIS_SOCKET_TIMEOUT_S": "2.5",
        "LEADSYNC_REDIS_CONNECT_TIMEOUT_S": "1",
        "LEADSYNC_MARKETO_API": "rest",
        "LEADSYNC_MARKETO_LOOKUP_FIELD": "email",
        "LEADSYNC_ENQUEUE_REPLICAS": "2",
        "LEADSYNC_REPLICA_WAIT_S": "0.25",
        "LEADSYNC_MARKETO_REST_URL": "https://123-ABC-456.mktorest.com",
        "LEADSYNC_MARKETO_CLIENT_ID": "id",
        "LEADSYNC_MARKETO_CLIENT_SECRET": "secret",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    config, settings = ProducerConfig.from_env(), Settings.from_env()

    assert config.known_fields == ("FirstName", "LastName")
    for name, attribute in SHARED.items():
        assert getattr(config, name) == getattr(settings, attribute), name
    assert config.key_rule == settings.key_rule == "rest:email"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LEADSYNC_SHARDS", "0"),
        ("LEADSYNC_SHARDS", "1025"),
        ("LEADSYNC_SHARDS", "many"),
        ("LEADSYNC_KEY_PREFIX", ""),
        ("LEADSYNC_KEY_PREFIX", "has space"),
        ("LEADSYNC_REDIS_SOCKET_TIMEOUT_S", "0"),
        ("LEADSYNC_REDIS_SOCKET_TIMEOUT_S", "61"),
        ("LEADSYNC_REDIS_CONNECT_TIMEOUT_S", "soon"),
        ("LEADSYNC_ENQUEUE_REPLICAS", "-1"),
        ("LEADSYNC_ENQUEUE_REPLICAS", "one"),
        ("LEADSYNC_REPLICA_WAIT_S", "0"),
        ("LEADSYNC_MAX_SHARD_BACKLOG", "-1"),
        ("LEADSYNC_MEMORY_HIGH_WATER", "1"),
        ("LEADSYNC_BACKPRESSURE_RETRY_S", "0"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_variable_that_settings_also_refuses(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as caught:
        ProducerConfig.from_env({variable: value})
    assert variable in str(caught.value)

    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError):
        Settings.from_env()


def test_every_bad_variable_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        ProducerConfig.from_env({"LEADSYNC_SHARDS": "x", "LEADSYNC_KEY_PREFIX": "a b"})
    assert "LEADSYNC_SHARDS" in str(caught.value)
    assert "LEADSYNC_KEY_PREFIX" in str(caught.value)


def test_the_worker_error_tree_hangs_from_the_producers_root() -> None:
    assert worker_errors.LeadsyncError is LeadsyncError
    assert worker_errors.InvalidLead is InvalidLead
    assert worker_errors.ConfigError is ConfigError
    for branch in (
        worker_errors.LedgerError,
        worker_errors.MarketoError,
        worker_errors.LimitReached,
    ):
        assert issubclass(branch, LeadsyncError)
    error = InvalidLead("email", "is not an email address")
    assert (error.field, error.reason, str(error)) == (
        "email",
        "is not an email address",
        "email: is not an email address",
    )
    assert isinstance(error, ValueError)


@pytest.mark.parametrize("shards", [True, 2.5, "4"])
def test_a_shard_count_that_is_not_an_integer_is_a_config_error(shards: object) -> None:
    with pytest.raises(ConfigError):
        ProducerConfig(shards=shards)  # type: ignore[arg-type]


def test_settings_hand_producers_their_own_values_not_the_environments() -> None:
    settings = Settings(shards=3, key_prefix="t9", enqueue_replicas=1, max_shard_backlog=7)
    config = settings.producer_config()
    for name, attribute in SHARED.items():
        assert getattr(config, name) == getattr(settings, attribute), name
