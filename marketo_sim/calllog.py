"""Every call the simulator saw, for the admin API: timing, keys, outcome and overlap."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class CallRecord:
    call_id: int
    start_s: float  # epoch seconds
    protocol: str = "soap"  # soap | rest
    operation: str = "sync"  # sync (syncMultipleLeads, Sync Leads) | describe
    keys: tuple[str, ...] = ()
    end_s: float | None = None
    # ok | fault | http_502 | truncated | doctype | hang | rejected | gateway_504 (answered
    # 504 at once, stays "in_flight" until Marketo has applied it).
    outcome: str = "in_flight"
    fault_code: int | None = None  # a SOAP fault code, or a REST whole-call error code
    statuses: dict[str, int] = field(default_factory=dict)
    overlap: int = 0  # the most other calls in flight at any moment of this one

    def tally(self, statuses: Iterable[str]) -> None:
        """Count the per-record statuses of an answered call (each protocol's own spelling)."""
        for status in statuses:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "protocol": self.protocol,
            "operation": self.operation,
            "start": self.start_s,
            "end": self.end_s,
            "leads": len(self.keys),
            "keys": list(self.keys),
            "outcome": self.outcome,
            "fault_code": self.fault_code,
            "statuses": dict(self.statuses),
            "overlap": self.overlap,
        }


class CallLog:
    """Calls in arrival order, plus the calls in flight right now."""

    def __init__(self) -> None:
        self.calls: list[CallRecord] = []
        self.in_flight: dict[int, CallRecord] = {}
        self.max_concurrency = 0
        self.overlapping_keys: set[str] = set()

    def start(self, start_s: float, protocol: str = "soap", operation: str = "sync") -> CallRecord:
        record = CallRecord(
            call_id=len(self.calls) + 1, start_s=start_s, protocol=protocol, operation=operation
        )
        others = len(self.in_flight)
        record.overlap = others
        for other in self.in_flight.values():
            other.overlap = max(other.overlap, others)
        self.calls.append(record)
        self.in_flight[record.call_id] = record
        self.max_concurrency = max(self.max_concurrency, others + 1)
        return record

    def set_keys(self, record: CallRecord, keys: tuple[str, ...]) -> None:
        record.keys = keys
        mine = set(keys)
        for other in self.in_flight.values():
            if other is not record:
                self.overlapping_keys |= mine.intersection(other.keys)

    def finish(self, record: CallRecord, end_s: float) -> None:
        record.end_s = end_s
        self.in_flight.pop(record.call_id, None)

    def summary(self, window_s: float) -> dict[str, Any]:
        faults = Counter(str(c.fault_code) for c in self.calls if c.fault_code is not None)
        outcomes = Counter(c.outcome for c in self.calls)
        statuses: Counter[str] = Counter()
        for call in self.calls:
            statuses.update(call.statuses)
        sizes = [len(c.keys) for c in self.calls if c.outcome == "ok" and c.operation == "sync"]
        return {
            "calls": len(self.calls),
            "calls_by_protocol": dict(Counter(c.protocol for c in self.calls)),
            # Calls by outcome; a gateway_504 call counts under "in_flight" until applied.
            "outcomes": dict(outcomes),
            "in_flight": len(self.in_flight),
            "faults_by_code": dict(faults),
            "statuses": dict(statuses),
            "leads_per_call": {
                "calls": len(sizes),
                "total": sum(sizes),
                "min": min(sizes, default=0),
                "max": max(sizes, default=0),
                "mean": sum(sizes) / len(sizes) if sizes else 0.0,
            },
            "max_concurrency": self.max_concurrency,
            "window_s": window_s,
            "max_calls_in_window": max_in_window([c.start_s for c in self.calls], window_s),
            "keys_in_concurrent_calls": len(self.overlapping_keys),
        }


def max_in_window(starts: list[float], window_s: float) -> int:
    """The most start times that fit in any half-open window of ``window_s`` seconds."""
    ordered = sorted(starts)
    best = 0
    left = 0
    for right, moment in enumerate(ordered):
        while moment - ordered[left] >= window_s:
            left += 1
        best = max(best, right - left + 1)
    return best
