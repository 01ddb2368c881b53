"""The aiohttp app of ``leadsync api``: routes, the error middleware and the server.

Order of checks on a ``/v1`` POST: the key (401, 403, 429), the content type (415), the
size (413), the JSON (400), the shape (422), then the Idempotency-Key and the enqueue.
Redis down or full, or an upsert its replicas did not confirm, answers 503 with
Retry-After; every other failure is a JSON error body, never a stack trace.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import redis.asyncio
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from producers import AsyncLeadProducer, InvalidLead, Outcome, Retryable
from producers.contract import LEAD_FIELDS, RESHARD_TO, SHARDS_FIELD, Lane, check_lane, text
from worker.api import idempotency, request_ids
from worker.api.auth import READ_ALL, KeyStore
from worker.api.errors import ApiError, error_body, error_response, json_response
from worker.connections import redis_client
from worker.obs import metrics
from worker.settings import Settings

logger = logging.getLogger(__name__)

#: Records of one ``POST /v1/leads:batch`` and ids of one ``GET /v1/outcomes``, at most.
MAX_RECORDS: Final = 1000
#: The request line may carry 1000 request ids.
MAX_LINE_BYTES: Final = 64 * 1024

SETTINGS: Final = web.AppKey("settings", Settings)
REDIS: Final = web.AppKey("redis", redis.asyncio.Redis)
PRODUCER: Final = web.AppKey("producer", AsyncLeadProducer)
KEY_STORE: Final = web.AppKey("key_store", KeyStore)

Answer = tuple[int, object]


def outcome_json(outcome: Outcome, asked: str) -> dict[str, object]:
    """The outcome as JSON, under the id the caller ``asked`` for (the tagged one)."""
    return {
        "request_id": asked,
        "status": outcome.status.value,
        "lead_id": outcome.lead_id,
        "error": outcome.error,
        "error_code": outcome.error_code,
        "attempts": outcome.attempts,
        "enqueued_at": outcome.enqueued_at,
        "finished_at": outcome.finished_at,
    }


def lead_errors(exc: InvalidLead) -> dict[str, list[dict[str, str | None]]]:
    return error_body(exc.field, exc.reason)


# --- reading requests ------------------------------------------------------------------


async def json_body(request: web.Request) -> object:
    if request.content_type != "application/json":
        raise ApiError(415, "send the body as Content-Type: application/json", field="Content-Type")
    limit = request.app[SETTINGS].api_max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"the body is larger than {limit} bytes", field="body")
    raw = await request.read()  # client_max_size is the same limit: 413 past it
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: [[[[...
        raise ApiError(400, "the body is not valid JSON", field="body") from None


def _no_constant(name: str) -> object:
    """NaN and Infinity are not JSON (Python's parser takes them unless told)."""
    raise ValueError(f"{name} is not JSON")


def check_lead_fields(body: object, field: str = "body") -> Mapping[str, Any]:
    """The body as upsert keyword arguments; ApiError 422 when it is not an object of
    lead fields (names only in messages, never values)."""
    if not isinstance(body, dict):
        raise ApiError(422, "must be a JSON object of lead fields", field=field)
    for name in body:
        if name not in LEAD_FIELDS:
            raise ApiError(422, "is not a lead field", field=name)
    return body


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated API key: its name and the secret of its request-id tags."""

    name: str
    secret: bytes
    reads_all: bool

    def bind(self, request_id: str) -> str:
        return request_ids.bind(self.secret, request_id)

    def readable(self, value: str) -> str | None:
        """The request id behind ``value`` when this key may read it, else None."""
        return request_ids.unbind(None if self.reads_all else self.secret, value)


async def authorized(request: web.Request, scope: str) -> Caller:
    """The calling API key, or ApiError 401/403/429."""
    header = request.headers.get("Authorization")
    api_key = await request.app[KEY_STORE].authenticate(header, scope, client=request.remote)
    presented = (header or "").partition(" ")[2].strip()  # authenticate checked the form
    return Caller(api_key.name, request_ids.id_secret(presented), READ_ALL in api_key.scopes)


async def idempotent(
    request: web.Request,
    key_name: str,
    serve: Callable[[], Awaitable[Answer]],
    changed: Callable[[Answer], bool] = lambda _answer: True,
) -> Answer:
    header = request.headers.get("Idempotency-Key")
    if header is None:
        return await serve()
    settings = request.app[SETTINGS]
    route = (
        request.match_info.route.resource.canonical if request.match_info.route.resource else "?"
    )
    if "lane" in request.query:
        route += f"?lane={request.query['lane']}"  # another lane is another request
    key = request.app[PRODUCER].keys.api_idempotency(key_name, route, idempotency.check_key(header))
    request_fingerprint = idempotency.fingerprint(request.method, route, await request.read())
    return await idempotency.once(
        request.app[REDIS],
        key,
        request_fingerprint,
        settings.api_idempotency_window_s,
        settings.api_idempotency_wait_s,
        serve,
        changed,
    )


# --- handlers --------------------------------------------------------------------------


def request_lane(request: web.Request) -> Lane:
    """The lane asked for with ``?lane=`` (live when absent)."""
    try:
        return check_lane(request.query.get("lane", "live"))
    except InvalidLead as exc:
        raise ApiError(422, exc.reason, field="lane") from None


async def post_lead(request: web.Request) -> web.Response:
    caller = await authorized(request, "write")
    lane = request_lane(request)
    fields = check_lead_fields(await json_body(request))
    producer = request.app[PRODUCER]

    async def serve() -> Answer:
        try:
            rid = await producer.upsert(lane=lane, **fields)
        except InvalidLead as exc:
            return 422, lead_errors(exc)
        metrics.record_api_upserts(1)
        return 202, {"request_id": caller.bind(rid)}

    status, body = await idempotent(request, caller.name, serve)
    return json_response(body, status)


async def post_batch(request: web.Request) -> web.Response:
    caller = await authorized(request, "write")
    lane = request_lane(request)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ApiError(422, 'must be a JSON object {"records": [...]}', field="body")
    for name in body:
        if name != "records":
            raise ApiError(422, "is not a field of a batch", field=name)
    records = body.get("records")
    if not isinstance(records, list):
        raise ApiError(422, "must be an array of lead upserts", field="records")
    if len(records) > MAX_RECORDS:
        raise ApiError(413, f"at most {MAX_RECORDS} records per batch", field="records")
    app = request.app

    async def serve() -> Answer:
        return 200, {"results": await enqueue_batch(app, records, caller, lane)}

    status, answer = await idempotent(request, caller.name, serve, changed=_wrote_any)
    return json_response(answer, status)


def _wrote_any(answer: Answer) -> bool:
    """A batch answer that enqueued at least one record (one that refused every record
    is not kept under its Idempotency-Key)."""
    body = answer[1]
    results = body.get("results") if isinstance(body, dict) else None
    return isinstance(results, list) and any(
        isinstance(item, dict) and "request_id" in item for item in results
    )


async def enqueue_batch(
    app: web.Application, records: Sequence[object], caller: Caller, lane: Lane = "live"
) -> list[object]:
    """The producer's atomic batch (every valid record or none); a result per record in
    input order."""
    results = await app[PRODUCER].upsert_batch(records, lane=lane)
    written = sum(1 for item in results if not isinstance(item, InvalidLead))
    if written:
        metrics.record_api_upserts(written)
    return [
        lead_errors(item) if isinstance(item, InvalidLead) else {"request_id": caller.bind(item)}
        for item in results
    ]


async def get_lead(request: web.Request) -> web.Response:
    caller = await authorized(request, "read")
    asked = request.match_info["request_id"]
    rid = caller.readable(asked)
    # Another key's id is answered like an unknown one: existence is never revealed.
    outcome = None if rid is None else await request.app[PRODUCER].outcome(rid)
    if outcome is None:
        raise ApiError(
            404,
            "no such request (malformed, unknown, another API key's, or its outcome expired)",
            field="request_id",
        )
    return json_response(outcome_json(outcome, asked))


async def get_outcomes(request: web.Request) -> web.Response:
    caller = await authorized(request, "read")
    raw = request.query.get("ids", "")
    ids = [part.strip() for part in raw.split(",") if part.strip()]
    if not ids:
        raise ApiError(422, "give one or more request ids: ?ids=ID1,ID2", field="ids")
    if len(ids) > MAX_RECORDS:
        raise ApiError(413, f"at most {MAX_RECORDS} ids per request", field="ids")
    readable = [caller.readable(asked) for asked in ids]
    looked_up = [rid for rid in readable if rid is not None]
    found = iter(await request.app[PRODUCER].outcomes(looked_up) if looked_up else ())
    outcomes = [None if rid is None else next(found) for rid in readable]
    return json_response(
        {
            "outcomes": [
                None if outcome is None else outcome_json(outcome, asked)
                for asked, outcome in zip(ids, outcomes, strict=True)
            ]
        }
    )


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when Redis answers. The shard count is the stored one whatever
    LEADSYNC_SHARDS says (the producer follows ``leadsync reshard`` on its own), so a
    reshard, or a pod started with another count, never takes the API out of service;
    the body says which count is in force and whether a reshard is under way."""
    app = request.app
    producer = app[PRODUCER]
    try:
        pipe = app[REDIS].pipeline(transaction=False)
        pipe.hget(producer.keys.config(), SHARDS_FIELD)
        pipe.hget(producer.keys.reshard(), RESHARD_TO)
        stored, target = await pipe.execute()
        agreed = int(text(stored)) if stored is not None else await producer.shards()
    except (redis.RedisError, OSError, ValueError):
        return json_response(error_body(None, "Redis does not answer"), 503)
    body: dict[str, object] = {"status": "ready", "shards": agreed}
    if target is not None:
        body["resharding_to"] = int(text(target))
    if agreed != app[SETTINGS].shards:
        body["note"] = f"LEADSYNC_SHARDS is {app[SETTINGS].shards}; the stored count is in force"
    return json_response(body)


def openapi_document() -> bytes:
    return resources.files("worker.api").joinpath("openapi.json").read_bytes()


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=openapi_document(), content_type="application/json")


