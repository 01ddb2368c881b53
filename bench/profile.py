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


def _area(frame: str) -> str:
    """A coarse owner of a frame: a leadsync module, or the library it lives in."""
    match = _FRAME.match(frame)
    path = match.group("file") if match else frame
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    for ours in ("worker/", "producers/"):
        if ours in path:
            return ours + path.split(ours, 1)[1]
    return Path(path).name or path


def hot_spots(
    collapsed: Path, top: int = 15
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, busiest leaf functions, busiest areas inclusive) of a py-spy raw file
    (py-spy leaves idle threads out unless asked)."""
    leaves: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        leaf = frames[-1]
        if any(
            idle in leaf for idle in ("select (", "poll (", "epoll", "_recv (", "wait (", "sleep (")
        ):
            continue
        count = int(count_text)
        total += count
        leaves[leaf] += count
        for area in {_area(f) for f in frames[1:]}:
            areas[area] += count
    return total, leaves.most_common(top), areas.most_common(top)
