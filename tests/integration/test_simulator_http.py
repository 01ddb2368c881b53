"""The Marketo simulator over real HTTP: lead rules, auth, limits, injected faults, admin API."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lxml import etree

from marketo_sim import SimConfig, SimulatorThread
from producers.contract import LeadUpsert
from tests.support.wsdl_schema import MKTOWS_NS, SOAP_ENV_NS, assert_valid_element
from worker.errors import MarketoError, ProtocolError, ReplyLost
from worker.marketo.base import SyncResult
from worker.marketo.soap.envelope import REQUEST_HEADERS, build_sync_multiple_leads
from worker.marketo.soap.response import parse_sync_response
from worker.marketo.soap.signing import make_auth_header

pytestmark = pytest.mark.integration

USER = "sim_user_1"
KEY = "sim-key-1"
SEED = Path("/work/shared/seed/000_af1cc3e52714a53e.txt")
XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimConfig(user_id=USER, encryption_key=KEY)) as running:
        yield running


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers or dict(REQUEST_HEADERS))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def request_body(
    leads: Sequence[LeadUpsert],
    *,
    dedup: bool = True,
    user: str = USER,
    key: str = KEY,
    now: datetime | None = None,
) -> bytes:
    return build_sync_multiple_leads(leads, auth=make_auth_header(user, key, now), dedup=dedup)


def sync(sim: SimulatorThread, leads: Sequence[LeadUpsert], **kwargs: object) -> list[SyncResult]:
    status, content_type, body = post(sim.endpoint, request_body(leads, **kwargs))  # type: ignore[arg-type]
    return parse_sync_response(
        body, http_status=status, expected_count=len(leads), content_type=content_type
    )


def fault_code(sim: SimulatorThread, leads: Sequence[LeadUpsert], **kwargs: object) -> int | None:
    with pytest.raises(MarketoError) as caught:
        sync(sim, leads, **kwargs)
    return caught.value.code


def lead(email: str | None = None, **kwargs: object) -> LeadUpsert:
    return LeadUpsert(email=email, **kwargs)  # type: ignore[arg-type]


def statuses(results: list[SyncResult]) -> list[str]:
    return [str(r.status) for r in results]


# --- the seed request ------------------------------------------------------------------


def seed_request_and_response() -> tuple[bytes, bytes]:
    text = SEED.read_text(encoding="utf-8")
    envelopes = []
    start = 0
    while (begin := text.find("<?xml", start)) != -1:
        end = text.index("</SOAP-ENV:Envelope>", begin) + len("</SOAP-ENV:Envelope>")
        envelopes.append(text[begin:end].encode("utf-8"))
        start = end
    return envelopes[0], envelopes[1]


def shape(element: etree._Element) -> list[object]:
    """Tags, nil flags and the kind of text of a tree: what 'the documented shape' means."""
    text = (element.text or "").strip()
    kind = (
        "int"
        if text.isdigit()
        else text
        if text in ("CREATED", "UPDATED", "FAILED")
        else bool(text)
    )
    return [element.tag, element.get(XSI_NIL), kind, [shape(child) for child in element]]


def test_the_seed_request_with_its_2013_timestamp_gets_the_documented_response_shape() -> None:
    seed_request, seed_response = seed_request_and_response()
    config = SimConfig(
        user_id="demo17_1_809934544BFABAE58E5D27",
        encryption_key="27272727aa",
        timestamp_window_s=None,
    )
    with SimulatorThread(config) as sim:
        sim.admin.reset()
        post(sim.endpoint, seed_request, {"Content-Type": "text/xml;charset=UTF-8"})  # creates both
        status, content_type, body = post(
            sim.endpoint, seed_request, {"Content-Type": "text/xml;charset=UTF-8"}
        )
    assert status == 200
    assert content_type.startswith("text/xml")
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    ours, documented = etree.fromstring(body), etree.fromstring(seed_response)
    assert shape(ours) == shape(documented)
    assert ours.nsmap == {"SOAP-ENV": SOAP_ENV_NS, "xsi": documented.nsmap["xsi"], "ns1": MKTOWS_NS}


def test_the_seed_request_is_refused_as_expired_under_the_default_timestamp_window() -> None:
    seed_request, _ = seed_request_and_response()
    config = SimConfig(user_id="demo17_1_809934544BFABAE58E5D27", encryption_key="27272727aa")
    with SimulatorThread(config) as sim:
        status, _, body = post(sim.endpoint, seed_request)
    assert status == 500
    root = etree.fromstring(body)
    assert root.findtext(".//faultcode") == "SOAP-ENV:Client"
    assert root.findtext(".//faultstring") == "20016 - Request Expired"
    assert root.findtext(f".//{{{MKTOWS_NS}}}serviceException/code") == "20016"
    assert root.findtext(f".//{{{MKTOWS_NS}}}serviceException/name") == "mktServiceException"


def test_a_success_response_validates_against_the_wsdl_schema(sim: SimulatorThread) -> None:
    leads = [lead("a@example.com"), lead("bad@invalid.example"), lead("a@example.com")]
    status, _, body = post(sim.endpoint, request_body(leads))
    assert status == 200
    success = etree.fromstring(body).find(
        f"{{{SOAP_ENV_NS}}}Body/{{{MKTOWS_NS}}}successSyncMultipleLeads"
    )
    assert success is not None
    assert_valid_element(success)


# --- authentication ----------------------------------------------------------------------


def test_a_correct_signature_is_accepted(sim: SimulatorThread) -> None:
    assert statuses(sync(sim, [lead("ann@example.com")])) == ["CREATED"]


def test_a_wrong_signature_faults_with_20014(sim: SimulatorThread) -> None:
    assert fault_code(sim, [lead("ann@example.com")], key="not-the-key") == 20014


def test_a_wrong_user_id_faults_with_20014(sim: SimulatorThread) -> None:
    assert fault_code(sim, [lead("ann@example.com")], user="someone_else") == 20014


def test_a_stale_timestamp_faults_with_20016(sim: SimulatorThread) -> None:
    stale = datetime.now(UTC) - timedelta(hours=2)
    assert fault_code(sim, [lead("ann@example.com")], now=stale) == 20016


def test_new_credentials_take_effect_at_runtime(sim: SimulatorThread) -> None:
    sim.admin.configure(user_id="rotated", encryption_key="rotated-key")
    assert fault_code(sim, [lead("ann@example.com")]) == 20014
    assert statuses(sync(sim, [lead("ann@example.com")], user="rotated", key="rotated-key")) == [
        "CREATED"
    ]


# --- lead rules --------------------------------------------------------------------------


def test_email_dedup_updates_the_lead_with_that_email(sim: SimulatorThread) -> None:
    first = sync(sim, [lead("Ann@Example.com", attributes={"FirstName": "Ann"})])
    second = sync(sim, [lead("ann@example.com", attributes={"LastName": "Lee"})])
    assert statuses(first) == ["CREATED"]
    assert statuses(second) == ["UPDATED"]
    assert first[0].lead_id == second[0].lead_id
    (stored,) = sim.admin.leads()
    assert stored["attributes"] == {"FirstName": "Ann", "LastName": "Lee"}
    assert [w["status"] for w in stored["history"]] == ["CREATED", "UPDATED"]


def test_dedup_false_always_creates_a_new_lead(sim: SimulatorThread) -> None:
    sync(sim, [lead("ann@example.com")])
    again = sync(sim, [lead("ann@example.com")], dedup=False)
    assert statuses(again) == ["CREATED"]
    assert len(sim.admin.leads()) == 2


def test_lead_ids_are_sequential_integers(sim: SimulatorThread) -> None:
    results = sync(sim, [lead(f"p{i}@example.com") for i in range(3)])
    assert [r.lead_id for r in results] == [1, 2, 3]


def test_marketo_id_wins_over_email_and_the_email_is_not_changed(sim: SimulatorThread) -> None:
    (created,) = sync(sim, [lead("ann@example.com")])
    (updated,) = sync(sim, [lead("other@example.com", marketo_id=created.lead_id)])
    assert (updated.status, updated.lead_id) == ("UPDATED", created.lead_id)
    (stored,) = sim.admin.leads()
    assert stored["email"] == "ann@example.com"


def test_an_email_attribute_changes_the_email(sim: SimulatorThread) -> None:
    (created,) = sync(sim, [lead("ann@example.com")])
    sync(sim, [lead(marketo_id=created.lead_id, attributes={"Email": "ann.lee@example.com"})])
    (stored,) = sim.admin.leads()
    assert stored["email"] == "ann.lee@example.com"
    assert statuses(sync(sim, [lead("ann.lee@example.com")])) == ["UPDATED"]


def test_an_unknown_marketo_id_fails_that_record_only(sim: SimulatorThread) -> None:
    results = sync(sim, [lead(marketo_id=999), lead("ann@example.com")])
    assert statuses(results) == ["FAILED", "CREATED"]
    assert results[0].error == "Lead not found"


def test_marketo_id_wins_over_foreign_id_and_reassigns_it(sim: SimulatorThread) -> None:
    fsp = {"foreign_sys_person_id": "crm-1", "foreign_sys_type": "CUSTOM"}
    (owner,) = sync(sim, [lead("ann@example.com", **fsp)])
    (other,) = sync(sim, [lead("bob@example.com")])
    (moved,) = sync(sim, [lead(marketo_id=other.lead_id, **fsp)])
    assert (moved.status, moved.lead_id) == ("UPDATED", other.lead_id)
    by_id = {row["id"]: row for row in sim.admin.leads()}
    assert by_id[owner.lead_id]["fsp"] == []
    assert by_id[other.lead_id]["fsp"] == [{"type": "CUSTOM", "id": "crm-1"}]
    (again,) = sync(sim, [lead(**fsp)])
    assert again.lead_id == other.lead_id


def test_foreign_id_wins_over_email(sim: SimulatorThread) -> None:
    fsp = {"foreign_sys_person_id": "crm-7", "foreign_sys_type": "SFDC"}
    (first,) = sync(sim, [lead("ann@example.com", **fsp)])
    sync(sim, [lead("zed@example.com")])
    (second,) = sync(sim, [lead("zed@example.com", **fsp)])
    assert (second.status, second.lead_id) == ("UPDATED", first.lead_id)
    emails = {row["id"]: row["email"] for row in sim.admin.leads()}
    assert emails[first.lead_id] == "ann@example.com"


def test_a_new_foreign_id_creates_a_lead_even_when_the_email_exists(sim: SimulatorThread) -> None:
    sync(sim, [lead("ann@example.com")])
    fsp = {"foreign_sys_person_id": "crm-9", "foreign_sys_type": "CUSTOM"}
    assert statuses(sync(sim, [lead("ann@example.com", **fsp)])) == ["CREATED"]


def test_a_reject_domain_email_fails_while_the_rest_succeed(sim: SimulatorThread) -> None:
    results = sync(
        sim, [lead("ok1@example.com"), lead("x@invalid.example"), lead("ok2@example.com")]
    )
    assert statuses(results) == ["CREATED", "FAILED", "CREATED"]
    assert results[1].error
    assert len(sim.admin.leads()) == 2


def test_an_invalid_email_fails_that_record(sim: SimulatorThread) -> None:
    results = sync(sim, [lead("not-an-email@nowhere"), lead("ok@example.com")])
    assert statuses(results) == ["FAILED", "CREATED"]


def test_an_unknown_attribute_faults_the_whole_call_with_20105(sim: SimulatorThread) -> None:
    leads = [lead("ok@example.com"), lead("b@example.com", attributes={"Pants": "x"})]
    assert fault_code(sim, leads) == 20105
    assert sim.admin.leads() == []


def test_known_fields_can_be_extended_at_runtime(sim: SimulatorThread) -> None:
    sim.admin.configure(known_fields=["Email", "Pants"])
    assert statuses(sync(sim, [lead("b@example.com", attributes={"Pants": "x"})])) == ["CREATED"]


def test_more_than_300_records_fault_with_20017(sim: SimulatorThread) -> None:
    leads = [lead(f"p{i}@example.com") for i in range(301)]
    assert fault_code(sim, leads) == 20017
    assert sim.admin.leads() == []
    assert len(sync(sim, leads[:300])) == 300


def test_more_than_max_records_can_answer_slowly_instead(sim: SimulatorThread) -> None:
    sim.admin.configure(max_records=2, oversize_mode="slow", oversize_delay_s=0.05)
    assert statuses(sync(sim, [lead(f"p{i}@example.com") for i in range(3)])) == ["CREATED"] * 3


def test_an_oversized_payload_is_refused_with_413(sim: SimulatorThread) -> None:
    sim.admin.configure(max_payload_bytes=500)
    status, _, _ = post(sim.endpoint, request_body([lead(f"p{i}@example.com") for i in range(20)]))
    assert status == 413


def test_a_request_that_is_not_text_xml_is_refused_with_415(sim: SimulatorThread) -> None:
    body = request_body([lead("ann@example.com")])
    status, _, _ = post(sim.endpoint, body, {"Content-Type": "application/soap+xml"})
    assert status == 415


# --- limits ------------------------------------------------------------------------------


def test_the_rate_window_faults_with_20023_and_limit_faults_change_no_lead(
    sim: SimulatorThread,
) -> None:
    sim.admin.configure(rate_limit_calls=3, rate_window_s=1.0)
    for i in range(3):
        sync(sim, [lead(f"p{i}@example.com")])
    assert fault_code(sim, [lead("late@example.com")]) == 20023
    assert "late@example.com" not in {row["email"] for row in sim.admin.leads()}
    summary = sim.admin.summary()
    assert summary["faults_by_code"] == {"20023": 1}
    assert summary["max_calls_in_window"] == 4


def test_the_rate_window_slides(sim: SimulatorThread) -> None:
    sim.admin.configure(rate_limit_calls=1, rate_window_s=0.2)
    sync(sim, [lead("a@example.com")])
    assert fault_code(sim, [lead("b@example.com")]) == 20023
    codes = []
    deadline = datetime.now(UTC) + timedelta(seconds=5)
    while datetime.now(UTC) < deadline:
        status, _, body = post(sim.endpoint, request_body([lead("b@example.com")]))
        if status == 200:
            break
        codes.append(etree.fromstring(body).findtext(f".//{{{MKTOWS_NS}}}serviceException/code"))
    else:
        pytest.fail("the window never let a call through again")
    assert set(codes) <= {"20023"}


def test_the_daily_quota_faults_with_20015(sim: SimulatorThread) -> None:
    sim.admin.configure(daily_quota=2)
    sync(sim, [lead("a@example.com")])
    sync(sim, [lead("b@example.com")])
    assert fault_code(sim, [lead("c@example.com")]) == 20015


def test_too_many_calls_in_flight_fault_with_20024(sim: SimulatorThread) -> None:
    sim.admin.configure(max_concurrent=2, latency_s=0.4)

    def one(i: int) -> int | None:
        try:
            sync(sim, [lead(f"p{i}@example.com")])
        except MarketoError as error:
            return error.code
        return None

    with ThreadPoolExecutor(max_workers=5) as pool:
        codes = list(pool.map(one, range(5)))
    assert codes.count(20024) >= 1
    assert codes.count(None) >= 1
    assert set(codes) <= {None, 20024}
    summary = sim.admin.summary()
    assert summary["max_concurrency"] >= 3
    ok_calls = [c for c in sim.admin.calls() if c["outcome"] == "ok"]
    assert all(c["overlap"] >= 1 for c in ok_calls) or len(ok_calls) == 1


# --- injected faults ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("internal_10001", 10001),
        ("internal_20011", 20011),
        ("rate_20023", 20023),
        ("concurrency_20024", 20024),
    ],
)
def test_injected_fault_codes_arrive_as_soap_faults(
    sim: SimulatorThread, kind: str, code: int
) -> None:
    sim.admin.configure(**{f"fault_{kind}_rate": 1.0})
    assert fault_code(sim, [lead("a@example.com")]) == code
    assert sim.admin.leads() == []


def test_an_injected_502_is_an_html_page(sim: SimulatorThread) -> None:
    sim.admin.configure(fault_http_502_rate=1.0)
    status, content_type, body = post(sim.endpoint, request_body([lead("a@example.com")]))
    assert (status, content_type.split(";")[0]) == (502, "text/html")
    # A gateway page after the request was written: Marketo may have applied the call.
    with pytest.raises(ReplyLost):
        parse_sync_response(body, http_status=status, expected_count=1, content_type=content_type)


def test_an_injected_truncated_response_is_unparseable(sim: SimulatorThread) -> None:
    sim.admin.configure(fault_truncated_rate=1.0)
    status, content_type, body = post(sim.endpoint, request_body([lead("a@example.com")]))
    assert status == 200
    with pytest.raises(ProtocolError):
        parse_sync_response(body, http_status=status, expected_count=1, content_type=content_type)
    assert len(sim.admin.leads()) == 1  # the server did the work; only the answer was lost


def test_an_injected_doctype_response_is_refused_by_the_client(sim: SimulatorThread) -> None:
    sim.admin.configure(fault_doctype_rate=1.0)
    status, content_type, body = post(sim.endpoint, request_body([lead("a@example.com")]))
    assert b"<!DOCTYPE" in body
    with pytest.raises(ProtocolError):
        parse_sync_response(body, http_status=status, expected_count=1, content_type=content_type)


def test_an_injected_hang_outlasts_the_client_timeout(sim: SimulatorThread) -> None:
    sim.admin.configure(fault_hang_rate=1.0, hang_s=5.0)
    body = request_body([lead("a@example.com")])
    request = urllib.request.Request(sim.endpoint, data=body, headers=dict(REQUEST_HEADERS))
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        urllib.request.urlopen(request, timeout=0.3)
    assert sim.admin.calls()[0]["outcome"] == "hang"


def test_fault_injection_is_reproducible_with_a_seed() -> None:
    def outcomes() -> list[str]:
        config = SimConfig(user_id=USER, encryption_key=KEY, seed=7, fault_internal_10001_rate=0.5)
        with SimulatorThread(config) as sim:
            for i in range(12):
                post(sim.endpoint, request_body([lead(f"p{i}@example.com")]))
            return [c["outcome"] for c in sim.admin.calls()]

    first = outcomes()
    assert first == outcomes()
    assert {"ok", "fault"} <= set(first)


# --- WSDL and admin ----------------------------------------------------------------------


def test_the_wsdl_is_served_with_its_address_pointing_at_the_simulator(
    sim: SimulatorThread,
) -> None:
    with urllib.request.urlopen(f"{sim.endpoint}?WSDL", timeout=10) as response:
        wsdl = response.read()
    root = etree.fromstring(wsdl)
    (address,) = root.iter("{http://schemas.xmlsoap.org/wsdl/soap/}address")
    assert address.get("location") == sim.endpoint
    packaged = (Path(__file__).parents[2] / "marketo_sim" / "mktows.wsdl").read_bytes()
    assert len(wsdl.splitlines()) == len(packaged.splitlines())


def test_any_api_version_is_served(sim: SimulatorThread) -> None:
    url = sim.endpoint.replace("2_2", "2_9")
    status, _, _ = post(url, request_body([lead("a@example.com")]))
    assert status == 200


def test_the_admin_summary_counts_calls_faults_and_leads(sim: SimulatorThread) -> None:
    sync(sim, [lead("a@example.com"), lead("b@example.com")])
    sync(sim, [lead("c@example.com")])
    fault_code(sim, [lead("d@example.com")], key="wrong")
    summary = sim.admin.summary()
    assert summary["calls"] == 3
    assert summary["faults_by_code"] == {"20014": 1}
    assert summary["leads_per_call"] == {"calls": 2, "total": 3, "min": 1, "max": 2, "mean": 1.5}
    assert summary["max_concurrency"] == 1
    assert summary["keys_in_concurrent_calls"] == 0
    assert summary["leads_in_database"] == 3
    calls = sim.admin.calls()
    assert calls[0]["keys"] == ["email:a@example.com", "email:b@example.com"]
    assert [c["outcome"] for c in calls] == ["ok", "ok", "fault"]
    assert all(c["end"] >= c["start"] for c in calls)


def test_the_admin_summary_counts_keys_in_two_concurrent_calls(sim: SimulatorThread) -> None:
    sim.admin.configure(latency_s=0.3)
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda leads: sync(sim, leads), [[lead("same@example.com")]] * 2))
    summary = sim.admin.summary()
    assert summary["keys_in_concurrent_calls"] == 1
    assert all(call["overlap"] == 1 for call in sim.admin.calls())


def test_admin_reset_forgets_leads_calls_and_limits(sim: SimulatorThread) -> None:
    sim.admin.configure(daily_quota=1)
    sync(sim, [lead("a@example.com")])
    sim.admin.reset()
    assert sim.admin.leads() == []
    assert sim.admin.calls() == []
    assert statuses(sync(sim, [lead("a@example.com")])) == ["CREATED"]


def test_admin_config_refuses_unknown_fields_and_bad_values(sim: SimulatorThread) -> None:
    with pytest.raises(urllib.error.HTTPError) as unknown:
        sim.admin.configure(no_such_field=1)
    assert unknown.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as bad:
        sim.admin.configure(fault_hang_rate=2.0)
    assert bad.value.code == 400
    assert sim.admin.config()["encryption_key"] == "***"
