"""``python -m bench.incidents``: the incident drill. Which alerts of
deploy/monitoring/alerts.yml fire when Marketo refuses the credentials, the daily quota
runs out, Marketo is down, or Redis fills up?

Per incident, a fresh stack of real processes: a private redis-server
(``tests.support.redis_server``), the Marketo simulator over HTTP (``bench.harness.SimProcess``),
a Celery worker with its embedded beat (``bench.harness.Worker``), ``leadsync api``
(``tests.support.failover_run``), redis_exporter, and a Prometheus server scraping the
worker's, the API's and the exporter's /metrics every second (the jobs of
deploy/monitoring/prometheus.yml) with a copy of the rules whose time is compressed by
``--time-scale`` (see :func:`drill_rules`). A thread writes single upserts through the API
the whole time; another reads Prometheus's /api/v1/alerts twice a second. Each incident:
a healthy baseline, the fault injected (in phases), a recovery where one exists; the report
says which alerts were pending and which fired, in which phase and how soon.

    python -m bench.incidents [--incidents auth-rest,auth-soap,quota-marketo,quota-share,
        marketo-down,redis-full] [--time-scale 60] [--baseline-s 15] [--no-write]

``scripts/ensure-prometheus`` provides prometheus and prometheus-redis-exporter. The
report goes to bench/INCIDENTS.md (``--no-write``: printed only).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml

from bench import harness
from bench.harness import SimProcess, Worker
from bench.systems import leadsync_env
from marketo_sim.embedded import free_port, stop_group
from producers import Backpressure, LeadProducer
from tests.support.failover_run import LEADSYNC, api_process
from tests.support.monitoring import MONITORING, rule_groups
from tests.support.pipeline import FAST_RECOVERY_ENV
from tests.support.redis_server import RedisServer
from worker.limits import LimiterKeys, quota_day
from worker.settings import Settings

REPORT = Path(__file__).resolve().parent / "INCIDENTS.md"
SHARDS = 4
#: The deployment values the rules' leadsync:config:* recording rules stand for.
DEFAULTS = Settings()
#: maxmemory of every incident's Redis but redis-full's (which starts small and fills).
MAXMEMORY_MB = 256
FULL_MAXMEMORY_MB = 24

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(r"(\d+)(ms|[smhdwy])")
_RANGE = re.compile(r"\[([0-9smhdwy]+)(?::([0-9smhdwy]*))?\]")
_OFFSET = re.compile(r"\boffset\s+([0-9smhdwy]+)")


# --- the rules, time compressed ----------------------------------------------------------


def seconds_of(duration: str) -> float:
    parts = _DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def scaled(duration: str, factor: float) -> str:
    """``duration`` divided by ``factor``, in whole milliseconds (at least 1 ms)."""
    ms = max(1, round(seconds_of(duration) * 1000 / factor))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def scaled_expr(expr: str, factor: float) -> str:
    """Range windows ``[10m]``, subqueries ``[1h:1m]`` and ``offset 30m`` divided by ``factor``."""

    def window(match: re.Match[str]) -> str:
        step = match.group(2)
        if step is None:
            return f"[{scaled(match.group(1), factor)}]"
        return f"[{scaled(match.group(1), factor)}:{scaled(step, factor) if step else ''}]"

    text = _RANGE.sub(window, expr)
    return _OFFSET.sub(lambda m: f"offset {scaled(m.group(1), factor)}", text)


def drill_settings(factor: float) -> dict[str, float]:
    """What the drill's leadsync runs with, time compressed: the flush interval, the rest
    after an unknown outcome and the hold's probe interval divided by ``factor``, and the
    daily share multiplied by it (``factor`` times as many calls go out per real second, so
    a day's share carries the same inflow; the quota day itself, its reset and the pace's
    day stay real)."""
    return {
        "flush_interval_s": DEFAULTS.flush_interval_s / factor,
        "unknown_outcome_rest_s": DEFAULTS.unknown_outcome_rest_s / factor,
        "hold_probe_interval_s": DEFAULTS.hold_probe_interval_s / factor,
        "daily_quota": DEFAULTS.daily_quota * factor,
        "memory_high_water": DEFAULTS.memory_high_water,
    }


def drill_rules(factor: float) -> dict[str, Any]:
    """A copy of alerts.yml: every ``for:``, range window, subquery and offset divided by
    ``factor``; the leadsync:config:* recording rules set to :func:`drill_settings`."""
    values = drill_settings(factor)
    config = {
        "leadsync:config:daily_quota": values["daily_quota"],
        "leadsync:config:flush_interval_seconds": values["flush_interval_s"],
        "leadsync:config:memory_high_water": values["memory_high_water"],
        "leadsync:config:oldest_entry_floor_seconds": 120 / factor,
    }
    groups = copy.deepcopy(rule_groups())
    for group in groups:
        for rule in group["rules"]:
            if rule.get("record") in config:
                rule["expr"] = f"vector({config[rule['record']]:g})"
                continue
            rule["expr"] = scaled_expr(rule["expr"], factor)
            if "for" in rule:
                rule["for"] = scaled(rule["for"], factor)
    return {"groups": groups}


def alert_rules() -> dict[str, str]:
    """Every alert of alerts.yml -> its ``for:`` (empty: none)."""
    return {
        rule["alert"]: rule.get("for", "")
        for group in rule_groups()
        for rule in group["rules"]
        if "alert" in rule
    }


def prometheus_config(rules: Path, targets: Mapping[str, int]) -> dict[str, Any]:
    """deploy/monitoring/prometheus.yml with 1 s intervals, the drill's rules, and the jobs
    pointed at local ports (a job without a port is left out)."""
    config: dict[str, Any] = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"] = {
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "evaluation_interval": "1s",
    }
    config["rule_files"] = [str(rules)]
    jobs = []
    for job in config["scrape_configs"]:
        port = targets.get(job["job_name"])
        if port is not None:
            jobs.append({**job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]})
    config["scrape_configs"] = jobs
    return config


# --- HTTP helpers ----------------------------------------------------------------------------


def get_json(url: str, timeout_s: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:  # noqa: S310 - our servers
        return json.loads(answer.read())


# --- the stack -----------------------------------------------------------------------------


@dataclass
class Stack:
    """Every moving part of one incident."""

    server: RedisServer
    sim: SimProcess
    env: dict[str, str]
    worker: Worker
    api: str
    api_key: str
    prometheus: str
    producer: LeadProducer
    exporter: bool
    workdir: Path
    #: Alerts Prometheus listed after its start, before the drill began, and when the
    #: list was first empty (seconds after the start).
    startup: str = ""

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.server.url)

    def memory(self) -> tuple[int, int]:
        """(used_memory, maxmemory) as leadsync's admission check reads them."""
        with contextlib.closing(self.client()) as client:
            used = int(client.info("memory")["used_memory"])
            limit = int(client.config_get("maxmemory")["maxmemory"] or 0)
        return used, limit

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        result: list[dict[str, Any]] = get_json(url)["data"]["result"]
        return result


