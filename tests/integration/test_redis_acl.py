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

from producers.keys import Keys, LimiterKeys
from tests.support.api_kit import SHARDS, running_api
from tests.support.pipeline import running_pipeline
from tests.support.redis_server import RedisServer
from worker.cli import app

pytestmark = pytest.mark.integration

ACL_FILE = Path(__file__).resolve().parents[2] / "deploy" / "redis-acl" / "users.acl"
#: The example file's placeholder passwords (replaced in production: deploy/redis-acl/README.md).
ADMIN = ("leadsync-admin", "change-me-admin")
API = ("leadsync-api", "change-me-api")
WORKER = ("leadsync-worker", "change-me-worker")
KEDA = ("leadsync-keda", "change-me-keda")


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


#: What the API user may read and write, by key family (nothing else at all). The id
#: sequence and the written-fields hashes (field names and entry ids, never a value) are
#: the enqueue step's: a bulk write marks its lead's hash.
API_READS = {
    "stream",
    "outcome",
    "outcome_bucket",
    "admission",
    "config",
    "known_fields",
    "sequence",
    "written_fields",
}
API_WRITES = {"stream", "admission", "config", "sequence", "written_fields"}
API_OWN = {"api_keys", "api_key_names", "api_rate", "api_auth_failures", "api_idempotency"}


def test_each_key_family_is_reachable_by_exactly_the_users_that_need_it(
    admin: redis.Redis,
) -> None:
    for family, name in every_key_name().items():
        reads = may(admin, API[0], "HGET", name, "f") or may(
            admin, API[0], "XRANGE", name, "-", "+"
        )
        writes = may(admin, API[0], "HSET", name, "f", "v")
        assert reads == (family in API_READS | API_OWN), family
        assert writes == (family in API_WRITES | API_OWN), family
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
