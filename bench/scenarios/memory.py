"""``memory``: Redis bytes per queued lead and per retained outcome.

Each phase runs on its own private ``redis-server`` (never a shared one), warmed up first
(Lua scripts loaded, a throw-away prefix enqueued, drained and deleted), so the baseline
already holds the fixed costs. Leads go in through the real ``LeadProducer`` and out through
the real ``Drainer``, whose Marketo is a ``MockTransport`` answering every call OK.

Figures are ``INFO memory`` ``used_memory`` deltas divided by the item count, cross-checked
with ``MEMORY USAGE <key> SAMPLES 0`` summed over ``SCAN`` per key class. Classes come
from the glob patterns of :data:`KEY_CLASSES` (first match wins), not from ``Keys``, so the
scenario keeps working when key names change; a key matching none is ``other`` and is
listed with a sample name, so a new key shape shows up instead of vanishing.

Phases:

1. queue: enqueue N; claim everything with ``Ledger.claim`` (XREADGROUP: PEL records);
   count one attempt each (``Ledger.bump_attempts``). The same again into the bulk lane
   (``upsert_many(..., lane="bulk")``: the entry and its lead's bulk mark). Then, on a
   fresh server, one real ``Drainer`` cycle per shard under a limiter cooldown: it claims
   a batch, counts the attempt, is refused a permit and refunds it, so nothing is sent.
2. retention: drain everything with the stub; after all is committed, used_memory minus
   the baseline, split by key class. Once for N distinct leads and once for N upserts over
   N / ``--repeat`` leads; the two totals also give the per-upsert and the per-lead cost by
   solving ``total = upserts * a + leads * b``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import itertools
import logging
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
from pydantic import SecretStr

from bench.harness import machine_line, md_table, write_section
from marketo_sim.embedded import embedded_redis
from marketo_sim.soap import SyncStatus, parse_request_bytes, render_success
from producers.contract import Keys, Lane, parse_request_id
from producers.producer import LeadProducer
from worker.drain import Drainer, DrainReport
from worker.ledger import Ledger
from worker.limits import RedisLimiter
from worker.marketo import SoapApi
from worker.settings import Settings
from worker.transport import HttpReply, MockTransport

#: Key class -> glob pattern, tried in this order; the first match wins. Edit here when
#: key names change (for example a per-shard "newest enqueued id per lead" hash).
KEY_CLASSES: dict[str, str] = {
    "stream": "*:outbox",
    "outcome": "*}:outcome*",  # bucket hashes `outcomes:<window>`; before: `outcome:<id>`
    "lead-state": "*:lead:*",
    "newest": "*:newest*",
    "dlq": "*:dlq*",
    "attempts": "*:attempts*",  # the sub-hashes `attempts:<n>`; before: one `attempts` hash
    "bulk-mark": "*}:fields:*",  # a lead's written-fields hash (its ~bulk count while bulk waits)
}
OTHER = "other"
#: Classes that hold state per distinct lead (not per upsert).
PER_LEAD_STATE: tuple[str, ...] = ("lead-state", "newest")

PREFIX = "ls"
WARM_PREFIX = "warmup"
CONSUMER = "bench-memory"
SETTLE_S = 0.2  # let Redis free the buffers of clients that just disconnected

FIRST_NAMES = ["Ann", "Bob", "Carla", "Dmitri", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal"]
LAST_NAMES = ["Smith", "Johnson", "Garcia", "Nguyen", "Müller", "Okafor", "Rossi", "Tanaka"]
COMPANIES = ["Acme Corp", "Globex Corporation", "Initech", "Umbrella Group", "Stark Industries"]
TITLES = ["VP Marketing", "Software Engineer", "Head of Sales", "CFO", "Product Manager"]


# --- leads ----------------------------------------------------------------------------


def make_leads(count: int, distinct: int, seed: int = 11) -> list[dict[str, Any]]:
    """``count`` upserts over ``distinct`` people (round robin, so repeats are spread out),
    each with four realistic attributes."""
    rng = random.Random(seed)
    return [
        {
            "email": f"user{i % distinct}@example.com",
            "attributes": {
                "FirstName": rng.choice(FIRST_NAMES),
                "LastName": rng.choice(LAST_NAMES),
                "Company": rng.choice(COMPANIES),
                "Title": rng.choice(TITLES),
            },
        }
        for i in range(count)
    ]


def enqueue(
    url: str, leads: Sequence[Mapping[str, Any]], prefix: str, shards: int, lane: Lane = "live"
) -> list[str]:
    with LeadProducer.from_url(url, key_prefix=prefix, shards=shards) as producer:
        ids = producer.upsert_many(leads, lane=lane)
    request_ids = [r for r in ids if isinstance(r, str)]
    if len(request_ids) != len(leads):
        raise RuntimeError(f"{len(leads) - len(request_ids)} leads were rejected")
    return request_ids


# --- the stub Marketo and the real Drainer --------------------------------------------------


def ok_marketo() -> Callable[[bytes, object], HttpReply]:
    """Every call succeeds; every record CREATED with a realistic 8-digit lead id."""
    lead_ids = itertools.count(10_000_001)

    def answer(body: bytes, _headers: object) -> HttpReply:
        records = parse_request_bytes(body).records
        statuses = [SyncStatus(next(lead_ids), "CREATED") for _ in records]
        return HttpReply(200, "text/xml", render_success(statuses))

    return answer


def make_drainer(client: redis.asyncio.Redis, prefix: str, shards: int) -> Drainer:
    settings = Settings.from_env(
        key_prefix=prefix,
        shards=shards,
        flush_interval_s=0.0,  # partial batches go at once: the drain ends with nothing left
        rate_limit_calls=1_000_000_000,
        max_concurrent_calls=100,
        daily_quota=1_000_000_000,
        backoff_initial_s=0.0,
        backoff_max_s=0.01,
    )
    ledger = Ledger(client, Keys(prefix), result_ttl_s=settings.result_ttl_s)
    marketo = SoapApi(
        MockTransport(ok_marketo()),
        endpoint="http://marketo.test/soap/mktows/2_2",
        user_id="bench_user",
        encryption_key=SecretStr("bench-key"),
        max_response_bytes=settings.max_response_bytes,
    )
    limiter = RedisLimiter(client, settings)
    return Drainer(
        ledger=ledger, api=marketo, limiter=limiter, settings=settings, consumer=CONSUMER
    )


async def ensure_groups(url: str, prefix: str, shards: int) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        await Ledger(client, Keys(prefix), result_ttl_s=60).ensure_groups(shards)
    finally:
        await client.aclose()


async def drain_all(url: str, prefix: str, shards: int, timeout_s: float = 600) -> int:
    """Drain cycles over every shard until none has anything left; the outcomes written."""
    client = redis.asyncio.Redis.from_url(url)
    written = 0
    deadline = time.monotonic() + timeout_s
    try:
        drainer = make_drainer(client, prefix, shards)
        pending = set(range(shards))
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"shards {sorted(pending)} did not drain")
            for shard in sorted(pending):
                report: DrainReport = await drainer.drain(shard)
                written += sum(report.outcomes.values())
                if report.status not in ("sent", "idle"):
                    raise RuntimeError(f"shard {shard}: {report.as_dict()}")
                if report.backlog == 0:
                    pending.discard(shard)
    finally:
        await client.aclose()
    return written


async def drain_refused(url: str, prefix: str, shards: int) -> list[DrainReport]:
    """One Drainer cycle per shard while a limiter cooldown refuses every permit."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        drainer = make_drainer(client, prefix, shards)
        await drainer.limiter.cooldown(3600, "bench memory: claim without sending")
        return [await drainer.drain(shard) for shard in range(shards)]
    finally:
        await client.aclose()


