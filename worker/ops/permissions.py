"""What the current Redis user may do, per component role (``leadsync doctor --role``).

Each role (``api``, ``worker``, ``keda``) needs a list of commands on sample keys of every
key family it touches (`needs`); ``ACL DRYRUN <user> <command> <args>`` (Redis >= 7.0)
asks Redis whether the user could run each one without running it. Anything refused is
a FAIL naming the command and the key pattern (never a value, a password or a token). For
the API and KEDA, being able to read the Marketo REST token, touch the limiter, or delete,
expire or reshape the ledger (a shard stream, the shard count, a reshard) is a WARN as
well: those roles should not (deploy/redis-acl/users.acl). Where the ACL commands are
not allowed (a restricted user may not DRYRUN, an older Redis has no DRYRUN) the check
says so and is skipped; an admin can check a component's user with ``--acl-user``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from redis.exceptions import RedisError, ResponseError

from producers.contract import RESHARD_TO, SHARDS_FIELD, Keys, LimiterKeys, text

if TYPE_CHECKING:
    from redis.asyncio import Redis

Role = Literal["api", "worker", "keda"]
ROLES: Final[tuple[Role, ...]] = ("api", "worker", "keda")
Level = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True, slots=True)
class Need:
    """One command a role runs, on a sample key; ``pattern`` is what a report names."""

    command: tuple[str, ...]
    pattern: str

    @property
    def label(self) -> str:
        return f"{self.command[0]} {self.pattern}"


def _need(pattern: str, *command: str) -> Need:
    return Need(tuple(command), pattern)


def needs(role: Role, prefix: str, db: int = 0) -> list[Need]:
    """The commands ``role`` runs, on sample keys of each key family it uses."""
    keys, limits = Keys(prefix), LimiterKeys(prefix)
    p = prefix
    stream = keys.stream(0)
    stream_pattern = f"{p}:{{<shard>}}:outbox"
    if role == "keda":
        return [
            _need(stream_pattern, "XLEN", stream),
            _need(stream_pattern, "XINFO", "GROUPS", stream),
        ]
    bucket, field = keys.outcome_slot(0, "1764660000000-0")
    reads = [
        _need(stream_pattern, "XADD", stream, "*", "k", "v"),
        _need(stream_pattern, "XRANGE", stream, "-", "+"),
        _need(stream_pattern, "XLEN", stream),
        _need(stream_pattern, "EVAL", "return 1", "1", stream),
        # The enqueue step (producers/scripts/next_id.lua): the shard's id sequence and,
        # for a bulk write, the lead's written-fields mark.
        _need(f"{p}:{{<shard>}}:seq", "SET", keys.sequence(0), "1-0"),
        _need(f"{p}:{{<shard>}}:fields:*", "HINCRBY", keys.written_fields(0, "0"), "~bulk", "1"),
        _need(f"{p}:{{<shard>}}:fields:*", "PERSIST", keys.written_fields(0, "0")),
        _need("(server)", "TIME"),
        _need(f"{p}:{{<shard>}}:outcomes:*", "HGET", bucket, field),
        _need(f"{p}:{{<shard>}}:outcome:*", "HGETALL", keys.outcome(0, "1764660000000-0")),
        _need(f"{p}:admission", "HSET", keys.admission(), "used", "0"),
        _need(f"{p}:config", "HSETNX", keys.config(), "shards", "0"),
        _need(f"{p}:config", "HGET", keys.config(), "shards"),
        # The shard-count fence (producers/scripts/fence.lua) reads a reshard under way.
        _need(f"{p}:reshard", "HGET", keys.reshard(), "to"),
        _need(f"{p}:fields", "HGETALL", keys.known_fields()),
        _need("(server)", "INFO", "memory"),
    ]
    if role == "api":
        step_keys = ("6", stream, keys.admission(), keys.sequence(0), keys.written_fields(0, "0"), keys.config(), keys.reshard())  # fmt: skip
        return [
            *reads,
            # The enqueue step as one EVAL: Redis checks the keys it declares (read-write)
            # and then every command the script runs (above and here).
            _need(f"{p}:{{<shard>}}:outbox + its step's keys", "EVAL", "return 1", *step_keys),
            _need(f"{p}:{{<shard>}}:seq", "GET", keys.sequence(0)),
            _need(f"{p}:admission", "HMGET", keys.admission(), "used", "max"),
            _need(f"{p}:admission", "PEXPIRE", keys.admission(), "100"),
            _need("(server)", "WAIT", "0", "0"),
            _need(f"{p}:api:keys", "HGET", keys.api_keys(), "d"),
            _need(f"{p}:api:keys", "HVALS", keys.api_keys()),
            _need(f"{p}:api:keys", "HDEL", keys.api_keys(), "d"),
            _need(f"{p}:api:key-names", "HSETNX", keys.api_key_names(), "n", "d"),
            _need(f"{p}:api:rate:*", "EVAL", "return 1", "1", keys.api_rate("0" * 16, 0)),
            _need(f"{p}:api:rate:*", "INCR", keys.api_rate("0" * 16, 0)),
            _need(f"{p}:api:rate:*", "PEXPIRE", keys.api_rate("0" * 16, 0), "2000"),
            _need(f"{p}:api:auth-failures:*", "GET", keys.api_auth_failures("0" * 24)),
            _need(f"{p}:api:auth-failures:*", "PTTL", keys.api_auth_failures("0" * 24)),
            _need(
                f"{p}:api:idem:*",
                "SET",
                keys.api_idempotency("n", "/v1/leads", "0" * 64),
                "v",
                "NX",
                "GET",
            ),
            _need(f"{p}:api:idem:*", "DEL", keys.api_idempotency("n", "/v1/leads", "0" * 64)),
        ]
    return [
        *reads,
        _need(stream_pattern, "XREADGROUP", "GROUP", Keys.GROUP, "c", "STREAMS", stream, ">"),
        _need(stream_pattern, "XACK", stream, Keys.GROUP, "0-1"),
        _need(stream_pattern, "XDEL", stream, "0-1"),
        _need(stream_pattern, "XGROUP", "CREATE", stream, Keys.GROUP, "0", "MKSTREAM"),
        _need(f"{p}:{{<shard>}}:lease", "SET", keys.lease(0), "t", "NX", "PX", "1000"),
        _need(f"{p}:{{<shard>}}:dlq", "XADD", keys.dead_letters(0), "*", "k", "v"),
        _need(f"{p}:{{<shard>}}:fields:*", "HSET", keys.written_fields(0, "0"), "f", "v"),
        _need(f"{p}:{{limits}}:*", "EVAL", "return 1", "2", limits.window, limits.quota("d")),
        _need(f"{p}:{{limits}}:rest-token:*", "GET", keys.rest_token("0" * 16)),
        _need(f"{p}:failover", "HSET", keys.failover(), "run_id", "0"),
        _need(f"{p}:control:*", "SET", keys.ring(0), "1", "NX"),
        _need(f"{p}:stats:*", "HSET", keys.heartbeat("pod"), "f", "v"),
        _need(f"{p}:celery:*", "LPUSH", f"{p}:celery:leadsync", "m"),
        _need(f"{p}:celery:*", "BRPOP", f"{p}:celery:leadsync", "1"),
        _need(
            f"channel {p}:celery:/{db}.celery.pidbox",
            "PSUBSCRIBE",
            f"{p}:celery:/{db}.celery.pidbox",
        ),
    ]


def forbidden(role: Role, prefix: str) -> list[Need]:
    """What the API and KEDA should not be able to do: read the REST token, touch the
    limiter, or delete, expire or reshape the ledger (a shard stream, the stored shard
    count, a reshard under way)."""
    if role == "worker":
        return []
    keys, limits = Keys(prefix), LimiterKeys(prefix)
    p = prefix
    stream_pattern = f"{p}:{{<shard>}}:outbox"
    return [
        _need(f"{p}:{{limits}}:rest-token:*", "GET", keys.rest_token("0" * 16)),
        _need(f"{p}:{{limits}}:*", "SET", limits.hold, "1"),
        _need(stream_pattern, "DEL", keys.stream(0)),
        _need(stream_pattern, "PEXPIRE", keys.stream(0), "1"),
        _need(stream_pattern, "XTRIM", keys.stream(0), "MAXLEN", "0"),
        _need(f"{p}:config", "HSET", keys.config(), SHARDS_FIELD, "1"),
        _need(f"{p}:config", "DEL", keys.config()),
        _need(f"{p}:reshard", "HSET", keys.reshard(), RESHARD_TO, "1"),
        _need(f"{p}:reshard", "DEL", keys.reshard()),
    ]


def infer_role(user: str) -> Role:
    """The role a user name suggests (leadsync-api, leadsync-keda); else the worker's."""
    lowered = user.lower()
    return "api" if "api" in lowered else "keda" if "keda" in lowered else "worker"


