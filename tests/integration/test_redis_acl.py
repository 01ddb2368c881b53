"""The shipped Redis ACL users (deploy/redis-acl/users.acl) on a real redis-server started
with ``--aclfile``: the API user runs the whole API and reaches neither the limiter nor
the REST token, the worker user drains, the KEDA user counts entries and reads none;
``leadsync doctor --role`` checks each user's permissions with ACL DRYRUN."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import Result
from typer.testing import CliRunner

from producers.contract import RESHARD_TO, SHARDS_FIELD
from producers.keys import Keys, LimiterKeys
from tests.support.api_kit import SHARDS, running_api
from tests.support.pipeline import running_pipeline
from tests.support.redis_server import RedisServer
from worker.api.auth import KeyStore
from worker.cli import app

pytestmark = pytest.mark.integration

ACL_FILE = Path(__file__).resolve().parents[2] / "deploy" / "redis-acl" / "users.acl"
#: The example file's placeholder passwords (replaced in production: deploy/redis-acl/README.md).
ADMIN = ("leadsync-admin", "change-me-admin")
API = ("leadsync-api", "change-me-api")
WORKER = ("leadsync-worker", "change-me-worker")
KEDA = ("leadsync-keda", "change-me-keda")
EXPORTER = ("leadsync-exporter", "change-me-exporter")


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    running = RedisServer(extra_args=["--aclfile", str(ACL_FILE)], user=ADMIN).start()
    try:
        yield running
    finally:
        running.cleanup()


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    client.flushdb()
    client.acl_log_reset()
    yield client
    client.close()


def refusals(admin: redis.Redis, user: str) -> list[dict[str, object]]:
    return [entry for entry in admin.acl_log() if entry["username"] == user]


def every_key_name(prefix: str = "leadsync") -> dict[str, str]:
    """One sample name of every key family in producers/keys.py."""
    keys, limits = Keys(prefix), LimiterKeys(prefix)
    bucket, _ = keys.outcome_slot(3, "1764660000000-0")
    return {
        "stream": keys.stream(3),
        "lease": keys.lease(3),
        "attempts": keys.attempts(3),
        "outcome": keys.outcome(3, "1764660000000-0"),
        "outcome_bucket": bucket,
        "written_fields": keys.written_fields(3, "abc"),
        "sequence": keys.sequence(3),
        "dead_letters": keys.dead_letters(3),
        "rest": keys.rest(3),
        "rest_streak": keys.rest_streak(3),
        "admission": keys.admission(),
        "failover": keys.failover(),
        "groups_recreated": keys.groups_recreated(),
        "config": keys.config(),
        "known_fields": keys.known_fields(),
        "ring": keys.ring(3),
        "prune_turn": keys.prune_turn(),
        "heartbeat": keys.heartbeat("pod-1"),
        "stats": keys.stats("outcomes:1"),
        "rest_token": keys.rest_token("0123456789abcdef"),
        "rest_token_lock": keys.rest_token("0123456789abcdef") + ":lock",
        "api_keys": keys.api_keys(),
        "api_key_names": keys.api_key_names(),
        "api_rate": keys.api_rate("ab" * 8, 1),
        "api_auth_failures": keys.api_auth_failures("cd" * 12),
        "api_idempotency": keys.api_idempotency("shop", "/v1/leads", "ef" * 32),
        "limiter_window": limits.window,
        "limiter_slots": limits.slots,
        "limiter_cooldown": limits.cooldown,
        "limiter_hold": limits.hold,
        "limiter_spacing": limits.spacing,
        "limiter_quota": limits.quota("2026-12-04"),
        "celery": f"{prefix}:celery:_kombu.binding.leadsync",
    }


def may(admin: redis.Redis, user: str, *command: str) -> bool:
    answer = admin.execute_command("ACL", "DRYRUN", user, *command)
    return bool(answer in (b"OK", "OK"))


#: What the API user may run, by key family: the commands the API process sends itself
#: and the ones its Lua steps run (producers/scripts/*.lua, worker/api/scripts/rate.lua;
#: Redis checks each command a script runs against the caller's permissions, and EVAL
#: declares its KEYS read-write). Nothing else on any key.
API_MAY: dict[str, set[str]] = {
    "stream": {"XADD", "XRANGE", "XLEN", "EVAL"},
    "sequence": {"GET", "SET", "EVAL"},
    "written_fields": {"HINCRBY", "PERSIST", "EVAL"},
    "outcome": {"HGET", "HGETALL"},
    "outcome_bucket": {"HGET", "HGETALL"},
    "known_fields": {"HGET", "HGETALL"},
    "config": {"HGET", "HGETALL", "HSETNX", "EVAL"},
    "reshard": {"HGET", "HGETALL", "EVAL"},
    "admission": {"HMGET", "HSET", "PEXPIRE", "EVAL"},
    "api_keys": {"HGET", "HVALS", "HSET", "HSETNX", "HDEL"},
    "api_key_names": {"HGET", "HVALS", "HSET", "HSETNX", "HDEL"},
    "api_rate": {"INCR", "PEXPIRE", "EVAL"},
    "api_auth_failures": {"GET", "PTTL", "INCR", "PEXPIRE", "EVAL"},
    "api_idempotency": {"SET", "DEL"},
}

#: One probe per command: its arguments after the key.
PROBES: dict[str, tuple[str, ...]] = {
    "GET": (), "SET": ("v",), "DEL": (), "UNLINK": (), "PEXPIRE": ("1",), "EXPIRE": ("1",),
    "PERSIST": (), "INCR": (), "PTTL": (), "HGET": ("f",), "HGETALL": (), "HMGET": ("f",),
    "HSET": ("f", "v"), "HSETNX": ("f", "v"), "HDEL": ("f",), "HVALS": (),
    "HINCRBY": ("f", "1"), "XADD": ("*", "f", "v"), "XRANGE": ("-", "+"), "XLEN": (),
    "XDEL": ("0-1",), "XTRIM": ("MAXLEN", "0"), "XREADGROUP": (), "RESTORE": ("0", "x"),
}  # fmt: skip


def probe(command: str, key: str) -> tuple[str, ...]:
    if command == "EVAL":
        return ("EVAL", "return 1", "1", key)
    if command == "XREADGROUP":
        return ("XREADGROUP", "GROUP", "workers", "c", "STREAMS", key, ">")
    return (command, key, *PROBES[command])


def test_each_key_family_is_reachable_by_exactly_the_users_that_need_it(
    admin: redis.Redis,
) -> None:
    for family, name in every_key_name().items():
        allowed = {c for c in [*PROBES, "EVAL"] if may(admin, API[0], *probe(c, name))}
        assert allowed == API_MAY.get(family, set()), family
        # The worker runs everything else: every key of the prefix.
        assert may(admin, WORKER[0], "GET", name), family
        assert may(admin, WORKER[0], "SET", name, "v"), family
        assert may(admin, KEDA[0], "XLEN", name) == (family == "stream"), family
        assert not may(admin, KEDA[0], "XRANGE", name, "-", "+"), family
    for user in (API[0], WORKER[0], KEDA[0]):
        assert not may(admin, user, "GET", "other-app:secret")
        assert not may(admin, user, "FLUSHALL")
        assert not may(admin, user, "CONFIG", "GET", "*")
        assert not may(admin, user, "KEYS", "*")


def test_the_api_user_cannot_delete_expire_or_reshape_the_ledger(admin: redis.Redis) -> None:
    """The writes an API credential must not make: drop or expire a shard stream, change
    the stored shard count, start, end or forge a reshard, drop the config."""
    keys = Keys()
    stream, config, reshard = keys.stream(0), keys.config(), keys.reshard()
    refused = [
        ("DEL", stream), ("UNLINK", stream), ("PEXPIRE", stream, "1"), ("EXPIRE", stream, "1"),
        ("XTRIM", stream, "MAXLEN", "0"), ("XDEL", stream, "0-1"),
        ("RENAME", stream, keys.stream(1)),
        ("HSET", config, SHARDS_FIELD, "1"), ("HDEL", config, SHARDS_FIELD), ("DEL", config),
        ("PEXPIRE", config, "1"), ("HINCRBY", config, SHARDS_FIELD, "1"),
        ("HSET", reshard, RESHARD_TO, "8"), ("HDEL", reshard, RESHARD_TO), ("DEL", reshard),
        ("PEXPIRE", reshard, "1"),
        ("DEL", keys.sequence(0)), ("PEXPIRE", keys.sequence(0), "1"),
        ("DEL", keys.written_fields(0, "ab")), ("HDEL", keys.written_fields(0, "ab"), "f"),
        ("DEL", keys.admission()), ("XADD", keys.dead_letters(0), "*", "k", "v"),
        ("SET", keys.sequence(0), "1-0", "GET"),  # a read-write SET: only the plain SET goes
    ]  # fmt: skip
    for command in refused:
        assert not may(admin, API[0], *command), command
    # A script can do no more than the user: EVAL is checked on its declared keys only
    # (ACL DRYRUN does not run it), each command it runs is checked when it runs.
    assert may(admin, API[0], "EVAL", "redis.call('DEL', KEYS[1])", "1", stream)


#: What the API user can still do that it should not need to, because the enqueue step
#: (producers/scripts/enqueue.lua and the scripts prepended to it) runs these commands as
#: the caller: an ACL cannot allow a command to a script and refuse it to the client,
#: nor restrict a command's arguments. deploy/redis-acl/README.md lists them.
API_RESIDUAL = [
    # next_id.lua writes the shard's id sequence: a forged value moves later ids.
    ("SET", Keys().sequence(0), "99999999999999-0"),
    # next_id.lua appends with XADD, whose MAXLEN/MINID options trim the stream.
    ("XADD", Keys().stream(0), "MAXLEN", "0", "*", "k", "v"),
    # admit.lua caches Redis's memory figures: a forged pair turns memory admission off.
    ("HSET", Keys().admission(), "used", "0", "max", "0"),
    ("PEXPIRE", Keys().admission(), "86400000"),
    # mark_bulk (next_id.lua) counts a bulk write in the lead's written-fields hash.
    ("HINCRBY", Keys().written_fields(0, "ab"), "~bulk", "1"),
]


def test_what_the_api_user_can_still_do_is_only_what_its_scripts_need(
    admin: redis.Redis,
) -> None:
    for command in API_RESIDUAL:
        assert may(admin, API[0], *command), command


async def test_the_api_user_serves_the_api_and_cannot_reach_the_limiter_or_token(
    server: RedisServer, admin: redis.Redis
) -> None:
    async with running_api(server.url_as(*API)) as api:
        assert (await api.call("GET", "/readyz")).status == 200
        key = await api.key("shop", "write", "read")  # api-keys create, as the API user
        idem = {"Idempotency-Key": "signup-1"}
        lead = {"email": "ann@example.com"}
        first = await api.call("POST", "/v1/leads", key=key, json_body=lead, headers=idem)
        again = await api.call("POST", "/v1/leads", key=key, json_body=lead, headers=idem)
        assert first.status == again.status == 202
        assert first.body == again.body
        batch = await api.call(
            "POST", "/v1/leads:batch", key=key, json_body={"records": [{"email": "b@example.com"}]}
        )
        ids = [first.body["request_id"], batch.body["results"][0]["request_id"]]
        assert (await api.call("GET", f"/v1/leads/{ids[0]}", key=key)).status == 200
        many = await api.call("GET", "/v1/outcomes?ids=" + ",".join(ids), key=key)
        assert [o["status"] for o in many.body["outcomes"]] == ["PENDING", "PENDING"]
        assert (await api.call("GET", "/v1/leads/0-1-0", key="lsk_not-a-key")).status == 401
        assert await api.backlog() == 2
        # A bulk write marks its lead's written-fields hash in the same step.
        bulk = await api.call("POST", "/v1/leads?lane=bulk", key=key, json_body=lead)
        assert bulk.status == 202, bulk.body
        assert await api.backlog() == 2  # live streams only
        # A refused write drops its idempotency marker (DEL); a key's own rate (rate.lua);
        # the key commands (list: HVALS, revoke: MULTI/HDEL).
        bad = await api.call(
            "POST", "/v1/leads", key=key, json_body={"email": "not-an-email"}, headers=idem | {"Idempotency-Key": "bad-1"}
        )  # fmt: skip
        assert bad.status == 422, bad.body
        slow = await api.key("slow", "write", rate_per_s=1)
        answers = [
            (await api.call("POST", "/v1/leads", key=slow, json_body=lead)).status for _ in range(3)
        ]
        assert 202 in answers, answers
        store = KeyStore(api.redis, Keys())
        assert {k.name for k in await store.list()} == {"shop", "slow"}
        assert await store.revoke("slow")
        assert (await api.call("POST", "/v1/leads", key=slow, json_body=lead)).status == 401
    assert refusals(admin, API[0]) == []  # the API never needed more than it has

    token_key = Keys().rest_token("0123456789abcdef")
    admin.set(token_key, "a-live-marketo-token")
    admin.set(LimiterKeys("leadsync").window, "1")
    client = redis.Redis.from_url(server.url_as(*API))
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.get(token_key)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set(LimiterKeys("leadsync").hold, "1")
        # Lua runs with the caller's permissions: a script cannot reach them either.
        with pytest.raises(redis.ResponseError, match="access"):
            client.eval("return redis.call('GET', KEYS[1])", 1, token_key)
        with pytest.raises(redis.ResponseError, match="access"):
            client.eval("return redis.call('GET', 'leadsync:{limits}:window')", 0)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.xrange(Keys().dead_letters(0))  # dead letters hold lead payloads
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.keys("*")
    finally:
        client.close()


def test_the_worker_user_drains_over_rest_and_the_api_reads_the_outcomes(
    server: RedisServer, admin: redis.Redis
) -> None:
    with running_pipeline(server.url_as(*WORKER), shards=SHARDS, api="rest") as pipeline:
        ids = pipeline.producer.upsert_many([{"email": f"p{n}@example.com"} for n in range(30)])
        ids += pipeline.producer.upsert_many(
            [{"email": f"b{n}@example.com"} for n in range(10)], lane="bulk"
        )
        pipeline.start_worker(concurrency=2)
        outcomes = pipeline.wait_all([str(rid) for rid in ids], timeout_s=60)
        assert all(o is not None and o.status == "CREATED" for o in outcomes.values()), (
            pipeline.logs()[-3000:]
        )
    assert refusals(admin, WORKER[0]) == []
    tokens = admin.keys(Keys().rest_token("*"))
    assert tokens, "the worker stored the cluster's REST token"
    reader = redis.Redis.from_url(server.url_as(*API))
    try:
        assert reader.xlen(Keys().stream(0)) == 0  # the API reaches the streams...
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.get(tokens[0])  # ...never the token the worker fetched
    finally:
        reader.close()


def test_the_keda_user_counts_entries_and_reads_none(
    server: RedisServer, admin: redis.Redis
) -> None:
    stream = Keys().stream(0)
    admin.xadd(stream, {"k": "email:ann@example.com", "p": "payload"})
    keda = redis.Redis.from_url(server.url_as(*KEDA))
    try:
        assert keda.ping()
        assert keda.xlen(stream) == 1
        assert keda.xinfo_groups(stream) == []
        with pytest.raises(redis.exceptions.NoPermissionError):
            keda.xrange(stream)
        with pytest.raises(redis.exceptions.NoPermissionError):
            keda.xinfo_stream(stream)  # its first and last entries are payloads
        with pytest.raises(redis.exceptions.NoPermissionError):
            keda.xlen(Keys().dead_letters(0))
        with pytest.raises(redis.exceptions.NoPermissionError):
            keda.get(Keys().rest_token("0123456789abcdef"))
    finally:
        keda.close()


def test_the_exporter_user_reads_redis_memory_and_nothing_of_the_data(
    server: RedisServer, admin: redis.Redis
) -> None:
    """What redis_exporter (the Redis memory alerts' source) runs at each scrape, as its
    user: INFO gives redis_memory_used_bytes and redis_memory_max_bytes (used_memory,
    maxmemory); CONFIG GET (passwords) and SLOWLOG GET (commands' arguments: payloads) are
    refused, which the exporter steps over; no key at all."""
    admin.config_set("maxmemory", "512mb")
    exporter = redis.Redis.from_url(server.url_as(*EXPORTER))
    try:
        assert exporter.ping()
        assert exporter.client_setname("redis_exporter")
        info = exporter.info("all")
        assert info["used_memory"] > 0
        assert info["maxmemory"] == 512 * 1024 * 1024
        exporter.execute_command("LATENCY", "LATEST")
        exporter.execute_command("LATENCY", "HISTOGRAM")
        assert exporter.slowlog_len() >= 0
        with pytest.raises(redis.exceptions.NoPermissionError):
            exporter.config_get("*")
        with pytest.raises(redis.exceptions.NoPermissionError):
            exporter.slowlog_get(1)
        with pytest.raises(redis.exceptions.NoPermissionError):
            exporter.client_list()
    finally:
        exporter.close()
        admin.config_set("maxmemory", "0")
    for name in every_key_name().values():
        for command in ("GET", "XLEN", "HGETALL", "TYPE", "SCAN"):
            args = (command, "0") if command == "SCAN" else (command, name)
            assert not may(admin, EXPORTER[0], *args), (command, name)


# --- leadsync doctor --role ---------------------------------------------------------------


def doctor(url: str, *args: str) -> Result:
    env = {
        "LEADSYNC_REDIS_URL": url,
        "LEADSYNC_SHARDS": "4",
        "LEADSYNC_MARKETO_USER_ID": "u",
        "LEADSYNC_MARKETO_ENCRYPTION_KEY": "k",
        "LEADSYNC_MARKETO_ENDPOINT": "http://127.0.0.1:9/soap/mktows/2_2",
        "COLUMNS": "400",
    }
    return CliRunner().invoke(app, ["doctor", *args], env=env)


def permissions_row(result: Result) -> str:
    (row,) = [line for line in result.stdout.splitlines() if "permissions" in line]
    return row


@pytest.mark.parametrize(("user", "role"), [(API, "api"), (WORKER, "worker"), (KEDA, "keda")])
def test_doctor_as_an_admin_finds_each_shipped_user_fit_for_its_role(
    server: RedisServer, admin: redis.Redis, user: tuple[str, str], role: str
) -> None:
    result = doctor(server.url, "--role", role, "--acl-user", user[0])
    row = permissions_row(result)
    assert "OK" in row, row
    assert f"user '{user[0]}' as {role}" in row


def test_doctor_names_the_missing_command_and_key_pattern_never_a_secret(
    server: RedisServer, admin: redis.Redis
) -> None:
    # The API's user checked as a worker: no limiter, no token, no dead letters.
    result = doctor(server.url, "--role", "worker", "--acl-user", API[0])
    row = permissions_row(result)
    assert "FAIL" in row
    assert "GET leadsync:{limits}:rest-token:*" in row
    assert "XADD leadsync:{<shard>}:dlq" in row
    assert result.exit_code == 1
    # The worker's user checked as the API: it may do all, and more than it should.
    too_much = permissions_row(doctor(server.url, "--role", "api", "--acl-user", WORKER[0]))
    assert "WARN" in too_much
    assert "REST token" in too_much
    assert "DEL leadsync:{<shard>}:outbox" in too_much
    assert "HSET leadsync:config" in too_much
    for password in (API[1], WORKER[1], ADMIN[1]):
        assert password not in result.stdout


def test_doctor_infers_the_role_and_skips_when_acl_commands_are_refused(
    server: RedisServer, admin: redis.Redis
) -> None:
    as_admin = permissions_row(doctor(server.url))
    assert "OK" in as_admin
    assert "as worker" in as_admin  # leadsync-admin: no api or keda in its name
    # A restricted user may not ask ACL anything: the check is skipped, not failed.
    result = doctor(server.url_as(*KEDA), "--role", "keda")
    assert "skipped" in permissions_row(result)
    assert "WARN" in permissions_row(result)
    assert result.exit_code == 0, result.stdout


#: The API's user as shipped before selectors (issue 21): every listed command on every
#: listed key, so it could drop the streams and rewrite the shard count.
WIDE_API_RULES = (
    "on >pw resetchannels resetkeys -@all +acl|whoami +auth +hello +ping +select +info +wait "
    "+multi +exec +discard +eval +evalsha +script|load +script|exists +xadd +xrange +xlen "
    "+time +hincrby +persist +hget +hgetall +hmget +hset +hsetnx +hdel +hvals +get +set +del "
    "+incr +pexpire +pttl %RW~leadsync:{[0-9]*}:outbox %RW~leadsync:{[0-9]*}:seq "
    "%RW~leadsync:{[0-9]*}:fields:* %R~leadsync:{[0-9]*}:outcomes:* "
    "%R~leadsync:{[0-9]*}:outcome:* %RW~leadsync:admission %RW~leadsync:config "
    "%RW~leadsync:reshard %R~leadsync:fields %RW~leadsync:api:*"
)


def test_doctor_warns_of_an_api_user_that_can_drop_the_streams_or_rewrite_the_shard_count(
    server: RedisServer, admin: redis.Redis
) -> None:
    admin.execute_command("ACL", "SETUSER", "wide-api", *WIDE_API_RULES.split())
    try:
        row = permissions_row(doctor(server.url, "--role", "api", "--acl-user", "wide-api"))
    finally:
        admin.execute_command("ACL", "DELUSER", "wide-api")
    assert "WARN" in row, row
    for label in (
        "DEL leadsync:{<shard>}:outbox", "PEXPIRE leadsync:{<shard>}:outbox",
        "HSET leadsync:config", "DEL leadsync:config", "HSET leadsync:reshard",
        "DEL leadsync:reshard",
    ):  # fmt: skip
        assert label in row, label
    assert "REST token" in row  # the wording; it could not read the token itself
    assert "GET leadsync:{limits}:rest-token:*" not in row
