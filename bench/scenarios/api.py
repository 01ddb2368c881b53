"""``api``: accepted upserts per second through the HTTP API (single POSTs and 1000-record
batches, one and several ``leadsync api`` processes) against ``upsert_many`` directly,
with p50/p99 request latency and Redis round trips per request.

    python -m bench.run api [--seconds 5] [--processes 1,4] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis

from bench.harness import machine_line, md_table, redis_info_number, write_section
from bench.systems import make_leads
from marketo_sim.embedded import embedded_redis, free_port
from producers.producer import LeadProducer

BATCH = 1000


@dataclass(frozen=True, slots=True)
class Run:
    what: str
    processes: int
    concurrency: int
    leads_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    round_trips: float


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


def commands_processed(redis_url: str) -> int:
    return redis_info_number(redis_url, "stats", "total_commands_processed")


def make_key(redis_url: str) -> str:
    env = {**os.environ, "LEADSYNC_REDIS_URL": redis_url}
    made = subprocess.run(
        [str(Path(sys.executable).with_name("leadsync")), "api-keys", "create", "bench",
         "--scope", "write", "--scope", "read"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return made.stdout.strip().splitlines()[-1]


@contextmanager
def api_processes(redis_url: str, count: int) -> Iterator[list[str]]:
    env = {**os.environ, "LEADSYNC_REDIS_URL": redis_url, "LEADSYNC_LOG_LEVEL": "WARNING"}
    ports = [free_port() for _ in range(count)]
    procs = [
        subprocess.Popen(
            [str(Path(sys.executable).with_name("leadsync")), "api", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        import urllib.request

        for base in bases:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(base + "/readyz", timeout=2).close()  # noqa: S310
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        yield bases
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


async def drive(
    bases: list[str],
    key: str,
    seconds: float,
    concurrency: int,
    batch: bool,
    rate_per_s: float | None = None,
) -> tuple[int, int, list[float]]:
    """Requests from ``concurrency`` workers round-robin over ``bases`` for ``seconds``
    (as fast as they answer, or paced to ``rate_per_s`` in all): (accepted leads,
    requests, latencies in ms)."""
    leads = make_leads(BATCH * 4, seed=5)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    bodies = (
        [json.dumps({"records": leads[i * BATCH : (i + 1) * BATCH]}).encode() for i in range(4)]
        if batch
        else [json.dumps(lead).encode() for lead in leads]
    )
    path = "/v1/leads:batch" if batch else "/v1/leads"
    accepted = requests = 0
    latencies: list[float] = []
    start = time.monotonic()
    deadline = start + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)

    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker(n: int) -> None:
            nonlocal accepted, requests
            i = n
            while time.monotonic() < deadline:
                if rate_per_s is not None:
                    await asyncio.sleep(max(0.0, start + i / rate_per_s - time.monotonic()))
                base = bases[i % len(bases)]
                started = time.perf_counter()
                async with session.post(base + path, data=bodies[i % len(bodies)]) as r:
                    body = await r.json()
                    ok = r.status in (200, 202)
                latencies.append((time.perf_counter() - started) * 1000)
                requests += 1
                if ok:
                    accepted += (
                        sum("request_id" in item for item in body["results"]) if batch else 1
                    )
                i += concurrency

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return accepted, requests, latencies


def through_api(
    redis_url: str,
    key: str,
    processes: int,
    concurrency: int,
    seconds: float,
    batch: bool,
    rate_per_s: float | None = None,
) -> Run:
    with api_processes(redis_url, processes) as bases:
        before = commands_processed(redis_url)
        accepted, requests, latencies = asyncio.run(
            drive(bases, key, seconds, concurrency, batch, rate_per_s)
        )
        after = commands_processed(redis_url)
    what = "POST /v1/leads:batch (1000)" if batch else "POST /v1/leads"
    return Run(
        what if rate_per_s is None else f"{what}, paced at {rate_per_s:g}/s",
        processes,
        concurrency,
        accepted / seconds,
        requests / seconds,
        quantile(latencies, 0.5),
        quantile(latencies, 0.99),
        (after - before) / max(requests, 1),
    )


def direct(redis_url: str, seconds: float) -> Run:
    leads = make_leads(BATCH * 4, seed=5)
    accepted = calls = 0
    latencies: list[float] = []
    with LeadProducer.from_url(redis_url) as producer:
        before = commands_processed(redis_url)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            chunk = leads[(calls % 4) * BATCH : (calls % 4 + 1) * BATCH]
            started = time.perf_counter()
            accepted += sum(isinstance(r, str) for r in producer.upsert_many(chunk))
            latencies.append((time.perf_counter() - started) * 1000)
            calls += 1
        after = commands_processed(redis_url)
    return Run(
        "upsert_many (1000), no HTTP", 1, 1, accepted / seconds, calls / seconds,
        quantile(latencies, 0.5), quantile(latencies, 0.99), (after - before) / max(calls, 1),
    )  # fmt: skip


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run api")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--processes", default="1,4")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    counts = [int(part) for part in args.processes.split(",")]
    runs: list[Run] = []
    with embedded_redis() as (redis_url, _):
        machine = machine_line(redis_url)
        key = make_key(redis_url)
        runs.append(direct(redis_url, args.seconds))
        # The latency target: single POSTs at 500 requests/s, one process.
        runs.append(through_api(redis_url, key, 1, 8, args.seconds, False, rate_per_s=500))
        for processes in counts:
            for batch in (False, True):
                concurrency = args.concurrency if not batch else max(4, processes * 2)
                runs.append(
                    through_api(redis_url, key, processes, concurrency, args.seconds, batch)
                )
                redis.Redis.from_url(redis_url).flushdb()
                key = make_key(redis_url)
    rows = [
        [r.what, r.processes, r.concurrency, round(r.leads_per_s), round(r.requests_per_s),
         r.p50_ms, r.p99_ms, r.round_trips]
        for r in runs
    ]  # fmt: skip
    body = (
        "Accepted upserts per second through `leadsync api` (one client process, aiohttp, "
        f"{args.seconds:g} s per row) against `upsert_many` in-process. Latency is per "
        "request. Redis commands per request count the commands inside Lua scripts too; the "
        "network round trips are 2 per single POST (key lookup, the enqueue step) and 2 per "
        "batch (key lookup, one step for every record), plus 1 with a per-key rate and 2 "
        "with an Idempotency-Key. One client process drives every row, so the rows with "
        "several API processes are bound by the client, not by the API.\n\n"
        + md_table(
            [
                "path",
                "API processes",
                "concurrency",
                "leads/s",
                "requests/s",
                "p50 ms",
                "p99 ms",
                "Redis commands/request (in scripts too)",
            ],
            rows,
        )
    )
    print(body)
    write_section("api", "HTTP API ingestion", machine, body)
