"""`leadsync reshard` on a real Redis, trying to break the ordering rules: producers and
workers that still number shards by the old count, a bulk backlog or dead letters left
behind, a drain that keeps a lease, a command that dies or times out half-way, and the
count changed while drains run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from producers import AsyncLeadProducer, Backpressure, Retryable
from producers.contract import Keys, parse_request_id, shard_for
from tests.integration.test_api_cli import LEADSYNC, http
from tests.integration.test_dead_letters import FieldMarketo
from tests.support.drain_kit import Marketo, drain_settings, make, ok
from tests.support.failover_run import api_process
from tests.support.invariants import WriteLog, check_pipeline, ledger_residue
from tests.support.outcomes import status_of
from tests.support.pipeline import FAST_RECOVERY_ENV, running_pipeline
from tests.support.redis_server import free_port
from worker.drain import Drainer
from worker.errors import ReshardError
from worker.lua import script
from worker.ops.dead_letters import list_dead_letters, replay
from worker.ops.doctor import check_shards
from worker.ops.reshard import abort, reshard
from worker.transport import MockTransport

pytestmark = pytest.mark.integration

KEYS = Keys()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


async def stored_count(client: redis.asyncio.Redis) -> int:
    return int(await client.hget(KEYS.config(), "shards"))


async def drain_all(drainer: Drainer, streams: range, rounds: int = 2) -> None:
    """Drain every stream ``rounds`` times, each shard's rest over at once (as if its time
    had passed: a drain does not wait out a rest, only the tick does)."""
    for _ in range(rounds):
        for stream in streams:
            await drainer.ledger.redis.delete(*(KEYS.rest(s) for s in range(16)))
            await drainer.drain(stream)


def index_of(request: str) -> int:
    return parse_request_id(request)[0]


async def test_producers_and_workers_with_the_old_count_follow_the_new_one(
    client: redis.asyncio.Redis,
) -> None:
    producer = AsyncLeadProducer(client, shards=4, known_fields=())
    drainer = make(client, Marketo(ok), shards=4)
    await drainer.ledger.agree_shards(4)
    await drainer.ledger.ensure_groups(8)
    assert index_of(await producer.upsert(email="first@example.com")) < 4
    await drainer.drain(index_of(await producer.upsert(email="first@example.com")))
    for shard in range(4):
        await drainer.drain(shard)

    report = await reshard(client, KEYS, 7, timeout_s=10)
    assert (report.old, report.new, report.changed) == (4, 7, True)
    assert await stored_count(client) == 7
    assert not await client.exists(KEYS.reshard())

    # The producer still holds the route of 4: the enqueue step refuses it (nothing
    # written) and the producer places the lead again by 7, in every form of enqueue.
    emails = [f"p{n}@example.com" for n in range(30)]
    one = [await producer.upsert(email=email) for email in emails[:10]]
    many = await producer.upsert_many([{"email": email} for email in emails[10:20]])
    batch = await producer.upsert_batch([{"email": email} for email in emails[20:]])
    for email, rid in zip(emails, [*one, *many, *batch], strict=True):
        assert isinstance(rid, str)
        assert index_of(rid) == shard_for(f"email:{email}", 7), email
    bulk = await producer.upsert(email="bulk@example.com", lane="bulk")
    assert index_of(bulk) == 7 + shard_for("email:bulk@example.com", 7)

    # The drainer still numbers by 4: its lease is refused and it follows 7.
    target = index_of(one[0])
    assert (await drainer.drain(target)).status == "busy"
    assert drainer.ledger.shards == 7
    for shard in range(14):
        await drainer.drain(shard)
    for rid in [*one, *many, *batch, bulk]:
        assert await status_of(client, KEYS, str(rid)) == "CREATED"


async def test_request_ids_of_the_old_layout_stay_readable(client: redis.asyncio.Redis) -> None:
    producer = AsyncLeadProducer(client, shards=6, known_fields=())
    drainer = make(client, Marketo(ok), shards=6)
    await drainer.ledger.agree_shards(6)
    await drainer.ledger.ensure_groups(12)
    rids = [await producer.upsert(email=f"old{n}@example.com") for n in range(20)]
    for shard in range(6):
        await drainer.drain(shard)
    assert max(index_of(rid) for rid in rids) >= 2  # numbers a count of 1 does not have
    await reshard(client, KEYS, 1, timeout_s=10)
    fresh = AsyncLeadProducer(client, shards=1, known_fields=())
    for rid, outcome in zip(rids, await fresh.outcomes(rids), strict=True):
        assert outcome is not None, rid
        assert outcome.status.value == "CREATED", rid


async def test_a_bulk_backlog_stops_the_reshard_before_anything_changes(
    client: redis.asyncio.Redis,
) -> None:
    producer = AsyncLeadProducer(client, shards=2, known_fields=())
    await producer.upsert(email="bulk@example.com", lane="bulk")
    with pytest.raises(ReshardError, match="the bulk lane holds 1 entries"):
        await reshard(client, KEYS, 3, timeout_s=5)
    assert await stored_count(client) == 2
    assert not await client.exists(KEYS.reshard())
    assert index_of(await producer.upsert(email="live@example.com")) < 2  # intake goes on


async def test_dead_letters_move_to_their_leads_new_shards_and_answer_the_ids_apps_hold(
    client: redis.asyncio.Redis,
) -> None:
    """Letters parked under 4 shards (one lead with a newer write applied since) move with
    the switch to 7; replayed under 7 they answer the request ids made under 4, and the
    newer write's field is not reverted (its written-fields record moved along)."""
    marketo = FieldMarketo()
    drainer = make(client, Marketo(ok), shards=4, max_attempts=1, transient_retries=0)
    drainer.api.transport = MockTransport(marketo)  # type: ignore[attr-defined]
    await drainer.ledger.agree_shards(4)
    await drainer.ledger.ensure_groups(8)
    producer = AsyncLeadProducer(client, shards=4, known_fields=())
    emails = [f"parked{n}@example.com" for n in range(12)]
    parked = {
        email: await producer.upsert(email=email, attributes={"Company": "Old", "City": "Paris"})
        for email in emails
    }
    await drain_all(drainer, range(4))  # Marketo fails: every write is parked
    assert all([await status_of(client, KEYS, rid) == "DEAD_LETTERED" for rid in parked.values()])
    marketo.failing = False
    newer = await producer.upsert(email=emails[0], attributes={"Company": "New"})
    await drainer.drain(index_of(newer))
    assert marketo.leads[emails[0]] == {"Company": "New"}

    report = await reshard(client, KEYS, 7, timeout_s=10)
    assert report.moved_letters == 12
    for index in range(8):
        if index >= 7:  # old-layout streams the new one does not have: emptied
            assert await client.xlen(KEYS.dead_letters(index)) == 0

    letters = await list_dead_letters(client, KEYS, 7)
    assert sorted(letter.request_id for letter in letters) == sorted(parked.values())
    for letter in letters:
        email = next(e for e, rid in parked.items() if rid == letter.request_id)
        assert letter.shard == shard_for(f"email:{email}", 7), email
    replayed = await replay(client, KEYS, letters, result_ttl_s=3600)
    assert replayed.replayed == 12
    await drain_all(drainer, range(14))  # it follows 7 at its first refused lease
    for email, rid in parked.items():
        assert await status_of(client, KEYS, rid) in ("CREATED", "UPDATED"), email
    assert marketo.leads[emails[0]] == {"Company": "New", "City": "Paris"}, "not reverted"
    assert all(marketo.leads[email] == {"Company": "Old", "City": "Paris"} for email in emails[1:])


