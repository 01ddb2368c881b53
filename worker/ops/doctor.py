"""``leadsync doctor``: check a deployment and say in plain words what is wrong and how
to fix it; ``doctor --liveness``: is this pod's worker alive (its local heartbeat file,
no Redis involved); ``doctor --readiness``: does Redis answer (through Sentinel too)?

The Marketo check only fetches the WSDL: a signed call would spend daily quota, so the
credentials are verified by the first real call (a refusal puts the pipeline on hold,
which this doctor reports).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from producers.contract import (
    RESHARD_TO,
    Keys,
    describe_redis_url,
    is_sentinel_url,
    parse_sentinel_url,
    text,
)
from worker.connections import redis_client
from worker.core.fields import rest_name
from worker.errors import ConfigError, MarketoError
from worker.ledger import Ledger
from worker.limits import RedisLimiter
from worker.marketo.rest.codec import load_json
from worker.marketo.rest.tokens import fetch_token
from worker.obs.stats import stored_shards
from worker.ops.fields import read_fields
from worker.ops.health import LIVENESS_MAX_AGE_S, local_heartbeat_path, local_liveness
from worker.ops.permissions import Role, check_permissions
from worker.scheduling import pace_report
from worker.settings import DEFAULT_QUOTAS, Settings
from worker.transport import AiohttpTransport

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

Level = Literal["OK", "WARN", "FAIL"]


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the doctor's table."""

    name: str
    level: Level
    detail: str


def failed(checks: list[Check]) -> bool:
    return any(check.level == "FAIL" for check in checks)


def liveness(
    settings: Settings, max_age_s: float = LIVENESS_MAX_AGE_S, path: Path | None = None
) -> Check:
    """This pod's worker from its local heartbeat file only (see worker/ops/health.py):
    a Redis outage or failover never fails it."""
    level, detail = local_liveness(
        path or local_heartbeat_path(settings.key_prefix), max_age_s=max_age_s
    )
    return Check("liveness", level, f"{socket.gethostname()}: {detail}")


async def readiness(settings: Settings) -> Check:
    """Redis answers (the master, found through the sentinels for a Sentinel URL)."""
    client = redis_client(settings)
    try:
        return await check_redis(client, settings, name="readiness")
    finally:
        await client.aclose()


# --- the checks ----------------------------------------------------------------------------


def check_settings(
    load: Callable[[], Settings] = Settings.from_env,
) -> tuple[Settings | None, Check]:
    try:
        settings = load()
    except ConfigError as exc:
        return None, Check("settings", "FAIL", str(exc))
    return settings, Check("settings", "OK", f"prefix {settings.key_prefix!r}")


def _where(url: str) -> str:
    """Where a URL points, without user, password or query (Sentinel URLs too)."""
    return describe_redis_url(url)


async def check_redis(redis: Redis, settings: Settings, name: str = "redis") -> Check:
    try:
        await redis.ping()
    except RedisError as exc:
        return Check(
            name, "FAIL", f"cannot reach {_where(settings.redis_url)}: {exc.__class__.__name__}"
        )
    return Check(name, "OK", f"reachable: {_where(settings.redis_url)}")


#: Why leadsync refuses Redis Cluster (docs/architecture.md, "Redis: one server, or
#: Sentinel for failover").
CLUSTER_UNSUPPORTED = (
    "Redis Cluster is not supported: Celery's broker (kombu) needs one Redis, and the HTTP "
    "API's batch step and cross-shard drains write keys of several shards in one step, "
    "which a Cluster refuses (CROSSSLOT) or redirects (MOVED). Use one Redis, with Redis "
    "Sentinel for failover (redis+sentinel://...)"
)
_CLUSTER_ERRORS = ("MOVED ", "ASK ", "CROSSSLOT ", "CLUSTERDOWN ")


def is_cluster_error(exc: BaseException) -> bool:
    """A reply only a Redis Cluster gives (MOVED, ASK, CROSSSLOT, CLUSTERDOWN)."""
    return isinstance(exc, ResponseError) and str(exc).upper().startswith(_CLUSTER_ERRORS)


