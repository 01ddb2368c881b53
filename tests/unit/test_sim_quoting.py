"""The simulator's two record-fault settings for the hostile bench: how 20105's text writes
the unknown names (``unknown_field_quotes``), and a value too long for the simulator's rule
(``max_value_chars``: 20110, naming no field). Driven through the app in process with the
worker's own SOAP codec on both ends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from marketo_sim.config import SimConfig
from marketo_sim.server import create_app, unknown_fields_message
from producers.contract import LeadUpsert
from worker.errors import BadRequestError
from worker.marketo.base import SyncResult
from worker.marketo.soap.envelope import REQUEST_HEADERS, build_sync_multiple_leads
from worker.marketo.soap.response import parse_sync_response
from worker.marketo.soap.signing import make_auth_header

USER = "quoting_user"
KEY = "quoting-key"
PATH = "/soap/mktows/2_2"


def config(**fields: object) -> SimConfig:
    return SimConfig(user_id=USER, encryption_key=KEY).patched(fields)


@asynccontextmanager
async def simulator(sim_config: SimConfig) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(sim_config))) as client:
        yield client


async def sync(client: TestClient[Any, Any], leads: list[LeadUpsert]) -> list[SyncResult]:
    body = build_sync_multiple_leads(leads, auth=make_auth_header(USER, KEY))
    async with client.post(PATH, data=body, headers=dict(REQUEST_HEADERS)) as reply:
        return parse_sync_response(
            await reply.read(),
            http_status=reply.status,
            expected_count=len(leads),
            content_type=reply.headers.get("Content-Type"),
        )


async def fault(client: TestClient[Any, Any], leads: list[LeadUpsert]) -> BadRequestError:
    with pytest.raises(BadRequestError) as caught:
        await sync(client, leads)
    return caught.value


def lead(email: str, attributes: Mapping[str, str] | None = None) -> LeadUpsert:
    return LeadUpsert(email=email, attributes=dict(attributes or {}))


BAD_PAIR = [
    lead("a@example.com", {"Pants": "x", "Company": "A"}),
    lead("b@example.com", {"Shoe": "y"}),
    lead("c@example.com", {"City": "C"}),
]


# --- unknown_field_quotes --------------------------------------------------------------


def test_names_are_unquoted_by_default_as_marketo_documents() -> None:
    assert SimConfig().unknown_field_quotes == "none"
    assert unknown_fields_message(["Pants", "Shoe"]) == (
        "syncMultipleLeads operation failed: unknown fields for import: Pants, Shoe"
    )


@pytest.mark.parametrize(
    ("quotes", "listed"),
    [("none", "Pants, Shoe"), ("single", "'Pants', 'Shoe'"), ("double", '"Pants", "Shoe"')],
)
async def test_20105_writes_the_names_as_set_and_the_worker_reads_them(
    quotes: str, listed: str
) -> None:
    async with simulator(config(unknown_field_quotes=quotes)) as client:
        error = await fault(client, BAD_PAIR)
        leads = await (await client.get("/admin/leads")).json()
    assert error.code == 20105
    assert error.named_text == listed
    assert error.fields == frozenset({"pants", "shoe"})
    assert leads == {"leads": []}  # the whole call faulted


def test_the_quotes_are_patched_from_json_and_refused_otherwise() -> None:
    assert config(unknown_field_quotes="double").unknown_field_quotes == "double"
    with pytest.raises(ValueError, match="unknown_field_quotes must be one of"):
        config(unknown_field_quotes="backtick")
    with pytest.raises(ValueError, match="unknown_field_quotes must be"):
        SimConfig(unknown_field_quotes="`")  # type: ignore[arg-type]


async def test_the_quotes_can_be_changed_at_runtime() -> None:
    async with simulator(config()) as client:
        assert (await fault(client, BAD_PAIR)).named_text == "Pants, Shoe"
        patched = await client.post("/admin/config", json={"unknown_field_quotes": "single"})
        assert patched.status == 200
        assert (await fault(client, BAD_PAIR)).named_text == "'Pants', 'Shoe'"


# --- max_value_chars -------------------------------------------------------------------


async def test_no_value_length_rule_by_default() -> None:
    assert SimConfig().max_value_chars == 0
    async with simulator(config()) as client:
        (result,) = await sync(client, [lead("a@example.com", {"Company": "x" * 5000})])
    assert str(result.status) == "CREATED"


async def test_a_value_too_long_faults_the_call_with_20110_naming_no_field() -> None:
    async with simulator(config(max_value_chars=255)) as client:
        leads = [lead("a@example.com", {"Company": "x" * 256}), lead("b@example.com")]
        error = await fault(client, leads)
        assert error.code == 20110
        assert error.fields == frozenset()
        assert "Company" not in str(error)
        assert (await (await client.get("/admin/leads")).json()) == {"leads": []}
        # A value of exactly the limit goes through.
        ok = await sync(client, [lead("a@example.com", {"Company": "x" * 255})])
    assert [str(r.status) for r in ok] == ["CREATED"]


async def test_unknown_names_are_faulted_before_the_value_length() -> None:
    async with simulator(config(max_value_chars=3)) as client:
        error = await fault(client, [lead("a@example.com", {"Pants": "long value"})])
    assert error.code == 20105


def test_a_negative_value_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_value_chars must be >= 0"):
        config(max_value_chars=-1)


# --- the command line ------------------------------------------------------------------


def test_python_dash_m_sets_both(monkeypatch: pytest.MonkeyPatch) -> None:
    import marketo_sim.__main__ as cli

    served: list[SimConfig] = []
    monkeypatch.setattr(cli, "run", lambda host, port, config: served.append(config))
    cli.main(["--set", "unknown_field_quotes=single", "--set", "max_value_chars=255"])
    cli.main(["--set", 'unknown_field_quotes="double"'])
    assert [(c.unknown_field_quotes, c.max_value_chars) for c in served] == [
        ("single", 255),
        ("double", 0),
    ]
