"""Redis Sentinel for real: a master, a replica and three sentinels (``redis-server
--sentinel``, down-after 500 ms) on free ports. After SIGKILL of the master the sentinels
promote the replica, and the clients leadsync makes from a ``redis+sentinel://`` URL (a
producer, the worker's asyncio client, Celery's broker connection) write again within
seconds, with no restart and no new URL. Also: ``leadsync doctor`` on Sentinel and on a
Redis Cluster node."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from producers import LeadProducer, OutcomeStatus
from tests.support.redis_server import free_port
from tests.support.sentinel_set import MASTER_NAME, SentinelSet, sentinel_set
from worker.connections import redis_client as worker_redis_client
from worker.ops.doctor import (
    Check,
    check_not_cluster,
    check_replicas,
    check_sentinel,
    readiness,
    run_checks,
)
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

T = TypeVar("T")

#: A failover here takes ~2-3 s (down-after 500 ms, election, promotion); a client must
#: write again well within this.
FOLLOWS_WITHIN_S = 10.0


def until_it_works(attempt: Callable[[], T], within_s: float = FOLLOWS_WITHIN_S) -> tuple[T, float]:
    """Retry ``attempt`` every 100 ms (as leadsync's loops do) until it returns; its result
    and the seconds it took. The last error is raised once ``within_s`` has passed."""
    started = time.monotonic()
    while True:
        try:
            return attempt(), time.monotonic() - started
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, OSError):
            if time.monotonic() - started > within_s:
                raise
            time.sleep(0.1)


def kombu_roundtrip(settings: Settings, body: dict[str, Any]) -> Any:
    """Publish and consume one message on a fresh Celery broker connection."""
    from worker.app import create_app

    app = create_app(settings)
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
        queue = connection.SimpleQueue(f"{settings.key_prefix}-probe")
        try:
            queue.put(body)
            message = queue.get(timeout=5)
            message.ack()
            return message.payload
        finally:
            queue.close()


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    with sentinel_set(master_password="master-pw", sentinel_password="sentinel-pw") as started:
        yield started


def test_a_producer_a_worker_client_and_the_broker_follow_a_failover(
    sentinels: SentinelSet,
) -> None:
    url = sentinels.url()
    settings = Settings.from_env(redis_url=url, key_prefix="ha", shards=4)

    async def worker_write(client: Any, value: str) -> Any:
        await client.set("ha:probe", value)
        return await client.get("ha:probe")

    loop = asyncio.new_event_loop()
    producer = LeadProducer.from_url(url, key_prefix="ha", shards=4)
    worker_client = worker_redis_client(settings)
    try:
        # Before: everything works through the sentinels.
        before = producer.upsert(email="before@example.com", attributes={"Company": "A"})
        assert loop.run_until_complete(worker_write(worker_client, "before")) == b"before"
        assert kombu_roundtrip(settings, {"n": 1}) == {"n": 1}
        old_master = sentinels.master_address()
        with sentinels.client(old_master[1]) as master:
            assert master.wait(1, 2000) == 1, "the replica has every write before the kill"

        killed = sentinels.kill_master()

        # The same producer writes again, without a restart or a new URL.
        after, producer_s = until_it_works(
            lambda: producer.upsert(email="after@example.com", attributes={"Company": "B"})
        )
        # The same asyncio worker client (its pooled connection went to the dead master).
        value, worker_s = until_it_works(
            lambda: loop.run_until_complete(worker_write(worker_client, "after"))
        )
        assert value == b"after"
        # A Celery broker connection finds the new master through the sentinels.
        payload, broker_s = until_it_works(lambda: kombu_roundtrip(settings, {"n": 2}))
        assert payload == {"n": 2}

        print(  # shown with -s: how long each client took to follow the switch
            f"writes again after {producer_s:.2f} s (producer), {worker_s:.2f} s more "
            f"(worker client), {broker_s:.2f} s more (broker)"
        )
        new_master = sentinels.wait_for_failover(killed)
        assert new_master[1] == sentinels.replica_port
        assert producer_s < FOLLOWS_WITHIN_S
        assert worker_s < FOLLOWS_WITHIN_S
        assert broker_s < FOLLOWS_WITHIN_S
        # Both upserts are in the ledger on the promoted master.
        for request_id in (before, after):
            outcome = producer.outcome(request_id)
            assert outcome is not None
            assert outcome.status is OutcomeStatus.PENDING
    finally:
        producer.close()
        loop.run_until_complete(worker_client.aclose())
        loop.close()


def test_doctor_reports_the_sentinels_and_readiness_through_them(sentinels: SentinelSet) -> None:
    settings = Settings.from_env(redis_url=sentinels.url(), key_prefix="ha", shards=4)
    check = asyncio.run(check_sentinel(settings))
    assert check is not None
    assert check.level == "OK", check.detail
    assert f"3/3 sentinels answer; master {MASTER_NAME!r} at 127.0.0.1:" in check.detail
    assert "1 replica(s)" in check.detail
    ready = asyncio.run(readiness(settings))
    assert ready.level == "OK", ready.detail
    assert "sentinel-pw" not in ready.detail
    assert "master-pw" not in ready.detail
    # Replicas: one follows; acknowledged upserts are not waited for unless asked.
    replicas = asyncio.run(_replicas_check(settings))
    assert replicas.level == "WARN"
    assert "LEADSYNC_ENQUEUE_REPLICAS=1" in replicas.detail
    asked = asyncio.run(_replicas_check(settings.model_copy(update={"enqueue_replicas": 1})))
    assert asked.level == "WARN"
    assert "min-replicas-to-write is 0" in asked.detail
    too_many = asyncio.run(_replicas_check(settings.model_copy(update={"enqueue_replicas": 2})))
    assert too_many.level == "FAIL"
    assert "1 replica(s) connected" in too_many.detail
    # A sentinel the URL lists but that does not answer is a warning, not a failure.
    wrong = Settings.from_env(
        redis_url=sentinels.url().replace("127.0.0.1:", f"127.0.0.1:{free_port()},127.0.0.1:", 1),
        key_prefix="ha",
        redis_connect_timeout_s=0.5,
    )
    degraded = asyncio.run(check_sentinel(wrong))
    assert degraded is not None
    assert degraded.level == "WARN"
    assert "1 listed sentinel(s) do not answer" in degraded.detail


async def _replicas_check(settings: Settings) -> Check:
    client = worker_redis_client(settings)
    try:
        return await check_replicas(client, settings)
    finally:
        await client.aclose()


def _start_cluster_node(binary: str, folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A cluster-enabled redis-server answering PING; a new free port when the one picked
    was taken meanwhile (the server exits), a bounded wait on a loaded machine."""
    for _ in range(3):
        # The cluster bus listens 10000 above: a port over 55535 cannot start a node.
        port = next(p for p in iter(free_port, None) if p <= 55535)
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
             "--save", "", "--cluster-enabled", "yes", "--cluster-config-file",
             f"nodes-{port}.conf", "--logfile", str(folder / f"log-{port}")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=port, socket_connect_timeout=1)
        deadline = time.monotonic() + 30
        try:
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    client.ping()
                    return process, port
                except (redis.ConnectionError, redis.TimeoutError):
                    time.sleep(0.1)
        finally:
            client.close()
        process.kill()
        process.wait()
    raise RuntimeError("a cluster-enabled redis-server did not start")


@pytest.fixture
def cluster_node() -> Iterator[str]:
    """One redis-server with cluster-enabled yes (no slots needed to be a Cluster node)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    folder = Path(tempfile.mkdtemp(prefix="leadsync-cluster-"))
    process, port = _start_cluster_node(binary, folder)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(folder, ignore_errors=True)


def test_doctor_fails_a_redis_cluster_node_and_says_why(cluster_node: str) -> None:
    settings = Settings.from_env(redis_url=cluster_node, key_prefix="ha", shards=4)

    async def run() -> Any:
        client = worker_redis_client(settings)
        try:
            return await check_not_cluster(client, settings_keys(settings))
        finally:
            await client.aclose()

    check = asyncio.run(run())
    assert check.level == "FAIL"
    assert "cluster_enabled:1" in check.detail
    assert "Redis Cluster is not supported" in check.detail
    # The whole doctor stops at it instead of piling up confusing Redis errors.
    checks = asyncio.run(run_checks(settings, http_timeout_s=0.5))
    names = [c.name for c in checks]
    assert names[:2] == ["redis", "cluster"]
    assert "consumer groups" not in names


def settings_keys(settings: Settings) -> Any:
    from producers.contract import Keys

    return Keys(settings.key_prefix)
