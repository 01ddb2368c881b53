"""``python -m bench.run <scenario> [options]``: run one benchmark scenario by hand."""

from __future__ import annotations

import importlib
import sys

SCENARIOS = {
    "throughput": "bench.scenarios.throughput",
    "latency": "bench.scenarios.latency",
    "marketo-bound": "bench.scenarios.marketo_bound",
    "soak": "bench.scenarios.soak",
    "memory": "bench.scenarios.memory",
    "lww": "bench.scenarios.lww",
    "steady": "bench.scenarios.steady",
    "unknown-field": "bench.scenarios.unknown_field",
    "api": "bench.scenarios.api",
    "wire": "bench.scenarios.wire",
    "hostile": "bench.scenarios.hostile",
    "failover": "bench.scenarios.failover",
    "backfill": "bench.scenarios.backfill",
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in SCENARIOS:
        sys.exit(f"usage: python -m bench.run {{{','.join(SCENARIOS)}}} [options]")
    module = importlib.import_module(SCENARIOS[argv[0]])
    module.main(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
