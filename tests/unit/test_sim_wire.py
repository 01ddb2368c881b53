"""The simulator's wire knobs, driven directly: reply pieces and the gateway-504 fault (config,
fault draws, the background apply), and the command lines that set them."""

from __future__ import annotations

import asyncio
import random

import pytest
import typer
from typer.testing import CliRunner

from marketo_sim.calllog import CallLog
from marketo_sim.config import FAULT_KINDS, REST_FAULT_KINDS, SOAP_FAULT_KINDS, SimConfig
from marketo_sim.faults import pick_fault
from marketo_sim.gateway import HTML_504, Gateway
from marketo_sim.limits import Limits
from marketo_sim.wire import pieces

# --- config ------------------------------------------------------------------------


def test_the_wire_fields_default_to_a_whole_reply_and_no_gateway_fault() -> None:
    config = SimConfig()
    assert config.reply_chunk_bytes == 0
    assert config.reply_chunk_gap_s == 0.0
    assert config.fault_gateway_504_rate == 0.0
    assert config.gateway_apply_delay_s == 5.0
    assert {"reply_chunk_bytes", "reply_chunk_gap_s", "gateway_apply_delay_s"} <= set(
        config.to_json()
    )


def test_the_wire_fields_are_patched_from_json_values() -> None:
    patched = SimConfig().patched(
        {
            "reply_chunk_bytes": 1000,
            "reply_chunk_gap_s": 0,
            "fault_gateway_504_rate": 1,
            "gateway_apply_delay_s": 0.5,
        }
    )
    assert patched.reply_chunk_bytes == 1000
    assert patched.reply_chunk_gap_s == 0.0
    assert isinstance(patched.reply_chunk_gap_s, float)
    assert patched.fault_rate("gateway_504") == 1.0
    assert patched.gateway_apply_delay_s == 0.5


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"reply_chunk_bytes": -1}, "reply_chunk_bytes must be >= 0"),
        ({"reply_chunk_bytes": 1.5}, "reply_chunk_bytes must be an integer"),
        ({"reply_chunk_bytes": True}, "reply_chunk_bytes must be an integer"),
        ({"reply_chunk_gap_s": -0.01}, "reply_chunk_gap_s must be >= 0"),
        ({"reply_chunk_gap_s": "slow"}, "reply_chunk_gap_s must be a number"),
        ({"gateway_apply_delay_s": -1}, "gateway_apply_delay_s must be >= 0"),
        ({"fault_gateway_504_rate": -0.1}, "fault rates must be >= 0"),
        ({"fault_gateway_504_rate": 0.6, "fault_http_502_rate": 0.6}, "sum to at most 1"),
    ],
)
def test_invalid_wire_values_are_refused(patch: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimConfig().patched(patch)


def test_the_gateway_kind_belongs_to_both_protocols() -> None:
    assert "gateway_504" in FAULT_KINDS
    assert "gateway_504" in SOAP_FAULT_KINDS
    assert "gateway_504" in REST_FAULT_KINDS
    assert set(SOAP_FAULT_KINDS) | set(REST_FAULT_KINDS) == set(FAULT_KINDS)
    assert set(SOAP_FAULT_KINDS) & set(REST_FAULT_KINDS) == {
        "hang",
        "http_502",
        "truncated",
        "gateway_504",
    }


# --- fault draws ---------------------------------------------------------------------


def _old_pick(config: SimConfig, rng: random.Random, kinds: tuple[str, ...]) -> str | None:
    """The draw as it was before gateway_504 existed (one uniform value walked in order)."""
    draw = rng.random()
    for kind in kinds:
        draw -= config.fault_rate(kind)
        if draw < 0:
            return kind
    return None


@pytest.mark.parametrize(
    ("kinds", "old_kinds", "rates"),
    [
        (
            SOAP_FAULT_KINDS,
            ("hang", "http_502", "truncated", "doctype", "internal_10001", "internal_20011",
             "rate_20023", "concurrency_20024"),
            {"fault_internal_10001_rate": 0.3, "fault_concurrency_20024_rate": 0.5},
        ),
        (
            REST_FAULT_KINDS,
            ("hang", "http_502", "truncated", "timeout_604", "unavailable_608", "system_611",
             "transient_713", "rate_606", "concurrency_615"),
            {"fault_timeout_604_rate": 0.3, "fault_concurrency_615_rate": 0.5},
        ),
    ],
)  # fmt: skip
def test_an_unused_gateway_kind_leaves_the_seeded_draws_unchanged(
    kinds: tuple[str, ...], old_kinds: tuple[str, ...], rates: dict[str, float]
) -> None:
    config = SimConfig(**rates)  # type: ignore[arg-type]
    new_rng, old_rng = random.Random(7), random.Random(7)
    new = [pick_fault(config, new_rng, kinds) for _ in range(500)]
    old = [_old_pick(config, old_rng, old_kinds) for _ in range(500)]
    assert new == old
    assert new_rng.random() == old_rng.random()  # the stream is where it was, too


def test_a_gateway_rate_of_one_draws_the_gateway_for_both_protocols() -> None:
    config = SimConfig(fault_gateway_504_rate=1.0)
    rng = random.Random(0)
    assert {pick_fault(config, rng, SOAP_FAULT_KINDS) for _ in range(50)} == {"gateway_504"}
    assert {pick_fault(config, rng, REST_FAULT_KINDS) for _ in range(50)} == {"gateway_504"}


# --- reply pieces --------------------------------------------------------------------


def test_a_body_is_cut_in_pieces_of_at_most_the_chunk_size() -> None:
    body = bytes(range(256)) * 10  # 2,560 bytes
    cut = pieces(body, 1000)
    assert [len(p) for p in cut] == [1000, 1000, 560]
    assert b"".join(cut) == body
    assert [len(p) for p in pieces(body, 2560)] == [2560]
    assert [len(p) for p in pieces(body, 4096)] == [2560]
    assert [len(p) for p in pieces(body, 1)] == [1] * 2560
    assert [len(p) for p in pieces(b"x" * 2000, 1000)] == [1000, 1000]


def test_chunk_size_zero_is_the_whole_body_and_an_empty_body_has_no_piece() -> None:
    assert pieces(b"abc", 0) == [b"abc"]
    assert pieces(b"", 10) == []
    assert pieces(b"", 0) == []
    with pytest.raises(ValueError, match="size must be >= 0"):
        pieces(b"abc", -1)


# --- the gateway's background apply ----------------------------------------------------


class _Gate:
    """A sleep the test opens by hand (no wall clock)."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self.open = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        await self.open.wait()


async def test_a_held_call_keeps_its_slot_and_stays_in_flight_until_applied() -> None:
    gate, log, limits = _Gate(), CallLog(), Limits()
    gateway = Gateway(gate.sleep)
    call = log.start(1.0)
    log.set_keys(call, ("email:a@example.com",))
    limits.count_in(0.0)
    applied: list[int] = []
    reply = gateway.hold(
        call, log=log, limits=limits, delay_s=0.5, apply=lambda: applied.append(call.call_id)
    )
    assert (reply.status, reply.content_type, reply.body) == (504, "text/html", HTML_504)
    assert gateway.holds(call)
    await asyncio.sleep(0)
    assert gate.asked == [0.5]
    assert (applied, limits.in_flight, call.outcome) == ([], 1, "in_flight")
    assert call.call_id in log.in_flight
    # A call on the same lead while the first waits is a key in concurrent calls.
    other = log.start(2.0)
    log.set_keys(other, ("email:a@example.com",))
    log.finish(other, 2.1)
    assert log.summary(20.0)["keys_in_concurrent_calls"] == 1
    assert log.summary(20.0)["in_flight"] == 1

    gate.open.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert (applied, limits.in_flight, call.outcome) == ([1], 0, "gateway_504")
    assert call.call_id not in log.in_flight
    assert call.end_s is not None
    assert not gateway.holds(call)
    assert len(gateway) == 0
    assert log.summary(20.0)["outcomes"]["gateway_504"] == 1


async def test_cancelling_the_gateway_forgets_every_pending_apply() -> None:
    gate, log, limits = _Gate(), CallLog(), Limits()
    gateway = Gateway(gate.sleep)
    applied: list[int] = []
    calls = [log.start(float(n)) for n in range(3)]
    for call in calls:
        limits.count_in(0.0)
        gateway.hold(call, log=log, limits=limits, delay_s=5.0, apply=lambda: applied.append(1))
    await asyncio.sleep(0)
    assert len(gateway) == 3
    await gateway.cancel_all()
    assert len(gateway) == 0
    assert applied == []
    assert limits.in_flight == 0
    assert log.in_flight == {}
    assert not any(gateway.holds(call) for call in calls)


# --- command lines -------------------------------------------------------------------


def test_python_dash_m_sets_the_wire_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    import marketo_sim.__main__ as cli

    served: list[SimConfig] = []
    monkeypatch.setattr(cli, "run", lambda host, port, config: served.append(config))
    cli.main(
        [
            "--set",
            "reply_chunk_bytes=1000",
            "--set",
            "reply_chunk_gap_s=0.05",
            "--set",
            "fault_gateway_504_rate=0.1",
            "--set",
            "gateway_apply_delay_s=2",
        ]
    )
    (config,) = served
    assert (config.reply_chunk_bytes, config.reply_chunk_gap_s) == (1000, 0.05)
    assert (config.fault_gateway_504_rate, config.gateway_apply_delay_s) == (0.1, 2.0)


def test_leadsync_sim_has_options_for_the_wire_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    import marketo_sim.server
    from marketo_sim.cli import register

    served: list[SimConfig] = []
    monkeypatch.setattr(marketo_sim.server, "run", lambda host, port, config: served.append(config))
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(
        app,
        [
            "sim",
            "--reply-chunk-bytes",
            "1000",
            "--reply-chunk-gap-s",
            "0.05",
            "--fault-gateway-504-rate",
            "0.25",
            "--gateway-apply-delay-s",
            "0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    (config,) = served
    assert (config.reply_chunk_bytes, config.reply_chunk_gap_s) == (1000, 0.05)
    assert (config.fault_gateway_504_rate, config.gateway_apply_delay_s) == (0.25, 0.5)
    refused = CliRunner().invoke(app, ["sim", "--reply-chunk-bytes", "-1"])
    assert refused.exit_code != 0
