"""`leadsync top` driven in a pseudo-terminal: the figures of seeded ledger data and of a
running pipeline appear on the screen, a Redis that goes away is reported and followed
again when it is back, and Ctrl-C ends the view with status 0 and no traceback.

Every wait polls the screen output until the expected text appears, with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import redis.asyncio

from producers import LeadProducer
from producers.contract import Keys
from tests.integration.test_cli_ops import env_for
from tests.support.pipeline import running_pipeline
from tests.support.redis_server import RedisServer
from worker.ledger import Ledger
from worker.limits import RedisLimiter
from worker.obs.stats import count_outcomes
from worker.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LEADSYNC = Path(sys.executable).with_name("leadsync")
ROWS, COLUMNS = 60, 160
_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-B]|\r")


def base_env(redis_url: str) -> dict[str, str]:
    """test_cli_ops's environment, at the pseudo-terminal's width (the defaults give 50
    calls per 20 s and a share of 5,000 calls a day)."""
    return env_for(redis_url, COLUMNS=str(COLUMNS))


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without its LEADSYNC_ settings, plus ``env``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("LEADSYNC_")}, **env}


class Screen:
    """`leadsync top` in a pseudo-terminal of ROWS x COLUMNS; what it wrote, escapes gone."""

    def __init__(self, env: Mapping[str, str], *args: str) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        self.master = master
        self.process = subprocess.Popen(
            [str(LEADSYNC), "top", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=child_env({"TERM": "xterm-256color", "LINES": str(ROWS), **env}),
            start_new_session=True,
        )
        os.close(slave)
        self.raw = b""

    @property
    def text(self) -> str:
        return _ESCAPE.sub("", self.raw.decode("utf-8", errors="replace"))

    def mark(self) -> int:
        """Where the output is now: expect(..., since=mark) looks only at what comes after."""
        self._read(0)
        return len(self.text)

    def expect(self, pattern: str, *, since: int = 0, timeout_s: float = 45) -> re.Match[str]:
        """Read until ``pattern`` (a regex) shows up after ``since``, or fail at the deadline
        (generous: on a loaded 2-core machine the first frame waits for the process's imports;
        a passing run never waits for it)."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = re.compile(pattern).search(self.text, since)
            if found:
                return found
            left = deadline - time.monotonic()
            if left <= 0 or (not self._read(min(left, 0.5)) and self.process.poll() is not None):
                raise AssertionError(
                    f"{pattern!r} never appeared; the screen:\n{self.text[-4000:]}"
                )

    def interrupt(self, timeout_s: float = 10) -> int:
        """Ctrl-C (SIGINT, as the terminal sends it); the exit status."""
        self.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        self._read(0.2)
        return self.process.wait(timeout=1)

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        os.close(self.master)

    def _read(self, timeout_s: float) -> bool:
        """Take what the terminal has (waiting up to ``timeout_s``); False when nothing came."""
        got = False
        while select.select([self.master], [], [], timeout_s)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return got
            if not chunk:
                return got
            self.raw += chunk
            got, timeout_s = True, 0
        return got


@contextlib.contextmanager
def top(env: Mapping[str, str], *args: str) -> Iterator[Screen]:
    screen = Screen(env, *args)
    try:
        yield screen
    finally:
        screen.close()


def value(frame_text: str, name: str) -> str:
    """The last value the pipeline table showed against ``name``."""
    rows = re.findall(rf"│ {re.escape(name)} +│ (.*?) +│", frame_text)
    assert rows, f"no {name!r} row on the screen"
    return str(rows[-1])