async def test_a_reshard_that_cannot_drain_in_time_changes_nothing(
    client: redis.asyncio.Redis,
) -> None:
    """No worker runs: the live entry never drains. While the reshard waits, intake is
    refused (retryable); after its timeout the old count is in force and intake resumes."""
    producer = AsyncLeadProducer(client, shards=2, known_fields=())
    waiting = await producer.upsert(email="waits@example.com")
    task = asyncio.create_task(reshard(client, KEYS, 5, timeout_s=1.5, poll_s=0.05))
    await asyncio.sleep(0.5)
    with pytest.raises(Backpressure, match="resharding"):
        await producer.upsert(email="refused@example.com")
    with pytest.raises(ReshardError, match="did not quiet down"):
        await task
    assert await stored_count(client) == 2
    assert not await client.exists(KEYS.reshard())
    assert index_of(await producer.upsert(email="later@example.com")) < 2
    assert await status_of(client, KEYS, waiting) is None  # still waiting, untouched


async def test_a_drain_holding_a_lease_delays_the_switch_until_it_lets_go(
    client: redis.asyncio.Redis,
) -> None:
    drainer = make(client, Marketo(ok), shards=3)
    await drainer.ledger.agree_shards(3)
    await drainer.ledger.ensure_groups(6)
    token = await drainer.ledger.acquire_lease(1, 30)
    assert token is not None
    phases: list[str] = []
    task = asyncio.create_task(
        reshard(client, KEYS, 4, timeout_s=10, poll_s=0.05, on_look=lambda p, _: phases.append(p))
    )
    await asyncio.sleep(0.5)
    assert not task.done(), "the count must not change while a lease of the old layout is held"
    assert phases[-1] == "switch"
    assert await drainer.ledger.acquire_lease(2, 30) is None, "no new lease while switching"
    await drainer.ledger.release_lease(1, token)
    report = await task
    assert report.changed
    assert await stored_count(client) == 4


