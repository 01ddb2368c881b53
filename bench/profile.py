"""Sample a worker process tree with py-spy and name the hot spots."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")


@contextlib.contextmanager
def py_spy(pid: int, output: Path, rate_hz: int = 200) -> Iterator[None]:
    """Record ``pid`` and its children (collapsed stacks) while the block runs."""
    binary = Path(sys.executable).with_name("py-spy")
    process = subprocess.Popen(
        [
            str(binary),
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--nonblocking",
            "--rate",
            str(rate_hz),
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _file(frame: str) -> str:
    match = _FRAME.match(frame)
    return match.group("file") if match else ""


def _ours(frame: str) -> bool:
    # py-spy prints paths relative to sys.path, so leadsync's own start with its package.
    return _file(frame).startswith(("worker/", "producers/"))


def _name(frame: str) -> str:
    match = _FRAME.match(frame)
    return f"{match.group('func')} ({match.group('file')})" if match else frame


def hot_spots(
    collapsed: Path, top: int = 15
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, innermost leadsync function of each sample (its library callees included),
    library of the sampled frame) of a py-spy raw file; py-spy leaves idle threads out."""
    ours: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        count = int(count_text)
        total += count
        mine = [f for f in frames if _ours(f)]
        ours[_name(mine[-1]) if mine else "(Celery, kombu, billiard: no leadsync frame)"] += count
        libraries[_file(frames[-1]).split("/", 1)[0].removesuffix(".py") or "?"] += count
    return total, ours.most_common(top), libraries.most_common(top)
