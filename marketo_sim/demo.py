"""`leadsync demo`: the whole pipeline end to end on an embedded default.

Redis (LEADSYNC_REDIS_URL when it answers, else an embedded one), the Marketo
simulator over real HTTP, a real Celery worker with the beat tick, N generated
leads enqueued through the producer library, every outcome awaited, a summary.
"""

from __future__ import annotations

import contextlib
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from marketo_sim.config import SimConfig
from marketo_sim.embedded import celery_worker, embedded_redis, redis_answers
from marketo_sim.runner import SimulatorThread
from producers.producer import LeadProducer
from worker.cli.common import progress_bar

DEMO_USER_ID = "leadsync_demo_user"
DEMO_ENCRYPTION_KEY = "leadsync-demo-key"  # the simulator's, not a real secret
FIRST_NAMES = ("Ana", "Bo", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivo", "Jun")
COMPANIES = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne")
#: Replies as a WAN delivers them: about one TCP segment at a time, a little apart.
WIRE_PIECE_BYTES = 1400
WIRE_GAP_S = 0.002
#: A gateway's 504'd call is applied by the simulator this much later.
GATEWAY_APPLY_DELAY_S = 2.0


@dataclass(slots=True)
class DemoResult:
    """What the demo measured."""

    leads: int
    statuses: Counter[str] = field(default_factory=Counter)
    enqueue_s: float = 0.0
    total_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    calls: int = 0
    leads_per_call: float = 0.0
    max_leads_per_call: int = 0
    redis_kind: str = ""

    @property
    def complete(self) -> bool:
        return sum(self.statuses.values()) == self.leads and "PENDING" not in self.statuses


def generate_leads(
    count: int, *, repeat_share: float = 0.05, seed: int = 7
) -> Iterator[dict[str, Any]]:
    """Fake leads; now and then the same person again with a newer value."""
    rng = random.Random(seed)
    people = 0
    for _ in range(count):
        if people and rng.random() < repeat_share:
            person = rng.randrange(people)
        else:
            person, people = people, people + 1
        yield {
            "email": f"person{person}@demo.example.com",
            "attributes": {
                "FirstName": rng.choice(FIRST_NAMES),
                "Company": rng.choice(COMPANIES),
                "Phone": f"650-555-{rng.randrange(10_000):04d}",
            },
        }


@contextlib.contextmanager
def _redis_for_demo(console: Console) -> Iterator[tuple[str, str]]:
    configured = os.environ.get("LEADSYNC_REDIS_URL")
    if configured and redis_answers(configured):
        yield configured, "LEADSYNC_REDIS_URL"
        return
    if configured:
        console.print("[yellow]LEADSYNC_REDIS_URL does not answer; starting an embedded Redis[/]")
    with embedded_redis() as (url, kind):
        yield url, f"embedded {kind}"


def run_demo(
    *,
    leads: int,
    concurrency: int,
    latency_s: float,
    shards: int,
    console: Console,
    api: str = "soap",
    wire: bool = True,
    gateway_504_rate: float = 0.0,
) -> DemoResult:
    """Run the pipeline end to end over ``api`` (soap or rest) and return what it measured.
    ``wire``: replies come in pieces, as over a WAN; ``gateway_504_rate``: that share of
    calls is answered 504 at once and applied by the simulator seconds later."""
    result = DemoResult(leads)
    prefix = f"leadsync-demo-{os.getpid()}"
    sim_config = SimConfig(
        user_id=DEMO_USER_ID,
        encryption_key=DEMO_ENCRYPTION_KEY,
        latency_s=latency_s,
        reply_chunk_bytes=WIRE_PIECE_BYTES if wire else 0,
        reply_chunk_gap_s=WIRE_GAP_S if wire else 0.0,
        fault_gateway_504_rate=gateway_504_rate,
        gateway_apply_delay_s=GATEWAY_APPLY_DELAY_S,
    )
    with (
        _redis_for_demo(console) as (redis_url, redis_kind),
        SimulatorThread(sim_config) as sim,
    ):
        result.redis_kind = redis_kind
        env = {
            "LEADSYNC_REDIS_URL": redis_url,
            "LEADSYNC_KEY_PREFIX": prefix,
            "LEADSYNC_SHARDS": str(shards),
            "LEADSYNC_MARKETO_ENDPOINT": sim.endpoint,
            "LEADSYNC_MARKETO_USER_ID": DEMO_USER_ID,
            "LEADSYNC_MARKETO_ENCRYPTION_KEY": DEMO_ENCRYPTION_KEY,
            "LEADSYNC_FLUSH_INTERVAL_S": "0.5",
            "LEADSYNC_MAX_CONCURRENT_CALLS": str(concurrency),
            "LEADSYNC_METRICS_PORT": "0",
            "LEADSYNC_MARKETO_API": api,
            "LEADSYNC_MARKETO_REST_URL": sim.rest_base_url,
            "LEADSYNC_MARKETO_CLIENT_ID": sim.config.client_id,
            "LEADSYNC_MARKETO_CLIENT_SECRET": sim.config.client_secret,
            # The simulator's gateway applies a 504'd call 2 s later: rest a little longer.
            "LEADSYNC_UNKNOWN_OUTCOME_REST_S": str(GATEWAY_APPLY_DELAY_S + 1),
        }
        where = sim.endpoint if api == "soap" else f"{sim.rest_base_url}/rest/v1/leads.json"
        console.print(
            f"Redis: {redis_kind} · Marketo simulator ({api.upper()}): {where} · "
            f"worker processes: {concurrency} · replies "
            + (f"in {WIRE_PIECE_BYTES}-byte pieces" if wire else "whole (loopback)")
            + (f" · gateway 504s: {gateway_504_rate:.0%}" if gateway_504_rate else "")
        )
        with (
            celery_worker(env, concurrency=concurrency),
            LeadProducer.from_url(redis_url, key_prefix=prefix, shards=shards) as producer,
        ):
            request_ids = _enqueue(producer, leads, result, console)
            _await_outcomes(producer, request_ids, result, console)
        summary = sim.admin.summary()
    result.calls = int(summary.get("calls", 0))
    per_call = summary.get("leads_per_call") or {}
    result.leads_per_call = float(per_call.get("mean", 0.0))
    result.max_leads_per_call = int(per_call.get("max", 0))
    return result


def _enqueue(producer: LeadProducer, count: int, result: DemoResult, console: Console) -> list[str]:
    request_ids: list[str] = []
    chunk: list[dict[str, Any]] = []
    started = time.perf_counter()
    with progress_bar(console) as progress:
        task = progress.add_task("enqueue", total=count)
        for record in generate_leads(count):
            chunk.append(record)
            if len(chunk) == 500:
                request_ids.extend(_enqueue_chunk(producer, chunk))
                progress.advance(task, len(chunk))
                chunk = []
        if chunk:
            request_ids.extend(_enqueue_chunk(producer, chunk))
            progress.advance(task, len(chunk))
    result.enqueue_s = time.perf_counter() - started
    return request_ids


def _enqueue_chunk(producer: LeadProducer, chunk: list[dict[str, Any]]) -> list[str]:
    ids = producer.upsert_many(chunk)
    bad = [r for r in ids if not isinstance(r, str)]
    if bad:
        raise RuntimeError(f"the demo generated an invalid lead: {bad[0]}")
    return [r for r in ids if isinstance(r, str)]


def _await_outcomes(
    producer: LeadProducer,
    request_ids: list[str],
    result: DemoResult,
    console: Console,
    *,
    timeout_s: float = 600,
) -> None:
    started = time.perf_counter()
    with progress_bar(console) as progress:
        task = progress.add_task("outcomes", total=len(request_ids))
        latest = producer.wait_outcomes(
            request_ids, timeout_s, on_progress=lambda done: progress.update(task, completed=done)
        )
    final = [o for o in latest.values() if o is not None and o.status.is_final]
    waiting = len(request_ids) - len(final)
    result.total_s = result.enqueue_s + time.perf_counter() - started
    result.statuses.update(o.status.value for o in final)
    if waiting:
        result.statuses["PENDING"] += waiting
    result.latencies_s = [
        o.finished_at - o.enqueued_at
        for o in final
        if o.finished_at is not None and o.enqueued_at is not None
    ]


def render_summary(result: DemoResult, console: Console) -> None:
    table = Table(title="leadsync demo", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for status, count in sorted(result.statuses.items()):
        table.add_row(f"outcome {status}", f"{count:,}")
    table.add_row("Marketo calls", f"{result.calls:,}")
    table.add_row(
        "leads per call (mean / max)", f"{result.leads_per_call:.1f} / {result.max_leads_per_call}"
    )
    if result.total_s:
        table.add_row(
            "throughput (enqueue → all outcomes)", f"{result.leads / result.total_s:,.0f} leads/s"
        )
    table.add_row("enqueue time", f"{result.enqueue_s:.2f} s")
    if result.latencies_s:
        ordered = sorted(result.latencies_s)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        table.add_row(
            "enqueue → outcome p50 / p99", f"{statistics.median(ordered):.2f} s / {p99:.2f} s"
        )
    console.print(table)
