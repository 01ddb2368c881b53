"""Pure parts of the simulator: config patching, signature check, limits, call log, lead rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from marketo_sim.auth import check_auth, expected_signature
from marketo_sim.calllog import CallLog, max_in_window
from marketo_sim.config import SimConfig
from marketo_sim.limits import Limits, quota_day
from marketo_sim.soap import ParsedAttribute, ParsedAuth, ParsedRecord, SimFault
from marketo_sim.state import LeadDatabase
from worker.marketo.soap.signing import sign


def test_the_signature_matches_marketos_documented_test_vector() -> None:
    signature = expected_signature(
        "2013-08-01T18:22:30-07:00", "demo17_1_809934544BFABAE58E5D27", "27272727aa"
    )
    assert signature == "b5e21953ae9f1b263e644da5eccce9ff33802513"
    assert signature == sign(
        "2013-08-01T18:22:30-07:00", "demo17_1_809934544BFABAE58E5D27", "27272727aa"
    )


def _auth(timestamp: str, key: str = "k") -> ParsedAuth:
    return ParsedAuth("u", expected_signature(timestamp, "u", key), timestamp)


def test_check_auth_accepts_fresh_refuses_wrong_stale_and_offsetless() -> None:
    config = SimConfig(user_id="u", encryption_key="k", timestamp_window_s=60)
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    check_auth(_auth("2026-01-01T06:00:30-06:00"), config, now)
    cases = {
        20014: _auth("2026-01-01T06:00:30-06:00", key="other"),
        20016: _auth("2026-01-01T05:58:00-06:00"),
        20017: _auth("2026-01-01T12:00:00"),
    }
    for code, auth in cases.items():
        with pytest.raises(SimFault) as caught:
            check_auth(auth, config, now)
        assert caught.value.code == code
    check_auth(
        _auth("2013-08-01T18:22:30-07:00"),
        SimConfig(user_id="u", encryption_key="k", timestamp_window_s=None),
        now,
    )


def test_config_patches_coerce_json_values() -> None:
    patched = SimConfig().patched(
        {
            "latency_s": 1,
            "known_fields": ["Email", "X"],
            "timestamp_window_s": None,
            "oversize_mode": "slow",
        }
    )
    assert patched.latency_s == 1.0
    assert patched.known_fields == frozenset({"Email", "X"})
    assert patched.timestamp_window_s is None
    assert patched.oversize_mode == "slow"


@pytest.mark.parametrize(
    "patch",
    [
        {"nope": 1},
        {"max_concurrent": "3"},
        {"oversize_mode": "drop"},
        {"fault_hang_rate": 0.7, "fault_http_502_rate": 0.7},
    ],
)
def test_config_patches_refuse_bad_values(patch: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"."):
        SimConfig().patched(patch)


def test_limits_refuse_by_rate_then_concurrency_then_quota() -> None:
    limits = Limits()
    config = SimConfig(rate_limit_calls=2, rate_window_s=10, max_concurrent=1, daily_quota=3)

    def code(at: float) -> int | None:
        try:
            limits.admit(config, monotonic_s=at, epoch_s=1_700_000_000 + at)
        except SimFault as fault:
            return fault.code
        return None

    assert code(0) is None
    assert code(1) == 20024  # one still in flight
    limits.release()
    assert code(2) is None
    limits.release()
    assert code(3) == 20023  # two in the last 10 s
    assert code(10.5) is None  # the first left the window
    limits.release()
    assert code(30) == 20015  # three today


def test_the_quota_day_turns_at_midnight_us_central() -> None:
    before = datetime(2026, 3, 2, 5, 59, tzinfo=UTC).timestamp()  # 23:59 CST
    after = before + timedelta(minutes=2).total_seconds()
    assert quota_day(before, -6) == "2026-03-01"
    assert quota_day(after, -6) == "2026-03-02"


def test_max_in_window_counts_the_busiest_window() -> None:
    assert max_in_window([0, 1, 2, 10, 10.5, 11, 11.9], 2.0) == 4
    assert max_in_window([], 1.0) == 0


def test_the_call_log_tracks_overlap_and_shared_keys() -> None:
    log = CallLog()
    first = log.start(0.0)
    log.set_keys(first, ("email:a", "email:b"))
    second = log.start(1.0)
    log.set_keys(second, ("email:b",))
    log.finish(first, 2.0)
    third = log.start(3.0)
    log.set_keys(third, ("email:a",))
    assert (first.overlap, second.overlap, third.overlap) == (1, 1, 1)
    assert log.max_concurrency == 2
    assert log.overlapping_keys == {"email:b"}


def _record(**kwargs: object) -> ParsedRecord:
    return ParsedRecord(**kwargs)  # type: ignore[arg-type]


def test_email_dedup_matches_the_newest_of_duplicate_leads() -> None:
    db = LeadDatabase()
    for dedup in (False, False, True):
        status = db.sync(_record(email="a@example.com"), dedup=dedup, call_id=1, now=0.0)
    assert (status.status, status.lead_id) == ("UPDATED", 2)


def test_a_foreign_id_without_its_type_fails_the_record() -> None:
    db = LeadDatabase()
    status = db.sync(_record(foreign_sys_person_id="x"), dedup=True, call_id=1, now=0.0)
    assert (status.status, status.error) == (
        "FAILED",
        "ForeignSysType is required with ForeignSysPersonId",
    )


def test_a_record_without_any_key_fails() -> None:
    db = LeadDatabase()
    record = _record(attributes=(ParsedAttribute("City", "Oslo"),))
    assert db.sync(record, dedup=True, call_id=1, now=0.0).status == "FAILED"
    assert db.leads == {}


def test_the_command_line_patches_the_config_it_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    import marketo_sim.__main__ as cli

    served: list[tuple[str, int, SimConfig]] = []
    monkeypatch.setattr(cli, "run", lambda host, port, config: served.append((host, port, config)))
    cli.main(
        [
            "--port",
            "9999",
            "--set",
            "latency_s=0.05",
            "--set",
            "user_id=abc",
            "--set",
            "timestamp_window_s=null",
        ]
    )
    ((host, port, config),) = served
    assert (host, port) == ("127.0.0.1", 9999)
    assert (config.latency_s, config.user_id, config.timestamp_window_s) == (0.05, "abc", None)
