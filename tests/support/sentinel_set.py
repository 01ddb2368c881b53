"""A real Redis Sentinel set for tests: a master, one replica (or more) and N sentinels
(``redis-server --sentinel``), each a process on a free 127.0.0.1 port with its own
directory; small ``down-after-milliseconds`` and ``failover-timeout`` so a failover takes
seconds. :meth:`SentinelSet.close` kills and removes everything (call it in a finally)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

from tests.support.redis_server import free_port

MASTER_NAME = "leadsync"


def _wait(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll ``condition`` every 50 ms until it is truthy; AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(redis.RedisError):
            if condition():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


def _connect(port: int, password: str | None) -> redis.Redis:
    """A short-timeout client of one local server or sentinel."""
    return redis.Redis(
        port=port, password=password, socket_timeout=2, socket_connect_timeout=1,
        decode_responses=True,
    )  # fmt: skip


class SentinelSet:
    """Master + ``replicas`` replicas + ``sentinels`` sentinels monitoring
    :data:`MASTER_NAME`."""

    def __init__(
        self,
        *,
        sentinels: int = 3,
        down_after_ms: int = 500,
        failover_timeout_ms: int = 3000,
        master_password: str | None = None,
        sentinel_password: str | None = None,
        min_replicas_to_write: int = 0,
        min_replicas_max_lag_s: int = 10,
        replicas: int = 1,
    ) -> None:
        """``min_replicas_to_write`` / ``min_replicas_max_lag_s`` go to both servers (the
        replica may become the master), as ``deploy/`` configures them."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/ensure-redis installs it)")
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="leadsync-sentinel-"))
        self.sentinel_count = sentinels
        self.quorum = sentinels // 2 + 1
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.master_password = master_password
        self.sentinel_password = sentinel_password
        self.master_port = free_port()
        self.replica_ports = [free_port() for _ in range(replicas)]
        self.replica_port = self.replica_ports[0]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self.min_replicas = (min_replicas_to_write, min_replicas_max_lag_s)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.args: dict[int, list[str]] = {}

    # --- addresses ----------------------------------------------------------------------

    def url(self, db: int = 0, scheme: str = "redis+sentinel", query: str = "") -> str:
        """leadsync's Sentinel URL for this set."""
        auth = f":{self.master_password}@" if self.master_password else ""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        options = query
        if self.sentinel_password and "sentinel_password" not in query:
            options = "&".join(filter(None, [query, f"sentinel_password={self.sentinel_password}"]))
        return f"{scheme}://{auth}{hosts}/{MASTER_NAME}/{db}" + (f"?{options}" if options else "")

    def client(self, port: int) -> redis.Redis:
        return _connect(port, self.master_password)

    def sentinel_client(self, port: int) -> redis.Redis:
        return _connect(port, self.sentinel_password)

    def master_address(self, sentinel_port: int | None = None) -> tuple[str, int]:
        """The master's address as a sentinel sees it."""
        with self.sentinel_client(sentinel_port or self.sentinel_ports[0]) as sentinel:
            host, port = sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)
        return str(host), int(port)

    # --- lifecycle ----------------------------------------------------------------------

    def _spawn(self, port: int, args: list[str]) -> None:
        self.args[port] = args
        self.processes[port] = subprocess.Popen(
            [self.binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _server(self, port: int, *extra: str) -> None:
        folder = self.dir / str(port)
        folder.mkdir()
        to_write, max_lag_s = self.min_replicas
        auth = ["--requirepass", self.master_password, "--masterauth", self.master_password]
        self._spawn(
            port,
            [
                "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(folder), "--logfile", str(folder / "redis.log"),
                # A replica syncs at once (the default waits 5 s for more replicas).
                "--repl-diskless-sync-delay", "0",
                "--min-replicas-to-write", str(to_write),
                "--min-replicas-max-lag", str(max_lag_s),
                *(auth if self.master_password else []), *extra,
            ],
        )  # fmt: skip

    def _sentinel(self, port: int) -> None:
        folder = self.dir / f"sentinel-{port}"
        folder.mkdir()
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {folder}",
            f"logfile {folder / 'sentinel.log'}",
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} {self.quorum}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
            f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
        ]
        if self.master_password:
            lines.append(f"sentinel auth-pass {MASTER_NAME} {self.master_password}")
        if self.sentinel_password:
            lines.append(f"requirepass {self.sentinel_password}")
            lines.append(f"sentinel sentinel-pass {self.sentinel_password}")
        config = folder / "sentinel.conf"  # sentinel rewrites it: it must be writable
        config.write_text("\n".join(lines) + "\n")
        self._spawn(port, [str(config), "--sentinel"])

    def start(self, timeout_s: float = 20.0) -> SentinelSet:
        """Start everything and wait until every sentinel knows the replica and (with
        several) the other sentinels, so that a failover can happen at once."""
        self._server(self.master_port)
        for port in self.replica_ports:
            self._server(port, "--replicaof", "127.0.0.1", str(self.master_port))
        with self.client(self.master_port) as master:

            def synced() -> bool:
                info = master.info("replication")
                return all(
                    (info.get(f"slave{n}") or {}).get("state") == "online"
                    for n in range(len(self.replica_ports))
                )

            _wait(synced, timeout_s, "the replicas to sync")
        for port in self.sentinel_ports:
            self._sentinel(port)

        def ready(port: int) -> bool:
            with self.sentinel_client(port) as sentinel:
                state: dict[str, Any] = sentinel.sentinel_master(MASTER_NAME)
            return (
                int(state.get("num-slaves", 0)) >= len(self.replica_ports)
                and int(state.get("num-other-sentinels", 0)) >= self.sentinel_count - 1
            )

        for port in self.sentinel_ports:
            _wait(lambda port=port: ready(port), timeout_s, f"sentinel {port} to see its peers")
        return self

    def kill_master(self) -> int:
        """SIGKILL the current master (a crash); returns its port."""
        _, port = self.master_address()
        process = self.processes.pop(port)
        process.kill()
        process.wait()
        return port

    def restart(self, port: int) -> None:
        """Start a killed server again, as its pod would (deploy/k8s/overlays/ha's
        start-redis.sh): it asks the sentinels for the master and starts as its replica.
        (Started with its first arguments, an old master would come back empty and take
        writes as a master until the sentinels noticed it.)"""
        host, master_port = self.master_address()
        args = list(self.args[port])
        if "--replicaof" in args:
            at = args.index("--replicaof")
            del args[at : at + 3]
        self._spawn(port, [*args, "--replicaof", host, str(master_port)])

    def freeze(self) -> int:
        """SIGSTOP the current master (a stalled VM or a long GC pause); returns its port.
        Its sockets still accept connections; nothing is answered until :meth:`thaw`."""
        _, port = self.master_address()
        self.processes[port].send_signal(signal.SIGSTOP)
        return port

    def thaw(self, port: int) -> None:
        """SIGCONT: a frozen master wakes up, still believing it is the master."""
        self.processes[port].send_signal(signal.SIGCONT)

    def role(self, port: int) -> str:
        with self.client(port) as server:
            return str(server.execute_command("ROLE")[0])

    def wait_for_failover(self, old_port: int, timeout_s: float = 15.0) -> tuple[str, int]:
        """Until every sentinel names a new master; its address."""
        for port in self.sentinel_ports:
            _wait(
                lambda port=port: self.master_address(port)[1] != old_port,
                timeout_s,
                "the sentinels to promote the replica",
            )
        return self.master_address()

    def close(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)  # a frozen one must wake to die
                process.kill()
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        self.processes.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def sentinel_set(**options: Any) -> Iterator[SentinelSet]:
    """A started :class:`SentinelSet`, closed (every process killed) afterwards."""
    cluster = SentinelSet(**options)
    try:
        yield cluster.start()
    finally:
        cluster.close()
