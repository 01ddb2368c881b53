"""CLI argument handling and the doctor's pure parts (no Redis server needed)."""

from __future__ import annotations

import socket
from pathlib import Path

import fakeredis
import pytest
from typer.testing import CliRunner

from producers.contract import Keys
from worker.cli import app
from worker.errors import ConfigError
from worker.obs.stats import OUTCOME_BUCKET_S, count_outcomes, outcome_bucket_key, window_buckets
from worker.ops.doctor import Check, check_groups, check_settings, failed
from worker.ops.health import MAIN_HEARTBEAT_EVERY_S, MainHeartbeat, heartbeat_age_s
from worker.settings import Settings

runner = CliRunner()


def test_a_malformed_map_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_text("email\na@x.com\n")
    result = runner.invoke(app, ["enqueue", str(path), "--map", "email"])
    assert result.exit_code == 2
    assert "COLUMN=FIELD" in result.output


def test_a_file_of_unknown_format_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "leads.txt"
    path.write_text("email\n")
    result = runner.invoke(app, ["enqueue", str(path)])
    assert result.exit_code == 2
    assert "--format" in result.output


def test_doctor_reports_the_variable_that_breaks_the_settings() -> None:
    result = runner.invoke(app, ["doctor"], env={"LEADSYNC_BATCH_SIZE": "301", "COLUMNS": "200"})
    assert result.exit_code == 1
    assert "LEADSYNC_BATCH_SIZE" in result.stdout
    assert "FAIL" in result.stdout


def test_liveness_fails_with_a_one_line_answer_when_settings_do_not_load() -> None:
    result = runner.invoke(app, ["doctor", "--liveness"], env={"LEADSYNC_SHARDS": "x"})
    assert result.exit_code == 1
    assert result.stdout.startswith("FAIL invalid configuration: LEADSYNC_SHARDS")


def test_check_settings_turns_a_config_error_into_a_failed_check() -> None:
    def broken() -> Settings:
        raise ConfigError("LEADSYNC_X: bad")

    settings, check = check_settings(broken)
    assert settings is None
    assert check == Check("settings", "FAIL", "LEADSYNC_X: bad")
    assert failed([check])
    assert not failed([Check("a", "WARN", "")])


async def test_missing_consumer_groups_are_named_with_the_fix() -> None:
    redis = fakeredis.FakeAsyncRedis()
    keys = Keys()
    await redis.xgroup_create(keys.stream(0), Keys.GROUP, id="0", mkstream=True)
    check = await check_groups(redis, keys, 3)
    assert check.level == "FAIL"
    assert "2 of 3" in check.detail
    assert "shards 1, 2" in check.detail
    assert "start a worker" in check.detail


async def test_groups_recreated_after_a_data_loss_are_reported_until_cleared() -> None:
    redis = fakeredis.FakeAsyncRedis()
    keys = Keys()
    for shard in range(2):
        await redis.xgroup_create(keys.stream(shard), Keys.GROUP, id="0", mkstream=True)
    assert (await check_groups(redis, keys, 2)).level == "OK"
    await redis.hset(keys.groups_recreated(), "1", "1796000000.000")
    check = await check_groups(redis, keys, 2)
    assert check.level == "WARN"
    assert "shards 1 " in check.detail
    assert keys.groups_recreated() in check.detail, "the way to clear it is shown"


def test_the_main_process_heartbeat_is_written_at_most_every_ten_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = fakeredis.FakeServer()
    now = [1000.0]
    beat = MainHeartbeat(Settings(), clock=lambda: now[0])
    client = fakeredis.FakeRedis(server=server)
    monkeypatch.setattr("redis.Redis.from_url", lambda *a, **k: client)
    beat.beat()
    key = Keys().stats(f"heartbeat:{socket.gethostname()}")
    assert client.get(key) == b"1000.0"
    now[0] += MAIN_HEARTBEAT_EVERY_S - 1
    beat.beat()
    assert client.get(key) == b"1000.0"
    now[0] += 1
    beat.beat()
    assert float(client.get(key) or 0) == 1000.0 + MAIN_HEARTBEAT_EVERY_S


async def test_heartbeat_age_is_none_without_a_heartbeat() -> None:
    assert await heartbeat_age_s(fakeredis.FakeAsyncRedis(), Keys(), "nohost") is None


async def test_outcomes_of_the_last_minute_span_six_ten_second_buckets() -> None:
    now_s = 1_000_005.0
    buckets = window_buckets(now_s)
    assert buckets[0] == 1_000_000
    assert len(buckets) == 6
    assert buckets[-1] == 1_000_000 - 5 * OUTCOME_BUCKET_S
    redis = fakeredis.FakeAsyncRedis()
    await count_outcomes(redis, Keys(), {"CREATED": 2, "FAILED": 0}, now_s)
    await count_outcomes(redis, Keys(), {"CREATED": 1}, now_s)
    assert await redis.hgetall(outcome_bucket_key(Keys(), buckets[0])) == {b"CREATED": b"3"}
    assert 0 < await redis.ttl(outcome_bucket_key(Keys(), buckets[0])) <= 120
