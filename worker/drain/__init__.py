"""Drain cycles: plain async code, no Celery. ``drainer`` runs the lease loop and the
cycle, ``calls`` sends, ``choice`` holds the pure decisions, ``model`` the types."""

from worker.drain.choice import fill_call, pick_batch
from worker.drain.drainer import Drainer
from worker.drain.model import Checkpoint, DrainReport, DrainStatus

__all__ = ["Checkpoint", "DrainReport", "DrainStatus", "Drainer", "fill_call", "pick_batch"]
