"""Anything the client codec can send reaches the simulator's parsed request unchanged."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from marketo_sim.soap import parse_request_bytes
from producers.contract import LeadUpsert
from worker.marketo.soap.envelope import build_sync_multiple_leads
from worker.marketo.soap.signing import make_auth_header

# XML 1.0 Char: no C0 controls except tab/newline/CR, no surrogates, no U+FFFE/U+FFFF.
_ILLEGAL = "".join(chr(c) for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)) + "\ufffe\uffff"
xml_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters=_ILLEGAL), max_size=40
)
field_names = st.sampled_from(["FirstName", "LastName", "Company", "City", "Title", "Phone"])

leads = st.builds(
    LeadUpsert,
    email=st.builds(lambda local: f"{local}@example.com", xml_text.filter(bool)),
    marketo_id=st.none() | st.integers(1, 2**31 - 1),
    attributes=st.dictionaries(field_names, xml_text, max_size=4),
)


@settings(max_examples=150, deadline=None)
@given(batch=st.lists(leads, min_size=1, max_size=4), dedup=st.booleans())
def test_codec_output_survives_to_the_simulators_parsed_request(
    batch: list[LeadUpsert], dedup: bool
) -> None:
    auth = make_auth_header("user_1", "key")
    body = build_sync_multiple_leads(batch, auth=auth, dedup=dedup)

    parsed = parse_request_bytes(body)

    assert parsed.dedup is dedup
    assert (parsed.auth.user_id, parsed.auth.signature, parsed.auth.timestamp) == (
        auth.user_id,
        auth.signature,
        auth.timestamp,
    )
    assert len(parsed.records) == len(batch)
    for record, lead in zip(parsed.records, batch, strict=True):
        assert record.email == lead.email
        assert record.lead_id == lead.marketo_id
        assert {a.name: a.value for a in record.attributes} == dict(lead.attributes)


@settings(max_examples=60, deadline=None)
@given(
    fsp=xml_text.filter(bool),
    fst=st.sampled_from(["CUSTOM", "SFDC", "NETSUITE"]),
)
def test_foreign_ids_survive_to_the_simulators_parsed_request(fsp: str, fst: str) -> None:
    lead = LeadUpsert(foreign_sys_person_id=fsp, foreign_sys_type=fst)  # type: ignore[arg-type]
    body = build_sync_multiple_leads([lead], auth=make_auth_header("u", "k"))

    (record,) = parse_request_bytes(body).records

    assert (record.foreign_sys_person_id, record.foreign_sys_type) == (fsp, fst)
    assert record.key == f"fsp:{fst}:{fsp}"