async def check_not_cluster(redis: Redis, keys: Keys) -> Check:
    """FAIL on a Cluster endpoint: ``INFO cluster`` says cluster_enabled:1, or (where INFO
    is not allowed) a two-shard read is redirected or refused as a Cluster does."""
    try:
        info = await redis.info("cluster")
    except ResponseError as exc:
        if is_cluster_error(exc):
            return Check("cluster", "FAIL", CLUSTER_UNSUPPORTED)
        info = None
    if info is not None:
        if str(info.get("cluster_enabled", "0")) == "1":
            return Check(
                "cluster", "FAIL", f"cluster_enabled:1 on this endpoint. {CLUSTER_UNSUPPORTED}"
            )
        return Check("cluster", "OK", "one Redis (not a Cluster)")
    try:  # INFO refused (an ACL or a managed service): a read across two shards' slots
        await redis.exists(keys.stream(0), keys.stream(1))
    except ResponseError as exc:
        if is_cluster_error(exc):
            return Check("cluster", "FAIL", CLUSTER_UNSUPPORTED)
        return Check(
            "cluster",
            "WARN",
            "cannot tell whether this is a Redis Cluster (INFO and EXISTS refused)",
        )
    return Check("cluster", "OK", "one Redis (not a Cluster)")


async def check_sentinel(settings: Settings) -> Check | None:
    """For a Sentinel URL: how many sentinels answer, whether they agree on the master,
    and whether it has a replica to fail over to. None for other URLs."""
    if not is_sentinel_url(settings.redis_url):
        return None
    parsed = parse_sentinel_url(settings.redis_url, "LEADSYNC_REDIS_URL")
    answers: list[dict[str, Any]] = []
    silent = 0
    for host, port in parsed.sentinels:
        sentinel = AsyncRedis(
            host=host,
            port=port,
            socket_timeout=settings.redis_socket_timeout_s,
            socket_connect_timeout=settings.redis_connect_timeout_s,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
            **parsed.sentinel_kwargs(),
        )
        try:
            answer = await sentinel.sentinel_master(parsed.master)
            if isinstance(answer, dict):
                answers.append(answer)
            else:
                silent += 1
        except RedisError:
            silent += 1
        finally:
            await sentinel.aclose()
    name, total = parsed.master, len(parsed.sentinels)
    if not answers:
        return Check(
            "sentinel",
            "FAIL",
            f"none of the {total} sentinels answers for master {name!r} (unreachable, wrong "
            "auth or TLS, or they do not monitor that name)",
        )
    masters = {(a.get("ip"), a.get("port")) for a in answers}
    if len(masters) > 1:
        return Check(
            "sentinel",
            "FAIL",
            f"the sentinels disagree on master {name!r}: {sorted(map(str, masters))}",
        )
    ip, master_port = masters.pop()
    first = answers[0]
    replicas = int(first.get("num-slaves", 0))
    others = int(first.get("num-other-sentinels", 0))
    quorum = int(first.get("quorum", 0))
    detail = (
        f"{len(answers)}/{total} sentinels answer; master {name!r} at {ip}:{master_port}, "
        f"{replicas} replica(s), {others + 1} sentinels know it, quorum {quorum}"
    )
    problems = []
    if silent:
        problems.append(f"{silent} listed sentinel(s) do not answer")
    if replicas == 0:
        problems.append("no replica: a failover has nowhere to go")
    if others + 1 < 3:
        problems.append("fewer than 3 sentinels: run 3 on separate machines")
    if problems:
        return Check("sentinel", "WARN", f"{detail}; " + "; ".join(problems))
    return Check("sentinel", "OK", detail)


