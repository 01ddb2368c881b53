"""People written in waves, shared by the ``lww`` and ``wire`` scenarios.

N upserts over P people: write ``n`` sets ``Company`` to ``"person<p> write <n>"`` (and
whatever else the scenario adds), so the last write of every person is known. The writes
go in through the real ``LeadProducer`` in waves while the scenario's workers drain; then
the simulator's lead database (each lead with its write history) is compared with the
last write of each person, and the workers' INFO lines give the drains by end status.
"""

from __future__ import annotations

import argparse
import itertools
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from bench.harness import WORKDIR, Worker
from bench.systems import Ticker, backlog, outcome_statuses
from producers.contract import Keys
from producers.producer import LeadProducer

SUCCESS = ("CREATED", "UPDATED")
WRITE_RE = re.compile(r" write (\d+)$")
#: A drain's INFO log line: one shard (``shard=N``), or several sent together
#: (``shards=0,1,...``).
DRAIN_LINE_RE = re.compile(r"shards?=[\d,]+ status=(\w+) calls=(\d+)")
#: leadsync settings that make a fault cost seconds (as tests/support/pipeline.py's
#: FAST_RECOVERY_ENV; a setting one tree does not know is ignored there), and the drain's
#: one INFO line per cycle.
FAST_RECOVERY = {
    "redis_socket_timeout_s": 1,
    "connect_timeout_s": 2,
    "backoff_initial_s": 0.1,
    "backoff_max_s": 1,
    "throttle_cooldown_s": 1,
    "hold_probe_interval_s": 1,
    "log_level": "INFO",
}


def quiet_sim(latency: float, seed: int) -> dict[str, Any]:
    """Simulator fields: ``latency`` per call (+ up to half as much jitter), its limits
    out of the way."""
    return {
        "latency_s": latency,
        "latency_jitter_s": latency / 2,
        "rate_limit_calls": 100_000,
        "max_concurrent": 100,
        "daily_quota": 10_000_000,
        "seed": seed,
    }


