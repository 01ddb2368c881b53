"""Every Redis client leadsync makes, made here: producers, workers, beat, the HTTP API
and the CLI all call :func:`redis_client` or :func:`async_redis_client`.

One URL form for every Redis URL setting (``LEADSYNC_REDIS_URL``, ``LEADSYNC_BROKER_URL``,
``LeadProducer.from_url()``): the plain ``redis://``, ``rediss://`` and ``unix://`` URLs of
redis-py, and for Redis Sentinel::

    redis+sentinel://[user:password@]host:port[,host:port...]/<master name>[/<db>][?options]
    rediss+sentinel://...   (TLS to the master, and by default to the sentinels)

The user and password are the master's. Options (query parameters):

* ``sentinel_username``, ``sentinel_password``: the sentinels' own ACL user (default none);
* ``sentinel_ssl=true|false``: TLS to the sentinels (default: as the master);
* ``ssl_cert_reqs`` (none, optional, required), ``ssl_ca_certs``, ``ssl_certfile``,
  ``ssl_keyfile``, ``ssl_check_hostname`` (true, false): TLS details of every TLS
  connection; ``sentinel_ssl_<same>`` overrides one for the sentinels only.

A port left out is 26379; ``db`` defaults to 0. Errors name the setting, never its value
(a URL carries passwords).

Clients do not retry inside redis-py: a failed command or connect raises at once, and
leadsync's own loops do the waiting (the tick every second, the drain's next cycle, the
API's 503 with Retry-After, the app's retry of a producer call). Two reasons:

* redis-py retries a command on the connection's cached address without asking the
  sentinels (redis-py #3874), so after a failover a retry budget is time spent on the dead
  master (measured: 40 retries, first write 18.1 s after the kill; few retries plus an
  outer loop, 2.3 s). A fresh connect asks the sentinels, so the call after a failure
  follows the switch (about 2 s after the kill with down-after 500 ms here).
* A retry after a timeout or a reply lost with the connection can run a command twice:
  an XADD (a second entry; with dedup=false a second lead), an attempt count. leadsync's
  loops retry only steps that are safe to repeat, a producer's caller decides for itself.

A stale pooled connection is still replaced without an error: redis-py checks a pooled
connection before use and reconnects once. This module needs redis-py alone (the
producers stay light).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.retry
import redis.sentinel
from redis.backoff import NoBackoff

from producers.errors import ConfigError

SENTINEL_SCHEMES: Final = {"redis+sentinel": False, "rediss+sentinel": True}
PLAIN_SCHEMES: Final = ("redis", "rediss", "unix")
DEFAULT_SENTINEL_PORT: Final = 26379
#: Retries of one command or connect inside redis-py (after the first try): none.
CLIENT_RETRIES: Final = 0
#: TLS options a Sentinel URL takes (each also as ``sentinel_<name>``).
SSL_OPTIONS: Final = (
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
)
_CERT_REQS: Final = ("none", "optional", "required")
_TRUE: Final = ("true", "yes", "1", "on")
_FALSE: Final = ("false", "no", "0", "off")
GRAMMAR: Final = "redis+sentinel://[user:password@]host:port[,host:port...]/<master name>[/<db>]"


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL. Its repr hides the passwords."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    sentinel_username: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    sentinel_ssl: bool = False
    #: ssl_* options of the master's connections (and the sentinels' unless overridden).
    ssl_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: ssl_* options of the sentinels' connections (names without the sentinel_ prefix).
    sentinel_ssl_options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def master_kwargs(self) -> dict[str, Any]:
        """Connection arguments of the master's connections (redis-py names)."""
        kwargs: dict[str, Any] = {"db": self.db}
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        if self.ssl:
            kwargs["ssl"] = True
            kwargs.update(self.ssl_options)
        return kwargs

    def sentinel_kwargs(self) -> dict[str, Any]:
        """Connection arguments of the connections to the sentinels (redis-py names)."""
        kwargs: dict[str, Any] = {}
        if self.sentinel_username is not None:
            kwargs["username"] = self.sentinel_username
        if self.sentinel_password is not None:
            kwargs["password"] = self.sentinel_password
        if self.sentinel_ssl:
            kwargs["ssl"] = True
            kwargs.update({**self.ssl_options, **self.sentinel_ssl_options})
        return kwargs

    def describe(self) -> str:
        """Where, without user, password or options: for logs and ``leadsync doctor``."""
        hosts = ",".join(_host_port(host, port) for host, port in self.sentinels)
        tls = " (TLS)" if self.ssl else ""
        return f"master {self.master!r}{tls} via sentinels {hosts}, db {self.db}"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str, variable: str = "redis_url") -> SentinelUrl:
    """Parse a ``redis+sentinel://`` or ``rediss+sentinel://`` URL; ConfigError names
    ``variable`` and what is wrong, never the URL (it may carry passwords)."""

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"{variable}: {problem}")

    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SENTINEL_SCHEMES:
        raise bad(f"not a Sentinel URL (expected {GRAMMAR})")
    if "#" in rest:
        raise bad("a Redis URL has no #fragment")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user_part, colon, password_part = userinfo.partition(":")
        username = unquote(user_part) or None
        password = unquote(password_part) if colon else None
    sentinels = tuple(_sentinel_address(item, bad) for item in hostlist.split(","))
    segments = path.split("/") if path else []
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash
    if not segments or not unquote(segments[0]).strip():
        raise bad(f"a Sentinel URL needs the master's name: {GRAMMAR}")
    if len(segments) > 2:
        raise bad(f"too many path parts: {GRAMMAR}")
    master = unquote(segments[0])
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise bad("the database after the master's name must be a number (0, 1, ...)")
        db = int(segments[1])
    options = _query(query, bad)
    ssl = SENTINEL_SCHEMES[scheme]
    sentinel_ssl = ssl
    if "sentinel_ssl" in options:
        sentinel_ssl = _flag(options.pop("sentinel_ssl"), "sentinel_ssl", bad)
    ssl_options: dict[str, Any] = {}
    sentinel_ssl_options: dict[str, Any] = {}
    for name in SSL_OPTIONS:
        if name in options:
            ssl_options[name] = _ssl_value(name, options.pop(name), bad)
        prefixed = "sentinel_" + name
        if prefixed in options:
            sentinel_ssl_options[name] = _ssl_value(prefixed, options.pop(prefixed), bad)
    sentinel_username = options.pop("sentinel_username", None) or None
    sentinel_password = options.pop("sentinel_password", None)
    if options:
        allowed = ", ".join(
            ["sentinel_username", "sentinel_password", "sentinel_ssl", *SSL_OPTIONS]
        )
        raise bad(f"unknown option {sorted(options)[0]!r} (a Sentinel URL takes {allowed})")
    if ssl_options and not (ssl or sentinel_ssl):
        raise bad("ssl_* options need rediss+sentinel:// or sentinel_ssl=true")
    if sentinel_ssl_options and not sentinel_ssl:
        raise bad("sentinel_ssl_* options need TLS to the sentinels (sentinel_ssl=true)")
    return SentinelUrl(
        sentinels=sentinels,
        master=master,
        db=db,
        username=username,
        password=password,
        ssl=ssl,
        sentinel_username=sentinel_username,
        sentinel_password=sentinel_password,
        sentinel_ssl=sentinel_ssl,
        ssl_options=ssl_options,
        sentinel_ssl_options=sentinel_ssl_options,
    )


