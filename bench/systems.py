"""Drive each system under test end to end: enqueue, release the backlog, wait until every
outcome is stored, and account for time, CPU and Marketo calls."""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.harness import ENCRYPTION_KEY, USER_ID, SimProcess, Worker, redis_pid, tree_cpu_s
from bench.profile import py_spy
from marketo_sim.demo import generate_leads
from producers.contract import Keys, parse_request_id
from producers.producer import LeadProducer

LEADSYNC_PREFIX = "ls"
#: The Marketo APIs leadsync speaks (LEADSYNC_MARKETO_API).
APIS = ("soap", "rest")


def add_api_argument(parser: argparse.ArgumentParser) -> None:
    """``--api soap|rest|both``: the protocol leadsync speaks to the simulator (both: one
    set of rows per protocol, in one run)."""
    parser.add_argument(
        "--api",
        choices=(*APIS, "both"),
        default="soap",
        help="LEADSYNC_MARKETO_API for leadsync (both: SOAP rows, then REST rows)",
    )
    parser.add_argument(
        "--token-lifetime-s",
        type=float,
        default=None,
        help="the simulator's REST token lifetime (default: its own, 3600 s)",
    )


def api_list(choice: str) -> list[str]:
    return list(APIS) if choice == "both" else [choice]


def sim_token_fields(args: argparse.Namespace) -> dict[str, object]:
    lifetime = getattr(args, "token_lifetime_s", None)
    return {} if lifetime is None else {"token_lifetime_s": lifetime}


def make_leads(count: int, seed: int = 7) -> list[dict[str, Any]]:
    """Unique people (no repeats), so every lead is one record in one call."""
    return list(generate_leads(count, repeat_share=0.0, seed=seed))


