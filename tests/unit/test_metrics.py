"""Prometheus metrics: what each recorder sets, and the prefork (multiprocess) sum."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess

from worker.errors import ThrottledError, TransportError
from worker.ledger import ShardBacklog
from worker.limits import LimiterState
from worker.obs import metrics


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_outcomes_are_counted_per_status() -> None:
    before = sample("leadsync_outcomes_total", status="CREATED")
    metrics.record_outcomes({"CREATED": 3, "FAILED": 0})
    assert sample("leadsync_outcomes_total", status="CREATED") == before + 3


def test_a_call_records_its_lead_count_in_a_bucket_up_to_three_hundred() -> None:
    before = sample("leadsync_leads_per_call_bucket", le="300.0")
    below = sample("leadsync_leads_per_call_bucket", le="250.0")
    metrics.record_call(300, 0.2)
    assert sample("leadsync_leads_per_call_bucket", le="300.0") == before + 1
    assert sample("leadsync_leads_per_call_bucket", le="250.0") == below


def test_a_fault_is_labelled_by_marketo_code_or_by_error_class_without_one() -> None:
    assert metrics.fault_label(ThrottledError("rate", code=20023)) == "20023"
    assert metrics.fault_label(TransportError("timeout")) == "TransportError"
    before = sample("leadsync_marketo_faults_total", code="20023")
    metrics.record_fault(ThrottledError("rate", code=20023))
    assert sample("leadsync_marketo_faults_total", code="20023") == before + 1


def test_backlogs_are_set_per_shard_and_an_empty_shard_reads_age_zero() -> None:
    metrics.observe_backlogs([ShardBacklog(0, 12, 3.5, False), ShardBacklog(1, 0, None, False)])
    assert sample("leadsync_backlog_entries", shard="0") == 12
    assert sample("leadsync_oldest_entry_age_seconds", shard="0") == 3.5
    assert sample("leadsync_oldest_entry_age_seconds", shard="1") == 0


def test_shards_gone_after_a_reshard_read_zero_not_their_last_backlog() -> None:
    state = LimiterState(0, 0, 0, 100, 0.0, 0.0, None, None, None, None)
    metrics.observe_backlogs([ShardBacklog(s, 9, 20.0, False) for s in range(6)])
    metrics.observe_bulk([ShardBacklog(6 + s, 4, 8.0, False) for s in range(6)], state, 6)
    metrics.observe_backlogs([ShardBacklog(s, 1, 2.0, False) for s in range(3)])
    metrics.observe_bulk([ShardBacklog(3 + s, 0, None, False) for s in range(3)], state, 3)
    assert sample("leadsync_backlog_entries", shard="2") == 1
    for gone in ("3", "4", "5"):
        assert sample("leadsync_backlog_entries", shard=gone) == 0
        assert sample("leadsync_oldest_entry_age_seconds", shard=gone) == 0
        assert sample("leadsync_bulk_backlog_entries", shard=gone) == 0
        assert sample("leadsync_bulk_oldest_entry_age_seconds", shard=gone) == 0


def test_the_limiter_snapshot_sets_hold_to_one_while_held() -> None:
    state = LimiterState(
        calls_in_window=7,
        slots_in_use=2,
        quota_used_today=99,
        pace_wait_s=0.0,
        quota_limit=10_000,
        cooldown_remaining_s=4.0,
        cooldown_reason="20023 ThrottledError",
        hold_reason="20014 AuthError",
        hold_since=1.0,
        next_probe_in_s=30.0,
    )
    metrics.observe_limiter(state)
    assert sample("leadsync_hold") == 1
    assert sample("leadsync_limiter_calls_in_window") == 7
    assert sample("leadsync_limiter_slots_in_use") == 2
    assert sample("leadsync_quota_used_today") == 99
    assert sample("leadsync_cooldown_seconds") == 4.0


def test_port_zero_serves_nothing() -> None:
    assert metrics.serve(0) is False


_CHILD = """
from worker.obs import metrics
metrics.record_outcomes({"CREATED": 2})
metrics.observe_backlogs([__import__("worker.ledger.redis").ledger.redis.ShardBacklog(5, 40, 1.0, False)])
"""


def test_pool_processes_are_summed_by_the_multiprocess_collector(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", _CHILD], env=env, check=True, timeout=60)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    assert registry.get_sample_value("leadsync_outcomes_total", {"status": "CREATED"}) == 4
    assert registry.get_sample_value("leadsync_backlog_entries", {"shard": "5"}) == 40
    assert b"pid=" not in generate_latest(registry), "gauges are not split per process"


def test_stale_value_files_of_an_earlier_run_are_removed_and_ours_kept(tmp_path: Path) -> None:
    ours = tmp_path / f"counter_{os.getpid()}.db"
    old = tmp_path / "counter_1.db"
    gauge = tmp_path / "gauge_mostrecent_2.db"
    for path in (ours, old, gauge):
        path.write_bytes(b"")
    assert metrics.remove_stale_files(tmp_path, keep_pid=os.getpid()) == 2
    assert [p.name for p in tmp_path.iterdir()] == [ours.name]


def test_a_failing_recorder_never_breaks_the_data_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A vanished multiprocess directory must not stop a sent batch from committing."""

    def broken(*_: object, **__: object) -> None:
        raise FileNotFoundError("metrics directory is gone")

    monkeypatch.setattr(metrics.LEADS_PER_CALL, "observe", broken)
    metrics.record_call(300, 0.5)  # logged, not raised