async def claim_all(url: str, prefix: str, streams: Sequence[int], count: int) -> int:
    """XREADGROUP every entry of every stream through the Ledger (nothing is sent)."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        ledger = Ledger(client, Keys(prefix), result_ttl_s=60)
        read = 0
        for shard in streams:
            token = await ledger.acquire_lease(shard, 600)
            assert token is not None
            claimed = await ledger.claim(shard, token, CONSUMER, count=count, lease_ttl_s=600)
            read += len(claimed.entries)
            await ledger.release_lease(shard, token)
        return read
    finally:
        await client.aclose()


async def bump_all(url: str, prefix: str, request_ids: Sequence[str]) -> None:
    """One attempt counted for every entry (``HINCRBY attempts <id> 1``, as a cycle does)."""
    by_shard: dict[int, list[str]] = defaultdict(list)
    for rid in request_ids:
        shard, entry_id = parse_request_id(rid)
        by_shard[shard].append(entry_id)
    client = redis.asyncio.Redis.from_url(url)
    try:
        ledger = Ledger(client, Keys(prefix), result_ttl_s=60)
        for shard, entry_ids in by_shard.items():
            token = await ledger.acquire_lease(shard, 600)
            assert token is not None
            for start in range(0, len(entry_ids), 1000):
                await ledger.bump_attempts(shard, token, entry_ids[start : start + 1000])
            await ledger.release_lease(shard, token)
    finally:
        await client.aclose()


# --- measuring ------------------------------------------------------------------------------


def classify(key: str) -> str:
    for name, pattern in KEY_CLASSES.items():
        if fnmatch.fnmatchcase(key, pattern):
            return name
    return OTHER


@dataclass
class Census:
    """used_memory and, per key class, key count and MEMORY USAGE sum at one moment."""

    used_memory: int
    keyspace_tables: int  # MEMORY STATS overhead.hashtable.main + .expires of db 0
    keys: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    usage: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sample: dict[str, str] = field(default_factory=dict)  # class -> `key` encoding, usage

    def minus(self, base: Census) -> Delta:
        names = sorted(set(self.keys) | set(base.keys))
        return Delta(
            used_memory=self.used_memory - base.used_memory,
            keyspace_tables=self.keyspace_tables - base.keyspace_tables,
            keys={n: self.keys.get(n, 0) - base.keys.get(n, 0) for n in names},
            usage={n: self.usage.get(n, 0) - base.usage.get(n, 0) for n in names},
            sample=dict(self.sample),
        )


@dataclass
class Delta:
    used_memory: int
    keyspace_tables: int
    keys: dict[str, int]
    usage: dict[str, int]
    sample: dict[str, str]

    def keys_of(self, *classes: str) -> int:
        return sum(self.keys.get(c, 0) for c in classes)

    def usage_of(self, *classes: str) -> int:
        return sum(self.usage.get(c, 0) for c in classes)

    @property
    def unattributed(self) -> int:
        """Not in any key's MEMORY USAGE: the expires dict, hash-table buckets, allocator."""
        return self.used_memory - sum(self.usage.values())

    @property
    def unattributed_per_new_key(self) -> float:
        new_keys = sum(k for k in self.keys.values() if k > 0)
        return self.unattributed / new_keys if new_keys else 0.0


