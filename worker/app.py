"""The Celery edge: ``celery -A worker.app worker`` and ``celery -A worker.app beat``.

Celery only rings the doorbell and runs batch cycles; the durable state lives in
the Redis Stream ledger, so a lost Celery message is harmless (the next tick
rings again). Settings follow docs/architecture.md ("Celery settings").
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery
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


def create_app(settings: Settings) -> Celery:
    """The Celery app for these settings (no I/O happens here)."""
    celery = Celery("leadsync", broker=settings.effective_broker_url, include=["worker.tasks"])
    transport_options: dict[str, Any] = {
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        "global_keyprefix": f"{settings.key_prefix}:celery:",
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": 25,
    }
    celery.conf.update(
        task_default_queue=QUEUE,
        broker_transport_options=transport_options,
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
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        beat_schedule={
            "tick": {"task": "leadsync.tick", "schedule": 1.0, "options": {"expires": 5}}
        },
        timezone="UTC",
    )
    return celery


settings = Settings.from_env()
configure_logging(settings)
app = create_app(settings)


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


_main_heartbeat: Any = None


@heartbeat_sent.connect
def _heartbeat(**_: object) -> None:
    global _main_heartbeat
    from worker.ops.health import MainHeartbeat

    if _main_heartbeat is None:
        _main_heartbeat = MainHeartbeat(settings)
    _main_heartbeat.beat()


@worker_shutdown.connect
def _remove_own_metrics_dir(**_: object) -> None:
    """A directory this process made for itself goes with it (a configured one stays)."""
    metrics_dir.remove_own()
