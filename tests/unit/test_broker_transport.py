"""A channel whose connection Celery already collected raises a connection error (which
Celery ignores while closing and logs for a late ack), not AttributeError (which stops
the worker); kombu resolves the Redis URL schemes to these transports."""

from __future__ import annotations

import pytest
from kombu import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from worker import broker


@pytest.mark.parametrize(
    ("url", "transport", "options"),
    [
        ("redis://127.0.0.1:1/0", broker.Transport, {}),
        ("rediss://127.0.0.1:1/0", broker.Transport, {}),
        ("sentinel://127.0.0.1:1/0", broker.SentinelTransport, {"master_name": "m"}),
    ],
)
def test_a_detached_channel_raises_a_connection_error(
    url: str, transport: type, options: dict[str, str]
) -> None:
    # What create_app does (importing worker.app here would switch this test process's
    # metrics to multiprocess files, and the in-process API tests would export nothing).
    broker.install()
    connection = Connection(url, transport_options=options)
    assert type(connection.transport) is transport
    channel = transport.Channel.__new__(transport.Channel)  # no I/O: only the lookup
    channel.connection = connection.transport
    assert channel._connparams()["port"] == 1
    connection.transport.client = None  # what Connection.collect() does to it
    with pytest.raises(RedisConnectionError) as raised:
        channel._connparams()
    assert isinstance(raised.value, connection.connection_errors)


def test_the_stock_channel_has_the_fault_this_fixes() -> None:
    """If kombu stops reading the detached client, this fails and the module can go."""
    from kombu.transport import redis as stock

    connection = Connection("redis://127.0.0.1:1/0", transport=stock.Transport)
    channel = stock.Channel.__new__(stock.Channel)
    channel.connection = connection.transport
    connection.transport.client = None
    with pytest.raises(AttributeError):
        channel._connparams()
