"""A Kafka-style checker for the pipeline's promises, run after chaos.

The test keeps a :class:`WriteLog` of every upsert the producer acknowledged. Afterwards
:func:`check` compares it with the outcomes in Redis and with what the simulator saw:

* every acknowledged request id has a final outcome (none missing, none stuck);
* Marketo holds the last value written for every lead, and exactly one lead per key;
* how many sends were redundant: a key applied by Marketo more often than it was written
  (a lower bound on duplicate deliveries, since merged writes ride in one call).

:func:`ledger_residue` looks at the ledger itself (entries, pending list, leases), and
:func:`rewritten_finals` checks that a final outcome, once visible, never changes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from producers.contract import Keys, Outcome, OutcomeStatus
from producers.producer import LeadProducer

SUCCESS = frozenset({OutcomeStatus.CREATED, OutcomeStatus.UPDATED})


@dataclass(frozen=True, slots=True)
class Write:
    """One acknowledged upsert: its request id, lead key and the attributes written."""

    request_id: str
    key: str
    attributes: Mapping[str, str]


@dataclass
class WriteLog:
    """Every upsert a producer acknowledged, in the order it was acknowledged."""

    writes: list[Write] = field(default_factory=list)

    def upsert_many(
        self, producer: LeadProducer, records: Sequence[Mapping[str, Any]]
    ) -> list[str]:
        """Enqueue ``records`` (email + attributes each) and log the acknowledged ones."""
        results = producer.upsert_many(records)
        accepted = []
        for record, result in zip(records, results, strict=True):
            if isinstance(result, str):
                self._log(result, record)
                accepted.append(result)
        return accepted

    def upsert(self, producer: LeadProducer, record: Mapping[str, Any]) -> str:
        """Enqueue one record with a single XADD and log it once Redis acknowledged it."""
        rid = producer.upsert(email=record["email"], attributes=record["attributes"])
        self._log(rid, record)
        return rid

    def acknowledged(self, rid: str, record: Mapping[str, Any]) -> None:
        """Log a write acknowledged elsewhere (the HTTP API, a retry loop)."""
        self._log(rid, record)

    def _log(self, rid: str, record: Mapping[str, Any]) -> None:
        key = f"email:{str(record['email']).strip().lower()}"
        attributes = {k: str(v) for k, v in record["attributes"].items()}
        self.writes.append(Write(rid, key, attributes))

    @property
    def request_ids(self) -> list[str]:
        return [w.request_id for w in self.writes]

    def last_values(self) -> dict[str, Mapping[str, str]]:
        """The attributes of the last write of each key (later writes win)."""
        return {w.key: w.attributes for w in self.writes}

    def writes_per_key(self) -> Counter[str]:
        return Counter(w.key for w in self.writes)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the checker found; ``problems()`` is empty when every promise held."""

    accepted: int
    without_final_outcome: tuple[str, ...]
    statuses: Mapping[str, int]
    unexpected_statuses: Mapping[str, int]
    missing_in_marketo: tuple[str, ...]
    stale_in_marketo: tuple[str, ...]
    duplicate_leads_in_marketo: tuple[str, ...]
    redundant_sends: int
    keys_in_concurrent_calls: int

    def problems(self) -> list[str]:
        found = []
        if self.without_final_outcome:
            found.append(
                f"{len(self.without_final_outcome)} of {self.accepted} accepted requests "
                f"have no final outcome (e.g. {self.without_final_outcome[:3]})"
            )
        if self.unexpected_statuses:
            found.append(f"unexpected final statuses {dict(self.unexpected_statuses)}")
        if self.missing_in_marketo:
            found.append(f"{len(self.missing_in_marketo)} keys never reached Marketo")
        if self.stale_in_marketo:
            found.append(f"{len(self.stale_in_marketo)} keys do not hold their last write")
        if self.duplicate_leads_in_marketo:
            found.append(f"{len(self.duplicate_leads_in_marketo)} keys have several leads")
        if self.keys_in_concurrent_calls:
            found.append(f"{self.keys_in_concurrent_calls} keys rode in two calls at once")
        return found


def numbered_records(count: int, *, people: int, tag: str = "v") -> list[dict[str, Any]]:
    """``count`` upserts over ``people`` emails (record ``n`` writes person ``n % people``),
    each with a Company naming the write, so the last value of every person is known."""
    return [
        {
            "email": f"{tag}-person{n % people}@example.com",
            "attributes": {"Company": f"{tag} write {n}", "FirstName": f"P{n % people}"},
        }
        for n in range(count)
    ]


