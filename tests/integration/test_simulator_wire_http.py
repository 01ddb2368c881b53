"""The simulator on the real wire, over real HTTP: replies written in pieces with gaps (read
with a raw socket client), and a gateway that answers 504 while Marketo still applies the
call (both protocols)."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from lxml import etree

from marketo_sim import SimConfig, SimulatorThread
from producers.contract import LeadUpsert
from worker.marketo.soap.envelope import REQUEST_HEADERS, build_sync_multiple_leads
from worker.marketo.soap.signing import make_auth_header

pytestmark = pytest.mark.integration

USER, KEY = "wire_user", "wire-key"
CLIENT_ID, SECRET = "wire-client", "wire-secret"
GAP_S = 0.05
WAIT_S = 10.0  # the bound of every polling wait


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig(user_id=USER, encryption_key=KEY, client_id=CLIENT_ID, client_secret=SECRET)
    with SimulatorThread(config) as running:
        yield running


# --- a raw HTTP/1.1 client -----------------------------------------------------------


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes
    reads: list[tuple[float, bytes]]  # (monotonic time, bytes) of every socket read

    @property
    def spread_s(self) -> float:
        return self.reads[-1][0] - self.reads[0][0]


async def _exchange(base_url: str, path: str, body: bytes, headers: dict[str, str]) -> RawReply:
    url = urllib.parse.urlsplit(base_url)
    assert url.hostname is not None
    assert url.port is not None
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    head = [f"POST {path} HTTP/1.1", f"Host: {url.netloc}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    head.append(f"Content-Length: {len(body)}")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()
    reads: list[tuple[float, bytes]] = []
    try:
        while data := await asyncio.wait_for(reader.read(65536), timeout=WAIT_S):
            reads.append((time.monotonic(), data))
    finally:
        writer.close()
        await writer.wait_closed()
    raw = b"".join(data for _, data in reads)
    head_bytes, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return RawReply(int(status_line.split()[1]), parsed, rest, reads)


def raw_post(base_url: str, path: str, body: bytes, headers: dict[str, str]) -> RawReply:
    return asyncio.run(_exchange(base_url, path, body, headers))


def assert_sent_in_pieces(reply: RawReply, chunk_bytes: int) -> None:
    """Content-Length is right, the body is whole, and it came in several reads, spread over
    at least the gaps between its pieces."""
    assert "transfer-encoding" not in reply.headers
    assert int(reply.headers["content-length"]) == len(reply.body)
    pieces = -(-len(reply.body) // chunk_bytes)
    assert pieces >= 3, "the reply must be long enough to be cut"
    assert len(reply.reads) >= 2  # a client reading once gets a prefix only
    assert reply.spread_s >= (pieces - 1) * GAP_S * 0.9


# --- requests ----------------------------------------------------------------------


def soap_body(*emails: str) -> bytes:
    leads = [LeadUpsert(email=e) for e in emails]
    return build_sync_multiple_leads(leads, auth=make_auth_header(USER, KEY), dedup=True)


def token(sim: SimulatorThread) -> str:
    query = urllib.parse.urlencode(
        {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET}
    )
    with urllib.request.urlopen(f"{sim.identity_url}/oauth/token?{query}", timeout=10) as answer:
        return str(json.loads(answer.read())["access_token"])


def http(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# --- replies in pieces -----------------------------------------------------------------


def test_a_soap_reply_comes_in_pieces_under_its_content_length(sim: SimulatorThread) -> None:
    sim.admin.configure(reply_chunk_bytes=1000, reply_chunk_gap_s=GAP_S)
    emails = [f"wire{n}@example.com" for n in range(40)]
    reply = raw_post(sim.base_url, "/soap/mktows/2_2", soap_body(*emails), dict(REQUEST_HEADERS))
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/xml")
    assert_sent_in_pieces(reply, 1000)
    statuses = etree.fromstring(reply.body).findall(".//syncStatus/status")
    assert [s.text for s in statuses] == ["CREATED"] * 40


def test_a_rest_sync_reply_comes_in_pieces_under_its_content_length(
    sim: SimulatorThread,
) -> None:
    bearer = token(sim)
    sim.admin.configure(reply_chunk_bytes=1000, reply_chunk_gap_s=GAP_S)
    document = {"input": [{"email": f"wire{n}@example.com"} for n in range(120)]}
    reply = raw_post(
        sim.base_url,
        "/rest/v1/leads.json",
        json.dumps(document).encode(),
        {"Content-Type": "application/json", "Authorization": f"Bearer {bearer}"},
    )
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("application/json")
    assert_sent_in_pieces(reply, 1000)
    answer = json.loads(reply.body)
    assert answer["success"] is True
    assert [r["status"] for r in answer["result"]] == ["created"] * 120


def test_an_identity_reply_comes_in_pieces_under_its_content_length(
    sim: SimulatorThread,
) -> None:
    # A token answer is ~150 bytes: smaller pieces, so that it is cut at all.
    sim.admin.configure(reply_chunk_bytes=32, reply_chunk_gap_s=GAP_S)
    form = urllib.parse.urlencode(
        {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET}
    ).encode()
    reply = raw_post(
        sim.base_url,
        "/identity/oauth/token",
        form,
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert reply.status == 200
    assert_sent_in_pieces(reply, 32)
    answer = json.loads(reply.body)
    assert answer["token_type"] == "bearer"
    assert answer["expires_in"] == 3600


def test_a_truncated_reply_in_pieces_is_still_really_cut(sim: SimulatorThread) -> None:
    sim.admin.configure(reply_chunk_bytes=1000, reply_chunk_gap_s=GAP_S, fault_truncated_rate=1.0)
    emails = [f"cut{n}@example.com" for n in range(40)]
    reply = raw_post(sim.base_url, "/soap/mktows/2_2", soap_body(*emails), dict(REQUEST_HEADERS))
    assert reply.status == 200
    assert int(reply.headers["content-length"]) == len(reply.body)
    assert len(reply.reads) >= 2
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(reply.body)


def test_without_chunking_a_reply_is_one_write(sim: SimulatorThread) -> None:
    reply = raw_post(
        sim.base_url,
        "/soap/mktows/2_2",
        soap_body(*[f"whole{n}@example.com" for n in range(40)]),
        dict(REQUEST_HEADERS),
    )
    assert reply.status == 200
    assert int(reply.headers["content-length"]) == len(reply.body)
    assert reply.spread_s < 40 * GAP_S  # nothing waits between pieces


# --- the gateway 504 -----------------------------------------------------------------


@dataclass
class Protocol:
    """One API as the gateway tests drive it."""

    name: str
    call: Callable[[SimulatorThread, str], tuple[int, str, bytes]]
    error_code: Callable[[tuple[int, str, bytes]], str | None]
    concurrency: str
    quota: str
    rate: str


def _soap_call(sim: SimulatorThread, email: str) -> tuple[int, str, bytes]:
    return http(sim.endpoint, soap_body(email), dict(REQUEST_HEADERS))


def _soap_error(answer: tuple[int, str, bytes]) -> str | None:
    status, _, body = answer
    found = re.search(rb"<code>(\d+)</code>", body)
    return found.group(1).decode() if status == 500 and found else None


def _rest_call(sim: SimulatorThread, email: str) -> tuple[int, str, bytes]:
    bearer = token(sim)  # the same token each time; identity calls are not counted
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {bearer}"}
    document = {"input": [{"email": email}]}
    return http(f"{sim.rest_base_url}/rest/v1/leads.json", json.dumps(document).encode(), headers)


def _rest_error(answer: tuple[int, str, bytes]) -> str | None:
    status, _, body = answer
    if status != 200:
        return None
    parsed: dict[str, Any] = json.loads(body)
    return None if parsed["success"] else str(parsed["errors"][0]["code"])


PROTOCOLS = [
    Protocol("soap", _soap_call, _soap_error, "20024", "20015", "20023"),
    Protocol("rest", _rest_call, _rest_error, "615", "607", "606"),
]


def _emails(sim: SimulatorThread) -> list[str]:
    return [lead["email"] for lead in sim.admin.leads()]


@pytest.mark.parametrize("api", PROTOCOLS, ids=lambda p: p.name)
def test_a_gateway_504_is_answered_at_once_and_applied_later(
    sim: SimulatorThread, api: Protocol
) -> None:
    sim.admin.configure(fault_gateway_504_rate=1.0, gateway_apply_delay_s=0.5, max_concurrent=1)

    started = time.monotonic()
    status, content_type, body = api.call(sim, "gw@example.com")
    answered_s = time.monotonic() - started
    assert (status, content_type.split(";")[0]) == (504, "text/html")
    assert b"504 Gateway Time-out" in body
    assert answered_s < 0.5  # at once, not after the apply
    # Marketo has not applied it yet, and the call is still in flight with its key.
    assert _emails(sim) == []
    (held,) = sim.admin.calls()
    assert (held["outcome"], held["end"], held["protocol"]) == ("in_flight", None, api.name)
    assert held["keys"] == ["email:gw@example.com"]
    assert sim.admin.summary()["in_flight"] == 1

    # Its slot is taken: with max_concurrent=1 the next call is refused.
    sim.admin.configure(fault_gateway_504_rate=0.0)
    assert api.error_code(api.call(sim, "other@example.com")) == api.concurrency
    # A call on the same lead while it waits: allowed by a second slot, caught as overlap.
    sim.admin.configure(max_concurrent=2)
    second = api.call(sim, "gw@example.com")
    assert second[0] == 200
    assert api.error_code(second) is None
    assert sim.admin.summary()["keys_in_concurrent_calls"] == 1

    wait_for(lambda: sim.admin.summary()["in_flight"] == 0, "the gateway call to be applied")
    (lead,) = sim.admin.leads()
    assert lead["email"] == "gw@example.com"
    calls = sim.admin.calls()
    gateway_call = calls[0]
    assert gateway_call["outcome"] == "gateway_504"
    assert gateway_call["end"] - gateway_call["start"] >= 0.45  # the timer's resolution
    # Applied like an answered call, after the second one: an update, the lead's last write.
    last = lead["history"][-1]
    assert last["call_id"] == 1
    assert last["at"] - gateway_call["start"] >= 0.45
    assert [w["status"].lower() for w in lead["history"]] == ["created", "updated"]
    assert sum(gateway_call["statuses"].values()) == 1
    summary = sim.admin.summary()
    assert summary["outcomes"]["gateway_504"] == 1
    assert summary["calls"] == 3

    # It counted against the daily quota and the rate window (the refused call did not).
    sim.admin.configure(daily_quota=2)
    assert api.error_code(api.call(sim, "q@example.com")) == api.quota
    sim.admin.configure(daily_quota=10_000, rate_limit_calls=2, rate_window_s=60.0)
    assert api.error_code(api.call(sim, "r@example.com")) == api.rate
    # Its slot is free again.
    sim.admin.configure(rate_limit_calls=100, max_concurrent=1)
    answer = api.call(sim, "free@example.com")
    assert answer[0] == 200
    assert api.error_code(answer) is None


def test_a_gateway_504_on_describe_gets_the_page_too(sim: SimulatorThread) -> None:
    bearer = token(sim)
    sim.admin.configure(fault_gateway_504_rate=1.0, gateway_apply_delay_s=0.05)
    request = urllib.request.Request(
        f"{sim.rest_base_url}/rest/v1/leads/describe2.json",
        headers={"Authorization": f"Bearer {bearer}"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=WAIT_S)
    assert caught.value.code == 504
    wait_for(lambda: sim.admin.summary()["in_flight"] == 0, "the describe call to end")
    assert sim.admin.calls()[0]["outcome"] == "gateway_504"


def test_reset_and_shutdown_cancel_pending_applies(sim: SimulatorThread) -> None:
    sim.admin.configure(fault_gateway_504_rate=1.0, gateway_apply_delay_s=60.0, max_concurrent=1)
    assert _soap_call(sim, "late@example.com")[0] == 504
    assert sim.admin.summary()["in_flight"] == 1
    sim.admin.reset()
    summary = sim.admin.summary()
    assert (summary["calls"], summary["in_flight"], summary["leads_in_database"]) == (0, 0, 0)
    sim.admin.configure(fault_gateway_504_rate=0.0)
    assert _soap_call(sim, "now@example.com")[0] == 200  # the slot was not carried over
    assert _emails(sim) == ["now@example.com"]

    sim.admin.configure(fault_gateway_504_rate=1.0)
    assert _soap_call(sim, "pending@example.com")[0] == 504
    started = time.monotonic()
    sim.stop()  # a pending apply must not hold the shutdown for its 60 s
    assert time.monotonic() - started < WAIT_S
