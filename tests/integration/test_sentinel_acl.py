"""The HA users for real (issues 19 and 21): a master, a replica and three sentinels started
from deploy/k8s/overlays/ha's own redis.conf and start scripts (names and ports mapped to
this machine, down-after 500 ms instead of 5 s), with deploy/redis-acl's files rendered by
render.sh with test passwords. Replication runs as leadsync-replica; the sentinels watch,
vote and fail over as leadsync-sentinel, and a failover after SIGKILL of the master
completes with none of their commands refused; the default user is refused on servers and
sentinels; clients ask the sentinels as leadsync-discovery, which cannot reconfigure them;
a producer as leadsync-api enqueues through the sentinel URL before and after the failover
while that user cannot delete a stream, replicate the data set or forge a sentinel hello;
the worker's, KEDA's and the exporter's users do their part."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from producers import LeadProducer, OutcomeStatus
from producers.connect import redis_client
from producers.keys import Keys
from tests.integration.test_deploy_ha import NAMESPACE, PASSWORDS, configmap, name_of, run_script
from tests.integration.test_sentinel_failover import FOLLOWS_WITHIN_S, until_it_works
from tests.support.sentinel_set import MASTER_NAME, SentinelSet, _wait

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

REDIS_CONF = configmap("redis-ha.yaml", "redis-ha")["redis.conf"]
START_REDIS = configmap("redis-ha.yaml", "redis-ha")["start-redis.sh"]
START_SENTINEL = configmap("sentinel.yaml", "redis-sentinel")["start-sentinel.sh"]
SENTINEL_NAME = f"redis-sentinel-0.redis-sentinel.{NAMESPACE}.svc.cluster.local"


def password(user: str) -> str:
    """The test password of ``leadsync-<name>`` (what render.sh was given)."""
    return PASSWORDS[f"ACL_{user.removeprefix('leadsync-').upper()}_PASSWORD"]


class OverlaySet(SentinelSet):
    """A :class:`SentinelSet` whose servers and sentinels run the HA overlay's configs,
    written by its start scripts (tests/integration/test_deploy_ha.py's ``run_script``:
    the real scripts, deploy/redis-acl mounted, test passwords). Clients log in as
    leadsync-admin (servers) and leadsync-discovery (sentinels)."""

    def _server(self, port: int, *extra: str) -> None:
        folder = self.dir / str(port)
        folder.mkdir()
        # Every server from redis-0's first start (master form); replicas get their
        # master from the command line, as SentinelSet does.
        runtime, _, written = run_script(START_REDIS, folder, "redis-0")
        (folder / "runtime.conf").write_text(runtime.replace(name_of("redis-0"), "127.0.0.1"))
        conf = (
            REDIS_CONF.replace("bind 0.0.0.0", "bind 127.0.0.1")
            .replace("port 6379", f"port {port}")
            .replace("dir /data", f"dir {folder}")
            .replace("/run/redis/users.acl", str(written / "users.acl"))
            .replace("/run/redis/runtime.conf", str(folder / "runtime.conf"))
        )
        assert "aclfile" in conf
        (folder / "redis.conf").write_text(conf)
        self._spawn(
            port,
            [str(folder / "redis.conf"), "--logfile", str(folder / "redis.log"),
             # A replica syncs at once (the default waits 5 s for more replicas).
             "--repl-diskless-sync-delay", "0", *extra],
        )  # fmt: skip

    def _sentinel(self, port: int) -> None:
        folder = self.dir / f"sentinel-{port}"
        folder.mkdir()
        generated, _, written = run_script(START_SENTINEL, folder, "redis-sentinel-0")
        conf = (
            generated.replace(f"{name_of('redis-0')} 6379", f"127.0.0.1 {self.master_port}")
            .replace(SENTINEL_NAME, "127.0.0.1")
            .replace("port 26379", f"port {port}\nbind 127.0.0.1\nlogfile {folder / 'log'}")
            .replace("dir /tmp", f"dir {folder}")
            .replace("/run/sentinel/users.acl", str(written / "users.acl"))
            .replace("leadsync 5000", f"leadsync {self.down_after_ms}")
            .replace("leadsync 60000", f"leadsync {self.failover_timeout_ms}")
        )
        assert f"down-after-milliseconds leadsync {self.down_after_ms}" in conf
        (folder / "sentinel.conf").write_text(conf)  # sentinel rewrites it: writable
        self._spawn(port, [str(folder / "sentinel.conf"), "--sentinel"])

    def as_user(self, port: int, user: str) -> redis.Redis:
        return redis.Redis(
            port=port, username=user, password=password(user), socket_timeout=2,
            socket_connect_timeout=1, decode_responses=True,
        )  # fmt: skip

    def client(self, port: int) -> redis.Redis:
        return self.as_user(port, "leadsync-admin")

    def sentinel_client(self, port: int) -> redis.Redis:
        return self.as_user(port, "leadsync-discovery")

    def url_as(self, user: str) -> str:
        """The overlay's URL form: ``user`` on Redis, leadsync-discovery on the sentinels."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return (
            f"redis+sentinel://{user}:{password(user)}@{hosts}/{MASTER_NAME}/0"
            f"?sentinel_username=leadsync-discovery&sentinel_password={password('leadsync-discovery')}"
        )

    def refusals(self, port: int, *users: str) -> list[dict[str, Any]]:
        """ACL LOG entries of ``users`` on a server (as leadsync-admin) or a sentinel (as
        leadsync-sentinel)."""
        user = "leadsync-sentinel" if port in self.sentinel_ports else "leadsync-admin"
        with self.as_user(port, user) as client:
            log: list[dict[str, Any]] = client.acl_log()
        return [entry for entry in log if entry["username"] in users]


