"""The work log: per-shard Redis Streams, leases, fenced claims and settlements, one
Lua script per step in ``scripts/``."""

from worker.ledger.base import CLAIMED_ALL, Claimed, RawEntry, Settlement, ShardBacklog
from worker.ledger.redis import SCRIPTS, Ledger

__all__ = ["CLAIMED_ALL", "SCRIPTS", "Claimed", "Ledger", "RawEntry", "Settlement", "ShardBacklog"]