async def metrics_page(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(metrics.serving_registry()),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


# --- the middleware --------------------------------------------------------------------


def route_label(request: web.Request) -> str:
    """The route template (never the path: it would carry request ids)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error_response(exc)
    except Retryable as exc:  # not replicated in time (or, later, backpressure)
        logger.warning("enqueue refused for now: %s", exc)
        response = error_response(
            ApiError(503, str(exc), headers={"Retry-After": str(math.ceil(exc.retry_after_s))})
        )
    except web.HTTPException as exc:  # the router's 404/405, aiohttp's 413
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        message = {
            404: "no such route",
            405: f"method {request.method} is not allowed here",
            413: f"the body is larger than {request.app[SETTINGS].api_max_body_bytes} bytes",
        }.get(exc.status, exc.reason)
        field = "body" if exc.status == 413 else None
        response = error_response(ApiError(exc.status, message, field=field, headers=headers))
    except (redis.RedisError, OSError) as exc:
        # The class only: a Redis message may echo a command, and a command carries leads.
        logger.warning("Redis refused or is unreachable (%s)", type(exc).__name__)
        full = isinstance(exc, redis.exceptions.OutOfMemoryError) or (
            isinstance(exc, redis.ResponseError) and "maxmemory" in str(exc)
        )
        response = error_response(
            ApiError(
                503,
                "Redis is full; retry later" if full else "Redis is unavailable; retry later",
                headers={"Retry-After": str(request.app[SETTINGS].api_retry_after_s)},
            )
        )
    except Exception:
        logger.exception("unexpected error on %s %s", request.method, route_label(request))
        response = error_response(ApiError(500, "internal error"))
    metrics.record_api_request(
        route_label(request), request.method, response.status, time.perf_counter() - started
    )
    return response


# --- the app and the server ------------------------------------------------------------


def make_app(settings: Settings) -> web.Application:
    """The app; its Redis client and producer are made on startup and closed on cleanup."""
    app = web.Application(
        middlewares=[errors_middleware], client_max_size=settings.api_max_body_bytes
    )
    app[SETTINGS] = settings
    app.router.add_post("/v1/leads", post_lead)
    app.router.add_post("/v1/leads:batch", post_batch)
    app.router.add_get("/v1/leads/{request_id}", get_lead, allow_head=False)
    app.router.add_get("/v1/outcomes", get_outcomes, allow_head=False)
    app.router.add_get("/v1/openapi.json", openapi, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/metrics", metrics_page, allow_head=False)
    app.cleanup_ctx.append(_resources)
    return app


async def _resources(app: web.Application) -> Any:
    settings = app[SETTINGS]
    client = redis_client(settings)
    app[REDIS] = client
    app[PRODUCER] = AsyncLeadProducer(
        client,
        key_prefix=settings.key_prefix,
        shards=settings.shards,
        known_fields=settings.known_field_names or None,  # none set: the learned fields
        config=settings.producer_config(),
    )
    app[KEY_STORE] = KeyStore.for_settings(client, settings)
    yield
    await client.aclose()


#: Access log lines: method, route path, status and time; never a header (the key).
ACCESS_LOG_FORMAT: Final = '%a "%r" %s %b %Tfs'


async def start(settings: Settings, host: str, port: int) -> web.AppRunner:
    """Serve the app on host:port until ``await runner.cleanup()``."""
    runner = web.AppRunner(
        make_app(settings),
        access_log_format=ACCESS_LOG_FORMAT,
        max_line_size=MAX_LINE_BYTES,
        handle_signals=False,
    )
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