async def check_persistence(redis: Redis) -> Check:
    try:
        config: dict[Any, Any] = {
            **await redis.config_get("appendonly"),
            **await redis.config_get("maxmemory-policy"),
        }
    except ResponseError:
        return Check(
            "persistence",
            "WARN",
            "CONFIG is not allowed here; make sure appendonly is yes and "
            "maxmemory-policy is noeviction",
        )
    values = {text(k): text(v) for k, v in config.items()}
    problems = []
    if values.get("appendonly") != "yes":
        problems.append(
            "appendonly is no: a Redis restart loses accepted upserts (set appendonly yes)"
        )
    policy = values.get("maxmemory-policy", "?")
    if policy != "noeviction":
        problems.append(
            f"maxmemory-policy is {policy}: Redis may evict pending entries (set noeviction)"
        )
    if problems:
        return Check("persistence", "WARN", "; ".join(problems))
    return Check("persistence", "OK", "appendonly yes, maxmemory-policy noeviction")


async def check_replicas(redis: Redis, settings: Settings) -> Check:
    """Are there replicas enough for LEADSYNC_ENQUEUE_REPLICAS, and does the master refuse
    writes it could not replicate (min-replicas-to-write)?"""
    info = await redis.info("replication")
    connected = int(info.get("connected_slaves", 0))
    wanted = settings.enqueue_replicas
    detail = f"{connected} replica(s) connected; LEADSYNC_ENQUEUE_REPLICAS={wanted}"
    if connected < wanted:
        return Check(
            "replicas",
            "FAIL",
            f"{detail}: every upsert is refused as not replicated until enough replicas follow",
        )
    try:
        config = await redis.config_get("min-replicas-to-write")
        min_replicas = int(text(next(iter(config.values()), None) or "0"))
    except (ResponseError, ValueError):
        min_replicas = -1  # CONFIG not allowed here: say nothing about it
    if wanted == 0 and connected > 0:
        return Check(
            "replicas",
            "WARN",
            f"{detail}: an acknowledged upsert can be lost in a failover "
            "(set LEADSYNC_ENQUEUE_REPLICAS=1)",
        )
    if wanted > 0 and min_replicas == 0:
        return Check(
            "replicas",
            "WARN",
            f"{detail}; min-replicas-to-write is 0: a master cut off from its replicas "
            "keeps taking writes that a failover drops (set min-replicas-to-write 1)",
        )
    return Check("replicas", "OK", detail)


async def check_shards(redis: Redis, settings: Settings) -> tuple[int, Check]:
    keys = Keys(settings.key_prefix)
    stored = await stored_shards(redis, keys)
    target = await redis.hget(keys.reshard(), RESHARD_TO)
    if stored is not None and target is not None:
        return stored, Check(
            "shards",
            "WARN",
            f"`leadsync reshard` is changing the count from {stored} to {text(target)}: "
            "intake is refused until it switches (or its command stops)",
        )
    if stored is None:
        return settings.shards, Check(
            "shards",
            "WARN",
            f"no shard count stored yet; the first worker or producer stores {settings.shards}",
        )
    if stored != settings.shards:
        return stored, Check(
            "shards",
            "WARN",
            f"{stored} stored in Redis, {settings.shards} configured: everyone uses {stored}; "
            "set LEADSYNC_SHARDS to match",
        )
    return stored, Check("shards", "OK", f"{stored} shards")


async def check_groups(redis: Redis, keys: Keys, shards: int) -> Check:
    pipe = redis.pipeline(transaction=False)
    for shard in range(shards):
        pipe.xinfo_groups(keys.stream(shard))
    replies = await pipe.execute(raise_on_error=False)
    missing = [
        shard
        for shard, reply in enumerate(replies)
        if isinstance(reply, Exception)
        or not any(text(group["name"]) == Keys.GROUP for group in reply)
    ]
    if not missing:
        recreated = await redis.hgetall(keys.groups_recreated())
        if recreated:
            lost = sorted(int(text(s)) for s in recreated)
            return Check(
                "consumer groups",
                "WARN",
                f"groups of shards {', '.join(map(str, lost[:10]))} went missing in the last 7 days "
                "and workers recreated them at id 0 (Redis lost its data: check persistence); "
                f"upserts acknowledged before the loss may be gone. Clear with: "
                f"redis-cli DEL {keys.groups_recreated()}",
            )
        return Check("consumer groups", "OK", f"group {Keys.GROUP!r} on all {shards} shards")
    shown = ", ".join(str(s) for s in missing[:10]) + (" ..." if len(missing) > 10 else "")
    return Check(
        "consumer groups",
        "FAIL",
        f"{len(missing)} of {shards} shard streams have no consumer group {Keys.GROUP!r} "
        f"(shards {shown}): Redis lost its data or no worker has started yet. "
        "Fix: start a worker; its next drain recreates the groups at id 0, so no backlog is skipped",
    )


