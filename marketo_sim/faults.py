"""Random behaviour of a call: which injected fault (if any) and how long it takes."""

from __future__ import annotations

import random

from marketo_sim.config import SOAP_FAULT_KINDS, SimConfig


def pick_fault(
    config: SimConfig, rng: random.Random, kinds: tuple[str, ...] = SOAP_FAULT_KINDS
) -> str | None:
    """One draw: an injected fault kind among ``kinds`` (one protocol's part of FAULT_KINDS)
    with its configured rate, or None."""
    if not any(config.fault_rate(kind) for kind in kinds):
        return None  # keep the RNG stream untouched when nothing is injected
    draw = rng.random()
    for kind in kinds:
        draw -= config.fault_rate(kind)
        if draw < 0:
            return kind
    return None


def sample_latency_s(config: SimConfig, rng: random.Random) -> float:
    """latency_s * lognormal(0, sigma) + uniform(0, jitter_s); zero when nothing is set."""
    base = config.latency_s
    if base and config.latency_lognormal_sigma > 0:
        base *= rng.lognormvariate(0.0, config.latency_lognormal_sigma)
    jitter = rng.uniform(0.0, config.latency_jitter_s) if config.latency_jitter_s > 0 else 0.0
    return max(0.0, base + jitter)