def census(url: str, meter: redis.Redis) -> Census:
    """Read ``used_memory`` first, through ``meter`` (a connection that only ever runs
    INFO, so its buffers do not move), then SCAN + MEMORY USAGE on a connection of its own
    that is closed before the next census."""
    time.sleep(SETTLE_S)
    found = Census(used_memory=int(meter.info("memory")["used_memory"]), keyspace_tables=0)
    db0: Any = meter.memory_stats().get("db.0", {})
    found.keyspace_tables = int(db0.get("overhead.hashtable.main", 0)) + int(
        db0.get("overhead.hashtable.expires", 0)
    )
    scanner = redis.Redis.from_url(url)
    try:
        batch: list[str] = []

        def flush() -> None:
            pipe = scanner.pipeline(transaction=False)
            for key in batch:
                pipe.memory_usage(key, samples=0)
            for key, usage in zip(batch, pipe.execute(), strict=True):
                name = classify(key)
                found.keys[name] += 1
                found.usage[name] += int(usage or 0)
                if name not in found.sample:
                    encoding = scanner.object("encoding", key)
                    shown = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
                    found.sample[name] = f"`{key}` {shown}, {int(usage or 0):,} B"
            batch.clear()

        for raw in scanner.scan_iter(count=1000):
            batch.append(raw.decode() if isinstance(raw, bytes) else str(raw))
            if len(batch) >= 1000:
                flush()
        if batch:
            flush()
    finally:
        scanner.close()
    return found