async def check_limits(redis: Redis, settings: Settings) -> Check:
    state = await RedisLimiter(redis, settings).state()
    if state.hold_reason:
        since = f" for {time.time() - state.hold_since:.0f} s" if state.hold_since else ""
        return Check(
            "hold",
            "FAIL",
            f"on hold{since}: Marketo refused the credentials ({state.hold_reason}); "
            "fix LEADSYNC_MARKETO_USER_ID / LEADSYNC_MARKETO_ENCRYPTION_KEY; "
            f"a probe call every {settings.hold_probe_interval_s:.0f} s resumes by itself",
        )
    usage = f"quota share {state.quota_used_today}/{state.quota_limit} today"
    if state.quota_used_today >= state.quota_limit:
        return Check("hold", "WARN", f"daily quota share spent ({usage}); sending resumes at reset")
    if state.cooldown_remaining_s > 0:
        return Check(
            "hold",
            "WARN",
            f"cooling down {state.cooldown_remaining_s:.0f} s ({state.cooldown_reason}); {usage}",
        )
    ledger = Ledger.for_settings(redis, settings)
    shards = await stored_shards(redis, ledger.keys) or settings.shards
    pace = pace_report(
        await ledger.backlogs(shards),
        state,
        batch_size=settings.batch_size,
        flush_interval_s=settings.flush_interval_s,
    )
    if pace.short:
        return Check("hold", "WARN", f"not held; {usage}; {pace.describe()}")
    return Check("hold", "OK", f"not held; {usage}")


def check_quota_share(settings: Settings) -> Check:
    """LEADSYNC_DAILY_QUOTA is leadsync's share of the instance's daily quota, and the bulk
    lane's budget (LEADSYNC_BULK_DAILY_CALLS) comes on top of it: together at or past the
    instance's default quota they leave nothing to the instance's other integrations."""
    share, bulk = settings.daily_quota, settings.bulk_budget_calls
    instance = DEFAULT_QUOTAS[settings.marketo_api]
    detail = (
        f"LEADSYNC_DAILY_QUOTA={share:,} calls a day, leadsync's share of the instance's "
        f"quota, and LEADSYNC_BULK_DAILY_CALLS={bulk:,} for the bulk lane on top "
        f"(Marketo's default for {settings.marketo_api.upper()}: {instance:,})"
    )
    if share + bulk >= instance:
        return Check(
            "quota share",
            "WARN",
            f"{detail}: together they take the whole default quota and leave nothing to the "
            "instance's other integrations, unless the instance's quota was raised "
            "(Admin > Web Services shows it); set them to that quota less what they need",
        )
    return Check(
        "quota share",
        "OK",
        f"{detail}; they leave {instance - share - bulk:,} of the default to the others",
    )


