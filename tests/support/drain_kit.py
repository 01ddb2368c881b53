"""Drive drain cycles directly: a real Redis, a scripted Marketo behind a MockTransport."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio
from pydantic import SecretStr

from marketo_sim.soap import SimFault, SyncStatus, parse_request_bytes, render_fault, render_success
from producers.contract import (
    Outcome,
    Placed,
    Route,
    encode_lead,
    key_digest,
    validate_lead,
)
from tests.support.outcomes import status_of, stored
from worker.drain import Drainer
from worker.ledger import Ledger
from worker.limits import RedisLimiter
from worker.marketo import MarketoApi, SoapApi
from worker.settings import Settings
from worker.transport import HttpReply, MockTransport

Behaviour = Callable[[list[str | None]], HttpReply]


def ok(emails: list[str | None]) -> HttpReply:
    statuses = [SyncStatus(i + 1, "CREATED") for i in range(len(emails))]
    return HttpReply(200, "text/xml", render_success(statuses))


def fault(code: int) -> Behaviour:
    return lambda _emails: HttpReply(500, "text/xml", render_fault(SimFault(code)))


def poison_on(bad_email: str) -> Behaviour:
    """Fault 20105 for the whole call while the bad record rides in it."""

    def behave(emails: list[str | None]) -> HttpReply:
        return fault(20105)(emails) if bad_email in emails else ok(emails)

    return behave


class Marketo:
    """A scripted Marketo: one behaviour per call, the last one repeats."""

    def __init__(self, *behaviours: Behaviour) -> None:
        self.behaviours = list(behaviours)
        self.calls: list[list[str | None]] = []

    def __call__(self, body: bytes, _headers: object) -> HttpReply:
        emails = [r.email for r in parse_request_bytes(body).records]
        self.calls.append(emails)
        behaviour = self.behaviours.pop(0) if len(self.behaviours) > 1 else self.behaviours[0]
        return behaviour(emails)


class Clock:
    """Real time plus an offset the test moves by hand (so entry ids, which carry Redis's
    time, still compare sensibly with it)."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset_s

    def advance(self, seconds: float) -> None:
        self.offset_s += seconds


def drain_settings(**overrides: object) -> Settings:
    """One shard, no waiting, limits out of reach: what the drain tests start from."""
    return Settings(
        **{
            "shards": 1,
            "flush_interval_s": 0.0,
            "backoff_initial_s": 0.0,
            "backoff_max_s": 0.01,
            "transient_retries": 1,
            "rate_limit_calls": 1000,
            "rate_burst_calls": 1000,  # spacing is the limiter's tests' business
            "max_concurrent_calls": 100,
            **overrides,
        }  # type: ignore[arg-type]
    )


def make(
    redis: redis.asyncio.Redis,
    marketo: Marketo,
    *,
    clock: Clock | None = None,
    wrap_api: Callable[[MarketoApi], MarketoApi] | None = None,
    **overrides: object,
) -> Drainer:
    settings = drain_settings(**overrides)
    ledger = Ledger.for_settings(redis, settings)
    client = SoapApi(
        MockTransport(marketo),
        endpoint="http://marketo.test/soap/mktows/2_2",
        user_id="u",
        encryption_key=SecretStr("k"),
        max_response_bytes=1 << 20,
    )
    limiter = RedisLimiter(redis, settings)
    return Drainer(
        ledger=ledger,
        api=wrap_api(client) if wrap_api else client,
        limiter=limiter,
        settings=settings,
        consumer="c1",
        clock=clock or Clock(),
    )


async def enqueue(drainer: Drainer, *emails: str, shard: int = 0, **attributes: str) -> list[str]:
    """XADD one upsert per email to ``shard``'s stream (as the producer would)."""
    await drainer.ledger.ensure_groups([shard])
    ids = []
    for email in emails:
        lead = validate_lead(email=email, attributes=attributes or None)
        digest = key_digest(lead.key)
        keys = drainer.keys
        placed = Placed(
            shard,
            keys.stream(shard),
            keys.sequence(shard),
            keys.written_fields(shard, digest),
            digest,
            encode_lead(lead),
        )
        command = Route.build(keys, shard + 1).entry(placed)
        entry_id = await drainer.ledger.redis.execute_command(*command)
        ids.append(entry_id.decode())
    return ids


async def outcome_of(drainer: Drainer, entry_id: str, shard: int = 0) -> Outcome:
    """The stored outcome of an entry (it must have one)."""
    found = await stored(drainer.ledger.redis, drainer.keys, f"{shard}-{entry_id}")
    assert found is not None, entry_id
    return found


async def statuses(drainer: Drainer, entry_ids: list[str], shard: int = 0) -> list[str | None]:
    redis = drainer.ledger.redis
    return [await status_of(redis, drainer.keys, f"{shard}-{e}") for e in entry_ids]
