"""Deterministic crash points for the crash-safety tests (LEADSYNC_FAULT_POINT).

``after_claim``, ``after_send`` and ``after_commit`` mark the moments of a drain cycle
where a crash is most interesting; ``:child`` kills the pool process, ``:main`` the
worker's main process (its children die with it)."""

from __future__ import annotations

import os
import signal


def crash_if(point: str, configured: str) -> None:
    """SIGKILL the configured process when ``point`` is the configured point."""
    name, _, target = configured.partition(":")
    if not configured or name != point:
        return
    if target == "main":
        os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