def _sentinel_address(item: str, bad: Any) -> tuple[str, int]:
    item = item.strip()
    if not item:
        raise bad(f"an empty sentinel address (expected {GRAMMAR})")
    if item.startswith("["):  # [IPv6]:port
        host, close, port_text = item[1:].partition("]")
        if not close or (port_text and not port_text.startswith(":")):
            raise bad("a sentinel address in brackets must be [IPv6 address]:port")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad("a sentinel address in brackets must be an IPv6 address") from None
        port_text = port_text[1:]
    else:
        host, _, port_text = item.partition(":")
        if ":" in port_text:
            raise bad("write an IPv6 sentinel address in brackets: [::1]:26379")
    if not host:
        raise bad(f"a sentinel address without a host (expected {GRAMMAR})")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise bad("a sentinel port must be a number from 1 to 65535")
    return host, int(port_text)


def _query(query: str, bad: Any) -> dict[str, str]:
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in options:
            raise bad(f"option {name!r} given twice")
        options[name] = value
    return options


def _flag(value: str, name: str, bad: Any) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise bad(f"option {name!r} must be true or false")


def _ssl_value(name: str, value: str, bad: Any) -> Any:
    if name.endswith("ssl_check_hostname"):
        return _flag(value, name, bad)
    if name.endswith("ssl_cert_reqs"):
        if value.strip().lower() not in _CERT_REQS:
            raise bad(f"option {name!r} must be one of {', '.join(_CERT_REQS)}")
        return value.strip().lower()
    if not value:
        raise bad(f"option {name!r} must not be empty")
    return value


