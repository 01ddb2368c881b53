"""The Celery edge: ``celery -A worker.app worker`` and ``celery -A worker.app beat``.

Celery only rings the doorbell and runs batch cycles; the durable state lives in
the Redis Stream ledger, so a lost Celery message is harmless (the next tick
rings again). Settings follow docs/architecture.md ("Celery settings").
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from celery import Celery, bootsteps
from celery.exceptions import CPendingDeprecationWarning
from celery.signals import (
    heartbeat_sent,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

# metrics_dir must be imported before anything imports prometheus_client (see the module).
from worker.obs import metrics_dir
from worker.obs.logs import configure_logging
from worker.settings import Settings

#: Celery's limits sit above the drain's own bound (LEADSYNC_DRAIN_TIMEOUT_S, enforced
#: with asyncio.timeout so the drain releases its lease and slot): they only catch a
#: process that stopped running its event loop.
TIME_LIMIT_MARGIN_S = 60
#: Celery's visibility timeout must exceed the task time limit, or a long task
#: is delivered again while it still runs (LEADSYNC_DRAIN_TIMEOUT_S is capped to fit).
VISIBILITY_TIMEOUT_S = 1800
QUEUE = "leadsync"


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The tick every second; the lead-field refresh every LEADSYNC_FIELDS_REFRESH_S (0:
    never; a message not taken within the period is dropped, the next one comes)."""
    schedule: dict[str, dict[str, Any]] = {
        "tick": {"task": "leadsync.tick", "schedule": 1.0, "options": {"expires": 5}}
    }
    if settings.fields_refresh_s > 0:
        schedule["refresh-fields"] = {
            "task": "leadsync.refresh_fields",
            "schedule": float(settings.fields_refresh_s),
            "options": {"queue": QUEUE, "expires": max(60, min(settings.fields_refresh_s, 3600))},
        }
    return schedule


def broker_variable(settings: Settings) -> str:
    """The setting the broker URL comes from (errors name it)."""
    return "LEADSYNC_BROKER_URL" if settings.broker_url else "LEADSYNC_REDIS_URL"


def create_app(settings: Settings) -> Celery:
    """The Celery app for these settings (no I/O happens here)."""
    from worker.broker import install as install_transports
    from worker.connections import celery_redis

    install_transports()  # kombu's Redis channels, with a lost connection named as such

    # leadsync's redis+sentinel:// URL becomes kombu's sentinel://...;sentinel://... with
    # master_name and sentinel_kwargs (worker/connections.py); other URLs pass through.
    broker = celery_redis(settings.effective_broker_url, settings, broker_variable(settings))
    celery = Celery("leadsync", broker=broker.url, include=["worker.tasks"])
    transport_options: dict[str, Any] = {
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        "global_keyprefix": f"{settings.key_prefix}:celery:",
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": 25,
        **broker.transport_options,
    }
    if broker.use_ssl is not None:
        celery.conf.broker_use_ssl = broker.use_ssl
    celery.conf.update(
        task_default_queue=QUEUE,
        broker_transport_options=transport_options,
        # No result backend is used (task_ignore_result); should one be set on the same
        # Sentinel, it needs the same master_name.
        result_backend_transport_options=dict(broker.transport_options),
        visibility_timeout=VISIBILITY_TIMEOUT_S,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.drain_timeout_s + 2 * TIME_LIMIT_MARGIN_S,
        task_soft_time_limit=settings.drain_timeout_s + TIME_LIMIT_MARGIN_S,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_ignore_result=True,
        result_extended=False,
        worker_soft_shutdown_timeout=25.0,
        worker_enable_soft_shutdown_on_idle=True,
        # A broker blip must not cancel running drains: a drain is bounded by its own
        # LEADSYNC_DRAIN_TIMEOUT_S and fenced by its shard leases, and it needs Redis (the
        # ledger), not the broker connection, to finish. Cancelled, it would leave its
        # shards leased and unsent for LEADSYNC_LEASE_TTL_S; with a Sentinel failover that
        # is every busy shard at once. Its message is acked late, so a drain the worker
        # loses is redelivered, and the lease makes a duplicate harmless.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        beat_schedule=beat_schedule(settings),
        timezone="UTC",
    )
    return celery


