"""Read the simulator's call log: rates and overlap over a time window."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Window:
    """What the calls that started in [start_s, end_s) did."""

    start_s: float
    end_s: float
    calls: int
    leads: int
    busy_s: float  # summed call durations

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def leads_per_s(self) -> float:
        return self.leads / self.length_s if self.length_s > 0 else 0.0

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.length_s if self.length_s > 0 else 0.0

    @property
    def mean_in_flight(self) -> float:
        return self.busy_s / self.length_s if self.length_s > 0 else 0.0

    @property
    def leads_per_call(self) -> float:
        return self.leads / self.calls if self.calls else 0.0


def window(calls: Sequence[dict[str, Any]], start_s: float, end_s: float) -> Window:
    inside = [c for c in calls if start_s <= c["start"] < end_s]
    return Window(
        start_s,
        end_s,
        len(inside),
        sum(int(c["leads"]) for c in inside if c["outcome"] == "ok"),
        sum((c["end"] or end_s) - c["start"] for c in inside),
    )


def whole(calls: Sequence[dict[str, Any]]) -> Window:
    """From the first call's start to the last call's end."""
    if not calls:
        return Window(0.0, 0.0, 0, 0, 0.0)
    first = min(c["start"] for c in calls)
    last = max(c["end"] or c["start"] for c in calls)
    return window(calls, first, last + 1e-9)


def middle(calls: Sequence[dict[str, Any]], share: float = 0.8) -> Window:
    """The middle ``share`` of the span between the first and the last call start:
    ramp-up and the partial tail batches stay outside."""
    starts = sorted(c["start"] for c in calls)
    if len(starts) < 2:
        return whole(calls)
    span = starts[-1] - starts[0]
    margin = span * (1 - share) / 2
    return window(calls, starts[0] + margin, starts[-1] - margin)


def sliding_counts(
    calls: Sequence[dict[str, Any]], start_s: float, end_s: float, width_s: float
) -> list[int]:
    """Calls started in each window [t, t + width_s) for t stepping by 1 s over the range."""
    starts = sorted(c["start"] for c in calls)
    counts = []
    t = start_s
    while t + width_s <= end_s + 1e-9:
        counts.append(sum(1 for s in starts if t <= s < t + width_s))
        t += 1.0
    return counts


def bucket_counts(
    calls: Sequence[dict[str, Any]], start_s: float, end_s: float, width_s: float
) -> list[int]:
    """Calls started in each consecutive bucket [start_s + k * width_s, ...) up to end_s."""
    buckets = [0] * max(1, int((end_s - start_s) // width_s))
    for call in calls:
        index = int((call["start"] - start_s) // width_s)
        if 0 <= index < len(buckets):
            buckets[index] += 1
    return buckets