def make_writes(
    people: int, writes: int, seed: int, prefix: str, extra: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Write ``n`` goes to the person at ``n`` in a concatenation of shuffles of the people:
    email ``<prefix>-person<p>@example.com``, ``Company`` ``person<p> write <n>``, and each
    attribute of ``extra`` formatted with ``p`` and ``n`` (``{"Title": "write {n}"}``)."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < writes:
        cycle = list(range(people))
        rng.shuffle(cycle)
        order.extend(cycle)
    return [
        {
            "email": f"{prefix}-person{p}@example.com",
            "attributes": {
                "Company": f"person{p} write {n}",
                **{name: value.format(p=p, n=n) for name, value in extra.items()},
            },
        }
        for n, p in enumerate(order[:writes])
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the waves and of the workers that drain them, the same in every
    scenario of people written in waves."""
    parser.add_argument("--waves", type=int, default=10)
    parser.add_argument("--pause-s", type=float, default=3.0, help="between waves")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="worker process groups")
    parser.add_argument("--concurrency", type=int, default=2, help="processes per group")
    parser.add_argument("--max-concurrent", type=int, default=10, help="leadsync's")
    parser.add_argument("--seed", type=int, default=1)


def write_number(value: object) -> int | None:
    """``n`` of a value ending in `` write <n>``, else None."""
    match = WRITE_RE.search(str(value or ""))
    return int(match.group(1)) if match else None


# --- writing the waves ---------------------------------------------------------------------


@dataclass
class Written:
    """What the producer saw: a request id per write (None: refused at enqueue), the
    outcome status of each accepted one, and the times from the first wave."""

    ids: list[str | None]
    statuses: list[str]
    write_s: float
    drain_s: float
    backlog_left: int

    @property
    def upserts(self) -> int:
        return sum(1 for r in self.ids if r is not None)


def write_and_drain(
    redis_url: str,
    env: Mapping[str, str],
    records: Sequence[Mapping[str, Any]],
    args: argparse.Namespace,
    *,
    tick: Callable[[float], None] = lambda elapsed: None,
    pause_after_last: bool = True,
    no_outcome: str = "UNKNOWN",
) -> Written:
    """Upsert ``records`` in ``args.waves`` waves ``args.pause_s`` apart (also after the
    last one if ``pause_after_last``) while the bench ticks, wait up to ``args.timeout_s``
    for the backlog of ``args.shards`` shards to drain, and read the outcomes
    (``no_outcome`` where there is none). ``tick`` is called with the seconds since the
    first wave every 50 ms of waiting."""
    shards, waves, pause_s = args.shards, args.waves, args.pause_s
    per_wave = -(-len(records) // waves)
    keys = Keys(env["LEADSYNC_KEY_PREFIX"])
    client = redis.Redis.from_url(redis_url)
    ids: list[str | None] = []
    released = time.monotonic()

    def wait(seconds: float, until: Callable[[], bool] = lambda: False) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not until():
            tick(time.monotonic() - released)
            time.sleep(0.05)

    try:
        with (
            LeadProducer.from_url(
                redis_url, key_prefix=env["LEADSYNC_KEY_PREFIX"], shards=shards
            ) as producer,
            Ticker(env),
        ):
            released = time.monotonic()
            for start in range(0, len(records), per_wave):
                wave = producer.upsert_many(records[start : start + per_wave])
                ids.extend(r if isinstance(r, str) else None for r in wave)
                if pause_after_last or start + per_wave < len(records):
                    wait(pause_s)
            write_s = time.monotonic() - released
            wait(args.timeout_s, until=lambda: backlog(client, keys, shards) == 0)
            drain_s = time.monotonic() - released
            left = backlog(client, keys, shards)
            statuses = outcome_statuses(producer, ids, no_outcome)
    finally:
        client.close()
    return Written(ids, statuses, write_s, drain_s, left)


# --- what Marketo ended with ---------------------------------------------------------------


@dataclass
class Compared:
    """The simulator's leads against the last accepted write of each person."""

    #: email -> the number of the person's last accepted write
    last: dict[str, int]
    #: lowercased email -> the simulator's leads with that email
    by_email: dict[str, list[Mapping[str, Any]]]
    #: (email, last write, write Marketo holds): last write CREATED/UPDATED, Marketo another
    stale: list[tuple[str, int, int | None]]
    #: last write CREATED/UPDATED, no lead with the email
    missing: int
    #: people whose last write did not end CREATED/UPDATED
    not_success: int

    @property
    def stale_older(self) -> int:
        return sum(1 for _, n, h in self.stale if h is not None and h < n)

    @property
    def stale_examples(self) -> list[str]:
        return [f"{e}: last write {n}, Marketo holds {h}" for e, n, h in self.stale[:3]]

    @property
    def duplicate_leads(self) -> int:
        return sum(1 for found in self.by_email.values() if len(found) > 1)


def compare(
    records: Sequence[Mapping[str, Any]],
    ids: Sequence[str | None],
    statuses: Sequence[str],
    db: Iterable[Mapping[str, Any]],
    *,
    also: Sequence[str] = (),
) -> Compared:
    """Compare ``db`` (``/admin/leads``) with the last accepted write of each person: a
    person is stale when Marketo's lead holds another write in ``Company`` (or in one of
    ``also``, attributes valued ``write <n>``)."""
    outcomes = iter(statuses)
    status_by_write = {
        n: (next(outcomes) if rid is not None else "REJECTED") for n, rid in enumerate(ids)
    }
    last: dict[str, int] = {}
    for n, record in enumerate(records):
        if ids[n] is not None:
            last[str(record["email"])] = n
    by_email: dict[str, list[Mapping[str, Any]]] = {}
    for lead in db:
        if lead.get("email"):
            by_email.setdefault(str(lead["email"]).lower(), []).append(lead)
    stale: list[tuple[str, int, int | None]] = []
    missing = not_success = 0
    for email, n in last.items():
        if status_by_write[n] not in SUCCESS:
            not_success += 1
            continue
        found = by_email.get(email)
        if not found:
            missing += 1
            continue
        attributes = found[-1]["attributes"]
        held = write_number(attributes.get("Company"))
        if held != n or any(write_number(f" {attributes.get(name)}") != n for name in also):
            stale.append((email, n, held))
    return Compared(last, by_email, stale, missing, not_success)


def older_after_newer(history: Iterable[Mapping[str, Any]]) -> bool:
    """Whether a lead's write history applied a lower write number after a higher one."""
    numbers = [write_number(w["attributes"].get("Company")) for w in history]
    known = [n for n in numbers if n is not None]
    return any(b < a for a, b in itertools.pairwise(known))


def drains_logged(workers: Iterable[Worker]) -> dict[str, int]:
    """Drains by end status, from the INFO lines in the workers' logs."""
    drains: Counter[str] = Counter()
    for worker in workers:
        log = WORKDIR / f"{worker.name}.log"
        if log.exists():
            for match in DRAIN_LINE_RE.finditer(log.read_text(errors="replace")):
                drains[match.group(1)] += 1
    return dict(sorted(drains.items()))