async def test_a_resting_shard_delays_the_switch(client: redis.asyncio.Redis) -> None:
    """A call whose outcome is unknown rests its shard: Marketo may still apply it, so its
    leads must not go out from another shard of the new layout meanwhile."""
    await client.hset(KEYS.config(), "shards", 2)
    seconds, micros = await client.time()
    await client.set(KEYS.rest(0), f"{seconds + micros / 1e6 + 1.0:.6f}")
    task = asyncio.create_task(reshard(client, KEYS, 3, timeout_s=10, poll_s=0.05))
    await asyncio.sleep(0.5)
    assert not task.done()
    await task
    assert await stored_count(client) == 3


async def test_letters_read_by_the_old_count_are_not_replayed_under_the_new_one(
    client: redis.asyncio.Redis,
) -> None:
    await client.hset(KEYS.config(), "shards", 2)
    await client.xadd(
        KEYS.dead_letters(1), {"entry_id": "1700000000000-0", "k": "abc", "p": '{"e":"a@x.com"}'}
    )
    letters = await list_dead_letters(client, KEYS, 2)
    assert [letter.shard for letter in letters] == [1]
    await client.hset(KEYS.config(), "shards", 3)  # as a reshard would (with no letters)
    with pytest.raises(redis.ResponseError, match="RESHARDED"):
        await replay(client, KEYS, letters, result_ttl_s=60)
    assert await client.xlen(KEYS.stream(1)) == 0


async def test_a_dead_command_never_leaves_intake_refused(client: redis.asyncio.Redis) -> None:
    producer = AsyncLeadProducer(client, shards=2, known_fields=())
    await producer.upsert(email="first@example.com")
    begin = script("worker.ops", "reshard_begin.lua")
    await client.eval(begin, 1, KEYS.reshard(), 4, "freeze", "start", 300)  # type: ignore[misc]
    with pytest.raises(Backpressure):
        await producer.upsert(email="refused@example.com")
    await asyncio.sleep(0.4)  # its hold lapses: no command renews it
    assert index_of(await producer.upsert(email="later@example.com")) < 2
    assert await stored_count(client) == 2


async def test_a_second_reshard_to_another_count_is_refused_while_one_runs(
    client: redis.asyncio.Redis,
) -> None:
    producer = AsyncLeadProducer(client, shards=2, known_fields=())
    await producer.upsert(email="waits@example.com")  # keeps the first reshard waiting
    first = asyncio.create_task(reshard(client, KEYS, 5, timeout_s=5, poll_s=0.05))
    await asyncio.sleep(0.3)
    with pytest.raises(ReshardError, match="a reshard to 5 is under way"):
        await reshard(client, KEYS, 6, timeout_s=1)
    assert await client.hget(KEYS.reshard(), "to") == b"5", "the refused one left it alone"
    assert await abort(client, KEYS, 5)
    with pytest.raises(ReshardError, match="given up"):
        await asyncio.wait_for(first, 1.0)  # stops at its next renewal
    assert await stored_count(client) == 2
    assert index_of(await producer.upsert(email="later@example.com")) < 2