@pytest.fixture
def overlay() -> Iterator[OverlaySet]:
    cluster = OverlaySet()
    try:
        yield cluster.start()  # the replica synced; every sentinel sees it and its peers
    finally:
        cluster.close()


def once(port: int, **options: Any) -> redis.Redis:
    """A client that does not retry (redis-py retries a refused login, with backoff)."""
    return redis.Redis(port=port, socket_timeout=2, retry=Retry(NoBackoff(), 0), **options)


def refused(call: Any) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError):
        call()


def test_replication_and_sentinels_run_as_their_users_and_default_is_refused(
    overlay: OverlaySet,
) -> None:
    servers = [overlay.master_port, overlay.replica_port]
    with overlay.client(overlay.master_port) as master:
        # Replication: the replica is logged in as leadsync-replica, and follows.
        assert [c["user"] for c in master.client_list(_type="replica")] == ["leadsync-replica"]
        master.set("leadsync:probe", "1")
        with overlay.client(overlay.replica_port) as replica:
            _wait(lambda: replica.get("leadsync:probe") == "1", 5, "the replica to follow")
        # The sentinels: every connection of theirs, to the master and the replica, and
        # to each other, is leadsync-sentinel's.
        # Sentinels find each other through hello messages every 2 s: wait for them.
        for port in [*servers, *overlay.sentinel_ports]:
            user = "leadsync-sentinel" if port in overlay.sentinel_ports else "leadsync-admin"

            def theirs(port: int = port, user: str = user) -> set[str]:
                with overlay.as_user(port, user) as server:
                    return {c["user"] for c in server.client_list() if c["name"].startswith("sentinel-")}  # fmt: skip

            _wait(lambda theirs=theirs: bool(theirs()), 30, f"sentinel connections on {port}")
            assert theirs() == {"leadsync-sentinel"}, port
        # The replication user can replicate and nothing else (no key, no command).
        assert master.execute_command("ACL", "DRYRUN", "leadsync-replica", "PSYNC", "?", "-1") == "OK"  # fmt: skip
        assert master.execute_command("ACL", "DRYRUN", "leadsync-replica", "GET", "leadsync:probe") != "OK"  # fmt: skip

    # The default user: refused everywhere, with no password and with a real one.
    for port in [*servers, *overlay.sentinel_ports]:
        with pytest.raises(redis.AuthenticationError):
            once(port).ping()
        with pytest.raises(redis.AuthenticationError):
            once(port, password=password("leadsync-admin")).ping()

    # Clients on the sentinels: find the master, and nothing else. A client holding this
    # password cannot repoint leadsync at another server (SET, REMOVE, MONITOR), start a
    # failover, vote, or forge a hello (PUBLISH: sentinels take a newer epoch from it).
    with overlay.sentinel_client(overlay.sentinel_ports[0]) as sentinel:
        assert sentinel.sentinel_get_master_addr_by_name(MASTER_NAME) == ("127.0.0.1", overlay.master_port)  # fmt: skip
        assert len(sentinel.sentinel_sentinels(MASTER_NAME)) == 2
        assert len(sentinel.sentinel_slaves(MASTER_NAME)) == 1
        refused(lambda: sentinel.sentinel_set(MASTER_NAME, "down-after-milliseconds", 1))
        refused(lambda: sentinel.sentinel_remove(MASTER_NAME))
        refused(lambda: sentinel.sentinel_monitor("evil", "127.0.0.1", 1, 1))
        refused(lambda: sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_NAME))
        refused(lambda: sentinel.execute_command("SENTINEL", "IS-MASTER-DOWN-BY-ADDR", "127.0.0.1", overlay.master_port, 99, "*"))  # fmt: skip
        refused(lambda: sentinel.execute_command("SENTINEL", "CONFIG", "SET", "resolve-hostnames", "no"))  # fmt: skip
        refused(lambda: sentinel.publish("__sentinel__:hello", "forged"))

    # Nothing the servers or sentinels needed was refused.
    for port in [*servers, *overlay.sentinel_ports]:
        assert overlay.refusals(port, "leadsync-replica", "leadsync-sentinel") == [], port


