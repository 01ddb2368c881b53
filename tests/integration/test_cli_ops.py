"""The operations commands against a real Redis: enqueue, status, stats, doctor."""

from __future__ import annotations

import asyncio
import csv
import socket
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis
import redis.asyncio
from typer.testing import CliRunner, Result

from marketo_sim.config import SimConfig
from marketo_sim.runner import SimulatorThread
from producers.contract import Keys
from tests.support.pipeline import running_pipeline
from worker.cli import app
from worker.ledger import Ledger
from worker.ops.health import LocalHeartbeat, local_heartbeat_path

pytestmark = pytest.mark.integration


def env_for(redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "LEADSYNC_REDIS_URL": redis_url,
        "LEADSYNC_SHARDS": "4",
        "LEADSYNC_MARKETO_USER_ID": "u",
        "LEADSYNC_MARKETO_ENCRYPTION_KEY": "k",
        "LEADSYNC_MARKETO_ENDPOINT": "http://127.0.0.1:9/soap/mktows/2_2",
        "COLUMNS": "250",
        **extra,
    }


def invoke(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def write_leads(path: Path) -> Path:
    path.write_text(
        "Email Address,Company,dedup\n"
        "ann@example.com,Acme,true\n"
        "not-an-email,Acme,true\n"
        "bob@example.com,Initech,perhaps\n"
        "cy@example.com,,false\n",
        encoding="utf-8",
    )
    return path


def ensure_groups(redis_url: str, shards: int) -> None:
    async def run() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            await Ledger(client, Keys(), result_ttl_s=60).ensure_groups(shards)
        finally:
            await client.aclose()

    asyncio.run(run())


def test_enqueue_skips_bad_rows_by_line_and_writes_the_ids_of_the_rest(
    redis_url: str, tmp_path: Path
) -> None:
    ids_file = tmp_path / "ids.csv"
    result = invoke(
        env_for(redis_url),
        "enqueue",
        str(write_leads(tmp_path / "leads.csv")),
        "--map",
        "Email Address=email",
        "--ids-out",
        str(ids_file),
    )
    assert result.exit_code == 1, "skipped rows make the exit status 1"
    assert "line 3: email: has no @" in result.stderr
    assert "line 4: dedup: must be true or false" in result.stderr
    assert "not-an-email" not in result.stderr, "errors name fields, not values"
    with ids_file.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["line"] for row in rows] == ["2", "5"]
    client = redis.Redis.from_url(redis_url)
    try:
        assert sum(client.xlen(Keys().stream(s)) for s in range(4)) == 2
    finally:
        client.close()

    status = invoke(env_for(redis_url), "status", rows[0]["request_id"])
    assert status.exit_code == 0
    assert "PENDING" in status.stdout


