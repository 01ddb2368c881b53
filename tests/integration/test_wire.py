"""The real wire, over real sockets: replies that arrive in pieces, a gateway that answers
504 while Marketo may still apply the call, a connection dropped after the request, a
reply cut short, and a worker paused between its lease renewal and the send.

Issue 17 (review F1, F2, F3, F13, F14, F15, F18). Of the twelve tests first written here
(96097bd), eleven failed on the code before the fix (96097bd^); the reply over the size cap
passed, since the old single read already refused a body past its cap. Of the tests added
since, the dedup=false ones (a call cut on the wire by the drain's timeout or a
cancellation) failed before f1278c6."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Sequence

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from marketo_sim.soap import ParsedAttribute, SyncStatus, parse_request_bytes, render_success
from producers.contract import Route, validate_lead
from tests.support.drain_kit import Marketo, drain_settings, enqueue, make, ok, statuses
from tests.support.outcomes import stored
from tests.support.wire_server import Reply, WireServer, wire_server
from worker.drain import Drainer
from worker.errors import (
    OutcomeUnknown,
    ProtocolError,
    ReplyLost,
    TransportError,
)
from worker.ledger import Ledger
from worker.limits import RedisLimiter
from worker.marketo import SoapApi
from worker.marketo.base import PreparedCall, SyncResult
from worker.marketo.rest.api import RestApi
from worker.marketo.rest.codec import RestOptions
from worker.marketo.rest.tokens import TokenSource, fetch_token
from worker.transport import AiohttpTransport

pytestmark = pytest.mark.integration

GATEWAY_504 = Reply(504, "text/html", b"<html><body><h1>504 Gateway Time-out</h1></body></html>")


@pytest.fixture
def redis(aredis: Redis) -> Redis:
    return aredis


def transport(max_response_bytes: int = 8 << 20, timeout_s: float = 5.0) -> AiohttpTransport:
    return AiohttpTransport.create(
        request_timeout_s=timeout_s, connect_timeout_s=2.0, max_response_bytes=max_response_bytes
    )


def soap_api(url: str, wire: AiohttpTransport) -> SoapApi:
    return SoapApi(
        wire,
        endpoint=url + "/soap/mktows/2_2",
        user_id="u",
        encryption_key=SecretStr("k"),
        max_response_bytes=wire.max_response_bytes,
    )


def soap_ok(pieces: int = 1, gap_s: float = 0.0) -> Callable[[bytes], Reply]:
    """Every lead CREATED, the reply written in ``pieces`` parts ``gap_s`` apart."""

    def script(body: bytes) -> Reply:
        count = len(parse_request_bytes(body).records)
        statuses = [SyncStatus(i + 1, "CREATED") for i in range(count)]
        return Reply(body=render_success(statuses), pieces=pieces, gap_s=gap_s)

    return script


def leads(count: int) -> list[object]:
    return [validate_lead(email=f"person{i}@example.com") for i in range(count)]


# --- the transport: a reply is whole or an error, never a prefix -------------------------


async def test_a_300_lead_soap_reply_in_pieces_is_read_whole() -> None:
    """F1: one ``content.read(n)`` returned what had arrived so far (20,000 of 60,007
    bytes): the batch Marketo applied was parsed as malformed and sent again."""
    async with wire_server(soap_ok(pieces=6, gap_s=0.05)) as server:
        wire = transport()
        try:
            results = await soap_api(server.url, wire).sync(leads(300), dedup=True)  # type: ignore[arg-type]
        finally:
            await wire.close()
    assert len(results) == 300
    assert {r.status.value for r in results} == {"CREATED"}
    assert len(server.requests) == 1


async def test_rest_and_identity_replies_in_pieces_are_read_whole(redis: Redis) -> None:
    token_body = json.dumps(
        {"access_token": "t" * 40, "token_type": "bearer", "expires_in": 3599, "scope": "x"}
    ).encode()

    def script(body: bytes) -> Reply:
        if body.startswith(b"grant_type"):
            return Reply(content_type="application/json", body=token_body, pieces=3, gap_s=0.05)
        count = len(json.loads(body)["input"])
        result = [{"id": i + 1, "status": "created"} for i in range(count)]
        answer = {"requestId": "r#1", "success": True, "result": result}
        return Reply(
            content_type="application/json", body=json.dumps(answer).encode(), pieces=5, gap_s=0.05
        )

    async with wire_server(script) as server:
        wire = transport()
        try:
            token, _ = await fetch_token(
                wire,
                server.url + "/identity/oauth/token",
                client_id="c",
                client_secret=SecretStr("s"),
            )
            assert token == "t" * 40
            api = rest_api(redis, server.url, wire)
            results = await api.sync(leads(300), dedup=True)  # type: ignore[arg-type]
        finally:
            await wire.close()
    assert [r.lead_id for r in results] == list(range(1, 301))


async def test_a_reply_cut_short_is_an_unknown_outcome_never_a_prefix() -> None:
    body = render_success([SyncStatus(1, "CREATED")])
    async with wire_server(lambda _b: Reply(body=body, cut_at=len(body) // 2)) as server:
        wire = transport()
        try:
            with pytest.raises(OutcomeUnknown):
                await soap_api(server.url, wire).sync(leads(1), dedup=True)  # type: ignore[arg-type]
        finally:
            await wire.close()


async def test_a_reply_over_the_cap_is_an_error_while_it_streams() -> None:
    big = b"<x>" + b"a" * 200_000 + b"</x>"
    async with wire_server(lambda _b: Reply(body=big, pieces=10, chunked=True)) as server:
        wire = transport(max_response_bytes=50_000)
        try:
            with pytest.raises(ProtocolError, match="larger than 50000"):
                await wire.post(server.url + "/x", b"q", {})
        finally:
            await wire.close()


async def test_a_refused_connection_is_not_received_and_a_drop_after_the_request_is_unknown() -> (
    None
):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    wire = transport()
    try:
        with pytest.raises(TransportError) as caught:
            await wire.post(f"http://127.0.0.1:{closed_port}/x", b"q", {})
        assert not isinstance(caught.value, OutcomeUnknown), "connect refused: never received"
        async with wire_server(lambda _b: Reply(drop=True)) as server:
            with pytest.raises(ReplyLost, match="after the request was sent"):
                await wire.post(server.url + "/x", b"q", {})
            assert server.requests == [b"q"]
    finally:
        await wire.close()


# --- the drain: a maybe-applied call is never resent while Marketo may run it -------------


def drainer_on(
    redis: Redis,
    server: WireServer,
    *,
    wrap: Callable[[SoapApi], object] = lambda api: api,
    **overrides: object,
) -> Drainer:
    """A drainer whose SOAP API talks to ``server`` over a real aiohttp transport."""
    return make(
        redis,
        Marketo(ok),
        wrap_api=lambda _mock: wrap(soap_api(server.url, transport())),  # type: ignore[arg-type,return-value]
        **{"unknown_outcome_rest_s": 30.0, **overrides},
    )


async def close(*drainers: Drainer) -> None:
    for drainer in drainers:
        api = getattr(drainer.api, "api", drainer.api)
        assert isinstance(api, SoapApi | RestApi)
        assert isinstance(api.transport, AiohttpTransport)
        await api.transport.close()


async def enqueue_once(drainer: Drainer, email: str, *, dedup: bool) -> str:
    await drainer.ledger.ensure_groups([0])
    route = Route.build(drainer.keys, 1)
    command = route.entry(route.place(validate_lead(email=email, dedup=dedup)))
    entry_id = await drainer.ledger.redis.execute_command(*command)
    return str(entry_id.decode())


async def test_a_gateway_504_is_not_resent_and_the_shard_rests_for_every_sender(
    redis: Redis,
) -> None:
    """F2, F3: a 504 after the request was written was retried 0.5-1 s later, and a queued
    or redelivered drain message ignored the rest: one key in two calls while Marketo may
    still be applying the first."""
    async with wire_server(lambda _b: GATEWAY_504) as server:
        first = drainer_on(redis, server)
        queued = drainer_on(redis, server)  # another worker with a message already queued
        try:
            ids = await enqueue(first, "a@x.com", "b@x.com")
            report = await first.drain(0)
            assert report.status == "backoff"
            assert len(server.requests) == 1, "never retried in place"
            assert (await first.limiter.state()).slots_in_use == 1, "Marketo still counts it"
            assert (await queued.drain(0)).status == "busy"
            assert (await queued.drain_together([0])).status == "busy"
            assert len(server.requests) == 1, "no sender takes the resting shard"
            assert await statuses(first, ids) == [None, None], "pending, not failed"
        finally:
            await close(first, queued)


async def test_dedup_false_records_of_an_unknown_outcome_are_parked_not_resent(
    redis: Redis,
) -> None:
    """A createDuplicate record resent after a maybe-applied call is a second lead."""
    async with wire_server(lambda _b: GATEWAY_504) as server:
        drainer = drainer_on(redis, server)
        try:
            entry = await enqueue_once(drainer, "dup@x.com", dedup=False)
            await drainer.drain(0)
            outcome = await stored(redis, drainer.keys, f"0-{entry}")
            assert outcome is not None
            assert outcome.status == "DEAD_LETTERED"
            assert outcome.error_code == "OUTCOME_UNKNOWN"
            assert "dlq replay" in (outcome.error or "")
            assert await redis.xlen(drainer.keys.dead_letters(0)) == 1
            assert len(server.requests) == 1
        finally:
            await close(drainer)


async def test_a_dedup_false_call_cut_by_the_drain_timeout_is_parked_not_resent(
    redis: Redis,
) -> None:
    """A call cut once it had left (here by LEADSYNC_DRAIN_TIMEOUT_S while Marketo still
    works on it) is as unknown as a timeout: its createDuplicate record was left pending
    and resent after the rest, a second lead in Marketo."""
    released = asyncio.Event()

    async def slow_marketo(body: bytes, _headers: object) -> Reply:
        await released.wait()  # Marketo applies it after the drain gave up
        return soap_ok()(body)

    async with wire_server(handler=slow_marketo) as server:
        drainer = drainer_on(
            redis, server, drain_budget_s=0.05, drain_timeout_s=0.5, unknown_outcome_rest_s=0.2
        )
        try:
            entry = await enqueue_once(drainer, "dup@x.com", dedup=False)
            report = await drainer.drain(0)
            assert (report.status, report.reason) == ("backoff", "drain timeout")
            released.set()
            outcome = await stored(redis, drainer.keys, f"0-{entry}")
            assert outcome is not None
            assert (outcome.status, outcome.error_code) == ("DEAD_LETTERED", "OUTCOME_UNKNOWN")
            assert "drain timeout" in (outcome.error or "")
            await asyncio.sleep(0.3)  # the rest is over
            again = await drainer.drain(0)
            assert again.calls == 0
            assert len(server.requests) == 1, "never resent"
        finally:
            released.set()
            await close(drainer)


@pytest.mark.parametrize("dedup", [True, False])
async def test_a_drain_cancelled_with_its_call_on_the_wire_rests_keeps_the_slot_and_parks(
    redis: Redis, dedup: bool
) -> None:
    """A shutdown (the task cancelled) while Marketo works on the call: the call may still
    be applied, so the shard rests and the slot stays taken, whoever asks next; a
    dedup=false record is parked, a dedup=true one stays pending."""
    arrived = asyncio.Event()
    released = asyncio.Event()

    async def slow_marketo(body: bytes, _headers: object) -> Reply:
        arrived.set()
        await released.wait()
        return soap_ok()(body)

    async with wire_server(handler=slow_marketo) as server:
        drainer = drainer_on(redis, server, unknown_outcome_rest_s=30.0)
        other = drainer_on(redis, server)
        try:
            entry = await enqueue_once(drainer, "lead@x.com", dedup=dedup)
            task = asyncio.create_task(drainer.drain(0))
            await asyncio.wait_for(arrived.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            released.set()
            assert (await drainer.limiter.state()).slots_in_use == 1, "Marketo still counts it"
            stored_rest = float(await redis.get(drainer.keys.rest(0)) or 0)
            seconds, micros = await redis.time()
            assert stored_rest - (seconds + micros / 1e6) > 25, "the shard rests"
            assert (await other.drain(0)).status == "busy"
            outcome = await stored(redis, drainer.keys, f"0-{entry}")
            if dedup:
                assert outcome is None or outcome.status == "PENDING", "pending, not failed"
            else:
                assert outcome is not None
                assert (outcome.status, outcome.error_code) == ("DEAD_LETTERED", "OUTCOME_UNKNOWN")
            assert len(server.requests) == 1
        finally:
            released.set()
            await close(drainer, other)


async def test_a_full_batch_with_its_reply_in_pieces_costs_one_call(redis: Redis) -> None:
    async with wire_server(soap_ok(pieces=8, gap_s=0.03)) as server:
        drainer = drainer_on(redis, server, batch_size=300)
        try:
            ids = await enqueue(drainer, *(f"p{i}@x.com" for i in range(300)))
            report = await drainer.drain(0)
            assert (report.status, report.calls, len(server.requests)) == ("sent", 1, 1)
            assert set(await statuses(drainer, ids)) == {"CREATED"}
            assert await redis.xlen(drainer.keys.dead_letters(0)) == 0
        finally:
            await close(drainer)


def company(attributes: Sequence[ParsedAttribute]) -> str | None:
    return next((a.value for a in attributes if a.name == "Company"), None)


class PausedBeforeTheSend:
    """A worker paused between its lease renewal and the socket write (a GC, a frozen
    VM): ``pause`` runs inside ``send``, after the renewal, before the fence."""

    def __init__(self, api: SoapApi, pause: Callable[[], object]) -> None:
        self.api = api
        self.pause = pause

    def prepare(self, leads: Sequence[object], *, dedup: bool) -> PreparedCall:
        return self.api.prepare(leads, dedup=dedup)  # type: ignore[arg-type]

    async def ready(self) -> str:
        return await self.api.ready()

    async def send(
        self, call: PreparedCall, *, credential: str, fence: Callable[[], None]
    ) -> list[SyncResult]:
        waited = self.pause()
        if asyncio.iscoroutine(waited):
            await waited
        return await self.api.send(call, credential=credential, fence=fence)


async def test_a_worker_paused_past_its_lease_sends_nothing_after_the_new_holder(
    redis: Redis,
) -> None:
    """F15: the fence covered ledger writes but not the send. A zombie that wakes after
    another worker took the shard and sent a newer value must not send the older one."""
    quick = {
        "request_timeout_s": 1.0,
        "redis_socket_timeout_s": 0.5,
        "lease_ttl_s": 4.0,
        "connect_timeout_s": 0.5,
    }
    sent_companies: list[list[str | None]] = []

    def script(body: bytes) -> Reply:
        records = parse_request_bytes(body).records
        sent_companies.append([company(r.attributes) for r in records])
        return soap_ok()(body)

    woke = asyncio.Event()
    holders: list[Drainer] = []

    async def pause_past_the_lease() -> None:
        # Paused past the lease: meanwhile the holder takes the shard and sends v2.
        await asyncio.sleep(4.2)
        await enqueue(holders[0], "a@x.com", Company="v2")
        report = await holders[0].drain(0)
        assert report.calls == 1
        woke.set()

    async with wire_server(script) as server:
        zombie = drainer_on(
            redis, server, wrap=lambda api: PausedBeforeTheSend(api, pause_past_the_lease), **quick
        )
        holder = drainer_on(redis, server, **quick)
        holders.append(holder)
        try:
            await enqueue(zombie, "a@x.com", Company="v1")
            report = await zombie.drain(0)
            assert woke.is_set()
            assert (report.status, report.calls) == ("busy", 0)
            assert sent_companies == [["v2"]], "the older value never reached Marketo"
            state = await zombie.limiter.state()
            assert state.quota_used_today == 1, "the zombie's turn was given back"
        finally:
            await close(zombie, holder)


# --- REST: a body too large spends no permit; a request-shape 1xxx holds -------------------


def rest_api(redis: Redis, url: str, wire: AiohttpTransport) -> RestApi:
    tokens = TokenSource(
        redis,
        wire,
        identity_url=url + "/identity",
        client_id="c",
        client_secret=SecretStr("s"),
        key_prefix="leadsync",
    )
    return RestApi(wire, tokens, rest_url=url, options=RestOptions())


def rest_drainer(redis: Redis, server: WireServer, **overrides: object) -> Drainer:
    settings = drain_settings(
        marketo_api="rest",
        marketo_rest_url=server.url,
        marketo_client_id="c",
        marketo_client_secret="s",
        **overrides,
    )
    return Drainer(
        ledger=Ledger.for_settings(redis, settings),
        api=rest_api(redis, server.url, transport()),
        limiter=RedisLimiter(redis, settings),
        settings=settings,
        consumer="c1",
    )


def rest_script(
    answer: Callable[[list[dict[str, object]]], dict[str, object]],
) -> Callable[[bytes], Reply]:
    token = json.dumps({"access_token": "tok", "expires_in": 3599}).encode()

    def script(body: bytes) -> Reply:
        if body.startswith(b"grant_type"):
            return Reply(content_type="application/json", body=token)
        return Reply(
            content_type="application/json",
            body=json.dumps(answer(json.loads(body)["input"])).encode(),
        )

    return script


def created(records: list[dict[str, object]]) -> dict[str, object]:
    result = [{"id": i + 1, "status": "created"} for i in range(len(records))]
    return {"requestId": "r", "success": True, "result": result}


async def test_a_rest_body_over_a_megabyte_spends_no_permit(redis: Redis) -> None:
    """F13: the 413 was found after the permit: each split cost a phantom call."""
    async with wire_server(rest_script(created)) as server:
        drainer = rest_drainer(redis, server)
        try:
            # Five 60,000-character fields: about 300 KB a lead, 1.2 MB for the four.
            big = dict.fromkeys(("Company", "City", "Title", "Phone", "State"), "c" * 60000)
            ids = await enqueue(drainer, *(f"p{i}@x.com" for i in range(4)), **big)
            report = await drainer.drain(0)
            lead_calls = [r for r in server.requests if not r.startswith(b"grant_type")]
            assert report.calls == len(lead_calls) == 2, "1.2 MB split in two: two calls"
            state = await drainer.limiter.state()
            assert state.quota_used_today == len(lead_calls), "a permit only for a call sent"
            assert set(await statuses(drainer, ids)) == {"CREATED"}
        finally:
            await close(drainer)


async def test_a_whole_call_1xxx_holds_with_marketos_message_after_one_call(
    redis: Redis,
) -> None:
    """F18: whole-call 1xxx codes were transient: ~32 calls a batch, then dead letters."""

    def refused(_records: list[dict[str, object]]) -> dict[str, object]:
        return {
            "requestId": "r",
            "success": False,
            "errors": [{"code": "1011", "message": "Field 'email2' not supported"}],
        }

    async with wire_server(rest_script(refused)) as server:
        drainer = rest_drainer(redis, server)
        try:
            ids = await enqueue(drainer, "a@x.com")
            report = await drainer.drain(0)
            assert report.status == "held"
            assert report.calls == 1
            state = await drainer.limiter.state()
            assert state.hold_reason is not None
            assert "1011" in state.hold_reason
            assert await statuses(drainer, ids) == [None], "pending until the fix"
        finally:
            await close(drainer)


async def test_deeply_nested_json_rests_the_shard_instead_of_escaping(redis: Redis) -> None:
    """F14: a RecursionError escaped the cycle with no rest, re-rung every second."""
    nested = b"[" * 200_000 + b"]" * 200_000

    def script(body: bytes) -> Reply:
        if body.startswith(b"grant_type"):
            return rest_script(created)(body)
        return Reply(content_type="application/json", body=nested)

    async with wire_server(script) as server:
        drainer = rest_drainer(redis, server, unknown_outcome_rest_s=30.0)
        try:
            await enqueue(drainer, "a@x.com")
            report = await drainer.drain(0)
            assert report.status == "backoff"
            assert report.reason == "ProtocolError"
            assert await drainer.ledger.acquire_lease(0, 10) is None, "the shard rests"
        finally:
            await close(drainer)
