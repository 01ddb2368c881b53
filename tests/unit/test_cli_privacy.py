"""No lead data where operators look: Celery task messages (Flower, broker), task results,
JSON log lines and Prometheus label values."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from types import ModuleType

import pytest
from prometheus_client import REGISTRY, values
from redis.asyncio import Redis

from marketo_sim.soap import SimFault, SyncStatus, render_fault, render_success
from tests.support.drain_kit import Marketo, enqueue, make
from worker.drain import Drainer
from worker.obs.logs import configure_logging
from worker.settings import Settings
from worker.transport import HttpReply

EMAILS = ["ann@example.com", "bob@example.com", "reject@example.com"]


def behave(emails: list[str | None]) -> HttpReply:
    """Rejects one record by name; faults every call that carries bob (then he is parked)."""
    if EMAILS[1] in emails:
        return HttpReply(500, "text/xml", render_fault(SimFault(10001)))
    statuses = [
        SyncStatus(i + 1, "FAILED", "Invalid field value")
        if e == EMAILS[2]
        else SyncStatus(i + 1, "CREATED")
        for i, e in enumerate(emails)
    ]
    return HttpReply(200, "text/xml", render_success(statuses))


def new_drainer(redis: Redis) -> Drainer:
    return make(redis, Marketo(behave), max_attempts=1, transient_retries=0)


async def cycles(drainer: Drainer, n: int) -> None:
    for _ in range(n):
        await drainer.drain(0)


@pytest.fixture
def tasks_module() -> Iterator[ModuleType]:
    """worker.tasks, imported without leaking its metrics directory into other tests."""
    saved = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    import worker.tasks

    yield worker.tasks
    if saved is None:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        # worker.app switched the value store to multiprocess files; switch it back.
        values.ValueClass = values.get_value_class()


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The JSON log lines of the worker loggers, written into a buffer."""
    names = ("worker", "producers", "marketo_sim")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in names}
    configure_logging(Settings(log_format="json", log_level="DEBUG"))
    buffer = io.StringIO()
    for handler in logging.getLogger("worker").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(buffer)
    yield buffer
    for name, (handlers, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.setLevel(logging.NOTSET)


def test_a_drain_task_message_carries_only_the_shard(tasks_module: ModuleType) -> None:
    signature = tasks_module.drain.s(3)
    assert (signature.task, signature.args, signature.kwargs) == ("leadsync.drain", (3,), {})
    message = tasks_module.app.amqp.as_task_v2("task-id", "leadsync.drain", args=(3,), kwargs={})
    args, kwargs, _embed = message.body
    assert (args, kwargs) == ((3,), {})
    assert (message.headers["argsrepr"], message.headers["kwargsrepr"]) == ("(3,)", "{}")


def test_the_tick_takes_no_arguments(tasks_module: ModuleType) -> None:
    message = tasks_module.app.amqp.as_task_v2("task-id", "leadsync.tick", args=(), kwargs={})
    assert message.body[:2] == ((), {})


async def test_a_drain_report_holds_only_counts_and_status_names(aredis: Redis) -> None:
    drainer = new_drainer(aredis)
    for email in EMAILS:
        await enqueue(drainer, email)
    report = (await drainer.drain(0)).as_dict()
    reports = [report]
    await cycles(drainer, 2)
    reports.append((await drainer.drain(0)).as_dict())
    for item in reports:
        for name, value in item.items():
            if name == "outcomes":
                assert set(value) <= {"CREATED", "UPDATED", "FAILED", "DEAD_LETTERED"}
                assert all(isinstance(n, int) for n in value.values())
            elif name in ("status", "reason"):
                assert value is None or re.fullmatch(r"[\w ]+", value), value
            else:
                assert value is None or isinstance(value, int | float), (name, value)
        assert "@" not in json.dumps(item)


async def test_drain_log_lines_are_json_and_never_carry_an_email(
    json_logs: io.StringIO, aredis: Redis
) -> None:
    drainer = new_drainer(aredis)
    for email in (EMAILS[0], EMAILS[2]):
        await enqueue(drainer, email)
    report = await drainer.drain(0)
    assert dict(report.outcomes) == {"CREATED": 1, "FAILED": 1}
    await enqueue(drainer, EMAILS[1])
    await cycles(drainer, 2)
    lines = [line for line in json_logs.getvalue().splitlines() if line.strip()]
    assert any("shard=0 status=" in json.loads(line)["message"] for line in lines)
    for line in lines:
        record = json.loads(line)
        assert set(record) <= {"ts", "level", "logger", "message", "exc_type"}
        assert "@" not in line, line
        assert "example" not in line, line


#: The reasons the shared limiter refuses a call for (``acquire.lua``, ``bulk_budget``).
LIMITER_REASONS = {"rate", "concurrency", "quota", "pace", "bulk_budget", "cooldown", "hold", "failover"}  # fmt: skip


async def test_metric_label_values_are_shards_statuses_and_codes_only(aredis: Redis) -> None:
    drainer = new_drainer(aredis)
    for email in EMAILS:
        await enqueue(drainer, email)
    await cycles(drainer, 3)
    seen = []
    routes = api_route_templates()
    for family in REGISTRY.collect():
        if family.name.startswith("leadsync_"):
            for sample in family.samples:
                for name, value in sample.labels.items():
                    if name == "route":  # the HTTP API's: a route template, never a path
                        assert value in routes, value
                    elif name == "reason":  # the limiter's refusals: its fixed reasons
                        assert value in LIMITER_REASONS, value
                    elif name != "le":
                        seen.append(value)
    assert seen, "the drain recorded labelled metrics"
    assert all(re.fullmatch(r"\d+|[A-Z_]+|[A-Z][A-Za-z]+", value) for value in seen), seen


def api_route_templates() -> set[str]:
    from worker.api.app import make_app
    from worker.settings import Settings

    app = make_app(Settings())
    return {r.resource.canonical for r in app.router.routes() if r.resource} | {"unmatched"}