# --- the whole pipeline: real workers, the HTTP API, the simulator over HTTP ------------


def test_reshard_under_traffic_keeps_every_promise_and_the_api_ready(redis_url: str) -> None:
    """Writers keep upserting the same 60 people (through the library and the HTTP API,
    retrying what is refused) while `leadsync reshard` goes 4 -> 7 -> 3 with real Celery
    workers sending to the simulator: every write ends applied, Marketo holds each
    person's last write, no person rode in two calls at once, and /readyz answered 200
    throughout."""
    with running_pipeline(redis_url, shards=4, settings_env=FAST_RECOVERY_ENV) as pipeline:
        pipeline.start_worker(concurrency=2)
        env = {**os.environ, **pipeline.env, "COLUMNS": "200"}
        made = subprocess.run(
            [LEADSYNC, "api-keys", "create", "web", "--scope", "write", "--scope", "read",
             "--rate-per-s", "1000"],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        key = made.stdout.strip().splitlines()[-1]
        log, lock, stop = WriteLog(), threading.Lock(), threading.Event()
        ready: Counter[int] = Counter()
        refused: Counter[str] = Counter()
        unexpected: list[object] = []

        def library_writer() -> None:
            n = 0
            while not stop.is_set():
                record = {"email": f"lib{n % 30}@example.com", "attributes": {"Company": f"w{n}"}}
                try:
                    rid = pipeline.producer.upsert(
                        email=record["email"], attributes=record["attributes"]
                    )
                except Retryable:
                    refused["library"] += 1
                    time.sleep(0.05)
                    continue
                with lock:
                    log.acknowledged(rid, record)
                n += 1
                time.sleep(0.005)

        def api_writer() -> None:
            n = 0
            while not stop.is_set():
                record = {"email": f"api{n % 30}@example.com", "attributes": {"Company": f"w{n}"}}
                status, body = http(base + "/v1/leads", key, record)
                if status == 503:
                    refused["api"] += 1
                    time.sleep(0.05)
                    continue
                if status != 202:
                    unexpected.append((status, body))
                    return
                with lock:
                    log.acknowledged(body["request_id"], record)
                n += 1
                time.sleep(0.005)

        def prober() -> None:
            while not stop.is_set():
                try:
                    ready[http(base + "/readyz")[0]] += 1
                except OSError:
                    ready[0] += 1
                time.sleep(0.05)

        with api_process(env, free_port()) as base:
            threads = [threading.Thread(target=t) for t in (library_writer, api_writer, prober)]
            for thread in threads:
                thread.start()
            try:
                time.sleep(2)
                for shards in (7, 3):
                    done = subprocess.run(
                        [LEADSYNC, "reshard", str(shards), "--timeout-s", "60"],
                        env=env, capture_output=True, text=True, timeout=90,
                    )  # fmt: skip
                    assert done.returncode == 0, done.stdout + done.stderr
                    assert f"-> {shards}" in done.stdout
                    print(done.stdout.strip())
                    time.sleep(2)
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=30)

        outcomes = pipeline.wait_all(log.request_ids, timeout_s=90)
        verdict = check_pipeline(pipeline, log, outcomes)
        assert unexpected == []
        assert verdict.problems() == [], verdict
        assert set(ready) == {200}, ready
        assert sum(refused.values()) > 0, "intake was refused while it switched"
        indexes = {parse_request_id(rid)[0] for rid in log.request_ids}
        assert max(indexes) >= 4, "writes placed by the count of 7 went in"
        residue = ledger_residue(redis_url, 2 * 7)
        assert residue.entries == 0
        assert residue.leases == 0
        assert "shard count changed from 7 to 3" in pipeline.logs()


async def test_doctor_says_a_reshard_is_under_way(client: redis.asyncio.Redis) -> None:
    await client.hset(KEYS.config(), "shards", 2)
    await client.hset(KEYS.reshard(), "to", 5)
    stored, check = await check_shards(client, drain_settings(shards=2))
    assert stored == 2
    assert check.level == "WARN"
    assert "from 2 to 5" in check.detail
