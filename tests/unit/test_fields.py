"""One mapping between SOAP attribute names and REST API names, and merging that treats
both spellings of a field as one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producers.contract import validate_lead
from worker.core.batching import merge_leads
from worker.core.fields import ACRONYM_NAMES, merge_attributes, rest_name, soap_name


@pytest.mark.parametrize(
    ("soap", "rest"),
    [
        ("FirstName", "firstName"),
        ("Email", "email"),
        ("Id", "id"),
        ("AnnualRevenue", "annualRevenue"),
        ("SICCode", "sicCode"),
        ("SFDCLeadOwnerId", "sfdcLeadOwnerId"),
        ("LinkedInId", "linkedInId"),
        ("DateofBirth", "dateOfBirth"),
    ],
)
def test_both_spellings_map_onto_each_other(soap: str, rest: str) -> None:
    assert rest_name(soap) == rest
    assert rest_name(rest) == rest
    assert soap_name(rest) == soap
    assert soap_name(soap) == soap


@given(st.sampled_from(sorted(ACRONYM_NAMES.values())))
def test_every_acronym_name_goes_there_and_back(soap: str) -> None:
    assert soap_name(rest_name(soap)) == soap


@given(st.from_regex(r"[A-Z][a-z]{1,8}([A-Z][a-z]{1,8}){0,3}", fullmatch=True))
def test_a_camel_case_name_goes_there_and_back(soap: str) -> None:
    assert soap_name(rest_name(soap)) == soap
    assert rest_name(rest_name(soap)) == rest_name(soap)


def test_merging_treats_both_spellings_as_one_field_and_the_newest_wins() -> None:
    merged = merge_attributes({"FirstName": "Ann", "City": "Oslo"}, {"firstName": "Anna"})
    assert merged == {"firstName": "Anna", "City": "Oslo"}
    older = validate_lead(email="a@x.com", attributes={"LastName": "Old"})
    newer = validate_lead(email="a@x.com", attributes={"lastName": "New"})
    assert dict(merge_leads(older, newer).attributes) == {"lastName": "New"}