def test_components_use_their_users_through_the_sentinels_and_follow_a_failover(
    overlay: OverlaySet,
) -> None:
    keys = Keys()
    producer = LeadProducer.from_url(overlay.url_as("leadsync-api"), shards=4)
    worker = redis_client(overlay.url_as("leadsync-worker"))
    api = redis_client(overlay.url_as("leadsync-api"))
    try:
        # The API's user enqueues through the sentinel URL...
        before = producer.upsert(email="before@example.com", attributes={"Company": "A"})
        assert api.acl_whoami() == "leadsync-api"
        streams = [keys.stream(shard) for shard in range(4)]
        assert sum(api.xlen(s) for s in streams) == 1
        # ...and cannot drop or trim the ledger, read the worker's keys, replicate the
        # whole data set, or forge a sentinel hello on the master (sentinels read hellos
        # from the servers' __sentinel__:hello channel too).
        for s in streams:
            refused(lambda s=s: api.delete(s))
            refused(lambda s=s: api.xtrim(s, maxlen=0))
        refused(lambda: api.get(keys.rest_token("0123456789abcdef")))
        refused(lambda: api.publish("__sentinel__:hello", "forged"))
        refused(lambda: api.execute_command("REPLCONF", "listening-port", "1"))
        # The worker's user reaches every leadsync key, and no sentinel channel either.
        assert worker.acl_whoami() == "leadsync-worker"
        assert worker.set(keys.rest_token("0123456789abcdef"), "token")
        refused(lambda: worker.publish("__sentinel__:hello", "forged"))
        refused(lambda: worker.execute_command("REPLCONF", "listening-port", "1"))

        # KEDA as it runs: the sentinels asked as leadsync-discovery, the master as
        # leadsync-keda: the backlog's length, never an entry.
        sentinels = Sentinel(
            [("127.0.0.1", port) for port in overlay.sentinel_ports],
            sentinel_kwargs={
                "username": "leadsync-discovery",
                "password": password("leadsync-discovery"),
            },
            socket_timeout=2,
        )
        keda = sentinels.master_for(MASTER_NAME, username="leadsync-keda", password=password("leadsync-keda"), decode_responses=True)  # fmt: skip
        assert sum(keda.xlen(s) for s in streams) == 1
        refused(lambda: keda.xrange(streams[0]))
        keda.close()
        # redis_exporter on each server: INFO, no CONFIG GET (it holds masterauth).
        for port in (overlay.master_port, overlay.replica_port):
            with overlay.as_user(port, "leadsync-exporter") as exporter:
                assert exporter.info("memory")["used_memory"] > 0
                refused(lambda exporter=exporter: exporter.config_get("masterauth"))

        with overlay.client(overlay.master_port) as master:
            assert master.wait(1, 2000) == 1, "the replica has every write before the kill"

        # Kill the master: the sentinels promote the replica, as leadsync-sentinel.
        killed = overlay.kill_master()
        after, took_s = until_it_works(
            lambda: producer.upsert(email="after@example.com", attributes={"Company": "B"})
        )
        promoted = overlay.wait_for_failover(killed)
        assert promoted == ("127.0.0.1", overlay.replica_port)
        assert overlay.role(overlay.replica_port) == "master"
        assert took_s < FOLLOWS_WITHIN_S
        for port in (overlay.replica_port, *overlay.sentinel_ports):
            assert overlay.refusals(port, "leadsync-sentinel", "leadsync-replica") == [], port
        # The same clients, without a restart, on the promoted master.
        value, _ = until_it_works(lambda: worker.set("leadsync:probe", "after"))
        assert value
        for request_id in (before, after):
            outcome = producer.outcome(request_id)
            assert outcome is not None
            assert outcome.status is OutcomeStatus.PENDING
        refused(lambda: api.delete(streams[0]))

        # The old master, started again as its pod would (a replica of the master the
        # sentinels name), syncs from the promoted one as leadsync-replica.
        overlay.restart(killed)
        with overlay.client(overlay.replica_port) as master:
            _wait(
                lambda: (
                    [c["user"] for c in master.client_list(_type="replica")] == ["leadsync-replica"]
                ),
                10,
                "the old master to replicate the new one",
            )
            assert master.wait(1, 2000) == 1
    finally:
        producer.close()
        worker.close()
        api.close()
