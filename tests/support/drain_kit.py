"""Drive drain cycles directly: fakeredis, a scripted Marketo behind a StubTransport."""

from __future__ import annotations

from collections.abc import Callable

import fakeredis
from pydantic import SecretStr

from marketo_sim.soap import SimFault, SyncStatus, parse_request_bytes, render_fault, render_success
from producers.contract import Keys, encode_lead, key_digest, validate_lead
from worker.client import MarketoClient
from worker.drain import Drainer
from worker.ledger import Ledger
from worker.limits import RedisLimiter
from worker.settings import Settings
from worker.transport import HttpReply, StubTransport

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


def make(redis: fakeredis.FakeAsyncRedis, marketo: Marketo, **overrides: object) -> Drainer:
    settings = Settings(
        **{
            "shards": 1,
            "flush_interval_s": 0.0,
            "backoff_initial_s": 0.0,
            "backoff_max_s": 0.01,
            "transient_retries": 1,
            "rate_limit_calls": 1000,
            "max_concurrent_calls": 100,
            **overrides,
        }  # type: ignore[arg-type]
    )
    ledger = Ledger(redis, Keys(settings.key_prefix), result_ttl_s=settings.result_ttl_s)
    client = MarketoClient(
        StubTransport(marketo),
        endpoint="http://marketo.test/soap/mktows/2_2",
        user_id="u",
        encryption_key=SecretStr("k"),
        max_response_bytes=1 << 20,
    )
    limiter = RedisLimiter(redis, settings)
    return Drainer(ledger=ledger, client=client, limiter=limiter, settings=settings, consumer="c1")


async def enqueue(drainer: Drainer, *emails: str, **attributes: str) -> list[str]:
    await drainer.ledger.ensure_groups(1)
    ids = []
    for email in emails:
        lead = validate_lead(email=email, attributes=attributes or None)
        entry_id = await drainer.ledger.redis.xadd(
            drainer.keys.stream(0), {"k": key_digest(lead.key), "p": encode_lead(lead)}
        )
        ids.append(entry_id.decode())
    return ids


async def statuses(drainer: Drainer, entry_ids: list[str]) -> list[str | None]:
    values = [
        await drainer.ledger.redis.hget(drainer.keys.outcome(0, e), "status") for e in entry_ids
    ]
    return [v.decode() if v else None for v in values]
