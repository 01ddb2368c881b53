"""One REST token for the cluster: fetched once under a Redis lock however many workers
ask at once, reused until shortly before it expires, dropped on 601/602 (only if it is
still the one that failed), and never fetched with the secret in a URL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from urllib.parse import parse_qs

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from producers.contract import validate_lead
from worker.errors import AuthError, ResignError, TransientError
from worker.marketo.base import SyncStatus
from worker.marketo.rest.api import RestApi
from worker.marketo.rest.codec import RestOptions
from worker.marketo.rest.tokens import EXPIRY_SAFETY_S, TokenSource
from worker.transport import HttpReply, MockTransport

pytestmark = pytest.mark.integration


class Identity:
    """A scripted identity endpoint and leads.json."""

    def __init__(self, expires_in: int = 3600) -> None:
        self.expires_in = expires_in
        self.fetches = 0
        self.urls: list[str] = []
        self.bodies: list[bytes] = []
        self.leads_answer: list[dict[str, object]] = []

    async def __call__(self, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        if headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            self.fetches += 1
            self.bodies.append(body)
            await asyncio.sleep(0.05)  # a slow identity call: others must wait, not fetch
            document = {
                "access_token": f"token-{self.fetches}:int",
                "token_type": "bearer",
                "expires_in": self.expires_in,
                "scope": "api@x.com",
            }
            return HttpReply(200, "application/json", json.dumps(document).encode())
        answer = (
            self.leads_answer.pop(0)
            if self.leads_answer
            else {
                "requestId": "r",
                "success": True,
                "result": [{"id": 1, "status": "created"}],
            }
        )
        return HttpReply(200, "application/json", json.dumps(answer).encode())


def source(redis: Redis, identity: Identity) -> TokenSource:
    return TokenSource(
        redis,
        MockTransport(identity),
        identity_url="http://mkto.test/identity",
        client_id="client-1",
        client_secret=SecretStr("s3cret"),
        key_prefix="test",
    )


async def test_many_workers_asking_at_once_cause_one_identity_call(aredis: Redis) -> None:
    identity = Identity()
    tokens = await asyncio.gather(*(source(aredis, identity).token() for _ in range(12)))
    assert identity.fetches == 1
    assert set(tokens) == {"token-1:int"}
    ttl_ms = await aredis.pttl(source(aredis, identity).key)
    assert 0 < ttl_ms <= (3600 - EXPIRY_SAFETY_S) * 1000
    form = parse_qs(identity.bodies[0].decode())
    assert form == {
        "grant_type": ["client_credentials"],
        "client_id": ["client-1"],
        "client_secret": ["s3cret"],
    }


async def test_a_dropped_token_is_fetched_once_more_and_a_newer_one_is_kept(aredis: Redis) -> None:
    identity = Identity()
    first = source(aredis, identity)
    old = await first.token()
    await first.invalidate(old)
    new = await first.token()
    assert (old, new, identity.fetches) == ("token-1:int", "token-2:int", 2)
    await first.invalidate(old)  # a slow worker reporting the old token's 602
    assert await first.token() == new, "the newer token stays"
    assert identity.fetches == 2


async def test_an_already_expired_token_is_not_shared(aredis: Redis) -> None:
    identity = Identity(expires_in=0)
    with pytest.raises(TransientError, match="twice"):
        await source(aredis, identity).token()
    assert not await aredis.exists(source(aredis, identity).key)


async def test_refused_credentials_hold_the_pipeline(aredis: Redis) -> None:
    async def refuse(body: bytes, headers: Mapping[str, str]) -> HttpReply:
        return HttpReply(401, "application/json", b'{"error":"unauthorized"}')

    tokens = TokenSource(
        aredis,
        MockTransport(refuse),
        identity_url="http://mkto.test/identity",
        client_id="c",
        client_secret=SecretStr("bad"),
        key_prefix="test",
    )
    with pytest.raises(AuthError, match="LEADSYNC_MARKETO_CLIENT_SECRET"):
        await tokens.token()


async def test_an_expired_token_at_leads_json_is_dropped_and_the_retry_fetches_anew(
    aredis: Redis,
) -> None:
    identity = Identity()
    identity.leads_answer.append(
        {
            "requestId": "r",
            "success": False,
            "errors": [{"code": "602", "message": "Access token expired"}],
        }
    )
    transport = MockTransport(identity)
    api = RestApi(
        transport, source(aredis, identity), rest_url="http://mkto.test", options=RestOptions()
    )
    lead = validate_lead(email="a@x.com")
    with pytest.raises(ResignError):
        await api.sync([lead], dedup=True)
    (result,) = await api.sync([lead], dedup=True)
    assert result.status is SyncStatus.CREATED
    assert identity.fetches == 2
    leads_calls = [b for b in transport.requests if b.startswith(b"{")]
    assert len(leads_calls) == 2


async def test_a_token_stored_while_this_process_took_the_lock_is_used_not_fetched_again(
    aredis: Redis,
) -> None:
    """The race behind a flaky double fetch: this process reads no token, another stores
    its token and frees the lock, then this process takes the lock. It must use that
    token, not fetch a second one."""
    identity = Identity()
    tokens = source(aredis, identity)
    real_get = aredis.get
    reads = 0

    async def get_then_race(name: str) -> object:
        nonlocal reads
        reads += 1
        value = await real_get(name)
        if reads == 1:  # the other process finishes its fetch right after this read
            await aredis.set(tokens.key, "token-other:int", px=60_000)
        return value

    aredis.get = get_then_race  # type: ignore[method-assign]
    try:
        assert await tokens.token() == "token-other:int"
    finally:
        aredis.get = real_get  # type: ignore[method-assign]
    assert identity.fetches == 0


class MarketoIdentity:
    """Marketo's identity endpoint as documented: until the token expires, every call
    answers the same token with its remaining life; then a new one."""

    def __init__(self, lifetime_s: float) -> None:
        self.lifetime_s = lifetime_s
        self.calls = 0
        self.issued: list[float] = []

    async def __call__(self, body: bytes, headers: Mapping[str, str]) -> HttpReply:
        self.calls += 1
        now = time.monotonic()
        if not self.issued or now >= self.issued[-1] + self.lifetime_s:
            self.issued.append(now)
        left = max(0, int(self.issued[-1] + self.lifetime_s - now))
        document = {
            "access_token": f"token-{len(self.issued)}",
            "token_type": "bearer",
            "expires_in": left,
            "scope": "x",
        }
        return HttpReply(200, "application/json", json.dumps(document).encode())


async def test_a_token_at_its_end_is_waited_out_not_refreshed_into_ever_shorter_lives(
    aredis: Redis,
) -> None:
    """Refreshing early gets the same token back with what it has left; leadsync keeps
    a token until its end, then waits it out and takes the new one: about one identity
    call per token, not a call for every halving of the rest of its life."""
    identity = MarketoIdentity(lifetime_s=EXPIRY_SAFETY_S + 2)
    tokens = source(aredis, identity)
    seen = set()
    deadline = time.monotonic() + 2 * identity.lifetime_s + 1
    while time.monotonic() < deadline:
        seen.add(await tokens.token())
        await asyncio.sleep(0.05)
    assert len(seen) >= 2, "the token was renewed"
    # Per token: the first fetch, at most one at its end (same token, little left), and
    # the fetch after waiting it out, which is the next token's first.
    assert identity.calls <= 2 * len(identity.issued), (identity.calls, len(identity.issued))