async def check_learned_fields(
    redis: Redis, settings: Settings, now_s: float | None = None
) -> Check:
    """How many lead fields workers learned from Marketo's describe, and when."""
    known = await read_fields(redis, Keys(settings.key_prefix))
    configured = len(settings.known_field_names)
    if known is None or known.learned_at is None:
        if configured:
            return Check("learned fields", "OK", f"none; LEADSYNC_KNOWN_FIELDS lists {configured}")
        if settings.fields_refresh_s == 0:
            return Check(
                "learned fields",
                "OK",
                "learning is off (LEADSYNC_FIELDS_REFRESH_S=0): any attribute is accepted at "
                "enqueue (an unknown one fails at Marketo); set LEADSYNC_KNOWN_FIELDS to refuse it",
            )
        return Check(
            "learned fields",
            "WARN",
            "none learned yet: a worker reads them from Marketo's describe at start and every "
            f"{settings.fields_refresh_s:,} s; until then any attribute is accepted at enqueue "
            "(an unknown one fails at Marketo). If this stays, see the worker logs: the API "
            "user may lack the permission to describe (then set LEADSYNC_KNOWN_FIELDS)",
        )
    age_s = max((time.time() if now_s is None else now_s) - known.learned_at, 0.0)
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(known.learned_at))
    detail = f"{known.count} fields learned from Marketo's {known.source or 'describe'} at {when} ({age_s:,.0f} s ago)"
    if configured:
        return Check(
            "learned fields", "OK", f"{detail}; LEADSYNC_KNOWN_FIELDS ({configured}) overrides them"
        )
    if settings.fields_refresh_s and age_s > 2 * settings.fields_refresh_s + 3600:
        return Check(
            "learned fields",
            "WARN",
            f"{detail}: not refreshed for more than twice LEADSYNC_FIELDS_REFRESH_S; see the "
            "worker logs (producers keep using these)",
        )
    return Check("learned fields", "OK", f"{detail}; producers refuse other attributes")


async def check_dead_letters(redis: Redis, keys: Keys, shards: int) -> Check:
    pipe = redis.pipeline(transaction=False)
    for shard in range(shards):
        pipe.xlen(keys.dead_letters(shard))
    total = sum(int(n) for n in await pipe.execute())
    if total:
        return Check("dead letters", "WARN", f"{total} entries parked; see `leadsync dlq list`")
    return Check("dead letters", "OK", "none")


async def check_marketo(settings: Settings, timeout_s: float = 5.0) -> Check:
    if not settings.marketo_user_id or not settings.marketo_encryption_key.get_secret_value():
        return Check(
            "marketo",
            "FAIL",
            "LEADSYNC_MARKETO_USER_ID and LEADSYNC_MARKETO_ENCRYPTION_KEY must both be set",
        )
    where = _where(settings.marketo_endpoint)
    # The calls' own transport: the whole WSDL (a reply in pieces is read to its end),
    # under the same size cap.
    transport = _transport(settings, timeout_s)
    try:
        reply = await transport.get(settings.marketo_endpoint + "?WSDL", {})
    except MarketoError as exc:
        return Check("marketo", "FAIL", f"cannot reach {where}: {exc}")
    finally:
        await transport.close()
    if reply.status != 200 or b"definitions" not in reply.body:
        return Check("marketo", "FAIL", f"{where} answered HTTP {reply.status} without a WSDL")
    return Check(
        "marketo",
        "OK",
        f"WSDL served by {where}; credentials are verified by the first call "
        "(a test call would spend quota)",
    )


def _transport(settings: Settings, timeout_s: float) -> AiohttpTransport:
    return AiohttpTransport.create(
        request_timeout_s=timeout_s,
        connect_timeout_s=timeout_s,
        max_response_bytes=settings.max_response_bytes,
    )


async def check_marketo_rest(settings: Settings, timeout_s: float = 5.0) -> list[Check]:
    """The REST credentials (a token fetch: identity calls cost no quota) and, through
    describe2.json (one API call), whether every LEADSYNC_KNOWN_FIELDS name exists."""
    identity = settings.rest_identity_url + "/oauth/token"
    transport = _transport(settings, timeout_s)
    try:
        token, _ = await fetch_token(
            transport,
            identity,
            client_id=settings.marketo_client_id,
            client_secret=settings.marketo_client_secret,
        )
        describe = settings.marketo_rest_url.rstrip("/") + "/rest/v1/leads/describe2.json"
        reply = await transport.get(describe, {"Authorization": f"Bearer {token}"})
        document = load_json(reply.body, "describe2.json") if reply.status == 200 else None
    except MarketoError as exc:
        return [Check("marketo rest", "FAIL", f"{_where(identity)}: {exc}")]
    finally:
        await transport.close()
    checks = [Check("marketo rest", "OK", f"a token from {_where(identity)}")]
    names = _field_names(document)
    if names is None:
        checks.append(
            Check("fields", "WARN", f"describe2.json answered HTTP {reply.status} without fields")
        )
        return checks
    known = {rest_name(n).casefold() for n in names}
    missing = [n for n in settings.known_field_names if rest_name(n).casefold() not in known]
    if missing:
        checks.append(
            Check(
                "fields",
                "FAIL",
                f"not fields of this instance: {', '.join(missing[:10])}: leads carrying them "
                "would fail (remove them from LEADSYNC_KNOWN_FIELDS or add them in Marketo)",
            )
        )
    elif settings.known_field_names:
        checks.append(Check("fields", "OK", "every LEADSYNC_KNOWN_FIELDS name exists"))
    else:
        checks.append(
            Check(
                "fields",
                "OK",
                f"{len(names)} fields; set LEADSYNC_KNOWN_FIELDS to refuse any other at enqueue",
            )
        )
    return checks