def leadsync_env(
    redis_url: str, sim: SimProcess, *, shards: int = 16, api: str = "soap", **settings: object
) -> dict[str, str]:
    """leadsync's environment against ``sim``; ``api="rest"`` switches it to Sync Leads
    (the simulator's base URL, its client id and secret)."""
    env = {
        "LEADSYNC_REDIS_URL": redis_url,
        "LEADSYNC_KEY_PREFIX": LEADSYNC_PREFIX,
        "LEADSYNC_SHARDS": str(shards),
        "LEADSYNC_MARKETO_ENDPOINT": sim.endpoint,
        "LEADSYNC_MARKETO_USER_ID": USER_ID,
        "LEADSYNC_MARKETO_ENCRYPTION_KEY": ENCRYPTION_KEY,
        "LEADSYNC_METRICS_PORT": "0",
        "LEADSYNC_LOG_LEVEL": "WARNING",
        # No describe call in the call counts, and producers never refuse an unknown field
        # the bench means to send (unknown-field measures what Marketo's 20105 costs).
        "LEADSYNC_FIELDS_REFRESH_S": "0",
    }
    if api == "rest":
        env.update(
            {
                "LEADSYNC_MARKETO_API": "rest",
                "LEADSYNC_MARKETO_REST_URL": sim.base_url,
                "LEADSYNC_MARKETO_CLIENT_ID": sim.client_id,
                "LEADSYNC_MARKETO_CLIENT_SECRET": sim.client_secret,
            }
        )
    elif api != "soap":
        raise ValueError(f"unknown api {api!r}")
    env.update({f"LEADSYNC_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def leadsync_worker(env: Mapping[str, str], concurrency: int) -> Worker:
    # No embedded beat: the bench sends the tick (see Ticker), so the backlog is
    # released at a moment we choose and worker start-up CPU stays out of the count.
    return Worker("worker.app", "leadsync", concurrency, env)


class Ticker:
    """What ``celery beat`` does for leadsync: send ``leadsync.tick`` every second."""

    def __init__(self, env: Mapping[str, str], period_s: float = 1.0) -> None:
        from worker.app import create_app
        from worker.settings import Settings

        settings = Settings.from_env(
            redis_url=env["LEADSYNC_REDIS_URL"], key_prefix=env["LEADSYNC_KEY_PREFIX"]
        )
        self.app = create_app(settings)
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.app.send_task("leadsync.tick", queue="leadsync", expires=5)
            self._stop.wait(self.period_s)

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.app.close()


def backlog(client: redis.Redis, keys: Keys, shards: int) -> int:
    """Entries still in the shard streams, live and bulk (an entry is deleted when its
    outcome is stored)."""
    pipe = client.pipeline(transaction=False)
    for shard in range(2 * shards):
        pipe.xlen(keys.stream(shard))
    return int(sum(pipe.execute()))


def outcome_statuses(
    producer: LeadProducer, request_ids: Iterable[str | None], none_as: str = "UNKNOWN"
) -> list[str]:
    """The outcome status of each request id (``none_as`` where no outcome is stored), read
    2,000 at a time; None ids (refused at enqueue) are skipped."""
    accepted = [r for r in request_ids if r is not None]
    statuses: list[str] = []
    for start in range(0, len(accepted), 2000):
        statuses.extend(
            o.status.value if o is not None else none_as
            for o in producer.outcomes(accepted[start : start + 2000])
        )
    return statuses


@dataclass
class Measured:
    """One system's run."""

    system: str
    concurrency: int
    leads: int
    api: str = "soap"
    enqueue_s: float = 0.0
    drain_s: float = 0.0
    worker_cpu_s: float = 0.0
    sim_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    bench_cpu_s: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    summary: dict[str, Any] = field(default_factory=dict)
    complete: bool = False
    call_sizes: list[int] = field(default_factory=list)
    # Fewest calls that can carry these leads when every call holds one shard's leads.
    fewest_calls: int = 0

    @property
    def full_calls_share(self) -> float:
        return (
            sum(1 for n in self.call_sizes if n >= 300) / len(self.call_sizes)
            if self.call_sizes
            else 0.0
        )

    @property
    def total_s(self) -> float:
        return self.enqueue_s + self.drain_s

    @property
    def leads_per_s(self) -> float:
        return self.leads / self.total_s if self.total_s else 0.0

    @property
    def drain_leads_per_s(self) -> float:
        return self.leads / self.drain_s if self.drain_s else 0.0

    def per_lead_us(self, seconds: float) -> float:
        return seconds / self.leads * 1e6

    @property
    def calls(self) -> int:
        return int(self.summary.get("calls", 0))

    @property
    def leads_per_call(self) -> dict[str, float]:
        per_call: dict[str, float] = self.summary.get("leads_per_call") or {}
        return per_call

    @property
    def identity(self) -> str:
        """REST identity calls (tokens issued) the simulator answered, "-" for SOAP."""
        return identity_cell(self.summary) if self.api == "rest" else "-"

    @property
    def by_protocol(self) -> str:
        return protocol_cell(self.summary)


def identity_cell(summary: Mapping[str, Any]) -> str:
    identity = summary.get("identity") or {}
    refused = int(identity.get("refused", 0))
    return f"{identity.get('calls', 0)} ({identity.get('tokens_issued', 0)})" + (
        f", {refused} refused" if refused else ""
    )


def protocol_cell(summary: Mapping[str, Any]) -> str:
    protocols = summary.get("calls_by_protocol") or {}
    return ", ".join(f"{k} {v:,}" for k, v in sorted(protocols.items())) or "-"


def call_sizes(sim: SimProcess) -> list[int]:
    """Leads in each call that the simulator answered."""
    return [int(c["leads"]) for c in sim.admin.calls() if c["outcome"] == "ok"]


class CpuMeter:
    """CPU of the worker trees, the simulator, Redis and this process between two points."""

    def __init__(self, redis_url: str, sim: SimProcess, workers: Sequence[Worker]) -> None:
        self.pids = {"sim": sim.pid, "redis": redis_pid(redis_url)}
        self.workers = workers
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        from bench.harness import own_cpu_s

        return {
            "worker": sum(w.cpu_s() for w in self.workers),
            "bench": own_cpu_s(),
            **{name: tree_cpu_s(pid) for name, pid in self.pids.items()},
        }

    def stop(self, into: Measured) -> None:
        end = self._read()
        into.worker_cpu_s = end["worker"] - self.start["worker"]
        into.sim_cpu_s = end["sim"] - self.start["sim"]
        into.redis_cpu_s = end["redis"] - self.start["redis"]
        into.bench_cpu_s = end["bench"] - self.start["bench"]


def run_leadsync(
    redis_url: str,
    sim: SimProcess,
    leads: Sequence[Mapping[str, Any]],
    *,
    concurrency: int,
    env: Mapping[str, str],
    timeout_s: float = 600,
    label: str = "leadsync",
    profile: Path | None = None,
) -> Measured:
    """Enqueue everything with ``upsert_many`` into idle workers, then tick until drained."""
    result = Measured(label, concurrency, len(leads), api=env.get("LEADSYNC_MARKETO_API", "soap"))
    shards = int(env["LEADSYNC_SHARDS"])
    client = redis.Redis.from_url(redis_url)
    keys = Keys(env["LEADSYNC_KEY_PREFIX"])
    worker = leadsync_worker(env, concurrency)
    request_ids: list[str] = []
    try:
        worker.start()
        worker.wait_ready()
        with LeadProducer.from_url(
            redis_url, key_prefix=env["LEADSYNC_KEY_PREFIX"], shards=shards
        ) as producer:
            meter = CpuMeter(redis_url, sim, [worker])
            started = time.perf_counter()
            ids = producer.upsert_many(leads)
            result.enqueue_s = time.perf_counter() - started
            sampling = py_spy(worker.pid, profile) if profile else contextlib.nullcontext()
            with sampling, Ticker(env):
                released = time.perf_counter()
                deadline = time.monotonic() + timeout_s
                while backlog(client, keys, shards) and time.monotonic() < deadline:
                    worker.check_alive()
                    time.sleep(0.02)
                result.drain_s = time.perf_counter() - released
            meter.stop(result)
            request_ids = [r for r in ids if isinstance(r, str)]
            result.statuses.update(outcome_statuses(producer, request_ids))
    finally:
        worker.stop()
        client.close()
    result.summary = sim.admin.summary()
    result.call_sizes = call_sizes(sim)
    per_shard = Counter(parse_request_id(r)[0] for r in request_ids)
    result.fewest_calls = sum(-(-n // 300) for n in per_shard.values())
    result.complete = sum(
        n for s, n in result.statuses.items() if s in ("CREATED", "UPDATED")
    ) == len(leads)
    return result


def run_baseline(
    redis_url: str,
    sim: SimProcess,
    leads: Sequence[Mapping[str, Any]],
    *,
    batched: bool,
    concurrency: int,
    flush_every: int = 300,
    flush_interval_s: float = 1.0,
    timeout_s: float = 600,
) -> Measured:
    """Publish one Celery task per lead while the worker consumes another queue, then
    point the worker at the tasks (add_consumer) and wait for every outcome."""
    os.environ["BENCH_REDIS_URL"] = redis_url  # read when celery_app is first imported
    from bench.baselines import celery_app

    queue = celery_app.QUEUE_BATCH if batched else celery_app.QUEUE_ONE
    task = celery_app.sync_batch if batched else celery_app.sync_one
    label = (
        f"baseline (b) celery-batches, flush_every={flush_every}"
        if batched
        else "baseline (a) one task per lead"
    )
    result = Measured(label, concurrency, len(leads))
    prefetch = max(4, -(-4 * flush_every // concurrency)) if batched else 4
    env = {
        "BENCH_REDIS_URL": redis_url,
        "BENCH_ENDPOINT": sim.endpoint,
        "BENCH_USER_ID": USER_ID,
        "BENCH_KEY": ENCRYPTION_KEY,
        "BENCH_FLUSH_EVERY": str(flush_every),
        "BENCH_FLUSH_INTERVAL_S": str(flush_interval_s),
        "BENCH_PREFETCH_MULTIPLIER": str(prefetch),
    }
    celery_app.app.conf.broker_url = redis_url
    client = redis.Redis.from_url(redis_url)
    worker = Worker("bench.baselines.celery_app", "bench.idle", concurrency, env)
    try:
        worker.start()
        worker.wait_ready()
        meter = CpuMeter(redis_url, sim, [worker])
        started = time.perf_counter()
        with celery_app.app.producer_or_acquire() as producer:
            for index, lead in enumerate(leads):
                task.apply_async((f"r{index}", lead), queue=queue, producer=producer)
        result.enqueue_s = time.perf_counter() - started
        released = time.perf_counter()
        celery_app.app.control.add_consumer(queue, destination=[worker.nodename], reply=False)
        deadline = time.monotonic() + timeout_s
        done_key = f"{celery_app.PREFIX}:done"
        while int(client.get(done_key) or 0) < len(leads) and time.monotonic() < deadline:
            worker.check_alive()
            time.sleep(0.02)
        result.drain_s = time.perf_counter() - released
        meter.stop(result)
        pipe = client.pipeline(transaction=False)
        for index in range(len(leads)):
            pipe.hget(f"{celery_app.PREFIX}:out:r{index}", "status")
        result.statuses.update((s or b"UNKNOWN").decode() for s in pipe.execute())
    finally:
        worker.stop()
        client.close()
    result.summary = sim.admin.summary()
    result.call_sizes = call_sizes(sim)
    result.fewest_calls = -(-len(leads) // 300)
    result.complete = result.statuses.get("CREATED", 0) + result.statuses.get("UPDATED", 0) == len(
        leads
    )
    return result