settings = Settings.from_env()
configure_logging(settings)
app = create_app(settings)


@worker_ready.connect
def _quiet_the_cancel_notice(**_: object) -> None:
    """worker_cancel_long_running_tasks_on_connection_loss is set on purpose (create_app):
    Celery's notice about its future default would fill every reconnect's log. Added once
    Celery's logging setup has put its own 'always' filter for these warnings in front."""
    warnings.filterwarnings(
        "ignore",
        message=r"\s*In Celery 5\.1 we introduced an optional breaking change",
        category=CPendingDeprecationWarning,
    )


@worker_process_init.connect
def _open_runtime(**_: object) -> None:
    """Make the process's loop, Redis client and HTTP session at process start (after the
    fork). If Redis is not reachable yet, the first task makes them instead."""
    from worker.runtime import get_runtime

    try:
        get_runtime(settings)
    except Exception:  # the worker must still start; the task path retries and reports
        logging.getLogger(__name__).exception("could not prepare the worker runtime yet")


@worker_process_shutdown.connect
def _close_runtime(**_: object) -> None:
    from worker.runtime import close_runtime

    close_runtime()


@worker_process_shutdown.connect
def _mark_metrics_dead(pid: int | None = None, **_: object) -> None:
    from worker.obs import metrics

    metrics.mark_process_dead(pid or os.getpid())


@worker_init.connect
def _clear_stale_metrics(**_: object) -> None:
    from worker.obs import metrics

    directory = metrics.multiproc_dir()
    if directory is not None:
        metrics.remove_stale_files(directory, keep_pid=os.getpid())


@worker_ready.connect
def _serve_metrics(**_: object) -> None:
    from worker.obs import metrics

    metrics.serve(settings.metrics_port)


@worker_ready.connect
def _learn_fields(**_: object) -> None:
    """At start, learn the lead fields when none are stored (or, with
    LEADSYNC_FIELDS_REFRESH_S=0, forget them); a pool process runs it."""
    try:
        app.send_task("leadsync.refresh_fields", kwargs={"only_if_missing": True}, queue=QUEUE)
    except Exception:  # the worker must still start; beat refreshes them later
        logging.getLogger(__name__).exception("could not queue the lead-field refresh")


_main_heartbeat: Any = None
_local_heartbeat: Any = None


def local_heartbeat() -> Any:
    """The main process's heartbeat file, read by ``leadsync doctor --liveness``."""
    global _local_heartbeat
    from worker.ops.health import LocalHeartbeat, local_heartbeat_path

    if _local_heartbeat is None:
        _local_heartbeat = LocalHeartbeat(local_heartbeat_path(settings.key_prefix))
    return _local_heartbeat


@worker_init.connect
def _waiting_for_the_broker(**_: object) -> None:
    local_heartbeat().disconnected()


class BrokerLiveness(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer step after the broker connection: started once the consumer has its
    connection (the heartbeat file says ``running``), stopped when it loses it (``waiting``:
    liveness stays OK while Celery reconnects, however long Redis is away)."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, parent: Any) -> None:
        local_heartbeat().connected()

    def stop(self, parent: Any) -> None:
        local_heartbeat().disconnected()


app.steps["consumer"].add(BrokerLiveness)


@heartbeat_sent.connect
def _heartbeat(**_: object) -> None:
    global _main_heartbeat
    from worker.ops.health import MainHeartbeat

    local_heartbeat().beat()  # the event loop beats (Celery's heartbeat, every 2 s)
    if _main_heartbeat is None:
        _main_heartbeat = MainHeartbeat(settings)
    _main_heartbeat.beat()


@worker_shutdown.connect
def _remove_own_metrics_dir(**_: object) -> None:
    """A directory this process made for itself goes with it (a configured one stays)."""
    metrics_dir.remove_own()
