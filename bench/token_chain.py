"""Reproduction (run by hand, ~70 s): how many identity calls does one TokenSource make
per token lifetime against a Marketo that returns the same token (with what is left of its
life) until it expires? ``python -m bench.token_chain``; see bench/RESULTS.md, REST beside SOAP."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio
from pydantic import SecretStr

from marketo_sim.config import SimConfig
from marketo_sim.embedded import embedded_redis
from marketo_sim.runner import SimulatorThread
from worker.errors import TransientError
from worker.marketo.rest.tokens import TokenSource
from worker.transport.aiohttp_transport import AiohttpTransport

LIFETIME_S = 64.0  # <= 2 x REFRESH_MARGIN_S: the halving branch, as in the last 60 s of 3600
RUN_S = 70.0


async def main(redis_url: str, base: str, sim: SimulatorThread) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    transport = AiohttpTransport.create(
        request_timeout_s=5, connect_timeout_s=2, max_response_bytes=1 << 20
    )
    fetches: list[float] = []
    t0 = time.monotonic()
    source = TokenSource(
        client,
        transport,
        identity_url=base + "/identity",
        client_id=sim.config.client_id,
        client_secret=SecretStr(sim.config.client_secret),
        key_prefix="chain",
        on_fetch=lambda: fetches.append(round(time.monotonic() - t0, 2)),
    )
    errors = 0
    while time.monotonic() - t0 < RUN_S:  # a busy cluster: a token wanted every 50 ms
        try:
            await source.token()
        except TransientError:
            errors += 1
        await asyncio.sleep(0.05)
    print("identity fetches at (s):", fetches)
    print("token() TransientErrors (expires_in 0):", errors)
    print("sim identity:", sim.admin.summary()["identity"])
    await transport.session.close()
    await client.aclose()


if __name__ == "__main__":
    with (
        embedded_redis() as (url, _),
        SimulatorThread(SimConfig(token_lifetime_s=LIFETIME_S)) as sim,
    ):
        asyncio.run(main(url, sim.base_url, sim))
