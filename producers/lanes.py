"""The two lanes an upsert can take.

``live`` (the default) is for the apps' own writes: sent as soon as a batch is due.
``bulk`` is for backfills: its own stream per shard, served only while no live batch of
the shard is waiting, under its own daily call budget. A lead's writes keep their order
across the lanes (the worker's rules, docs/architecture.md "Lanes").

A bulk entry of shard ``s`` lives in the stream numbered ``shards + s``: its request id
is ``"<shards + s>-<entry id>"``, read like any other.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

from producers.errors import InvalidLead

Lane = Literal["live", "bulk"]
LANES: Final[tuple[Lane, ...]] = get_args(Lane)


def check_lane(value: object) -> Lane:
    """``value`` as a lane, or InvalidLead naming the field."""
    if value not in LANES:
        raise InvalidLead("lane", "must be live or bulk")
    return value  # type: ignore[return-value]


def stream_index(shard: int, shards: int, lane: Lane) -> int:
    """The stream (and request-id number) of ``shard`` in ``lane``."""
    return shard + shards if lane == "bulk" else shard


def lane_of(index: int, shards: int) -> tuple[Lane, int]:
    """The lane and shard of a stream number."""
    return ("bulk", index - shards) if index >= shards else ("live", index)