def stored_outcomes(client: redis.Redis) -> int:
    """Outcomes stored: fields of the bucket hashes, or one key each (before)."""
    count = 0
    for raw in client.scan_iter(match=KEY_CLASSES["outcome"], count=1000):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        count += int(client.hlen(key)) if ":outcomes:" in key else 1
    return count


def pending_total(client: redis.Redis, prefix: str, streams: int | Sequence[int]) -> int:
    keys = Keys(prefix)
    numbers = range(streams) if isinstance(streams, int) else streams
    return sum(int(client.xpending(keys.stream(s), Keys.GROUP)["pending"]) for s in numbers)


def backlog_total(client: redis.Redis, prefix: str, shards: int) -> int:
    keys = Keys(prefix)
    return sum(int(client.xlen(keys.stream(s))) for s in range(shards))


@dataclass
class Server:
    url: str
    meter: redis.Redis


@contextlib.contextmanager
def private_redis(shards: int) -> Iterator[Server]:
    """A fresh redis-server of our own, warmed up: every Lua script the producer, ledger
    and limiter use is loaded and a throw-away prefix went through the whole path and was
    deleted, so the baseline already holds the fixed costs."""
    with embedded_redis() as (url, kind):
        if kind != "redis-server":
            sys.exit("the memory scenario needs redis-server (fakeredis does not count memory)")
        if url.rsplit(":", 1)[1].startswith("6379/"):
            sys.exit("refusing to measure on port 6379")
        meter = redis.Redis.from_url(url)
        try:
            asyncio.run(ensure_groups(url, WARM_PREFIX, shards))
            enqueue(url, make_leads(400, 400, seed=1), WARM_PREFIX, shards)
            asyncio.run(drain_all(url, WARM_PREFIX, shards))
            enqueue(url, make_leads(400, 400, seed=2), WARM_PREFIX, shards)
            asyncio.run(drain_refused(url, WARM_PREFIX, shards))
            stale = list(meter.scan_iter(match=f"{WARM_PREFIX}:*", count=1000))
            for start in range(0, len(stale), 1000):
                meter.delete(*stale[start : start + 1000])
            yield Server(url, meter)
        finally:
            meter.close()


# --- the phases -----------------------------------------------------------------------------


def per(value: float, count: int) -> float:
    return value / count if count else 0.0


def measure_queue(
    n: int, shards: int, seed: int, lane: Lane = "live"
) -> tuple[dict[str, float], Delta]:
    """One lane's queued lead: the entry as enqueued (for bulk with its lead's bulk mark),
    then its PEL record, then its attempt counter."""
    leads = make_leads(n, n, seed)
    tag = "queue" if lane == "live" else "bulk"
    streams = list(range(shards)) if lane == "live" else list(range(shards, 2 * shards))
    with private_redis(shards) as server:
        asyncio.run(ensure_groups(server.url, PREFIX, 2 * shards))
        c0 = census(server.url, server.meter)
        ids = enqueue(server.url, leads, PREFIX, shards, lane)
        c1 = census(server.url, server.meter)
        claimed = asyncio.run(claim_all(server.url, PREFIX, streams, n))
        if claimed != n or pending_total(server.meter, PREFIX, streams) != n:
            raise RuntimeError(f"{lane}: claimed {claimed} of {n}")
        c2 = census(server.url, server.meter)
        asyncio.run(bump_all(server.url, PREFIX, ids))
        c3 = census(server.url, server.meter)
    entry, pel, attempt, whole = c1.minus(c0), c2.minus(c1), c3.minus(c2), c3.minus(c0)
    return {
        f"{tag}.entry_used_B": per(entry.used_memory, n),
        f"{tag}.entry_usage_B": per(entry.usage_of("stream", "bulk-mark"), n),
        f"{tag}.mark_usage_B": per(entry.usage_of("bulk-mark"), n),
        f"{tag}.mark_keys": entry.keys_of("bulk-mark"),
        f"{tag}.pel_used_B": per(pel.used_memory, n),
        f"{tag}.pel_usage_B": per(pel.usage_of("stream"), n),
        f"{tag}.attempts_used_B": per(attempt.used_memory, n),
        f"{tag}.attempts_usage_B": per(attempt.usage_of("attempts"), n),
        f"{tag}.total_used_B": per(whole.used_memory, n),
        f"{tag}.total_usage_B": per(whole.usage_of("stream", "attempts", "bulk-mark"), n),
    }, whole


