"""The work log: per-shard Redis Streams, leases, fenced claims and settlements, one
Lua script per step in ``scripts/``."""

from worker.ledger.redis import (
    CLAIMED_ALL,
    SCRIPTS,
    Claimed,
    Ledger,
    RawEntry,
    Settlement,
    ShardBacklog,
)

__all__ = ["CLAIMED_ALL", "SCRIPTS", "Claimed", "Ledger", "RawEntry", "Settlement", "ShardBacklog"]
