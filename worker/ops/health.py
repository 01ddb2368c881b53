"""Worker heartbeats.

* The **local heartbeat** (a small file in the temp directory, per pod): the Celery main
  process writes ``running`` from its event loop (Celery's heartbeat, every 2 s) and
  ``waiting`` while it has no broker connection (the consumer stopped and reconnects).
  ``doctor --liveness`` reads only this file: a Redis outage or a Sentinel failover never
  fails the probe (restarting pods cannot bring Redis back, and a restart would only add
  a lease TTL of stalled shards), while a main loop that stopped beating with its broker
  connection up does.
* The **Redis heartbeat**: one key per pod, refreshed by the drain and tick tasks and by
  the main process, for ``leadsync doctor`` and the operators' view across pods.

On the data path, so it imports nothing heavy."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import redis as redis_sync
from redis.exceptions import RedisError

from producers.contract import Keys
from worker.connections import redis_client_sync
from worker.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

#: A heartbeat key outlives the liveness limit, so a stale one reads as "stale", not "absent".
HEARTBEAT_TTL_S = 600
#: Default age after which ``doctor --liveness`` calls a worker dead.
LIVENESS_MAX_AGE_S = 60.0
#: The main process writes at most this often (Celery's own heartbeat fires every 2 s).
MAIN_HEARTBEAT_EVERY_S = 10.0


def heartbeat_key(keys: Keys, hostname: str | None = None) -> str:
    """One key per pod (hostname): every process of the pod refreshes it."""
    return keys.heartbeat(hostname or socket.gethostname())


async def write_heartbeat(redis: Redis, keys: Keys, now_s: float | None = None) -> None:
    """Called by the drain and tick tasks."""
    now_s = time.time() if now_s is None else now_s
    await redis.set(heartbeat_key(keys), repr(now_s), ex=HEARTBEAT_TTL_S)


class MainHeartbeat:
    """The Celery main process's heartbeat (from the ``heartbeat_sent`` signal), so an idle
    pod whose pool gets no tick for a while still counts as alive. Never raises: a Redis
    outage must not disturb the worker's own event loop."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._clock = clock
        self._last_s = 0.0
        self._client: redis_sync.Redis | None = None

    def beat(self) -> None:
        now_s = self._clock()
        if now_s - self._last_s < MAIN_HEARTBEAT_EVERY_S:
            return
        self._last_s = now_s
        try:
            if self._client is None:
                self._client = redis_client_sync(self._settings)
            key = heartbeat_key(Keys(self._settings.key_prefix))
            self._client.set(key, repr(now_s), ex=HEARTBEAT_TTL_S)
        except RedisError as exc:
            logger.warning("heartbeat not written: %s", exc.__class__.__name__)


async def heartbeat_age_s(
    redis: Redis, keys: Keys, hostname: str | None = None, now_s: float | None = None
) -> float | None:
    """Seconds since this pod's last heartbeat, or None when there is none."""
    value = await redis.get(heartbeat_key(keys, hostname))
    if value is None:
        return None
    now_s = time.time() if now_s is None else now_s
    return max(0.0, now_s - float(value))


# --- the local heartbeat (liveness) ---------------------------------------------------

#: The main process rewrites the file at most this often while it runs.
LOCAL_HEARTBEAT_EVERY_S = 5.0
LocalState = Literal["running", "waiting"]


def local_heartbeat_path(key_prefix: str, directory: str | None = None) -> Path:
    """The pod's heartbeat file: ``<temp dir>/leadsync-worker-<prefix>.heartbeat`` (each
    pod has its own /tmp; the prefix keeps two deployments on one machine apart)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", key_prefix)
    return Path(directory or tempfile.gettempdir()) / f"leadsync-worker-{name}.heartbeat"


class LocalHeartbeat:
    """The Celery main process's heartbeat file. The consumer step says when the broker
    connection is up (:meth:`connected`) or lost (:meth:`disconnected`); Celery's heartbeat
    (:meth:`beat`, from the main loop) refreshes the file only while it is up, so a
    heartbeat event sent while the consumer shuts its connection down cannot mark a
    reconnecting worker ``running``. Never raises: a full or read-only disk must not
    disturb the worker (the probe then reports the stale file)."""

    def __init__(
        self,
        path: Path,
        clock: Callable[[], float] = time.time,
        every_s: float = LOCAL_HEARTBEAT_EVERY_S,
    ) -> None:
        self.path = path
        self._clock = clock
        self._every_s = every_s
        self._state: LocalState | None = None
        self._since_s = 0.0
        self._last_s = 0.0

    def connected(self) -> None:
        """The consumer has its broker connection: ``running``."""
        self._write("running", self._clock())

    def disconnected(self) -> None:
        """The consumer lost its broker connection (or has none yet): ``waiting``."""
        if self._state != "waiting":
            self._write("waiting", self._clock())

    def beat(self) -> None:
        """The main loop ran (rate-limited); ignored unless connected."""
        now_s = self._clock()
        if self._state != "running" or now_s - self._last_s < self._every_s:
            return
        self._write("running", now_s)

    def _write(self, state: LocalState, now_s: float) -> None:
        if state != self._state:
            self._since_s = now_s
        self._state, self._last_s = state, now_s
        body = {"state": state, "at": now_s, "since": self._since_s, "pid": os.getpid()}
        temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps(body))
            os.replace(temporary, self.path)
        except OSError as exc:
            logger.warning("local heartbeat not written: %s", exc.__class__.__name__)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def local_liveness(
    path: Path, max_age_s: float = LIVENESS_MAX_AGE_S, now_s: float | None = None
) -> tuple[Literal["OK", "FAIL"], str]:
    """Is this pod's worker alive? From the local heartbeat only (no Redis):

    * ``running`` and at most ``max_age_s`` old: OK;
    * ``running`` and older: FAIL (the main loop stopped with its broker connection up);
    * ``waiting`` (no broker connection: Redis down, or a failover): OK however long,
      as long as the process that wrote it is alive: a restart cannot bring Redis back;
    * no file, an unreadable one, or its process gone: FAIL.
    """
    now_s = time.time() if now_s is None else now_s
    try:
        beat = json.loads(path.read_text())
        state, at_s, since_s = beat["state"], float(beat["at"]), float(beat["since"])
        pid = int(beat["pid"])
    except FileNotFoundError:
        return "FAIL", f"no heartbeat at {path}: the worker has not started"
    except (OSError, ValueError, KeyError, TypeError):
        return "FAIL", f"unreadable heartbeat at {path}"
    if not _process_exists(pid):
        return "FAIL", f"the worker process {pid} that wrote {path.name} is gone"
    if state == "waiting":
        return "OK", (
            f"waiting for the broker for {max(now_s - since_s, 0.0):.0f} s "
            "(Redis down or failing over; readiness reports it)"
        )
    age_s = max(now_s - at_s, 0.0)
    if state != "running":
        return "FAIL", f"unknown heartbeat state {state!r}"
    if age_s > max_age_s:
        return "FAIL", f"the worker's main loop last beat {age_s:.0f} s ago"
    return "OK", f"the worker's main loop beat {age_s:.1f} s ago"