def check_redis_url(url: str, variable: str = "redis_url") -> None:
    """Raise ConfigError (naming ``variable``, not echoing the URL) unless ``url`` is a
    Redis URL leadsync can connect with."""
    scheme = url.strip().split("://", 1)[0].lower() if "://" in url else ""
    if scheme in SENTINEL_SCHEMES:
        parse_sentinel_url(url, variable)
        return
    if scheme == "sentinel":
        raise ConfigError(
            f"{variable}: sentinel:// is kombu's form and lacks the master's name; write {GRAMMAR}"
        )
    if scheme not in PLAIN_SCHEMES:
        raise ConfigError(
            f"{variable}: must start with redis://, rediss://, unix://, redis+sentinel:// "
            "or rediss+sentinel://"
        )
    if scheme != "unix":
        try:
            parts = urlsplit(url.strip())
            _ = parts.port
        except ValueError:
            raise ConfigError(
                f"{variable}: not a valid Redis URL (one host:port; for several sentinels "
                f"write {GRAMMAR})"
            ) from None


def describe_redis_url(url: str) -> str:
    """Where a URL points, without user, password or options (safe to log)."""
    if is_sentinel_url(url):
        try:
            return parse_sentinel_url(url).describe()
        except ConfigError:
            return "an invalid Sentinel URL"
    try:
        parts = urlsplit(url.strip())
        if parts.scheme == "unix":
            return f"unix socket {parts.path}"
        host = parts.hostname or "?"
        return _host_port(host, parts.port) if parts.port else host
    except ValueError:
        return "an invalid Redis URL"


def client_retry() -> redis.retry.Retry:
    """The blocking clients' retry policy: none (see the module's docstring)."""
    return redis.retry.Retry(NoBackoff(), CLIENT_RETRIES)


def async_client_retry() -> redis.asyncio.retry.Retry:
    """The asyncio clients' retry policy (as :func:`client_retry`)."""
    return redis.asyncio.retry.Retry(NoBackoff(), CLIENT_RETRIES)


def _timeouts(
    socket_timeout: float | None,
    connect_timeout: float | None,
    health_check_interval: float | None,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
    }
    if health_check_interval:
        kwargs["health_check_interval"] = health_check_interval
    return kwargs


class SentinelRedis(redis.Redis):
    """A master client from :func:`redis_client`: ``close()`` also closes the
    connections to the sentinels."""

    def close(self) -> None:
        super().close()
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            sentinel.close()


class AsyncSentinelRedis(redis.asyncio.Redis):
    """A master client from :func:`async_redis_client`: ``aclose()`` also closes the
    connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        manager = getattr(self.connection_pool, "sentinel_manager", None)
        for sentinel in getattr(manager, "sentinels", ()):
            await sentinel.aclose()


def redis_client(
    url: str,
    *,
    variable: str = "redis_url",
    socket_timeout: float | None = None,
    connect_timeout: float | None = None,
    health_check_interval: float | None = None,
    retry: redis.retry.Retry | None = None,
) -> redis.Redis:
    """A blocking client for ``url`` (any form above). No I/O happens here."""
    check_redis_url(url, variable)
    kwargs = _timeouts(socket_timeout, connect_timeout, health_check_interval)
    kwargs["retry"] = retry or client_retry()
    if not is_sentinel_url(url):
        client: redis.Redis = redis.Redis.from_url(url.strip(), **kwargs)
        return client
    parsed = parse_sentinel_url(url, variable)
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(parsed.sentinels),
        sentinel_kwargs={
            **_timeouts(socket_timeout, connect_timeout, None),
            "retry": redis.retry.Retry(NoBackoff(), 0),
            **parsed.sentinel_kwargs(),
        },
    )
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        parsed.master, redis_class=SentinelRedis, **kwargs, **parsed.master_kwargs()
    )
    return master


def async_redis_client(
    url: str,
    *,
    variable: str = "redis_url",
    socket_timeout: float | None = None,
    connect_timeout: float | None = None,
    health_check_interval: float | None = None,
    retry: redis.asyncio.retry.Retry | None = None,
) -> redis.asyncio.Redis:
    """An asyncio client for ``url`` (any form above). No I/O happens here."""
    check_redis_url(url, variable)
    kwargs = _timeouts(socket_timeout, connect_timeout, health_check_interval)
    kwargs["retry"] = retry or async_client_retry()
    if not is_sentinel_url(url):
        client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(url.strip(), **kwargs)
        return client
    parsed = parse_sentinel_url(url, variable)
    sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        list(parsed.sentinels),
        sentinel_kwargs={
            **_timeouts(socket_timeout, connect_timeout, None),
            "retry": redis.asyncio.retry.Retry(NoBackoff(), 0),
            **parsed.sentinel_kwargs(),
        },
    )
    master: redis.asyncio.Redis = sentinel.master_for(
        parsed.master, redis_class=AsyncSentinelRedis, **kwargs, **parsed.master_kwargs()
    )
    return master