async def seed(redis_url: str) -> None:
    """A rest on shard 1, a hold, outcomes of the last minute."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await Ledger(client, Keys(), result_ttl_s=60).rest(1, 45)
        await RedisLimiter(client, Settings(shards=4)).hold("20014 AuthError")
        await count_outcomes(client, Keys(), {"CREATED": 12, "UPDATED": 3})
    finally:
        await client.aclose()


def enqueue(redis_url: str, count: int, start: int = 0) -> None:
    with LeadProducer.from_url(redis_url, shards=4) as producer:
        ids = producer.upsert_many(
            [{"email": f"lead{n}@example.com"} for n in range(start, start + count)]
        )
    assert all(isinstance(i, str) for i in ids)


def test_top_shows_backlog_rest_hold_and_outcomes_and_quits_on_ctrl_c(redis_url: str) -> None:
    enqueue(redis_url, 37)
    asyncio.run(seed(redis_url))
    with top(base_env(redis_url), "--interval-s", "0.2") as screen:
        screen.expect(r"37 entries in \d of 4 shards")
        frames_before = screen.text.count("leadsync top ·")
        screen.expect(r"leadsync top ·", since=screen.mark())  # it refreshes
        shown = screen.text
        assert screen.text.count("leadsync top ·") > frames_before
        status = screen.interrupt()
        output = screen.text
    assert status == 0, output[-3000:]
    assert "Traceback" not in output
    assert "Aborted" not in output
    assert "example.com" not in output, "no email on the screen"
    assert value(shown, "calls in window") == "0 of 50 per 20 s"
    assert value(shown, "calls today").startswith("0 of the share 5,000 (0.0 %), resets in ")
    assert value(shown, "hold").startswith("HELD (20014 AuthError) since ")
    assert re.fullmatch(r"shard 1, 4\d s left", value(shown, "rests"))
    assert value(shown, "outcomes / min") == "15 (CREATED 12, UPDATED 3)"
    assert re.search(r"│ +1 │ +\d+ │ +[\d.]+ (s|ms) │ rests 4\d s +│", shown), shown[-3000:]


def test_top_once_prints_one_frame_and_exits(redis_url: str) -> None:
    enqueue(redis_url, 5)
    done = subprocess.run(
        [str(LEADSYNC), "top", "--once"],
        env=child_env(base_env(redis_url)),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "5 entries in" in done.stdout
    assert "Ctrl-C" not in done.stdout
    assert done.stdout.count("leadsync top ·") == 1


def test_top_reports_a_redis_that_went_away_and_follows_it_back() -> None:
    server = RedisServer().start()
    try:
        with top(base_env(server.url), "--interval-s", "0.2") as screen:
            screen.expect(r"0 entries in 0 of 4 shards")
            gone = screen.mark()
            server.kill()
            screen.expect(
                r"Redis unavailable \(ConnectionError\) since \S+; trying again", since=gone
            )
            assert screen.process.poll() is None, "the view keeps running"
            back = screen.mark()
            server.start()  # the same port, empty
            enqueue(server.url, 6)
            screen.expect(r"6 entries in \d of 4 shards", since=back)
            status = screen.interrupt()
            output = screen.text
    finally:
        server.cleanup()
    assert status == 0, output[-3000:]
    assert "Traceback" not in output


def test_top_follows_a_running_pipeline_until_the_backlog_is_delivered(redis_url: str) -> None:
    with running_pipeline(redis_url, shards=4) as pipeline:
        ids = pipeline.producer.upsert_many([{"email": f"p{n}@example.com"} for n in range(40)])
        assert all(isinstance(i, str) for i in ids)
        with top(pipeline.env, "--interval-s", "0.2") as screen:
            screen.expect(r"40 entries in \d of 4 shards")
            started = screen.mark()
            pipeline.start_worker(concurrency=2)
            screen.expect(r"0 entries in 0 of 4 shards", since=started, timeout_s=30)
            screen.expect(r"│ outcomes / min +│ 40 \(CREATED 40\)", since=started, timeout_s=10)
            shown = screen.text[started:]
            status = screen.interrupt()
            output = screen.text
    assert status == 0, output[-3000:]
    assert "Traceback" not in output
    assert "example.com" not in output
    assert re.search(r"│ calls today +│ [1-9]\d* of the share 5,000", shown), shown[-3000:]
