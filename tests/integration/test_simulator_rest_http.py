"""The simulator's REST side over real HTTP: tokens, Bearer-only auth, the body checks, record
reasons, limits shared with SOAP, injected faults, describe2 and the call log."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from marketo_sim import SimConfig, SimulatorThread

pytestmark = pytest.mark.integration

CLIENT_ID = "rest-client-1"
SECRET = "rest-secret-1"
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "rest"


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    config = SimConfig(client_id=CLIENT_ID, client_secret=SECRET)
    with SimulatorThread(config) as running:
        yield running


def http(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None, **kw: Any
) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {}, **kw)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def token_answer(sim: SimulatorThread, **params: str) -> tuple[int, dict[str, Any]]:
    query = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET}
    query.update(params)
    status, _, body = http(f"{sim.identity_url}/oauth/token?{urllib.parse.urlencode(query)}")
    return status, json.loads(body)


def token(sim: SimulatorThread) -> str:
    status, body = token_answer(sim)
    assert status == 200
    return str(body["access_token"])


def sync(
    sim: SimulatorThread,
    document: object,
    *,
    bearer: str | None = None,
    content_type: str = "application/json",
    url: str | None = None,
) -> tuple[int, Any]:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    headers = {"Content-Type": content_type}
    headers["Authorization"] = f"Bearer {bearer or token(sim)}"
    status, _, raw = http(url or f"{sim.rest_base_url}/rest/v1/leads.json", body, headers)
    return status, json.loads(raw) if status == 200 else raw


def error_of(answer: tuple[int, Any]) -> tuple[str, str]:
    status, body = answer
    assert status == 200
    assert body["success"] is False
    assert "result" not in body
    (error,) = body["errors"]
    return error["code"], error["message"]


def leads(*emails: str) -> dict[str, Any]:
    return {"input": [{"email": e} for e in emails]}


# --- identity ------------------------------------------------------------------------


def test_the_token_is_reused_with_its_remaining_lifetime(sim: SimulatorThread) -> None:
    _, first = token_answer(sim)
    time.sleep(1.1)
    _, second = token_answer(sim)
    assert set(first) == set(json.loads((GOLDEN / "identity_response.json").read_text()))
    assert second["access_token"] == first["access_token"]
    assert first["expires_in"] == 3600
    assert second["expires_in"] < first["expires_in"]
    assert sim.admin.summary()["identity"] == {"calls": 2, "tokens_issued": 1, "refused": 0}


def test_credentials_may_come_in_a_form_body(sim: SimulatorThread) -> None:
    form = urllib.parse.urlencode(
        {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET}
    ).encode()
    status, _, body = http(
        f"{sim.identity_url}/oauth/token",
        form,
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200
    assert json.loads(body)["token_type"] == "bearer"


def test_bad_credentials_get_401(sim: SimulatorThread) -> None:
    status, body = token_answer(sim, client_secret="wrong")
    assert status == 401
    assert body["error"] == "unauthorized"
    assert body["error_description"]


def test_an_expired_token_gets_602_once_then_601_and_a_new_token_works(
    sim: SimulatorThread,
) -> None:
    sim.admin.configure(token_lifetime_s=0.3)
    old = token(sim)
    time.sleep(0.4)
    assert error_of(sync(sim, leads("a@example.com"), bearer=old)) == (
        "602",
        "Access token expired",
    )
    assert error_of(sync(sim, leads("a@example.com"), bearer=old)) == (
        "601",
        "Access token invalid",
    )
    fresh = token(sim)
    assert fresh != old
    assert sync(sim, leads("a@example.com"), bearer=fresh)[1]["success"] is True


def test_forced_expiry_and_expires_in_zero(sim: SimulatorThread) -> None:
    current = token(sim)
    assert sim.admin.expire_token() is True
    assert error_of(sync(sim, leads("a@example.com"), bearer=current))[0] == "602"
    sim.admin.configure(token_expires_in_zero_once=True)
    status, zero = token_answer(sim)
    assert (status, zero["expires_in"]) == (200, 0)
    assert sim.admin.config()["token_expires_in_zero_once"] is False
    assert error_of(sync(sim, leads("a@example.com"), bearer=zero["access_token"]))[0] == "602"
    assert token_answer(sim)[1]["expires_in"] > 0


def test_identity_calls_do_not_count_against_the_quota(sim: SimulatorThread) -> None:
    sim.admin.configure(daily_quota=1)
    for _ in range(5):
        token(sim)
    bearer = token(sim)
    assert sync(sim, leads("a@example.com"), bearer=bearer)[1]["success"] is True
    assert error_of(sync(sim, leads("b@example.com"), bearer=bearer)) == (
        "607",
        "Daily quota reached",
    )


# --- the token on API calls ----------------------------------------------------------


def test_the_token_is_taken_from_the_authorization_header_only(sim: SimulatorThread) -> None:
    bearer = token(sim)
    url = f"{sim.rest_base_url}/rest/v1/leads.json?access_token={bearer}"
    status, _, raw = http(
        url, json.dumps(leads("a@example.com")).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200
    documented = json.loads((GOLDEN / "error_601.json").read_text())
    answer = json.loads(raw)
    assert {k: v for k, v in answer.items() if k != "requestId"} == {
        k: v for k, v in documented.items() if k != "requestId"
    }
    # Even beside a valid header, the query form is refused.
    assert error_of(sync(sim, leads("a@example.com"), bearer=bearer, url=url))[0] == "601"
    assert error_of(sync(sim, leads("a@example.com"), bearer="made-up"))[0] == "601"
    assert sim.admin.leads() == []


# --- the body ------------------------------------------------------------------------


def test_a_body_that_is_not_json_gets_612_or_609(sim: SimulatorThread) -> None:
    body = json.dumps(leads("a@example.com")).encode()
    assert error_of(sync(sim, body, content_type="text/plain")) == ("612", "Invalid Content Type")
    assert error_of(sync(sim, body, content_type="application/x-www-form-urlencoded"))[0] == "612"
    assert error_of(sync(sim, b'{"input": [')) == ("609", "Invalid JSON")
    assert error_of(sync(sim, body, content_type="application/json; charset=latin-1"))[0] == "612"
    assert sync(sim, body, content_type="application/json; charset=utf-8")[1]["success"]


def test_300_records_pass_and_301_fail_the_whole_call(sim: SimulatorThread) -> None:
    emails = [f"p{i}@example.com" for i in range(301)]
    code, _ = error_of(sync(sim, leads(*emails)))
    assert code == "1003"
    assert sim.admin.leads() == []
    _, body = sync(sim, leads(*emails[:300]))
    assert [row["status"] for row in body["result"]] == ["created"] * 300


def test_a_body_over_1_mb_gets_http_413(sim: SimulatorThread) -> None:
    record = {"email": "a@example.com", "firstName": "x" * 200}
    big = json.dumps({"input": [record] * 5000}).encode()
    assert len(big) > 1_000_000
    status, _ = sync(sim, big)
    assert status == 413
    assert sim.admin.calls()[-1]["outcome"] == "rejected"


def test_other_methods_and_paths(sim: SimulatorThread) -> None:
    headers = {"Authorization": f"Bearer {token(sim)}"}
    status, _, raw = http(f"{sim.rest_base_url}/rest/v1/leads.json", headers=headers)
    assert (status, json.loads(raw)["errors"][0]["code"]) == (200, "605")
    status, _, raw = http(f"{sim.rest_base_url}/rest/v1/nothing.json", headers=headers)
    assert (status, json.loads(raw)["errors"][0]["code"]) == (200, "610")


# --- records ---------------------------------------------------------------------------


def test_results_come_in_input_order_with_documented_row_shapes(sim: SimulatorThread) -> None:
    sync(sim, leads("old@example.com"))
    _, body = sync(
        sim,
        {"input": [{"email": "new@example.com"}, {"email": "old@example.com"}, {"pants": 1}]},
    )
    _, skipped = sync(sim, {"action": "createOnly", "input": [{"email": "old@example.com"}]})
    documented = json.loads((GOLDEN / "sync_leads_response.json").read_text())
    ours = body["result"][:2] + skipped["result"]
    assert [sorted(row) for row in ours] == [sorted(row) for row in documented["result"]]
    assert [row["status"] for row in ours] == ["created", "updated", "skipped"]
    assert skipped["result"][0]["reasons"] == documented["result"][2]["reasons"]
    assert body["result"][2]["reasons"] == [{"code": "1006", "message": "Field 'pants' not found"}]
    assert set(body) == {"requestId", "success", "result"}
    assert isinstance(body["requestId"], str)


def test_rest_names_land_on_the_stored_soap_fields(sim: SimulatorThread) -> None:
    sync(sim, {"input": [{"email": "ann@example.com", "firstName": "Ann", "sicCode": "7372"}]})
    (stored,) = sim.admin.leads()
    assert stored["email"] == "ann@example.com"
    assert stored["attributes"] == {"FirstName": "Ann", "SICCode": "7372"}
    assert stored["history"][0]["protocol"] == "rest"


def test_describe2_lists_the_known_fields(sim: SimulatorThread) -> None:
    headers = {"Authorization": f"Bearer {token(sim)}"}
    status, _, raw = http(f"{sim.rest_base_url}/rest/v1/leads/describe2.json", headers=headers)
    body = json.loads(raw)
    assert (status, body["success"]) == (200, True)
    (described,) = body["result"]
    names = {f["name"] for f in described["fields"]}
    assert {"id", "email", "firstName", "dateOfBirth"} <= names
    assert all({"name", "displayName", "dataType"} <= set(f) for f in described["fields"])
    sim.admin.configure(fault_truncated_rate=1.0)
    _, _, cut = http(f"{sim.rest_base_url}/rest/v1/leads/describe2.json", headers=headers)
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut)


# --- limits (shared with SOAP) ---------------------------------------------------------


def test_the_rate_window_gives_606_with_marketos_text(sim: SimulatorThread) -> None:
    bearer = token(sim)
    sim.admin.configure(rate_limit_calls=2, rate_window_s=5.0)
    sync(sim, leads("a@example.com"), bearer=bearer)
    sync(sim, leads("b@example.com"), bearer=bearer)
    assert error_of(sync(sim, leads("c@example.com"), bearer=bearer)) == (
        "606",
        "Max rate limit '2' exceeded with in '5' secs",
    )
    assert sim.admin.summary()["faults_by_code"] == {"606": 1}


def test_too_many_in_flight_give_615_and_shared_keys_are_caught(sim: SimulatorThread) -> None:
    bearer = token(sim)
    sim.admin.configure(max_concurrent=2, latency_s=0.4)
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(
            pool.map(lambda _: sync(sim, leads("same@example.com"), bearer=bearer), range(4))
        )
    codes = [body["errors"][0]["code"] if not body["success"] else None for _, body in answers]
    assert codes.count("615") >= 1
    refused = next(b for _, b in answers if not b["success"])
    assert refused["errors"][0]["message"] == "Concurrent access limit '2' reached"
    summary = sim.admin.summary()
    assert summary["keys_in_concurrent_calls"] == 1
    assert summary["calls_by_protocol"] == {"rest": 4}


# --- faults ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("timeout_604", "604"),
        ("unavailable_608", "608"),
        ("system_611", "611"),
        ("transient_713", "713"),
        ("rate_606", "606"),
        ("concurrency_615", "615"),
    ],
)
def test_injected_whole_call_errors(sim: SimulatorThread, kind: str, code: str) -> None:
    bearer = token(sim)
    sim.admin.configure(**{f"fault_{kind}_rate": 1.0})
    assert error_of(sync(sim, leads("a@example.com"), bearer=bearer))[0] == code
    assert sim.admin.leads() == []


def test_an_injected_502_is_an_html_page(sim: SimulatorThread) -> None:
    sim.admin.configure(fault_http_502_rate=1.0)
    status, body = sync(sim, leads("a@example.com"))
    assert status == 502
    assert b"502 Bad Gateway" in body


def test_an_injected_truncated_answer_is_not_json_but_the_work_was_done(
    sim: SimulatorThread,
) -> None:
    bearer = token(sim)
    sim.admin.configure(fault_truncated_rate=1.0)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {bearer}"}
    status, _, raw = http(
        f"{sim.rest_base_url}/rest/v1/leads.json",
        json.dumps(leads("a@example.com")).encode(),
        headers,
    )
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    assert len(sim.admin.leads()) == 1


def test_an_injected_hang_outlasts_the_client_timeout(sim: SimulatorThread) -> None:
    bearer = token(sim)
    sim.admin.configure(fault_hang_rate=1.0, hang_s=5.0)
    request = urllib.request.Request(
        f"{sim.rest_base_url}/rest/v1/leads.json",
        data=json.dumps(leads("a@example.com")).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {bearer}"},
    )
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        urllib.request.urlopen(request, timeout=0.3)
    assert sim.admin.calls()[0]["outcome"] == "hang"
    assert sim.admin.calls()[0]["protocol"] == "rest"


# --- one instance for both protocols ---------------------------------------------------


def soap_call(sim: SimulatorThread, email: str) -> int:
    """One SOAP syncMultipleLeads call for ``email`` (the SOAP test's own helpers)."""
    from tests.integration.test_simulator_http import lead, post, request_body

    status, _, _ = post(sim.endpoint, request_body([lead(email)], user=USER, key=KEY))
    return status


USER, KEY = "sim_user_1", "sim-key-1"


@pytest.fixture
def both() -> Iterator[SimulatorThread]:
    config = SimConfig(user_id=USER, encryption_key=KEY, client_id=CLIENT_ID, client_secret=SECRET)
    with SimulatorThread(config) as running:
        yield running


def test_soap_and_rest_share_leads_limits_and_the_overlap_check(both: SimulatorThread) -> None:
    bearer = token(both)
    assert soap_call(both, "ann@example.com") == 200
    _, body = sync(
        both, {"input": [{"email": "Ann@example.com", "lastName": "Lee"}]}, bearer=bearer
    )
    assert body["result"] == [{"id": 1, "status": "updated"}]
    (stored,) = both.admin.leads()
    assert [w["protocol"] for w in stored["history"]] == ["soap", "rest"]

    both.admin.configure(latency_s=0.4)
    with ThreadPoolExecutor(max_workers=2) as pool:
        rest = pool.submit(sync, both, leads("same@example.com"), bearer=bearer)
        time.sleep(0.1)
        soap = pool.submit(soap_call, both, "same@example.com")
        rest.result(), soap.result()
    summary = both.admin.summary()
    assert summary["keys_in_concurrent_calls"] == 1
    assert summary["calls_by_protocol"] == {"soap": 2, "rest": 2}

    both.admin.configure(latency_s=0.0, rate_limit_calls=4, rate_window_s=30.0)
    assert soap_call(both, "b@example.com") == 500  # the fifth call of the window: refused
    assert error_of(sync(both, leads("c@example.com"), bearer=bearer))[0] == "606"
