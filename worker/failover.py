"""What the granting steps do after a Redis master change (see ``failover.lua``).

Replication is asynchronous, so a failover (or a restart of a master that loses its last
second of writes) can roll back what decides who may call Marketo: a shard's lease or
rest, and the limiter's rate window. From the first granting step that runs on the new
master, leadsync stays quiet:

- the limiter treats the rate window as full for one window, so calls counted on the old
  master and lost with it can never add up to a burst past Marketo's window;
- leases are not granted for :func:`lease_quiet_s`: as long as a call sent before the
  change may still be running or being applied (LEADSYNC_UNKNOWN_OUTCOME_REST_S), since
  its lease and rest may be gone. With LEADSYNC_ENQUEUE_REPLICAS >= 1 every lease,
  renewal and rest is confirmed by WAIT before the call it covers, so they survive the
  switch and only the window's quiet is kept.

The quota count may lose the few calls of the lost second: under a day's share it is
noise, and 20015 from Marketo still stops every pod.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from worker.settings import Settings

#: The Lua function ``failover_quiet_s(guard_key, quiet_s)``, prepended to granting steps.
GUARD_LUA: Final = resources.files("worker").joinpath("failover.lua").read_text(encoding="utf-8")


def lease_quiet_s(settings: Settings) -> float:
    """How long no lease is granted after a master change (see the module's text)."""
    if settings.enqueue_replicas >= 1:
        return 0.0
    return max(settings.unknown_outcome_rest_s, settings.request_timeout_s)
