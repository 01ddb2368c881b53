"""What a producer needs to know, read from the same ``LEADSYNC_*`` variables as the
worker's ``Settings`` (same names, same defaults, same limits), with the standard
library only: a web app does not load pydantic or the worker to enqueue.

A unit test checks that these defaults equal the worker's, so the two cannot drift.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

from producers.errors import ConfigError
from producers.lead import key_rule

ENV_PREFIX: Final = "LEADSYNC_"
MAX_SHARDS: Final = 1024
MAX_REDIS_TIMEOUT_S: Final = 60.0
MAX_REPLICAS: Final = 16
_KEY_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]+$")

T = TypeVar("T")


def split_field_names(value: str) -> tuple[str, ...]:
    """LEADSYNC_KNOWN_FIELDS as a tuple of names (empty: any attribute is accepted)."""
    return tuple(name.strip() for name in value.split(",") if name.strip())


@dataclass(frozen=True, slots=True)
class ProducerConfig:
    """Where the ledger lives and how it is laid out. Construction checks every value."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "leadsync"
    shards: int = 16
    #: Attribute names the Marketo instance knows; empty accepts any attribute.
    known_fields: tuple[str, ...] = ()
    redis_socket_timeout_s: float = 10.0
    redis_connect_timeout_s: float = 5.0
    #: The worker's Marketo API and REST lookup field: they decide the lead key (REST
    #: matches a lead by its lookupField only). A worker stores its rule in Redis, which
    #: wins; these are used until one has.
    marketo_api: str = "soap"
    marketo_lookup_field: str = "email"
    #: Replicas that must have an upsert (Redis WAIT) before it is acknowledged.
    enqueue_replicas: int = 0
    #: How long an upsert waits for them before NotReplicated.
    replica_wait_s: float = 1.0
    #: Backpressure when a shard's stream holds this many entries (0: no bound).
    max_shard_backlog: int = 200_000
    #: Backpressure when Redis's used memory reaches this fraction of maxmemory (0: none).
    memory_high_water: float = 0.85
    #: Backpressure for the bulk lane when a shard's bulk stream holds this many (0: none).
    max_bulk_backlog: int = 500_000
    #: The part of maxmemory only live upserts may take: bulk is refused this far below
    #: memory_high_water.
    live_memory_reserve: float = 0.15
    #: The retry-after of Backpressure.
    backpressure_retry_s: float = 5.0

    def __post_init__(self) -> None:
        problems = []
        if not _KEY_PREFIX.match(self.key_prefix):
            problems.append("LEADSYNC_KEY_PREFIX: must be letters, digits or _ . : -")
        if type(self.shards) is not int or not 1 <= self.shards <= MAX_SHARDS:
            problems.append(f"LEADSYNC_SHARDS: must be an integer from 1 to {MAX_SHARDS}")
        for name in ("redis_socket_timeout_s", "redis_connect_timeout_s"):
            if not 0 < getattr(self, name) <= MAX_REDIS_TIMEOUT_S:
                problems.append(
                    f"{ENV_PREFIX}{name.upper()}: must be more than 0 and at most "
                    f"{MAX_REDIS_TIMEOUT_S:g} seconds"
                )
        if type(self.enqueue_replicas) is not int or not 0 <= self.enqueue_replicas <= MAX_REPLICAS:
            problems.append(
                f"LEADSYNC_ENQUEUE_REPLICAS: must be an integer from 0 to {MAX_REPLICAS}"
            )
        if type(self.max_shard_backlog) is not int or self.max_shard_backlog < 0:
            problems.append("LEADSYNC_MAX_SHARD_BACKLOG: must be an integer, 0 or more")
        if not 0 <= self.memory_high_water < 1:
            problems.append("LEADSYNC_MEMORY_HIGH_WATER: must be at least 0 and below 1")
        if type(self.max_bulk_backlog) is not int or self.max_bulk_backlog < 0:
            problems.append("LEADSYNC_MAX_BULK_BACKLOG: must be an integer, 0 or more")
        if not 0 <= self.live_memory_reserve < 1:
            problems.append("LEADSYNC_LIVE_MEMORY_RESERVE: must be at least 0 and below 1")
        if not 0 < self.backpressure_retry_s <= 3600:
            problems.append("LEADSYNC_BACKPRESSURE_RETRY_S: must be more than 0 and at most 3600")
        if not 0 < self.replica_wait_s <= MAX_REDIS_TIMEOUT_S:
            problems.append(
                f"LEADSYNC_REPLICA_WAIT_S: must be more than 0 and at most "
                f"{MAX_REDIS_TIMEOUT_S:g} seconds"
            )
        if self.marketo_api not in ("soap", "rest"):
            problems.append("LEADSYNC_MARKETO_API: must be soap or rest")
        if not self.marketo_lookup_field.strip():
            problems.append("LEADSYNC_MARKETO_LOOKUP_FIELD: must not be empty")
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))

    @property
    def key_rule(self) -> str:
        """How lead keys are made (``producers.lead.key_rule``)."""
        return key_rule(self.marketo_api, self.marketo_lookup_field)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProducerConfig:
        """Read ``LEADSYNC_*`` (``environ`` defaults to ``os.environ``); unset names keep
        their defaults. Raise ConfigError naming each bad variable (values are not echoed)."""
        env = os.environ if environ is None else environ
        defaults = cls()
        problems: list[str] = []

        def read(name: str, parse: Callable[[str], T], default: T) -> T:
            variable = ENV_PREFIX + name.upper()
            if variable not in env:
                return default
            try:
                return parse(env[variable].strip())
            except ValueError:
                problems.append(f"{variable}: must be a {parse.__name__} number")
                return default

        shards = read("shards", int, defaults.shards)
        socket_timeout_s = read("redis_socket_timeout_s", float, defaults.redis_socket_timeout_s)
        connect_timeout_s = read("redis_connect_timeout_s", float, defaults.redis_connect_timeout_s)
        replicas = read("enqueue_replicas", int, defaults.enqueue_replicas)
        replica_wait_s = read("replica_wait_s", float, defaults.replica_wait_s)
        max_backlog = read("max_shard_backlog", int, defaults.max_shard_backlog)
        high_water = read("memory_high_water", float, defaults.memory_high_water)
        retry_s = read("backpressure_retry_s", float, defaults.backpressure_retry_s)
        max_bulk = read("max_bulk_backlog", int, defaults.max_bulk_backlog)
        reserve = read("live_memory_reserve", float, defaults.live_memory_reserve)
        config = defaults
        try:
            config = cls(
                redis_url=env.get(ENV_PREFIX + "REDIS_URL", defaults.redis_url),
                key_prefix=env.get(ENV_PREFIX + "KEY_PREFIX", defaults.key_prefix),
                shards=shards,
                known_fields=split_field_names(env.get(ENV_PREFIX + "KNOWN_FIELDS", "")),
                redis_socket_timeout_s=socket_timeout_s,
                redis_connect_timeout_s=connect_timeout_s,
                enqueue_replicas=replicas,
                replica_wait_s=replica_wait_s,
                max_shard_backlog=max_backlog,
                memory_high_water=high_water,
                backpressure_retry_s=retry_s,
                max_bulk_backlog=max_bulk,
                live_memory_reserve=reserve,
                marketo_api=env.get(ENV_PREFIX + "MARKETO_API", defaults.marketo_api).strip(),
                marketo_lookup_field=env.get(
                    ENV_PREFIX + "MARKETO_LOOKUP_FIELD", defaults.marketo_lookup_field
                ).strip(),
            )
        except ConfigError as exc:
            problems.append(str(exc).removeprefix("invalid configuration: "))
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))
        return config