def test_enqueue_prints_line_and_request_id_pairs_to_stdout(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "leads.jsonl"
    path.write_text('{"email": "a@example.com", "Company": "A"}\n{"email": 5}\n')
    result = invoke(env_for(redis_url), "enqueue", str(path))
    (line,) = result.stdout.splitlines()
    number, request_id = line.split("\t")
    assert number == "1"
    assert request_id.count("-") == 2


def test_status_of_an_unknown_request_says_so_and_exits_1(redis_url: str) -> None:
    result = invoke(env_for(redis_url), "status", "3-1700000000000-0")
    assert result.exit_code == 1
    assert "unknown" in result.stdout


def test_stats_shows_the_backlog_of_each_shard(redis_url: str, tmp_path: Path) -> None:
    env = env_for(redis_url)
    invoke(env, "enqueue", str(write_leads(tmp_path / "l.csv")), "--map", "Email Address=email")
    result = invoke(env, "stats")
    assert result.exit_code == 0, result.output
    assert "2 entries" in result.stdout
    assert "quota used today" in result.stdout
    assert "0 of 5000" in result.stdout, "the default share: half the SOAP default quota"
    assert "done in 0 s at the rate limit" in result.stdout


def test_enqueue_bulk_goes_to_the_bulk_lane_and_stats_shows_each_lane(
    redis_url: str, tmp_path: Path
) -> None:
    env = env_for(redis_url)
    leads = str(write_leads(tmp_path / "l.csv"))
    invoke(env, "enqueue", leads, "--map", "Email Address=email")  # 2 of its 4 rows are bad
    bulk = invoke(env, "enqueue", leads, "--map", "Email Address=email", "--bulk")
    assert "enqueued 2, skipped 2" in bulk.output
    result = invoke(env, "stats")
    assert result.exit_code == 0, result.output
    backlog = next(line for line in result.stdout.splitlines() if "│ backlog" in line)
    assert "2 entries" in backlog
    lane = next(line for line in result.stdout.splitlines() if "│ bulk lane" in line)
    assert "2 entries" in lane
    assert "calls today 0 of 2000" in lane, "the default bulk budget: a fifth of SOAP's"
    assert "at the budget's pace" in lane


def test_doctor_fails_in_plain_words_when_the_consumer_groups_are_missing(redis_url: str) -> None:
    result = invoke(env_for(redis_url), "doctor")
    assert result.exit_code == 1
    assert "have no consumer group" in result.stdout
    assert "start a worker" in result.stdout
    assert "cannot reach 127.0.0.1:9" in result.stdout


def test_doctor_passes_with_groups_and_a_reachable_marketo(redis_url: str) -> None:
    ensure_groups(redis_url, 4)
    with SimulatorThread() as sim:
        result = invoke(env_for(redis_url, LEADSYNC_MARKETO_ENDPOINT=sim.endpoint), "doctor")
    assert result.exit_code == 0, result.stdout
    assert "FAIL" not in result.stdout
    assert "credentials are verified by the first call" in result.stdout


def test_doctor_names_the_bad_variable_when_settings_do_not_load(redis_url: str) -> None:
    result = invoke(env_for(redis_url, LEADSYNC_SHARDS="0"), "doctor")
    assert result.exit_code == 1
    assert "LEADSYNC_SHARDS" in result.stdout


def test_liveness_needs_a_fresh_local_heartbeat_from_this_pod(redis_url: str) -> None:
    prefix = f"live{uuid.uuid4().hex[:8]}"
    env = env_for(redis_url, LEADSYNC_KEY_PREFIX=prefix)
    path = local_heartbeat_path(prefix)
    try:
        assert invoke(env, "doctor", "--liveness").exit_code == 1  # no heartbeat yet
        # A running main loop that last beat long ago.
        LocalHeartbeat(path, clock=lambda: 1.0).connected()
        assert invoke(env, "doctor", "--liveness").exit_code == 1
        LocalHeartbeat(path).connected()
        result = invoke(env, "doctor", "--liveness")
        assert result.exit_code == 0, result.stdout
    finally:
        path.unlink(missing_ok=True)


def test_enqueue_wait_prints_the_outcomes_once_a_worker_has_sent_them(
    redis_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "leads.csv"
    path.write_text("email,Company\n" + "".join(f"p{i}@example.com,A\n" for i in range(20)))
    port = free_port()
    with running_pipeline(redis_url, shards=4) as pipe:
        pipe.start_worker(concurrency=2, extra_env={"LEADSYNC_METRICS_PORT": str(port)})
        result = invoke(
            {**pipe.env, "COLUMNS": "200"}, "enqueue", str(path), "--wait", "--timeout-s", "60"
        )
        exposed = scrape(port, 'leadsync_outcomes_total{status="CREATED"} 20.0')
        heartbeat = pipe.producer.keys.stats("heartbeat:")
        client = redis.Redis.from_url(redis_url)
        try:
            beats = client.keys(heartbeat + "*")
        finally:
            client.close()
    assert result.exit_code == 0, result.output
    assert "CREATED" in result.stdout
    assert "20" in result.stdout
    assert beats, "the worker wrote its heartbeat"
    assert 'leadsync_outcomes_total{status="CREATED"} 20.0' in exposed, exposed
    assert 'leadsync_backlog_entries{shard="0"}' in exposed
    assert "leadsync_leads_per_call_bucket" in exposed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int, wanted: str, timeout_s: float = 20.0) -> str:
    """GET /metrics of the worker's main process until ``wanted`` shows (ticks lag a bit)."""
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                text = reply.read().decode()
        except OSError as exc:
            text = repr(exc)
        if wanted in text and "leadsync_backlog_entries{" in text:
            return text
        time.sleep(0.3)
    return text


def test_doctor_over_rest_checks_the_credentials_and_the_known_fields(redis_url: str) -> None:
    ensure_groups(redis_url, 4)
    with SimulatorThread() as sim:
        rest = {
            "LEADSYNC_MARKETO_API": "rest",
            "LEADSYNC_MARKETO_REST_URL": sim.rest_base_url,
            "LEADSYNC_MARKETO_CLIENT_ID": sim.config.client_id,
            "LEADSYNC_MARKETO_CLIENT_SECRET": sim.config.client_secret,
        }
        good = invoke(
            env_for(redis_url, **rest, LEADSYNC_KNOWN_FIELDS="FirstName,company"), "doctor"
        )
        unknown = invoke(
            env_for(redis_url, **rest, LEADSYNC_KNOWN_FIELDS="FirstName,Shoesize"), "doctor"
        )
        refused = invoke(
            env_for(redis_url, **{**rest, "LEADSYNC_MARKETO_CLIENT_SECRET": "wrong"}), "doctor"
        )
    assert good.exit_code == 0, good.stdout
    assert "every LEADSYNC_KNOWN_FIELDS name exists" in good.stdout
    assert unknown.exit_code == 1
    assert "Shoesize" in unknown.stdout
    assert refused.exit_code == 1
    assert "LEADSYNC_MARKETO_CLIENT_SECRET" in refused.stdout
    assert "wrong" not in refused.stdout


def test_doctor_reads_marketo_rest_whole_when_its_replies_come_in_pieces(redis_url: str) -> None:
    """doctor reads through the calls' own transport: the token and describe2.json are
    read to their end (a reply written in 500-byte pieces), never a prefix."""
    ensure_groups(redis_url, 4)
    config = SimConfig(reply_chunk_bytes=500, reply_chunk_gap_s=0.01)
    with SimulatorThread(config) as sim:
        env = env_for(
            redis_url,
            LEADSYNC_MARKETO_API="rest",
            LEADSYNC_MARKETO_REST_URL=sim.rest_base_url,
            LEADSYNC_MARKETO_CLIENT_ID=config.client_id,
            LEADSYNC_MARKETO_CLIENT_SECRET=config.client_secret,
            LEADSYNC_KNOWN_FIELDS="FirstName,Company",
        )
        result = invoke(env, "doctor")
    assert result.exit_code == 0, result.stdout
    assert "FAIL" not in result.stdout
    assert "a token from 127.0.0.1" in result.stdout
