"""The one Redis URL form (plain and Sentinel) and the one client factory
(producers/connect.py), as producers, workers, Celery and the CLI use them."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from producers import AsyncLeadProducer, ConfigError, LeadProducer
from producers.connect import (
    CLIENT_RETRIES,
    DEFAULT_SENTINEL_PORT,
    AsyncSentinelRedis,
    SentinelRedis,
    async_redis_client,
    check_redis_url,
    describe_redis_url,
    parse_sentinel_url,
    redis_client,
)
from worker.connections import HEALTH_CHECK_INTERVAL_S, celery_redis
from worker.connections import redis_client as worker_async_client
from worker.connections import redis_client_sync as worker_sync_client
from worker.settings import Settings

SECRET = "s3cr3t-Pw"
SENTINEL_SECRET = "sent-S3cret"


# --- the grammar ------------------------------------------------------------------------


def test_a_sentinel_url_names_the_sentinels_the_master_and_the_db() -> None:
    parsed = parse_sentinel_url(
        f"redis+sentinel://app:{SECRET}@s1.example:26379,s2.example:26380,10.0.0.3/mymaster/2"
    )
    assert parsed.sentinels == (
        ("s1.example", 26379),
        ("s2.example", 26380),
        ("10.0.0.3", DEFAULT_SENTINEL_PORT),
    )
    assert (parsed.master, parsed.db) == ("mymaster", 2)
    assert (parsed.username, parsed.password) == ("app", SECRET)
    assert parsed.ssl is parsed.sentinel_ssl is False
    assert parsed.master_kwargs() == {"db": 2, "username": "app", "password": SECRET}
    assert parsed.sentinel_kwargs() == {}


@pytest.mark.parametrize(
    ("url", "master", "db"),
    [
        ("redis+sentinel://h:1/m", "m", 0),
        ("redis+sentinel://h:1/m/", "m", 0),
        ("redis+sentinel://h:1/m/15", "m", 15),
        ("REDIS+SENTINEL://h:1/my%20master/1", "my master", 1),
    ],
)
def test_the_db_is_optional_and_the_master_name_is_percent_decoded(
    url: str, master: str, db: int
) -> None:
    parsed = parse_sentinel_url(url)
    assert (parsed.master, parsed.db) == (master, db)


def test_credentials_are_percent_decoded_and_a_password_may_come_alone() -> None:
    parsed = parse_sentinel_url("redis+sentinel://:p%40ss%3Aw%2Fd@h:1/m")
    assert parsed.username is None
    assert parsed.password == "p@ss:w/d"


def test_ipv6_sentinels_are_written_in_brackets() -> None:
    parsed = parse_sentinel_url("redis+sentinel://[::1]:26379,[fd00::2]/m")
    assert parsed.sentinels == (("::1", 26379), ("fd00::2", DEFAULT_SENTINEL_PORT))
    assert "[::1]:26379" in parsed.describe()


def test_tls_goes_to_the_master_and_by_default_to_the_sentinels() -> None:
    parsed = parse_sentinel_url(
        "rediss+sentinel://h:1/m?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required"
    )
    assert parsed.ssl
    assert parsed.sentinel_ssl
    assert parsed.master_kwargs()["ssl"] is True
    assert parsed.master_kwargs()["ssl_ca_certs"] == "/etc/ca.pem"
    assert parsed.sentinel_kwargs() == {
        "ssl": True,
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_cert_reqs": "required",
    }


def test_sentinel_auth_and_tls_are_set_apart_from_the_masters() -> None:
    parsed = parse_sentinel_url(
        f"rediss+sentinel://app:{SECRET}@h:1/m?sentinel_username=watch"
        f"&sentinel_password={SENTINEL_SECRET}&sentinel_ssl=false"
    )
    assert parsed.ssl is True
    assert parsed.sentinel_ssl is False
    assert parsed.sentinel_kwargs() == {"username": "watch", "password": SENTINEL_SECRET}
    assert parsed.master_kwargs()["password"] == SECRET
    # TLS to the sentinels only, with their own CA.
    parsed = parse_sentinel_url(
        "redis+sentinel://h:1/m?sentinel_ssl=true&sentinel_ssl_ca_certs=/ca-s.pem"
        "&ssl_check_hostname=false"
    )
    assert parsed.ssl is False
    assert "ssl" not in parsed.master_kwargs()
    assert parsed.sentinel_kwargs() == {
        "ssl": True,
        "ssl_check_hostname": False,
        "ssl_ca_certs": "/ca-s.pem",
    }


def test_passwords_stay_out_of_repr_and_descriptions() -> None:
    url = f"redis+sentinel://app:{SECRET}@h:1,g:2/m/3?sentinel_password={SENTINEL_SECRET}"
    parsed = parse_sentinel_url(url)
    for text in (repr(parsed), parsed.describe(), describe_redis_url(url)):
        assert SECRET not in text
        assert SENTINEL_SECRET not in text
    assert describe_redis_url(url) == "master 'm' via sentinels h:1,g:2, db 3"
    assert describe_redis_url(f"redis://u:{SECRET}@cache:6380/0") == "cache:6380"
    assert describe_redis_url("unix:///run/redis.sock") == "unix socket /run/redis.sock"


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        f"rediss://u:{SECRET}@cache.example:6380/1?ssl_cert_reqs=required",
        "unix:///run/redis.sock?db=2",
        "redis://localhost",
        "redis+sentinel://h/m",
    ],
)
def test_plain_urls_keep_working(url: str) -> None:
    check_redis_url(url, "LEADSYNC_REDIS_URL")


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"redis+sentinel://u:{SECRET}@h:1", "master's name"),
        (f"redis+sentinel://u:{SECRET}@h:1/", "master's name"),
        (f"redis+sentinel://u:{SECRET}@h:1/m/x", "must be a number"),
        (f"redis+sentinel://u:{SECRET}@h:1/m/0/extra", "too many path parts"),
        (f"redis+sentinel://u:{SECRET}@h:port/m", "port must be a number"),
        (f"redis+sentinel://u:{SECRET}@h:70000/m", "port must be a number"),
        (f"redis+sentinel://u:{SECRET}@h:1,,g:2/m", "empty sentinel address"),
        (f"redis+sentinel://u:{SECRET}@:1/m", "without a host"),
        (f"redis+sentinel://u:{SECRET}@::1:5/m", "IPv6"),
        (f"redis+sentinel://u:{SECRET}@[nothost]:5/m", "IPv6"),
        (f"redis+sentinel://u:{SECRET}@h/m?master_name=x", "unknown option 'master_name'"),
        (f"redis+sentinel://h/m?sentinel_password={SECRET}&sentinel_password=x", "given twice"),
        (f"redis+sentinel://u:{SECRET}@h/m?sentinel_ssl=maybe", "true or false"),
        (f"rediss+sentinel://u:{SECRET}@h/m?ssl_cert_reqs=always", "none, optional, required"),
        (f"redis+sentinel://u:{SECRET}@h/m?ssl_ca_certs=/ca.pem", "need rediss+sentinel"),
        (f"redis+sentinel://u:{SECRET}@h/m?sentinel_ssl_ca_certs=/x", "sentinel_ssl=true"),
        (f"sentinel://u:{SECRET}@h:26379", "kombu's form"),
        (f"http://u:{SECRET}@h:6379/0", "must start with redis://"),
        (f"redis://u:{SECRET}@h1:6379,h2:6379/0", "for several sentinels"),
        (f"u:{SECRET}@h:6379", "must start with redis://"),
    ],
)
def test_a_bad_url_names_the_variable_and_never_echoes_the_password(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        check_redis_url(url, "LEADSYNC_REDIS_URL")
    message = str(raised.value)
    assert message.startswith("LEADSYNC_REDIS_URL: ")
    assert says in message
    assert SECRET not in message


@pytest.mark.parametrize("variable", ["LEADSYNC_REDIS_URL", "LEADSYNC_BROKER_URL"])
def test_settings_refuse_a_bad_redis_url_naming_the_variable(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.settings import ConfigError as WorkerConfigError

    monkeypatch.setenv(variable, f"redis+sentinel://u:{SECRET}@h:1")
    with pytest.raises(WorkerConfigError) as raised:
        Settings.from_env()
    assert f"{variable}: " in str(raised.value)
    assert "master's name" in str(raised.value)
    assert SECRET not in str(raised.value)


def test_settings_take_every_form_and_a_broker_of_another_transport() -> None:
    url = f"redis+sentinel://u:{SECRET}@h:1,g:2/m/1"
    assert Settings.from_env(redis_url=url).redis_url == url
    amqp = "amqp://guest:guest@rabbit:5672//"
    assert Settings.from_env(broker_url=amqp).effective_broker_url == amqp


def test_producers_name_the_variable_a_bad_url_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = f"redis+sentinel://u:{SECRET}@h:1"
    for make in (LeadProducer.from_url, AsyncLeadProducer.from_url):
        with pytest.raises(ConfigError, match=r"^redis_url: ") as raised:
            make(bad)
        assert SECRET not in str(raised.value)
    monkeypatch.setenv("LEADSYNC_REDIS_URL", bad)
    for make_env in (LeadProducer.from_env, AsyncLeadProducer.from_env):
        with pytest.raises(ConfigError, match=r"^LEADSYNC_REDIS_URL: ") as raised:
            make_env()
        assert SECRET not in str(raised.value)


# --- the factory -------------------------------------------------------------------------

SENTINEL_URL = (
    f"redis+sentinel://app:{SECRET}@s1:26379,s2:26380/mymaster/3"
    f"?sentinel_username=watch&sentinel_password={SENTINEL_SECRET}"
)


def test_the_factory_makes_a_sentinel_backed_master_client() -> None:
    client = redis_client(SENTINEL_URL, socket_timeout=2.5, connect_timeout=1.5)
    try:
        assert isinstance(client, SentinelRedis)
        pool = client.connection_pool
        assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
        assert pool.service_name == "mymaster"
        assert pool.is_master
        assert pool.connection_class is redis.sentinel.SentinelManagedConnection
        kwargs = pool.connection_kwargs
        assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (3, "app", SECRET)
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (2.5, 1.5)
        # No retries inside redis-py: a retry could run an XADD or a Lua step twice,
        # and would go to the dead master's cached address (redis-py #3874).
        assert kwargs["retry"].get_retries() == CLIENT_RETRIES == 0
        sentinels = pool.sentinel_manager.sentinels
        addresses = [
            (
                s.connection_pool.connection_kwargs["host"],
                s.connection_pool.connection_kwargs["port"],
            )
            for s in sentinels
        ]
        assert addresses == [("s1", 26379), ("s2", 26380)]
        sentinel_kwargs = sentinels[0].connection_pool.connection_kwargs
        assert (sentinel_kwargs["username"], sentinel_kwargs["password"]) == (
            "watch",
            SENTINEL_SECRET,
        )
        assert sentinel_kwargs["socket_connect_timeout"] == 1.5
        # A sentinel that does not answer is skipped at once: no retries on it.
        assert sentinel_kwargs["retry"].get_retries() == 0
    finally:
        client.close()


def test_the_factory_uses_tls_connections_for_a_rediss_sentinel_url() -> None:
    client = redis_client("rediss+sentinel://h/m?ssl_cert_reqs=none&sentinel_ssl=false")
    try:
        pool = client.connection_pool
        assert pool.connection_class is redis.sentinel.SentinelManagedSSLConnection
        assert pool.connection_kwargs["ssl_cert_reqs"] == "none"
        sentinel = pool.sentinel_manager.sentinels[0].connection_pool
        assert sentinel.connection_class is redis.connection.Connection
    finally:
        client.close()


def test_the_asyncio_factory_makes_a_sentinel_backed_master_client() -> None:
    async def run() -> None:
        client = async_redis_client(SENTINEL_URL, socket_timeout=2.5, connect_timeout=1.5)
        try:
            assert isinstance(client, AsyncSentinelRedis)
            pool = client.connection_pool
            assert isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool)
            assert pool.service_name == "mymaster"
            assert pool.connection_kwargs["password"] == SECRET
            assert pool.connection_kwargs["retry"].get_retries() == CLIENT_RETRIES
            assert isinstance(pool.connection_kwargs["retry"], redis.asyncio.retry.Retry)
            sentinel = pool.sentinel_manager.sentinels[1].connection_pool.connection_kwargs
            assert (sentinel["port"], sentinel["password"]) == (26380, SENTINEL_SECRET)
        finally:
            await client.aclose()

    asyncio.run(run())


def test_plain_urls_get_the_same_timeouts_and_no_client_retries() -> None:
    client = redis_client("redis://127.0.0.1:6379/4", socket_timeout=3, connect_timeout=2)
    try:
        assert type(client) is redis.Redis
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["db"], kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (
            4,
            3,
            2,
        )
        assert kwargs["retry"].get_retries() == CLIENT_RETRIES
    finally:
        client.close()


def test_producers_connect_through_the_factory() -> None:
    producer = AsyncLeadProducer.from_url(SENTINEL_URL)
    assert isinstance(producer._client, AsyncSentinelRedis)
    asyncio.run(producer.close())


def test_the_worker_clients_come_from_the_factory_with_the_settings() -> None:
    settings = Settings.from_env(
        redis_url=SENTINEL_URL, redis_socket_timeout_s=4, redis_connect_timeout_s=2
    )
    sync_client = worker_sync_client(settings)
    try:
        assert isinstance(sync_client, SentinelRedis)
        kwargs = sync_client.connection_pool.connection_kwargs
        assert kwargs["health_check_interval"] == HEALTH_CHECK_INTERVAL_S
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (4, 2)
    finally:
        sync_client.close()

    async def run() -> None:
        client = worker_async_client(settings)
        try:
            assert isinstance(client, AsyncSentinelRedis)
        finally:
            await client.aclose()

    asyncio.run(run())


# --- Celery ----------------------------------------------------------------------------


def test_celery_gets_kombus_sentinel_transport_with_the_master_name() -> None:
    settings = Settings.from_env()
    broker = celery_redis(SENTINEL_URL + "&sentinel_ssl=true", settings)
    auth = f"app:{SECRET}@"
    assert broker.url == f"sentinel://{auth}s1:26379/3;sentinel://{auth}s2:26380/3"
    assert broker.transport_options == {
        "master_name": "mymaster",
        "sentinel_kwargs": {
            "socket_timeout": settings.redis_socket_timeout_s,
            "socket_connect_timeout": settings.redis_connect_timeout_s,
            "username": "watch",
            "password": SENTINEL_SECRET,
            "ssl": True,
        },
    }
    assert broker.use_ssl is None  # the master is plain redis here
    tls = celery_redis("rediss+sentinel://:p%40w@h/m?ssl_ca_certs=/ca.pem", settings)
    assert tls.url == "sentinel://:p%40w@h:26379/0"
    assert tls.use_ssl == {"ssl_cert_reqs": "required", "ssl_ca_certs": "/ca.pem"}
    assert celery_redis("redis://r:6379/0", settings).url == "redis://r:6379/0"


def test_the_celery_app_uses_the_translated_broker_and_keeps_drains_on_a_blip() -> None:
    from worker.app import create_app

    app = create_app(Settings.from_env(redis_url=SENTINEL_URL))
    assert app.conf.broker_url.startswith("sentinel://")
    options = app.conf.broker_transport_options
    assert options["master_name"] == "mymaster"
    assert options["global_keyprefix"] == "leadsync:celery:"
    assert app.conf.result_backend_transport_options["master_name"] == "mymaster"
    # A broker blip must not cancel running drains (they are bounded and fenced).
    assert app.conf.worker_cancel_long_running_tasks_on_connection_loss is False
    connection = app.connection_for_write()
    assert connection.transport_cls == "sentinel"
    assert SECRET not in connection.as_uri()
    connection.release()


def test_a_separate_broker_url_is_translated_too() -> None:
    from worker.app import create_app

    app = create_app(Settings.from_env(broker_url="redis+sentinel://b1,b2:1/brokers"))
    assert app.conf.broker_url == "sentinel://b1:26379/0;sentinel://b2:1/0"
    assert app.conf.broker_transport_options["master_name"] == "brokers"
