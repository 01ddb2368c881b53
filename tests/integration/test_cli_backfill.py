"""``leadsync backfill`` against a real Redis: a crash part-way and a resume send every row
exactly once, the ids file maps every row, invalid rows are reported, a journal of
another input is refused, and --max-backlog holds chunks back until entries go."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner, Result

from producers import LeadProducer
from producers.contract import Keys, decode_lead
from tests.support.pipeline import running_pipeline
from worker.cli import app
from worker.ops.backfill import HEADER, POLL_S, Backfill

pytestmark = pytest.mark.integration

SHARDS = 4
ROWS = 2500
#: Rows the producer refuses (not an email) and rows the reader refuses (dedup).
BAD_EMAIL = {2 + n for n in range(0, ROWS, 500)}
BAD_DEDUP = {2 + n for n in range(250, ROWS, 500)}


def env_for(redis_url: str) -> dict[str, str]:
    return {
        "LEADSYNC_REDIS_URL": redis_url,
        "LEADSYNC_SHARDS": str(SHARDS),
        "LEADSYNC_MARKETO_USER_ID": "u",
        "LEADSYNC_MARKETO_ENCRYPTION_KEY": "k",
        "LEADSYNC_MARKETO_ENDPOINT": "http://127.0.0.1:9/soap/mktows/2_2",
        "COLUMNS": "200",
    }


def write_csv(path: Path) -> Path:
    """ROWS leads on lines 2..ROWS+1; some invalid."""
    with path.open("w", encoding="utf-8") as handle:
        handle.write("E-mail,Company,dedup\n")
        for n in range(ROWS):
            line = n + 2
            email = "secret-not-an-email" if line in BAD_EMAIL else f"lead{n}@example.com"
            dedup = "perhaps" if line in BAD_DEDUP else "true"
            handle.write(f"{email},Co {n},{dedup}\n")
    return path


def bulk_stream(shard: int) -> str:
    """A shard's bulk stream: where ``leadsync backfill`` puts rows unless --live."""
    return Keys().stream(SHARDS + shard)


def invoke(redis_url: str, *args: str) -> Result:
    return CliRunner().invoke(app, ["backfill", *args], env=env_for(redis_url))


def stream_entries(redis_url: str) -> Iterator[Any]:
    client = redis.Redis.from_url(redis_url)
    try:
        for shard in range(SHARDS):
            for _, fields in client.xrange(bulk_stream(shard)):
                yield decode_lead(fields[b"p"])
    finally:
        client.close()