def _field_names(document: object) -> list[str] | None:
    """``result[0].fields[].name`` of describe2.json."""
    if not isinstance(document, dict) or document.get("success") is False:
        return None
    result = document.get("result")
    if not isinstance(result, list) or not result or not isinstance(result[0], dict):
        return None
    fields = result[0].get("fields")
    if not isinstance(fields, list):
        return None
    return [f["name"] for f in fields if isinstance(f, dict) and isinstance(f.get("name"), str)]


async def _guarded(name: str, check: Awaitable[Check]) -> Check:
    try:
        return await check
    except RedisError as exc:
        if is_cluster_error(exc):
            return Check(name, "FAIL", CLUSTER_UNSUPPORTED)
        return Check(name, "FAIL", f"Redis error: {exc.__class__.__name__}")


async def permissions_check(
    redis: Redis, settings: Settings, role: Role | None, acl_user: str | None
) -> Check:
    db = int(redis.connection_pool.connection_kwargs.get("db", 0) or 0)
    level, detail = await check_permissions(redis, settings.key_prefix, role, acl_user, db)
    return Check("permissions", level, detail)


async def run_checks(
    settings: Settings,
    *,
    http_timeout_s: float = 5.0,
    role: Role | None = None,
    acl_user: str | None = None,
) -> list[Check]:
    """Every check after settings; Redis-based ones are skipped when Redis is unreachable.
    ``role`` api or keda: only Redis and what that component's user may do (their users
    cannot read the worker's keys); ``acl_user``: check that user's permissions instead
    of the current one's (needs an admin's URL)."""
    keys = Keys(settings.key_prefix)
    client = redis_client(settings)
    try:
        checks = [await check_redis(client, settings)]
        sentinel = await check_sentinel(settings)
        if sentinel is not None:
            checks.append(sentinel)
        if role in ("api", "keda"):  # their users may not even run INFO
            if checks[0].level == "OK":
                checks.append(await permissions_check(client, settings, role, acl_user))
            return checks
        if checks[0].level == "OK":
            # A Cluster first: nothing else would make sense on one.
            checks.append(await _guarded("cluster", check_not_cluster(client, keys)))
            if checks[-1].level != "FAIL":
                checks.append(await permissions_check(client, settings, role, acl_user))
        if checks[0].level == "OK" and checks[-1].name != "cluster":
            checks.append(await _guarded("persistence", check_persistence(client)))
            checks.append(await _guarded("replicas", check_replicas(client, settings)))
            shards, shard_check = await check_shards(client, settings)
            checks.append(shard_check)
            checks.append(await _guarded("consumer groups", check_groups(client, keys, shards)))
            checks.append(await _guarded("hold", check_limits(client, settings)))
            checks.append(await _guarded("dead letters", check_dead_letters(client, keys, shards)))
            checks.append(await _guarded("learned fields", check_learned_fields(client, settings)))
    finally:
        await client.aclose()
    checks.append(check_quota_share(settings))
    if settings.marketo_api == "rest":
        checks.extend(await check_marketo_rest(settings, http_timeout_s))
    else:
        checks.append(await check_marketo(settings, http_timeout_s))
    return checks