def measure_refused_cycle(n: int, shards: int, seed: int) -> tuple[dict[str, float], Delta]:
    leads = make_leads(n, n, seed)
    with private_redis(shards) as server:
        asyncio.run(ensure_groups(server.url, PREFIX, shards))
        enqueue(server.url, leads, PREFIX, shards)
        c0 = census(server.url, server.meter)
        reports = asyncio.run(drain_refused(server.url, PREFIX, shards))
        if any(r.status != "limited" or r.calls for r in reports):
            raise RuntimeError(f"a refused cycle sent or was not limited: {reports[0].as_dict()}")
        claimed = pending_total(server.meter, PREFIX, shards)
        attempts_fields = sum(
            int(server.meter.hlen(key))
            for key in server.meter.scan_iter(match=KEY_CLASSES["attempts"], count=1000)
        )
        c1 = census(server.url, server.meter)
    delta = c1.minus(c0)
    return {
        "cycle.claimed": claimed,
        "cycle.attempts_fields": attempts_fields,
        "cycle.used_B": per(delta.used_memory, claimed),
        "cycle.usage_B": per(delta.usage_of("stream", "attempts"), claimed),
        "cycle.attempts_usage_B": per(delta.usage_of("attempts"), claimed),
    }, delta


def measure_retention(
    tag: str, n: int, distinct: int, shards: int, seed: int
) -> tuple[dict[str, float], Delta]:
    leads = make_leads(n, distinct, seed)
    with private_redis(shards) as server:
        asyncio.run(ensure_groups(server.url, PREFIX, shards))
        c0 = census(server.url, server.meter)
        enqueue(server.url, leads, PREFIX, shards)
        written = asyncio.run(drain_all(server.url, PREFIX, shards))
        left = backlog_total(server.meter, PREFIX, shards)
        pending = pending_total(server.meter, PREFIX, shards)
        stored = stored_outcomes(server.meter)
        c1 = census(server.url, server.meter)
    delta = c1.minus(c0)
    outcomes = delta.keys_of("outcome")
    if written != n or left or pending or stored != n:
        raise RuntimeError(
            f"{tag}: {written} outcomes written, {stored} outcomes stored, {left} entries "
            f"left, {pending} pending (want {n}, {n}, 0, 0)"
        )
    overhead = delta.unattributed_per_new_key
    state_keys = delta.keys_of(*PER_LEAD_STATE)
    state_usage = delta.usage_of(*PER_LEAD_STATE)
    return {
        f"{tag}.upserts": n,
        f"{tag}.distinct_leads": distinct,
        f"{tag}.used_B_per_upsert": per(delta.used_memory, n),
        f"{tag}.used_B_per_lead": per(delta.used_memory, distinct),
        f"{tag}.outcome_keys": outcomes,
        f"{tag}.outcome_usage_B_per_outcome": per(delta.usage_of("outcome"), n),
        f"{tag}.outcome_allin_B_per_upsert": per(
            delta.usage_of("outcome") + overhead * outcomes, n
        ),
        f"{tag}.state_keys": state_keys,
        f"{tag}.state_usage_B_per_lead": per(state_usage, distinct),
        f"{tag}.state_allin_B_per_lead": per(state_usage + overhead * state_keys, distinct),
        f"{tag}.unattributed_B_per_new_key": overhead,
        f"{tag}.keyspace_tables_B_per_new_key": per(
            delta.keyspace_tables, sum(k for k in delta.keys.values() if k > 0)
        ),
        f"{tag}.other_keys": delta.keys_of(OTHER),
        f"{tag}.other_B": delta.usage_of(OTHER),
    }, delta


