"""What a valid lead is (issue 18, items 1 and 5): an email address as Marketo takes it,
attribute names a Marketo field can have, finite numbers. One definition in producers;
the HTTP API validates through it and its OpenAPI schema carries the same patterns."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any
from unittest import mock

import fakeredis
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from producers import InvalidLead, validate_lead
from producers.email import EMAIL_MAX_LENGTH, EMAIL_PATTERN
from producers.lead import ATTRIBUTE_NAME_PATTERN
from tests.support.openapi import document
from worker.api.app import KEY_STORE, make_app
from worker.settings import Settings

GOOD_EMAILS = [
    "ann@example.com",
    "Ann.Smith@Example.COM",
    "first.last+tag@sub.example.co.uk",
    "o'brien@example.ie",
    "user_name-1@my-domain.io",
    "a!#$%&'*+/=?^_`{|}~-@example.com",
    "x@xn--bcher-kva.de",  # bücher.de, as an internationalised domain travels
    "taro..yamada@docomo.ne.jp",  # dots are not policed: such mailboxes exist
    "1234@123.example.org",
    "a@b.co",
    "l" * 64 + "@example.com",
    "a@" + "d" * 63 + ".com",
    "a@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + "." + "e" * 60,  # 254 characters
]

BAD_EMAILS = [
    ("a@b@c.com", "has more than one @"),
    ("bad@@example", "has more than one @"),
    ("user@nodot", "domain has no dot"),
    ("plainaddress", "has no @"),
    ("@example.com", "has nothing before the @"),
    ("ann@", "has no domain after the @"),
    ("ann smith@example.com", "contains whitespace"),
    ("ann@exa\tmple.com", "contains whitespace"),
    ("ann@example.com\u00a0x", "contains whitespace"),
    ("ann\x7f@example.com", "has the control character U+007F"),
    ("jörg@example.de", "has a non-ASCII character"),
    ("ann@bücher.de", "has a non-ASCII character"),
    ('"ann"@example.com', "has '\"' before the @"),
    ("ann(work)@example.com", "has '(' before the @"),
    ("ann,bob@example.com", "has ',' before the @"),
    ("ann@example..com", "domain has an empty label"),
    ("ann@.example.com", "domain has an empty label"),
    ("ann@example.com.", "domain has an empty label"),
    ("ann@-example.com", "domain has a label that starts or ends with a hyphen"),
    ("ann@example-.com", "domain has a label that starts or ends with a hyphen"),
    ("ann@exa_mple.com", "domain has '_'"),
    ("ann@[10.0.0.1]", "domain has '['"),
    ("ann@10.0.0.1", "domain's last label does not start with a letter"),
    ("ann@example.123", "domain's last label does not start with a letter"),
    ("l" * 65 + "@example.com", "has more than 64 characters before the @"),
    ("a@" + "d" * 64 + ".com", "domain has a label longer than 63 characters"),
    ("a@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + "." + "e" * 61, "is longer than 254"),
]

GOOD_NAMES = ["FirstName", "leadScore", "Custom_Field__c", "SICCode", "x1", "_private", "A"]
BAD_NAMES = [
    "First Name",
    "City,State",
    "Score(1)",
    "O'Name",
    'Q"uote',
    "Company.Name",
    "first-name",
    "Fïrst",
    "名前",
    "a;b",
    "a/b",
    "a\tb",
]


def refusal(**fields: Any) -> InvalidLead:
    with pytest.raises(InvalidLead) as caught:
        validate_lead(**fields)
    return caught.value


def refused(**fields: Any) -> InvalidLead | None:
    try:
        validate_lead(**fields)
    except InvalidLead as exc:
        return exc
    return None


# --- email -----------------------------------------------------------------------------


@pytest.mark.parametrize("email", GOOD_EMAILS)
def test_a_good_email_is_accepted_as_given(email: str) -> None:
    assert validate_lead(email=f" {email} ").email == email


@pytest.mark.parametrize(("email", "message"), BAD_EMAILS)
def test_a_bad_email_is_refused_saying_what_is_wrong(email: str, message: str) -> None:
    exc = refusal(email=email)
    assert exc.field == "email"
    assert exc.reason.startswith(message), exc.reason
    assert exc.reason != "is not an email address"  # the old catch-all


def test_the_tables_sit_at_the_length_limits() -> None:
    assert len(GOOD_EMAILS[-1]) == EMAIL_MAX_LENGTH
    assert len(BAD_EMAILS[-1][0]) == EMAIL_MAX_LENGTH + 1


# --- numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, -math.inf, json.loads("1e400"), json.loads("-1e400")],
    ids=["nan", "inf", "-inf", "json 1e400", "json -1e400"],
)
def test_a_non_finite_float_is_refused_naming_the_attribute(value: float) -> None:
    exc = refusal(email="ann@example.com", attributes={"LeadScore": value})
    assert exc.field == "attributes.LeadScore"
    assert "finite" in exc.reason


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_a_non_finite_decimal_is_refused_naming_the_attribute(value: Decimal) -> None:
    exc = refusal(email="ann@example.com", attributes={"AnnualRevenue": value})
    assert exc.field == "attributes.AnnualRevenue"


def test_finite_numbers_are_still_sent_as_text() -> None:
    lead = validate_lead(
        email="ann@example.com",
        attributes={"A": 1.5, "B": -0.0, "C": 10**20, "D": sys.float_info.max, "E": True},
    )
    assert dict(lead.attributes) == {
        "A": "1.5",
        "B": "-0.0",
        "C": str(10**20),
        "D": str(sys.float_info.max),
        "E": "true",
    }


# --- attribute names -------------------------------------------------------------------


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_a_marketo_field_name_is_accepted(name: str) -> None:
    lead = validate_lead(email="ann@example.com", attributes={f" {name} ": "x"})
    assert dict(lead.attributes) == {name: "x"}


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_no_marketo_field_has_is_refused_naming_it(name: str) -> None:
    exc = refusal(email="ann@example.com", attributes={name: "x"})
    assert exc.field == f"attributes.{name}"
    assert "letters, digits and underscores" in exc.reason


# --- one definition: producers and the API's schema ------------------------------------


def lead_schema() -> dict[str, Any]:
    schema: dict[str, Any] = document()["components"]["schemas"]["LeadUpsert"]
    return schema


def test_the_schema_carries_the_producers_definitions() -> None:
    properties = lead_schema()["properties"]
    assert properties["email"]["pattern"] == EMAIL_PATTERN
    assert properties["email"]["maxLength"] == EMAIL_MAX_LENGTH
    assert properties["attributes"]["propertyNames"]["pattern"] == ATTRIBUTE_NAME_PATTERN
    values = properties["attributes"]["additionalProperties"]
    assert (values["minimum"], values["maximum"]) == (-sys.float_info.max, sys.float_info.max)


def schema_valid(lead: Mapping[str, Any]) -> bool:
    return Draft202012Validator(lead_schema()).is_valid(lead)


def test_the_schema_refuses_non_finite_numbers() -> None:
    assert schema_valid({"email": "a@example.com", "attributes": {"A": sys.float_info.max}})
    assert not schema_valid({"email": "a@example.com", "attributes": {"A": math.inf}})
    assert not schema_valid({"email": "a@example.com", "attributes": {"A": -math.inf}})


def test_the_patterns_read_alike_in_python_and_ecma_262() -> None:
    """No construct whose meaning differs between the dialects: no lookaround, no \\s \\d
    \\w or \\b classes (Unicode-wide in Python), no flags; \\. is the only escape."""
    for pattern in (EMAIL_PATTERN, ATTRIBUTE_NAME_PATTERN):
        assert pattern.startswith("^")
        assert pattern.endswith("$")
        assert "(?" not in pattern.replace("(?:", "")
        assert re.sub(r"\\\.", "", pattern).count("\\") == 0
        assert pattern.isascii()


_ODD = "@.-_+'\"(),:;<>[]\\ \t\n\x00\x1f\x7f\u00a0\u200béü名"
_at = st.integers(0, 300)
_odd = st.text(st.sampled_from(_ODD), min_size=1, max_size=2)
_structural = st.text(st.sampled_from("@.-1"), min_size=1, max_size=2)


def _tweak(text: str, at: int, insert: str) -> str:
    at %= len(text) + 1
    return text[:at] + insert + text[at + 1 :]


def _trimmed_nonempty(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    # validate_lead trims the address and reads an empty one as no email; the schema
    # is read on the trimmed address.
    return strategy.map(str.strip).filter(bool)


emails = _trimmed_nonempty(
    st.one_of(
        st.from_regex(EMAIL_PATTERN, fullmatch=True),
        st.builds(_tweak, st.from_regex(EMAIL_PATTERN, fullmatch=True), _at, _odd),
        st.builds(_tweak, st.from_regex(EMAIL_PATTERN, fullmatch=True), _at, _structural),
        # Around the limits: 64 before the @, 63 in a label, 254 in all.
        st.builds(
            "{}@{}.{}{}".format,
            st.from_regex("^[a-z]{60,66}$", fullmatch=True),
            st.from_regex("^[a-z]{60,66}$", fullmatch=True),
            st.from_regex("^([a-z]{63}[.]){0,2}$", fullmatch=True),
            st.from_regex("^[a-z]{1,66}$", fullmatch=True),
        ),
        st.text(st.sampled_from("ab1-." + _ODD), min_size=1, max_size=30),
        st.text(max_size=30),
    )
)
names = _trimmed_nonempty(
    st.one_of(
        st.from_regex(ATTRIBUTE_NAME_PATTERN, fullmatch=True),
        st.builds(_tweak, st.from_regex(ATTRIBUTE_NAME_PATTERN, fullmatch=True), _at, _odd),
        st.text(max_size=20),
    )
)


@settings(max_examples=600, deadline=None)
@given(email=emails)
def test_producers_accept_exactly_the_emails_the_schema_accepts(email: str) -> None:
    accepted = refused(email=email) is None
    assert accepted == schema_valid({"email": email})
    assert accepted == (
        re.fullmatch(EMAIL_PATTERN, email) is not None and len(email) <= EMAIL_MAX_LENGTH
    )


@settings(max_examples=300, deadline=None)
@given(name=names)
def test_producers_accept_exactly_the_attribute_names_the_schema_accepts(name: str) -> None:
    lead = {"email": "ann@example.com", "attributes": {name: "x"}}
    assert (refused(**lead) is None) == schema_valid(lead)


# --- the HTTP API refuses exactly what producers refuse --------------------------------


@asynccontextmanager
async def api() -> AsyncIterator[tuple[TestClient[Any, Any], dict[str, str]]]:
    """The API app in process, over fakeredis."""
    redis = fakeredis.FakeAsyncRedis()
    with mock.patch("worker.api.app.redis_client", return_value=redis):
        async with TestClient(TestServer(make_app(Settings(shards=4)))) as client:
            assert client.app is not None
            # Hundreds of requests in a second: past the default key rate, so a rate of its own.
            key, _ = await client.app[KEY_STORE].create("tests", ["write"], rate_per_s=100_000)
            yield client, {"Authorization": f"Bearer {key}"}


def expected(record: Mapping[str, Any]) -> dict[str, Any] | None:
    exc = refused(**record)
    return None if exc is None else {"errors": [{"field": exc.field, "message": exc.reason}]}


TABLE: list[dict[str, Any]] = [
    *({"email": email} for email in GOOD_EMAILS),
    *({"email": email} for email, _ in BAD_EMAILS),
    *({"email": "a@example.com", "attributes": {name: "x"}} for name in GOOD_NAMES + BAD_NAMES),
]


async def test_the_api_answers_each_lead_as_producers_do() -> None:
    async with api() as (client, headers):
        for record in TABLE:
            answer = await client.post("/v1/leads", json=record, headers=headers)
            body = await answer.json()
            want = expected(record)
            if want is None:
                assert answer.status == 202, (record, body)
            else:
                assert (answer.status, body) == (422, want), record


async def test_the_api_refuses_a_number_json_reads_as_infinity() -> None:
    raw = b'{"email": "a@example.com", "attributes": {"LeadScore": 1e400}}'
    async with api() as (client, headers):
        answer = await client.post(
            "/v1/leads", data=raw, headers={**headers, "Content-Type": "application/json"}
        )
        assert answer.status == 422
        assert (await answer.json())["errors"][0]["field"] == "attributes.LeadScore"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(emails, min_size=1, max_size=40))
async def test_a_batch_refuses_exactly_the_emails_producers_refuse(batch: list[str]) -> None:
    records = [{"email": email} for email in batch]
    async with api() as (client, headers):
        answer = await client.post("/v1/leads:batch", json={"records": records}, headers=headers)
        assert answer.status == 200
        results = (await answer.json())["results"]
    for record, result in zip(records, results, strict=True):
        want = expected(record)
        if want is None:
            assert "request_id" in result, (record, result)
        else:
            assert result == want, record
