"""The two Celery baselines, configured from BENCH_* variables (set by the benchmark).

(a) ``bench.sync_one``: one task per lead, one zeep call per lead.
(b) ``bench.sync_batch``: celery-batches collects up to BENCH_FLUSH_EVERY requests (or
    whatever arrived within BENCH_FLUSH_INTERVAL_S) and sends them in one zeep call.

Both write each lead's outcome into Redis (a hash per request id) and count finished
leads, so the benchmark can tell when everything is stored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from celery import Celery
from celery_batches import Batches, SimpleRequest

from bench.baselines.soap import LeadResult, ZeepMarketo

#: Prefix of the baselines' Redis keys (outcomes, the finished count, Celery's own).
PREFIX = "bl"
QUEUE_ONE = "bench.one"
QUEUE_BATCH = "bench.batch"
FLUSH_EVERY = int(os.environ.get("BENCH_FLUSH_EVERY", "300"))
FLUSH_INTERVAL_S = float(os.environ.get("BENCH_FLUSH_INTERVAL_S", "1.0"))

app = Celery("bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    broker_transport_options={"global_keyprefix": f"{PREFIX}:celery:"},
    broker_connection_retry_on_startup=True,
    # celery-batches only fills a batch when prefetch x concurrency exceeds flush_every.
    worker_prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH_MULTIPLIER", "4")),
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_hijack_root_logger=False,
)

_marketo: ZeepMarketo | None = None
_redis: redis.Redis | None = None


def marketo() -> ZeepMarketo:
    """The process's zeep client (made after the prefork fork)."""
    global _marketo
    if _marketo is None:
        _marketo = ZeepMarketo(
            os.environ["BENCH_ENDPOINT"], os.environ["BENCH_USER_ID"], os.environ["BENCH_KEY"]
        )
    return _marketo


def store() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _redis


def done_key() -> str:
    return f"{PREFIX}:done"


def write_outcomes(request_ids: Sequence[str], results: Sequence[LeadResult]) -> None:
    """One pipelined round trip: an outcome hash per lead, then the finished count."""
    pipe = store().pipeline(transaction=False)
    for rid, result in zip(request_ids, results, strict=True):
        pipe.hset(
            f"{PREFIX}:out:{rid}",
            mapping={"status": result.status, "lead_id": result.lead_id or 0},
        )
    pipe.incrby(done_key(), len(request_ids))
    pipe.execute()


@app.task(name="bench.sync_one", ignore_result=True)  # type: ignore[untyped-decorator]
def sync_one(request_id: str, lead: Mapping[str, Any]) -> None:
    write_outcomes([request_id], marketo().sync([lead]))


@app.task(  # type: ignore[untyped-decorator]
    name="bench.sync_batch", base=Batches, flush_every=FLUSH_EVERY, flush_interval=FLUSH_INTERVAL_S
)
def sync_batch(requests: Sequence[SimpleRequest]) -> None:
    ids = [r.args[0] for r in requests]
    write_outcomes(ids, marketo().sync([r.args[1] for r in requests]))