def applied_calls(calls: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Calls in which Marketo wrote records (whatever the client then made of the answer)."""
    return [c for c in calls if sum(c.get("statuses", {}).values()) > 0]


def redundant_sends(calls: Iterable[Mapping[str, Any]], writes_per_key: Mapping[str, int]) -> int:
    """Applications of a key beyond the number of times it was written."""
    applied = Counter(key for c in applied_calls(calls) for key in set(c["keys"]))
    return sum(max(0, n - writes_per_key.get(key, 0)) for key, n in applied.items())


def check(
    log: WriteLog,
    outcomes: Mapping[str, Outcome | None],
    *,
    calls: Sequence[Mapping[str, Any]],
    leads: Sequence[Mapping[str, Any]],
    keys_in_concurrent_calls: int = 0,
    allowed: frozenset[OutcomeStatus] = SUCCESS,
) -> Verdict:
    """Compare the acknowledged writes with the outcomes and the simulator's state."""
    finals = {rid: o for rid, o in outcomes.items() if o is not None and o.status.is_final}
    without = tuple(rid for rid in log.request_ids if rid not in finals)
    statuses = Counter(finals[rid].status.value for rid in log.request_ids if rid in finals)
    unexpected = {s: n for s, n in statuses.items() if OutcomeStatus(s) not in allowed}
    by_key: dict[str, list[Mapping[str, Any]]] = {}
    for lead in leads:
        if lead.get("email"):
            by_key.setdefault(f"email:{str(lead['email']).strip().lower()}", []).append(lead)
    last = log.last_values()
    missing = tuple(k for k in last if k not in by_key)
    stale = tuple(
        k
        for k, attributes in last.items()
        if k in by_key
        and any(by_key[k][-1]["attributes"].get(n) != v for n, v in attributes.items())
    )
    duplicates = tuple(k for k, found in by_key.items() if len(found) > 1)
    return Verdict(
        accepted=len(log.writes),
        without_final_outcome=without,
        statuses=dict(statuses),
        unexpected_statuses=unexpected,
        missing_in_marketo=missing,
        stale_in_marketo=stale,
        duplicate_leads_in_marketo=duplicates,
        redundant_sends=redundant_sends(calls, log.writes_per_key()),
        keys_in_concurrent_calls=keys_in_concurrent_calls,
    )


def rewritten_finals(
    before: Mapping[str, Outcome | None], after: Mapping[str, Outcome | None]
) -> list[str]:
    """Request ids whose final outcome seen in ``before`` differs in ``after``."""
    return [
        rid
        for rid, seen in before.items()
        if seen is not None and seen.status.is_final and after.get(rid) != seen
    ]


@dataclass(frozen=True, slots=True)
class LedgerResidue:
    """What the ledger still holds: entries, pending-list rows, attempt counters, leases.

    ``leases_without_ttl`` counts lease keys that would never expire (a stuck shard)."""

    entries: int
    pending: int
    attempt_counters: int
    leases: int
    leases_without_ttl: int

    @property
    def empty(self) -> bool:
        return not (self.entries or self.pending or self.attempt_counters or self.leases)


def ledger_residue(redis_url: str, shards: int, keys: Keys | None = None) -> LedgerResidue:
    keys = keys or Keys()
    client = redis.Redis.from_url(redis_url)
    try:
        entries = pending = counters = leases = endless = 0
        for shard in range(shards):
            entries += int(client.xlen(keys.stream(shard)))
            pending += int(client.xpending(keys.stream(shard), Keys.GROUP)["pending"])
            counters += int(client.hlen(keys.attempts(shard)))
            ttl_ms = int(client.pttl(keys.lease(shard)))
            if ttl_ms != -2:
                leases += 1
                endless += ttl_ms == -1
        return LedgerResidue(entries, pending, counters, leases, endless)
    finally:
        client.close()


def check_pipeline(
    pipeline: Any,
    log: WriteLog,
    outcomes: Mapping[str, Outcome | None],
    *,
    allowed: frozenset[OutcomeStatus] = SUCCESS,
) -> Verdict:
    """:func:`check` against everything the pipeline's simulator recorded."""
    admin = pipeline.sim.admin
    return check(
        log,
        outcomes,
        calls=admin.calls(),
        leads=admin.leads(),
        keys_in_concurrent_calls=admin.summary()["keys_in_concurrent_calls"],
        allowed=allowed,
    )