def journal(path: Path) -> list[tuple[int, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith(HEADER)
    return [(int(row), value) for row, value in (line.split("\t", 1) for line in lines[1:])]


def crash_on_call(monkeypatch: pytest.MonkeyPatch, call: int, *, after_write: bool) -> None:
    """Make the producer's ``call``-th upsert_many raise, before or after Redis took it."""
    real = LeadProducer.upsert_many
    calls = []

    def crashing(
        self: LeadProducer, records: Sequence[Mapping[str, Any]], **options: Any
    ) -> list[Any]:
        calls.append(1)
        if len(calls) == call:
            if after_write:
                real(self, records, **options)
            raise RuntimeError("simulated crash")
        return real(self, records, **options)

    monkeypatch.setattr(LeadProducer, "upsert_many", crashing)


def test_a_crash_and_a_resume_send_every_row_once_and_map_every_row(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leads = write_csv(tmp_path / "leads.csv")
    ids = tmp_path / "leads.csv.ids"
    crash_on_call(monkeypatch, 3, after_write=False)
    first = invoke(redis_url, str(leads), "--map", "E-mail=email", "--no-wait")
    assert isinstance(first.exception, RuntimeError), first.output
    assert [row for row, _ in journal(ids)] == list(range(2, 2002)), "two chunks journaled"

    monkeypatch.undo()
    second = invoke(redis_url, str(leads), "--map", "E-mail=email", "--no-wait")
    assert second.exit_code == 1, second.output  # invalid rows
    assert "resuming after line 2001" in second.output
    assert "rows read 500, enqueued 498, invalid 2, skipped 2000 (resumed)" in second.output

    entries = journal(ids)
    assert [row for row, _ in entries] == list(range(2, ROWS + 2)), "every row once, in order"
    errors = {row: value for row, value in entries if value.startswith("ERROR")}
    assert set(errors) == BAD_EMAIL | BAD_DEDUP
    assert all(errors[row].startswith("ERROR email: ") for row in BAD_EMAIL)
    assert all(errors[row] == "ERROR dedup: must be true or false" for row in BAD_DEDUP)
    assert not any("secret" in value or "perhaps" in value for value in errors.values())

    valid = ROWS - len(BAD_EMAIL) - len(BAD_DEDUP)
    emails = [lead.email for lead in stream_entries(redis_url)]
    assert len(emails) == valid, "XLEN over the shards: each valid row once"
    assert len(set(emails)) == valid
    request_ids = [value for _, value in entries if not value.startswith("ERROR")]
    assert len(set(request_ids)) == valid

    again = invoke(redis_url, str(leads), "--map", "E-mail=email", "--no-wait")
    assert "enqueued 0" in again.output
    assert f"skipped {ROWS} (resumed)" in again.output
    assert len(list(stream_entries(redis_url))) == valid, "a finished journal sends nothing"


def test_a_crash_after_redis_took_a_chunk_before_its_ids_were_written_sends_it_once(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis took the second chunk, then the process died before its lines reached the
    journal: on resume the chunk is sent again under the same ticket and answered with
    the ids it got, nothing written twice (a dedup=false row would be a second lead)."""
    leads = write_csv(tmp_path / "leads.csv")
    ids = tmp_path / "leads.csv.ids"
    crash_on_call(monkeypatch, 2, after_write=True)
    invoke(redis_url, str(leads), "--map", "E-mail=email", "--no-wait")
    assert [row for row, _ in journal(ids)] == list(range(2, 1002)), "one chunk journaled"
    taken = {lead.email for lead in stream_entries(redis_url)}
    monkeypatch.undo()
    resumed = invoke(redis_url, str(leads), "--map", "E-mail=email", "--no-wait")
    assert "resuming after line 1001" in resumed.output, resumed.output
    valid = ROWS - len(BAD_EMAIL) - len(BAD_DEDUP)
    emails = [lead.email for lead in stream_entries(redis_url)]
    assert len(emails) == valid, "every valid row once"
    assert len(set(emails)) == valid
    entries = journal(ids)
    assert [row for row, _ in entries] == list(range(2, ROWS + 2))
    request_ids = [value for _, value in entries if not value.startswith("ERROR")]
    assert len(set(request_ids)) == valid
    assert len(taken) == 2 * 1000 - 4 - 4, "the crash came after Redis took the second chunk"


def test_a_journal_of_another_input_is_refused_unless_forced(
    redis_url: str, tmp_path: Path
) -> None:
    leads = write_csv(tmp_path / "leads.csv")
    ids = tmp_path / "run.ids"
    ids.write_text(f"{HEADER} size=1 head-sha256=00\n2\t0-1-0\n", encoding="utf-8")
    refused = invoke(redis_url, str(leads), "--map", "E-mail=email", "--ids", str(ids))
    assert refused.exit_code == 2
    assert "journal of another input" in refused.output
    assert "--force" in refused.output
    assert not list(stream_entries(redis_url)), "nothing sent"

    forced = invoke(
        redis_url, str(leads), "--map", "E-mail=email", "--ids", str(ids), "--force", "--no-wait"
    )
    assert "skipped 1 (resumed)" in forced.output, forced.output
    assert ids.read_text(encoding="utf-8").count(HEADER) == 2, "the new input's header appended"

    foreign = tmp_path / "notes.txt"
    foreign.write_text("my notes\n", encoding="utf-8")
    other = invoke(redis_url, str(leads), "--ids", str(foreign))
    assert other.exit_code == 2
    assert "not a backfill ids file" in other.output
    assert foreign.read_text(encoding="utf-8") == "my notes\n", "left as it was"


def test_max_backlog_holds_a_chunk_until_entries_are_delivered(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a bound of 1500, the third chunk waits while 2000 entries are queued; each
    pause (instead of sleeping) trims the streams as a worker's deliveries would."""
    leads = write_csv(tmp_path / "leads.csv")
    seen: list[tuple[float, int]] = []
    client = redis.Redis.from_url(redis_url)

    def deliver_instead_of_sleeping(self: Backfill, seconds: float) -> None:
        backlog = sum(client.xlen(bulk_stream(s)) for s in range(SHARDS))
        seen.append((seconds, backlog))
        if len(seen) == 3:  # still waiting twice, then the workers catch up
            for shard in range(SHARDS):
                client.xtrim(bulk_stream(shard), maxlen=0)

    monkeypatch.setattr(Backfill, "sleep", deliver_instead_of_sleeping)
    try:
        result = invoke(
            redis_url, str(leads), "--map", "E-mail=email", "--no-wait", "--max-backlog", "1500"
        )
        remaining = sum(client.xlen(bulk_stream(s)) for s in range(SHARDS))
    finally:
        client.close()
    assert result.exit_code == 1, result.output  # invalid rows
    assert seen == [(POLL_S, 1992)] * 3, "waited each second while above the bound"
    assert remaining == 498, "only the third chunk was queued after the trim"
    assert "enqueued 2490" in result.output


def test_waiting_for_delivery_times_out_with_a_summary(redis_url: str, tmp_path: Path) -> None:
    leads = tmp_path / "few.jsonl"
    leads.write_text('{"email": "a@example.com"}\n{"email": "b@example.com"}\n')
    result = invoke(redis_url, str(leads), "--timeout-s", "0")
    assert result.exit_code == 1, result.output
    assert "rows read 2, enqueued 2, invalid 0, skipped 0 (resumed), delivered 0 of 2" in (
        result.output
    )
    assert [row for row, _ in journal(tmp_path / "few.jsonl.ids")] == [1, 2]


def test_with_a_worker_every_lead_is_delivered_under_a_small_backlog_bound(
    redis_url: str, tmp_path: Path
) -> None:
    """End to end: the simulator and a Celery worker deliver while backfill waits on a
    bound of 300 entries; the delivered bar's count reaches every lead."""
    leads = tmp_path / "leads.jsonl"
    leads.write_text(
        "".join(f'{{"email": "e2e{n}@example.com", "Company": "Co"}}\n' for n in range(1200)),
        encoding="utf-8",
    )
    with running_pipeline(redis_url, shards=SHARDS) as pipe:
        pipe.start_worker(concurrency=2)
        result = CliRunner().invoke(
            app,
            ["backfill", str(leads), "--max-backlog", "300", "--timeout-s", "60"],
            env={**pipe.env, "COLUMNS": "200"},
        )
    assert result.exit_code == 0, result.output
    assert "enqueued 1200" in result.output
    assert "delivered 1200 of 1200 CREATED 1200" in (result.output)


def test_live_puts_the_rows_in_the_live_lane(redis_url: str, tmp_path: Path) -> None:
    leads = tmp_path / "few.jsonl"
    leads.write_text('{"email": "a@example.com"}\n{"email": "b@example.com"}\n')
    result = invoke(redis_url, str(leads), "--live", "--no-wait")
    assert result.exit_code == 0, result.output
    client = redis.Redis.from_url(redis_url)
    try:
        live = sum(client.xlen(Keys().stream(s)) for s in range(SHARDS))
        bulk = sum(client.xlen(bulk_stream(s)) for s in range(SHARDS))
    finally:
        client.close()
    assert (live, bulk) == (2, 0)