async def _allowed(redis: Redis, user: str, need: Need) -> bool:
    answer = await redis.execute_command(  # type: ignore[no-untyped-call]
        "ACL", "DRYRUN", user, *need.command
    )
    return text(answer) == "OK"


async def check_permissions(
    redis: Redis, prefix: str, role: Role | None = None, user: str | None = None, db: int = 0
) -> tuple[Level, str]:
    """(level, detail) of what ``user`` (default: ACL WHOAMI) may do for ``role``
    (default: inferred from the user's name)."""
    try:
        me = user or text(
            await redis.execute_command(  # type: ignore[no-untyped-call]
                "ACL", "WHOAMI"
            )
        )
    except ResponseError:
        return "WARN", "skipped: ACL WHOAMI is not allowed here (or Redis is older than 6)"
    chosen = role or infer_role(me)
    wanted, unwanted = needs(chosen, prefix, db), forbidden(chosen, prefix)
    try:
        missing = [need for need in wanted if not await _allowed(redis, me, need)]
        extra = [need for need in unwanted if await _allowed(redis, me, need)]
    except ResponseError as exc:
        reason = "ACL DRYRUN is not allowed to this user, or Redis is older than 7.0"
        if "no such user" in str(exc).lower() or "not found" in str(exc).lower():
            reason = f"Redis has no user {me!r}"
        return (
            "WARN",
            f"skipped for user {me!r} as {chosen}: {reason}; run "
            f"`leadsync doctor --role {chosen} --acl-user {me}` with an admin's URL",
        )
    except RedisError as exc:
        return "WARN", f"skipped: {exc.__class__.__name__}"
    who = f"user {me!r} as {chosen}"
    if missing:
        return "FAIL", f"{who} may not run: " + _listed(missing) + " (deploy/redis-acl)"
    if extra:
        return (
            "WARN",
            f"{who} may also run {_listed(extra)}: this component should not reach the "
            "limiter or the Marketo REST token, nor delete, expire or reshape the ledger "
            "(use the users of deploy/redis-acl/users.acl)",
        )
    return "OK", f"{who} may run all {len(wanted)} commands it needs"


def _listed(found: Sequence[Need]) -> str:
    return ", ".join(dict.fromkeys(need.label for need in found))