# --- reporting ------------------------------------------------------------------------------


def redis_version(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        server: Any = client.info("server")
        memory: Any = client.info("memory")
        return f"redis-server {server['redis_version']} ({memory.get('mem_allocator', '?')})"
    finally:
        client.close()


def class_table(deltas: Mapping[str, tuple[Delta, int]]) -> str:
    """Every key class that moved, per phase: a new key shape cannot hide."""
    rows: list[list[object]] = []
    for phase, (delta, items) in deltas.items():
        for name in [*KEY_CLASSES, OTHER]:
            keys, usage = delta.keys.get(name, 0), delta.usage.get(name, 0)
            if not keys and not usage:
                continue
            rows.append([phase, name, keys, usage, per(usage, items), delta.sample.get(name, "-")])
        rows.append(
            [
                phase,
                "(not in MEMORY USAGE)",
                "",
                delta.unattributed,
                per(delta.unattributed, items),
                "expires dict, hash-table buckets, allocator rounding",
            ]
        )
    return md_table(
        [
            "phase",
            "key class",
            "keys Δ",
            "MEMORY USAGE Δ (B)",
            "B per item",
            "sample key, encoding, MEMORY USAGE",
        ],
        rows,
    )


def main(argv: Sequence[str]) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m bench.run memory")
    parser.add_argument("--leads", type=int, default=20_000, help="N upserts per phase")
    parser.add_argument("--repeat", type=int, default=10, help="the repeat run: N / this leads")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("worker").setLevel(logging.ERROR)  # the cooldown's warning, every phase
    n, shards = args.leads, args.shards
    distinct = max(1, n // args.repeat)
    started = time.monotonic()

    with embedded_redis() as (url, _):
        server = redis_version(url)
    queue, queue_delta = measure_queue(n, shards, args.seed)
    bulk, bulk_delta = measure_queue(n, shards, args.seed, "bulk")
    cycle, cycle_delta = measure_refused_cycle(n, shards, args.seed)
    unique, unique_delta = measure_retention("distinct", n, n, shards, args.seed)
    repeats, repeats_delta = measure_retention("repeats", n, distinct, shards, args.seed)
    results: dict[str, float] = {**queue, **bulk, **cycle, **unique, **repeats}
    # total = upserts * a + distinct leads * b, from the two retention runs' used_memory
    d1 = unique["distinct.used_B_per_upsert"] * n
    d2 = repeats["repeats.used_B_per_upsert"] * n
    per_lead = (d1 - d2) / (n - distinct) if n != distinct else 0.0
    results["solved.per_upsert_B"] = (d1 - n * per_lead) / n
    results["solved.per_lead_B"] = per_lead
    results["run_s"] = time.monotonic() - started

    queue_rows: list[list[object]] = [
        ["stream entry (producer XADD)", queue["queue.entry_used_B"], queue["queue.entry_usage_B"]],
        ["+ PEL record (XREADGROUP via Ledger.claim)", queue["queue.pel_used_B"], queue["queue.pel_usage_B"]],
        ["+ attempts field (HINCRBY via Ledger.bump_attempts)", queue["queue.attempts_used_B"], queue["queue.attempts_usage_B"]],
        ["= queued, claimed, attempt counted", queue["queue.total_used_B"], queue["queue.total_usage_B"]],
        [f"bulk lane: stream entry + its lead's bulk mark ({int(bulk['bulk.mark_keys']):,} written-fields hashes, {bulk['bulk.mark_usage_B']:.1f} B each)", bulk["bulk.entry_used_B"], bulk["bulk.entry_usage_B"]],
        ["bulk lane: + PEL record", bulk["bulk.pel_used_B"], bulk["bulk.pel_usage_B"]],
        ["bulk lane: + attempts field", bulk["bulk.attempts_used_B"], bulk["bulk.attempts_usage_B"]],
        ["bulk lane: = queued bulk lead, claimed, attempt counted", bulk["bulk.total_used_B"], bulk["bulk.total_usage_B"]],
        [
            f"Drainer cycle refused by a limiter cooldown: PEL + attempts field left at 0, per "
            f"claimed entry ({int(cycle['cycle.claimed']):,} claimed, "
            f"{int(cycle['cycle.attempts_fields']):,} attempts fields)",
            cycle["cycle.used_B"],
            cycle["cycle.usage_B"],
        ],
    ]  # fmt: skip
    r1, r2 = "distinct", "repeats"

    def pair(name: str) -> list[float]:
        return [results[f"{r1}.{name}"], results[f"{r2}.{name}"]]

    retention_rows: list[list[object]] = [
        ["upserts / distinct leads", f"{n:,} / {n:,}", f"{n:,} / {distinct:,}"],
        ["used_memory Δ per upsert", *pair("used_B_per_upsert")],
        ["used_memory Δ per distinct lead", *pair("used_B_per_lead")],
        [f"outcome keys (`{KEY_CLASSES['outcome']}`)", *[int(v) for v in pair("outcome_keys")]],
        ["outcome: MEMORY USAGE per outcome", *pair("outcome_usage_B_per_outcome")],
        ["outcome: all-in per upsert (+ share of not-in-MEMORY-USAGE)", *pair("outcome_allin_B_per_upsert")],
        [f"per-lead state keys ({', '.join(PER_LEAD_STATE)})", *[int(v) for v in pair("state_keys")]],
        ["per-lead state: MEMORY USAGE per distinct lead", *pair("state_usage_B_per_lead")],
        ["per-lead state: all-in per distinct lead", *pair("state_allin_B_per_lead")],
        ["not in MEMORY USAGE, per new key (expires entry, table buckets)", *pair("unattributed_B_per_new_key")],
        ["MEMORY STATS keyspace tables Δ per new key (main + expires, overlaps MEMORY USAGE)", *pair("keyspace_tables_B_per_new_key")],
        ["other keys (count / bytes)", *[f"{int(results[f'{r}.other_keys'])} / {int(results[f'{r}.other_B']):,}" for r in (r1, r2)]],
    ]  # fmt: skip
    body = (
        f"Private {server} per phase, warmed up; {n:,} upserts per phase, {shards} shards, "
        "leads `userN@example.com` with FirstName, LastName, Company, Title; real LeadProducer "
        "and Drainer, stub Marketo answering every call OK. used_memory Δ = INFO memory after "
        "minus before; MEMORY USAGE = SAMPLES 0 summed over SCAN per key class "
        f"({', '.join(f'{k} `{v}`' for k, v in KEY_CLASSES.items())}, else other).\n\n"
        "### Queued lead (bytes per entry)\n\n"
        + md_table(["what", "used_memory Δ / entry", "MEMORY USAGE Δ / entry"], queue_rows)
        + "\n\n### Retained after the drain (7-day TTL)\n\n"
        + md_table(["measure", f"{r1}", f"{r2} (x{args.repeat})"], retention_rows)
        + "\n\nFrom the two used_memory totals (total = upserts x a + distinct leads x b): "
        f"a = **{results['solved.per_upsert_B']:.1f} B per upsert**, "
        f"b = **{results['solved.per_lead_B']:.1f} B per distinct lead**.\n\n"
        "### Every key class that moved\n\n"
        + class_table(
            {
                "queue (claimed + attempt)": (queue_delta, n),
                "bulk queue (claimed + attempt)": (bulk_delta, n),
                "refused Drainer cycle": (cycle_delta, int(cycle["cycle.claimed"])),
                "retained, distinct": (unique_delta, n),
                "retained, repeats": (repeats_delta, n),
            }
        )
        + "\n\nB per item: per entry, claimed entry or upsert. MEMORY USAGE of a stream "
        "overstates its PEL (Redis estimates each radix-tree node at a fixed ~240 B), so for "
        "the queue rows trust used_memory; for the retained rows the keys are small hashes "
        "and MEMORY USAGE is exact up to the expires entry and the hash-table buckets "
        "(power-of-two tables: that share moves with N). "
        f"Run time {results['run_s']:.0f} s."
    )
    print(body)
    if not args.no_write:
        with embedded_redis() as (url, _):
            machine = machine_line(url)
        write_section("memory", f"memory ({n:,} upserts)", machine, body)
    return results
