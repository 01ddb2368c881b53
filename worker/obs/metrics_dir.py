"""The shared directory of prometheus_client's multiprocess mode, chosen at import.

prometheus_client picks its value store when first imported: every pool process must
write into one shared directory, so this module sets PROMETHEUS_MULTIPROC_DIR before
anything imports the library (worker.app imports it first).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

#: The directory this process made for itself (None when one was configured).
OWN_DIR: str | None = None

if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    OWN_DIR = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="leadsync-metrics-")
    # The `celery` command loads Flower's plugin, which imports prometheus_client before
    # worker.app: pick the store again, so metrics made from now on are multiprocess.
    if "prometheus_client.values" in sys.modules:
        _values = sys.modules["prometheus_client.values"]
        _values.ValueClass = _values.get_value_class()  # type: ignore[attr-defined]


def remove_own() -> None:
    """Remove the directory this process made (a configured one stays)."""
    if OWN_DIR is not None:
        shutil.rmtree(OWN_DIR, ignore_errors=True)