@contextlib.contextmanager
def process(args: Sequence[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server in its own process group, logging to ``log``; SIGTERM, then SIGKILL."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(args), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        stop_group(proc, signal.SIGTERM, wait_s=10)


def create_api_key(env: Mapping[str, str]) -> str:
    """``leadsync api-keys create`` prints the key alone on its last line."""
    made = subprocess.run(
        [LEADSYNC, "api-keys", "create", "drill", "--scope", "write", "--scope", "read"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def running_stack(name: str, api: str, factor: float, *, maxmemory_mb: int) -> Iterator[Stack]:
    workdir = harness.scratch_dir(f"incident-{name}-")
    server = RedisServer(extra_args=["--maxmemory", f"{maxmemory_mb}mb"]).start()
    values = drill_settings(factor)
    ports = {job: free_port() for job in ("leadsync-worker", "leadsync-api", "redis", "prom")}
    try:
        with SimProcess(daily_quota=int(10_000 * factor)) as sim:
            env = {
                **FAST_RECOVERY_ENV,
                **leadsync_env(
                    server.url,
                    sim,
                    shards=SHARDS,
                    api=api,
                    metrics_port=ports["leadsync-worker"],
                    **{k: v for k, v in values.items() if k != "daily_quota"},
                    daily_quota=int(values["daily_quota"]),
                ),
            }
            worker = Worker(
                "worker.app",
                "leadsync",
                2,
                env,
                name=f"incident-{name}",
                extra_args=["-B", "--schedule", str(workdir / "beat-schedule")],
            )
            rules = workdir / "alerts.yml"
            rules.write_text(yaml.safe_dump(drill_rules(factor), sort_keys=False))
            exporter = shutil.which("prometheus-redis-exporter")
            jobs = {k: v for k, v in ports.items() if k != "prom" and (exporter or k != "redis")}
            config = workdir / "prometheus.yml"
            config.write_text(yaml.safe_dump(prometheus_config(rules, jobs), sort_keys=False))
            prometheus = f"http://127.0.0.1:{ports['prom']}"
            with contextlib.ExitStack() as stack:
                worker.start()
                stack.callback(worker.stop)
                base = stack.enter_context(
                    api_process({**os.environ, **env}, ports["leadsync-api"])
                )
                key = create_api_key(env)
                if exporter:
                    stack.enter_context(
                        process(
                            [
                                exporter,
                                "-redis.addr",
                                server.url,
                                "-web.listen-address",
                                f"127.0.0.1:{ports['redis']}",
                            ],
                            workdir / "redis-exporter.log",
                        )
                    )
                worker.wait_ready()
                # The first tick has run: the worker exports its shard gauges.
                metrics_url = f"http://127.0.0.1:{ports['leadsync-worker']}/metrics"
                if not harness.wait_until(
                    lambda: b"leadsync_backlog_entries{" in fetch(metrics_url), 60, 0.5
                ):
                    raise RuntimeError("the worker exported no backlog gauge within 60 s")
                prometheus_started = time.monotonic()
                stack.enter_context(
                    process(
                        [
                            shutil.which("prometheus") or "prometheus",
                            f"--config.file={config}",
                            f"--storage.tsdb.path={workdir / 'tsdb'}",
                            f"--web.listen-address=127.0.0.1:{ports['prom']}",
                            "--log.level=warn",
                        ],
                        workdir / "prometheus.log",
                    )
                )
                health: dict[str, str] = {}

                def all_up() -> bool:
                    health.update(targets(prometheus))
                    return len(health) == len(jobs) and set(health.values()) == {"up"}

                if not harness.wait_until(all_up, 30, 0.5):
                    raise RuntimeError(f"Prometheus targets not all up: {health}; see {workdir}")
                startup = settle(prometheus, prometheus_started)
                producer = stack.enter_context(
                    LeadProducer.from_url(
                        server.url, key_prefix=env["LEADSYNC_KEY_PREFIX"], shards=SHARDS
                    )
                )
                yield Stack(
                    server,
                    sim,
                    env,
                    worker,
                    base,
                    key,
                    prometheus,
                    producer,
                    bool(exporter),
                    workdir,
                    startup,
                )
    finally:
        server.cleanup()
        shutil.rmtree(workdir / "tsdb", ignore_errors=True)  # the logs stay


def fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - our own server
            return bytes(answer.read())
    except OSError:
        return b""


def settle(prometheus: str, started: float, timeout_s: float = 30) -> str:
    """Wait until Prometheus lists no alert: what it listed meanwhile, and when it was quiet."""
    listed: set[str] = set()

    def quiet() -> bool:
        try:
            alerts = get_json(f"{prometheus}/api/v1/alerts")["data"]["alerts"]
        except (OSError, ValueError, KeyError):
            return False
        listed.update(f"{a['labels']['alertname']} ({a['state']})" for a in alerts)
        return not alerts

    done = harness.wait_until(quiet, timeout_s, 0.25)
    when = f"{time.monotonic() - started:.0f} s" if done else f"not within {timeout_s:.0f} s"
    return (
        f"listed {', '.join(sorted(listed)) or 'nothing'}; no alert listed {when} after its start"
    )


def targets(prometheus: str) -> dict[str, str]:
    """Each scrape job -> its target's health ("up", or the last scrape error)."""
    with contextlib.suppress(OSError, KeyError, ValueError):
        active = get_json(f"{prometheus}/api/v1/targets")["data"]["activeTargets"]
        return {
            t["labels"]["job"]: "up" if t["health"] == "up" else t["lastError"] or t["health"]
            for t in active
        }
    return {}


# --- load and observation --------------------------------------------------------------------


class Traffic(threading.Thread):
    """Single upserts through ``POST /v1/leads`` at ``rate_per_s``, as an app sends them."""

    def __init__(self, stack: Stack, tag: str, rate_per_s: float = 4.0) -> None:
        super().__init__(daemon=True)
        self.url = stack.api + "/v1/leads"
        self.key = stack.api_key
        self.tag = tag
        self.period_s = 1 / rate_per_s
        self.statuses: Counter[str] = Counter()
        self._halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self._halt.wait(self.period_s):
            n += 1
            body = {
                "email": f"{self.tag}-api-{n}@demo.example.com",
                "attributes": {"FirstName": "Drill"},
            }
            request = urllib.request.Request(  # noqa: S310 - our own server
                self.url,
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.key}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
                    self.statuses[str(answer.status)] += 1
            except urllib.error.HTTPError as exc:
                self.statuses[str(exc.code)] += 1
            except OSError as exc:
                self.statuses[type(exc).__name__] += 1

    def stop(self) -> None:
        self._halt.set()
        self.join()


@dataclass
class Phase:
    kind: str  # baseline | inject | recover
    label: str
    at_s: float


@dataclass
class Episode:
    """One stretch in which an alert was listed, pending then maybe firing (drill seconds)."""

    pending_at: float
    firing_at: float | None = None
    last_seen: float = 0.0
    last_state: str = "pending"


@dataclass
class Seen:
    """One alert as /api/v1/alerts showed it: its episodes and the labels it carried."""

    name: str
    episodes: list[Episode] = field(default_factory=list)
    labels: set[str] = field(default_factory=set)

    def fired_after(self, at_s: float) -> Episode | None:
        """The first episode that fired at or after ``at_s``."""
        return next(
            (e for e in self.episodes if e.firing_at is not None and e.firing_at >= at_s), None
        )


class AlertWatch(threading.Thread):
    """Reads /api/v1/alerts every ``period_s``: each alert's episodes (an alert missing from
    one read ends its episode)."""

    def __init__(self, prometheus: str, period_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.url = f"{prometheus}/api/v1/alerts"
        self.period_s = period_s
        self.start_s = time.monotonic()
        self.seen: dict[str, Seen] = {}
        self.last_read_s = -1.0
        self.errors = 0
        self._halt = threading.Event()

    def now(self) -> float:
        return time.monotonic() - self.start_s

    def read(self) -> None:
        try:
            alerts = get_json(self.url, timeout_s=2)["data"]["alerts"]
        except (OSError, ValueError, KeyError):
            self.errors += 1
            return
        now = self.now()
        states: dict[str, str] = {}
        for alert in alerts:
            labels = alert["labels"]
            name = labels["alertname"]
            if alert["state"] == "firing" or name not in states:
                states[name] = alert["state"]
            self.seen.setdefault(name, Seen(name)).labels.update(
                f"{k}={v}" for k, v in labels.items() if k in ("shard", "code", "instance", "job")
            )
        for name, state in states.items():
            seen = self.seen[name]
            if not seen.episodes or seen.episodes[-1].last_seen < self.last_read_s:
                seen.episodes.append(Episode(now))
            episode = seen.episodes[-1]
            if state == "firing" and episode.firing_at is None:
                episode.firing_at = now
            episode.last_seen, episode.last_state = now, state
        self.last_read_s = now

    def run(self) -> None:
        while not self._halt.wait(self.period_s):
            self.read()

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.read()


@dataclass
class Result:
    incident: Incident
    api: str
    phases: list[Phase]
    seen: dict[str, Seen]
    end_s: float
    traffic: Counter[str]
    facts: list[str]
    rule_errors: list[str]
    exporter: bool
    machine: str
    #: What the incident ran: harness.code_version() and rules_version() at its start.
    code: str
    rules: str


class Drill:
    """One incident's clock: phases marked, waits taken while the threads observe."""

    def __init__(self, stack: Stack, watch: AlertWatch, baseline_s: float) -> None:
        self.stack = stack
        self.watch = watch
        self.baseline_s = baseline_s
        self.phases: list[Phase] = []
        self.facts: list[str] = []

    def phase(
        self, kind: str, label: str, hold_s: float, during: Callable[[], object] | None = None
    ) -> None:
        """Mark a phase and hold it ``hold_s``, calling ``during`` about once a second."""
        self.mark(kind, label)
        self.hold(hold_s, during)

    def mark(self, kind: str, label: str) -> None:
        """A phase begins now (before a fault that takes a while to set up)."""
        self.phases.append(Phase(kind, label, self.watch.now()))
        print(f"  [{self.watch.now():6.1f} s] {kind}: {label}", flush=True)

    def hold(self, hold_s: float, during: Callable[[], object] | None = None) -> None:
        deadline = time.monotonic() + hold_s
        while (left := deadline - time.monotonic()) > 0:
            if during is not None:
                during()
            time.sleep(min(1.0, max(left, 0.0)))

    def note(self, fact: str) -> None:
        print(f"    {fact}", flush=True)
        self.facts.append(fact)


# --- the incidents ----------------------------------------------------------------------------


def leads(tag: str, start: int, count: int) -> list[dict[str, Any]]:
    return [
        {
            "email": f"{tag}-{n}@demo.example.com",
            "attributes": {"FirstName": "Flood", "Company": "Drill"},
        }
        for n in range(start, start + count)
    ]


def flood(producer: LeadProducer, tag: str, start: int, count: int, chunk: int = 2000) -> int:
    """``upsert_many`` in chunks until ``count`` are written or Backpressure; returns how many
    were written (the ids of a refused chunk's earlier records included)."""
    written = 0
    while written < count:
        size = min(chunk, count - written)
        try:
            producer.upsert_many(leads(tag, start + written, size))
        except Backpressure as exc:
            return written + len(exc.results)
        written += size
    return written


def run_auth(drill: Drill, api: str) -> None:
    sim = drill.stack.sim
    drill.phase("baseline", "healthy", drill.baseline_s)
    if api == "rest":
        sim.configure(client_secret="rotated-by-the-drill")
        sim.admin.expire_token()
        label = "Marketo's identity refuses the client secret (rotated); the current token expired"
    else:
        sim.configure(encryption_key="rotated-by-the-drill")
        label = "Marketo refuses the SOAP signature (encryption key rotated): 20014"
    drill.phase("inject", label, 45)
    if api == "rest":
        sim.configure(client_secret=sim.client_secret)
    else:
        sim.configure(encryption_key=sim.fields["encryption_key"])
    drill.phase("recover", "credentials accepted again", 25)


def run_quota_marketo(drill: Drill, api: str) -> None:
    drill.phase("baseline", "healthy", drill.baseline_s)
    drill.stack.sim.configure(daily_quota=0)
    code = "607" if api == "rest" else "20015"
    drill.phase("inject", f"Marketo's daily quota spent by the instance ({code} on every call)", 45)
    drill.stack.sim.configure(daily_quota=drill.stack.sim.fields["daily_quota"])
    drill.phase(
        "recover",
        "Marketo's quota back (as after the reset); leadsync's own counter still says spent",
        20,
    )


def run_quota_share(drill: Drill, api: str) -> None:
    """The share nearly spent (say by a backfill earlier today), then a flood of full
    batches spends the rest: today's counter seeded at the share minus 40 calls."""
    stack = drill.stack
    drill.phase("baseline", "healthy", drill.baseline_s)
    share, prefix = int(stack.env["LEADSYNC_DAILY_QUOTA"]), stack.env["LEADSYNC_KEY_PREFIX"]
    left = 40
    drill.mark("inject", f"the share's last {left} calls spent by full batches")
    with contextlib.closing(stack.client()) as client:
        key = LimiterKeys(prefix).quota(quota_day(time.time(), DEFAULTS.quota_timezone))
        client.set(key, share - left, keepttl=True)
    written = flood(stack.producer, "share", 0, (left + 40) * DEFAULTS.batch_size)
    drill.note(f"counter seeded at {share - left:,} of {share:,}; {written:,} upserts flooded")
    drill.hold(50)
    drill.phase("recover", "nothing to do until the reset (00:00 America/Chicago)", 15)


def run_marketo_down(drill: Drill, api: str) -> None:
    sim = drill.stack.sim
    drill.phase("baseline", "healthy", drill.baseline_s)
    sim.__exit__()
    drill.phase("inject", "Marketo down: connection refused (the simulator stopped)", 40)
    drill.mark("inject", "Marketo back behind a failing gateway: every call answered 502")
    sim.__enter__()
    sim.configure(fault_http_502_rate=1.0, hang_s=10.0)
    drill.hold(30)
    sim.configure(fault_http_502_rate=0.0, fault_hang_rate=1.0)
    drill.phase("inject", "Marketo hangs: every call past the 3 s request timeout", 30)
    sim.configure(fault_hang_rate=0.0)
    drill.phase("recover", "Marketo healthy", 25)


class Filler:
    """Producers writing upserts until Redis's used memory is a share of maxmemory, or
    leadsync refuses them (Backpressure)."""

    def __init__(self, stack: Stack, tag: str) -> None:
        self.stack = stack
        self.tag = tag
        self.written = 0
        self.refusals = 0

    def to(self, share: float) -> None:
        while True:
            used, limit = self.stack.memory()
            if used >= share * limit:
                return
            # About 250 bytes a queued upsert: a fifth of the gap at a time.
            count = max(200, int((share * limit - used) / 250 / 5))
            got = flood(self.stack.producer, self.tag, self.written, count, chunk=count)
            self.written += got
            if got < count:
                self.refusals += 1
                return

    def state(self) -> str:
        used, limit = self.stack.memory()
        return (
            f"{self.written:,} upserts written, {self.refusals} refused with Backpressure; "
            f"used_memory {used / limit:.1%} of maxmemory"
        )


def run_redis_full(drill: Drill, api: str) -> None:
    stack = drill.stack
    filler = Filler(stack, "fill")
    drill.phase("baseline", "healthy", drill.baseline_s)
    drill.mark("inject", "the backlog grows to 80 % of maxmemory (producers keep it there)")
    filler.to(0.80)
    drill.note(f"at 80 %: {filler.state()}")
    drill.hold(20, lambda: filler.to(0.80))
    drill.phase(
        "inject",
        "producers keep writing: Redis at the high-water mark, Backpressure",
        35,
        lambda: filler.to(0.99),
    )
    drill.note(f"at the high-water mark: {filler.state()}")
    used, limit = stack.memory()
    with contextlib.closing(stack.client()) as client:
        client.config_set("maxmemory", used - (1 << 20))
    drill.note(f"maxmemory lowered from {limit:,} to {used - (1 << 20):,} bytes (used - 1 MiB)")
    drill.phase("inject", "maxmemory reached: Redis refuses every write (OOM)", 30)
    with contextlib.closing(stack.client()) as client:
        client.config_set("maxmemory", MAXMEMORY_MB << 20)
    worker = stack.worker.process
    if worker is not None and worker.poll() is not None:
        drill.note(
            f"the Celery worker had exited (code {worker.returncode}): restarted, as its pod would be"
        )
        stack.worker.start()
    drill.phase("recover", f"maxmemory raised to {MAXMEMORY_MB} MB", 25)


@dataclass(frozen=True)
class Incident:
    key: str
    title: str
    api: str
    run: Callable[[Drill, str], None]
    expected: frozenset[str]
    maxmemory_mb: int = MAXMEMORY_MB


INCIDENTS = {
    i.key: i
    for i in (
        Incident(
            "auth-rest",
            "1a. auth failure",
            "rest",
            run_auth,
            frozenset({"LeadsyncHold", "LeadsyncOldestEntryTooOld"}),
        ),
        Incident(
            "auth-soap",
            "1b. auth failure",
            "soap",
            run_auth,
            frozenset({"LeadsyncHold", "LeadsyncOldestEntryTooOld"}),
        ),
        Incident(
            "quota-marketo",
            "2a. quota: Marketo's daily-quota fault",
            "soap",
            run_quota_marketo,
            frozenset(
                {
                    "LeadsyncMarketoQuotaFault",
                    "LeadsyncQuotaShareUsedUp",
                    "LeadsyncOldestEntryTooOld",
                }
            ),
        ),
        Incident(
            "quota-share",
            "2b. quota: leadsync's share used up",
            "soap",
            run_quota_share,
            frozenset({"LeadsyncQuotaShareUsedUp", "LeadsyncOldestEntryTooOld"}),
        ),
        Incident(
            "marketo-down",
            "3. Marketo down",
            "soap",
            run_marketo_down,
            frozenset(
                {
                    "LeadsyncMarketoCallsFailing",
                    "LeadsyncMarketoCallsTimingOut",
                    "LeadsyncOldestEntryTooOld",
                }
            ),
        ),
        Incident(
            "redis-full",
            "4. Redis full",
            "soap",
            run_redis_full,
            frozenset(
                {
                    "LeadsyncRedisMemoryNearHighWater",
                    "LeadsyncRedisMemoryAtHighWater",
                    "LeadsyncApiUnavailable",
                }
            ),
            maxmemory_mb=FULL_MAXMEMORY_MB,
        ),
    )
}


#: What the drill found behind an alert that fired where the runbook did not lead us to
#: expect it (or stayed pending): (incident key prefix, alert) -> the explanation.
NOTES: dict[tuple[str, str], str] = {
    ("auth-rest", "LeadsyncHold"): (
        "the refused identity calls are counted in no metric (worker/marketo/rest/tokens.py"
        " raises AuthError from the token fetch, before any call; the faults show only the"
        " expired token's 602): LeadsyncHold is the only alert a REST credential failure raises"
    ),
    ("auth-soap", "LeadsyncMarketoCallsFailing"): (
        "pending for a few seconds after the hold ended: the rule's `unless on()"
        " max(leadsync_hold) > 0` lifts while its window still holds the probes' 20014s;"
        " the calls that follow soon outnumber them (it fired in the hold before fbb0b26)"
    ),
    ("quota-marketo", "LeadsyncMarketoQuotaFault"): (
        "fires for its 30 m (here 30 s) window only: after the one 20015 leadsync calls"
        " nothing until the reset, so no further fault comes; LeadsyncQuotaShareUsedUp"
        " (leadsync's counter raised to the share) carries on"
    ),
    ("quota-share", "LeadsyncQuotaShareRunningOut"): (
        "pending from the seeding of the counter (a jump inside its 1 h, here 60 s, window"
        " is a steep slope) until the share was spent; `unless ... >= share` then silences"
        " it. Its 30 m (30 s) hold outlasts the calls that were left, so it cannot fire"
        " here; in production it warns only when over-pace use lasts 30 minutes"
    ),
    ("marketo-down", "LeadsyncDeadLetters"): (
        "every drain cycle spends an attempt of each entry it carries (worker/drain/drainer.py"
        " bumps them before the call; a limit, a hold, the quota and, since 9616429, a"
        " request that never reached Marketo give them back):"
        " after LEADSYNC_MAX_ATTEMPTS (8) failed cycles an entry is dead-lettered and waits"
        " for `leadsync dlq replay`. The phase it fired in says which faults spent them. The"
        " drill's backoff (FAST_RECOVERY_ENV: 0.1 s to 1 s) is not scaled; at the defaults"
        " (0.5 s doubling to 30 s, with jitter) 8 failed cycles take roughly two minutes"
    ),
    ("marketo-down", "LeadsyncMarketoCallsTimingOut"): (
        "its threshold is a count the drill does not scale (more than 2 unknown outcomes in"
        " the window), and each unknown outcome rests the call's shards"
        " (LEADSYNC_UNKNOWN_OUTCOME_REST_S, here 2 s): the count depends on how many call"
        " groups are in flight. A 502 comes at once, a hang after the 3 s request timeout."
        " In earlier runs (3 s rests, half the calls hanging) it sat at the threshold,"
        " flipping between pending and firing. In production a Marketo that hangs every"
        " call gives one unknown outcome per call group every 60 s + 120 s, 3.3 in 10"
        " minutes: barely above the threshold when the traffic is light"
    ),
    ("redis-full", "LeadsyncOldestEntryTooOld"): (
        "a backlog big enough to fill Redis (~170,000 upserts) drains at leadsync's rate"
        " limit (50 calls / 20 s of 300 leads, 750 a second): its oldest entry waits far"
        " longer than 20 flush intervals. Expected once Redis fills with a backlog"
    ),
    ("redis-full", "LeadsyncWorkerTargetDown"): (
        "the Celery worker exits when Redis refuses a write with OOM: its main process logs"
        " `Unrecoverable error: server:OutOfMemoryError` (kombu's task ack, ZREM on"
        " the unacked index, is refused) and the pool and embedded beat go with it; the"
        " drains' own Lua steps were refused too (`drain failed; entries stay pending`)."
        " A pod would restart and exit again until Redis has room; the drill restarts it"
        " once, at the recovery. The runbook of LeadsyncRedisMemoryAtHighWater (`let the"
        " workers drain`) does not hold past maxmemory"
    ),
    ("redis-full", "LeadsyncNoWorker"): (
        "the worker's exit above: its series went stale, so leadsync_backlog_entries was absent"
    ),
}


#: What earlier runs of the drill found, fixed since: kept so the report says why the
#: alerts above no longer fire there.
HISTORY = [
    "## Found by earlier runs, fixed since",
    "",
    "- 1b, SOAP auth failure: LeadsyncMarketoCallsFailing fired 10 m (10 s) into the hold,"
    " beside LeadsyncHold: the hold's probes all fault 20014, so faults over calls was 1."
    " fbb0b26 adds `unless on() max(leadsync_hold) > 0` to the rule.",
    "- 2a, Marketo's quota fault: LeadsyncPaceHoldingBatches fired 30 m (30 s) after the"
    " 20015, beside LeadsyncQuotaShareUsedUp: with the share spent the pace holds every"
    " partial batch until the reset. fbb0b26 adds the `unless ... used >= share` arm that"
    " LeadsyncQuotaShareRunningOut has.",
    "- 3, Marketo down: LeadsyncDeadLetters fired about 20 s into the connection-refused"
    " phase: a request that never reached Marketo still spent an attempt of every entry,"
    " so an outage of about two minutes at the defaults dead-lettered the backlog."
    " 9616429 gives the attempts back on a transport error (refused, DNS, TLS, connect"
    " timeout); 502s and timeouts still spend them.",
    "",
]


def note_for(incident: Incident, alert: str) -> str:
    return next(
        (
            text
            for (prefix, name), text in NOTES.items()
            if name == alert and incident.key.startswith(prefix)
        ),
        "",
    )


def facts_from_prometheus(stack: Stack) -> list[str]:
    """What leadsync's own metrics say at the end: faults by code, outcomes by status, calls
    (counted since the worker last started)."""

    def by(label: str, promql: str) -> str:
        cells = []
        for row in stack.query(promql):
            value = f"{float(row['value'][1]):,.0f}"
            cells.append(f"{row['metric'][label]} {value}" if label in row["metric"] else value)
        return ", ".join(cells) or "none"

    return [
        "leadsync faults by code: " + by("code", "sum by (code) (leadsync_marketo_faults_total)"),
        "outcomes by status: " + by("status", "sum by (status) (leadsync_outcomes_total)"),
        "Marketo calls: " + by("", "sum(leadsync_marketo_call_seconds_count)"),
    ]


def rule_errors(stack: Stack) -> list[str]:
    groups = get_json(f"{stack.prometheus}/api/v1/rules")["data"]["groups"]
    return [
        f"{rule['name']}: {rule['lastError']}"
        for group in groups
        for rule in group["rules"]
        if rule.get("health") != "ok"
    ]


def rules_version() -> str:
    """alerts.yml as the drill read it: a digest of its text, and whether git has it changed."""
    digest = hashlib.sha256((MONITORING / "alerts.yml").read_bytes()).hexdigest()[:12]
    changed = subprocess.run(
        ["git", "status", "--porcelain", "deploy/monitoring/alerts.yml"],
        cwd=harness.ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"alerts.yml sha256 {digest}" + (" (uncommitted changes)" if changed else "")


def run_incident(incident: Incident, factor: float, baseline_s: float) -> Result:
    api = incident.api
    code, rules = harness.code_version(), rules_version()
    print(f"{incident.title} ({api})", flush=True)
    with running_stack(
        incident.key,
        api,
        factor,
        maxmemory_mb=incident.maxmemory_mb,
    ) as stack:
        watch = AlertWatch(stack.prometheus)
        traffic = Traffic(stack, incident.key)
        drill = Drill(stack, watch, baseline_s)
        watch.start()
        traffic.start()
        try:
            incident.run(drill, api)
        finally:
            traffic.stop()
            watch.stop()
        end_s = watch.now()
        facts = [
            f"Prometheus at its start: {stack.startup}",
            *drill.facts,
            *facts_from_prometheus(stack),
        ]
        if stack.worker.process is not None and stack.worker.process.poll() is not None:
            facts.append(f"the Celery worker EXITED (code {stack.worker.process.returncode})")
        errors = rule_errors(stack)
        return Result(
            incident,
            api,
            drill.phases,
            watch.seen,
            end_s,
            traffic.statuses,
            facts,
            errors,
            stack.exporter,
            harness.machine_line(stack.server.url),
            code,
            rules,
        )


# --- the report ------------------------------------------------------------------------------


def phase_at(phases: Sequence[Phase], at_s: float) -> int:
    """The index of the phase ``at_s`` falls in."""
    return max((i for i, p in enumerate(phases) if p.at_s <= at_s + 1e-9), default=0)


@dataclass
class Verdict:
    """One incident's alerts, sorted for the report."""

    result: Result
    injected_s: float
    recovered_s: float | None
    fired: list[tuple[Seen, Episode]] = field(default_factory=list)
    pending: list[Seen] = field(default_factory=list)
    baseline: list[Seen] = field(default_factory=list)
    after_recovery: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, result: Result) -> Verdict:
        injected = next(p.at_s for p in result.phases if p.kind == "inject")
        recovered = next((p.at_s for p in result.phases if p.kind == "recover"), None)
        verdict = cls(result, injected, recovered)
        end = result.end_s - 1.5  # an episode seen at the last reads was still open
        for seen in result.seen.values():
            episode = seen.fired_after(injected)
            if episode is not None:
                verdict.fired.append((seen, episode))
            elif any(e.last_seen >= injected for e in seen.episodes):
                verdict.pending.append(seen)
            if any(e.firing_at is not None and e.firing_at < injected for e in seen.episodes):
                verdict.baseline.append(seen)
            last = seen.episodes[-1]
            if recovered is None or last.firing_at is None or last.last_seen < recovered:
                continue
            if last.last_seen >= end:
                verdict.after_recovery.append(f"{seen.name} still firing")
            else:
                verdict.after_recovery.append(
                    f"{seen.name} cleared {last.last_seen - recovered:+.0f} s"
                )
        verdict.fired.sort(key=lambda pair: pair[1].firing_at or 0)
        return verdict

    def fired_cell(self, seen: Seen, episode: Episode) -> str:
        """``**Name** +12 s`` after the first injection; a later phase is named with the
        time into it."""
        assert episode.firing_at is not None
        phases = self.result.phases
        index = phase_at(phases, episode.firing_at)
        text = f"**{seen.name}** {episode.firing_at - self.injected_s:+.0f} s"
        if phases[index].at_s != self.injected_s:
            into = episode.firing_at - phases[index].at_s
            text += f" (in phase {index}, {phases[index].kind}: {into:+.0f} s)"
        return text

    def row(self) -> list[object]:
        return [
            f"{self.result.incident.title} ({self.result.api})",
            "<br>".join(self.fired_cell(s, e) for s, e in self.fired) or "none",
            "<br>".join(s.name for s in self.pending) or "none",
            "<br>".join(self.after_recovery)
            or ("nothing firing" if self.recovered_s is not None else "no recovery phase"),
        ]


def versions(results: Sequence[Result]) -> list[str]:
    """The code and rules lines; per incident when they changed during the drill (others
    edit this tree)."""
    lines = []
    for what in ("code", "rules"):
        seen = {getattr(r, what) for r in results}
        if len(seen) <= 1:
            lines.append(f"- {what}: {next(iter(seen), 'unknown')}")
        else:
            lines.append(f"- {what}: CHANGED DURING THE DRILL:")
            lines += [f"  - {r.incident.title}: {getattr(r, what)}" for r in results]
    return lines


def render(results: Sequence[Result], factor: float, machine: str, command: str) -> str:
    rules = alert_rules()
    verdicts = [Verdict.of(r) for r in results]
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Incident drill: which alerts fire",
        "",
        "Generated by `python -m bench.incidents` (bench/incidents.py), which replaces this",
        "file; `make incidents` runs it.",
        "",
        f"- date: {stamp}",
        *versions(results),
        f"- machine: {machine}",
        f"- command: `{command}`",
        "",
        "## Results",
        "",
        "Drill seconds after the fault was injected (the incident's first injected phase);",
        f"time is compressed {factor:g}-fold (below), so +5 s stands for about {5 * factor / 60:g}",
        "minutes in production. Pending only: the expression held, but not for its (scaled)",
        "`for:`. After recovery: when each alert still firing at the recovery cleared.",
        "",
        harness.md_table(
            ["incident", "fired (time to fire)", "pending only", "after recovery"],
            [v.row() for v in verdicts],
        ),
        "",
    ]
    listed = {name for r in results for name in r.seen}
    never = sorted(set(rules) - listed)
    lines += [
        f"Never listed (pending or firing) in any incident: {', '.join(never) or 'none'}.",
        "",
    ]
    for verdict in verdicts:
        lines += incident_section(verdict, rules, factor)
    lines += scaling_section(factor)
    lines += HISTORY
    return "\n".join(lines) + "\n"


def episodes_text(seen: Seen) -> str:
    parts = []
    for e in seen.episodes:
        fired = f", firing {e.firing_at:.0f} s" if e.firing_at is not None else ""
        parts.append(f"pending {e.pending_at:.0f} s{fired}, last seen {e.last_seen:.0f} s")
    return "; ".join(parts)


def incident_section(verdict: Verdict, rules: Mapping[str, str], factor: float) -> list[str]:
    result = verdict.result
    incident = result.incident
    lines = [f"### {incident.title} ({result.api})", ""]
    for index, phase in enumerate(result.phases):
        lines.append(f"{index}. {phase.kind} at {phase.at_s:.0f} s: {phase.label}")
    lines += [f"{len(result.phases)}. end at {result.end_s:.0f} s", ""]
    ordered = sorted(result.seen.values(), key=lambda s: s.episodes[0].pending_at)
    for seen in ordered:
        hold = rules.get(seen.name, "")
        held = f"`for: {hold}` -> {scaled(hold, factor)}" if hold else "no `for:`"
        labels = f" [{', '.join(sorted(seen.labels))}]" if seen.labels else ""
        lines.append(f"- {seen.name} ({held}): {episodes_text(seen)}{labels}")
    if not ordered:
        lines.append("- no alert was ever listed")
    lines.append("")
    fired = {s.name for s, _ in verdict.fired}
    notes = [f"expected from the runbook: {', '.join(sorted(incident.expected))}"]
    notes += [f"expected **{n}** did not fire" for n in sorted(incident.expected - fired)]
    for name in sorted(fired - incident.expected):
        why = note_for(incident, name)
        notes.append(f"**{name}** fired, not expected" + (f": {why}" if why else ""))
    for seen in verdict.pending:
        why = note_for(incident, seen.name)
        notes.append(f"{seen.name} only pending" + (f": {why}" if why else ""))
    notes += [f"**{s.name}** fired during the healthy baseline" for s in verdict.baseline]
    for seen, _ in verdict.fired:
        why = note_for(incident, seen.name) if seen.name in incident.expected else ""
        if why:
            notes.append(f"{seen.name}: {why}")
    if not result.exporter:
        notes.append("no redis_exporter: the Redis memory alerts were not evaluable")
    notes.append(
        f"API answers to the steady single upserts: {dict(sorted(result.traffic.items()))}"
    )
    notes += result.facts
    notes += [f"rule evaluation error: {e}" for e in result.rule_errors]
    lines += [f"- {n}" for n in notes]
    lines.append("")
    return lines


def scaling_section(factor: float) -> list[str]:
    values = drill_settings(factor)
    bullets = [
        f"Factor {factor:g}: every `for:`, range window (`[10m]` -> `[{scaled('10m', factor)}]`),"
        f" subquery (`[1h:1m]` -> `[{scaled('1h', factor)}:{scaled('1m', factor)}]`) and"
        " `offset` of a copy of deploy/monitoring/alerts.yml is divided by it; Prometheus"
        " scrapes the worker, the API and redis_exporter and evaluates the rules every 1 s.",
        "The copy's `leadsync:config:*` recording rules hold the drill's settings: flush"
        f" interval {values['flush_interval_s']:g} s (30 s / {factor:g}), daily share"
        f" {values['daily_quota']:,.0f} (5,000 x {factor:g}: {factor:g} times as many calls go"
        f" out per real second), memory high water {values['memory_high_water']:g}.",
        "leadsync's own durations that pace what the alerts count are divided too: the rest"
        f" after an unknown outcome {values['unknown_outcome_rest_s']:g} s (120 s), the hold's"
        f" probe every {values['hold_probe_interval_s']:g} s (60 s). Otherwise it runs with"
        " tests/support/pipeline.py's FAST_RECOVERY_ENV (lease 8 s, request timeout 3 s,"
        " backoff 0.1 s to 1 s, cooldown 1 s), 4 shards, a worker of 2 processes with its"
        " embedded beat, and its defaults.",
        "Not scaled: thresholds that count events (`increase(...) > 2` unknown outcomes, `> 0`"
        " faults), the time to the quota reset in LeadsyncQuotaShareRunningOut (wall clock),"
        " the pace's quota day, the request timeout, and what Marketo's own limits pace.",
        "`up` comes from Prometheus's own scrape of the worker; the Redis memory alerts read"
        " prometheus-redis-exporter (the Debian package's binary, scripts/ensure-prometheus).",
        "A Prometheus that has just started evaluates its rules before its first scrape (the"
        " first target update comes a few seconds after the start): with `for: 5m` scaled to"
        " 5 s, LeadsyncNoWorker fires at every start (each incident's `Prometheus at its"
        " start` line). The drill waits until no alert is listed before its baseline; at the"
        " real 5 m it does not happen.",
    ]
    return ["## How the drill compresses time", "", *(f"- {b}" for b in bullets), ""]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.incidents", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--incidents",
        default=",".join(INCIDENTS),
        help="comma-separated, of: " + ", ".join(INCIDENTS),
    )
    parser.add_argument(
        "--time-scale", type=float, default=60.0, help="divide for:, windows and offsets by this"
    )
    parser.add_argument(
        "--baseline-s", type=float, default=15.0, help="healthy seconds before each fault"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print the report, leave bench/INCIDENTS.md alone"
    )
    args = parser.parse_args(argv)
    names = [k.strip() for k in args.incidents.split(",") if k.strip()]
    if unknown := [n for n in names if n not in INCIDENTS]:
        parser.error(f"unknown incident(s) {', '.join(unknown)}; known: {', '.join(INCIDENTS)}")
    if shutil.which("prometheus") is None:
        sys.exit("prometheus not found: run scripts/ensure-prometheus")
    started = time.monotonic()
    results = [run_incident(INCIDENTS[name], args.time_scale, args.baseline_s) for name in names]
    machine = results[0].machine if results else ""
    command = " ".join(["python -m bench.incidents", *argv])
    report = render(results, args.time_scale, machine, command)
    print(report)
    print(f"drill took {time.monotonic() - started:.0f} s")
    if not args.no_write:
        REPORT.write_text(report)
        print(f"wrote {REPORT}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main(sys.argv[1:])
