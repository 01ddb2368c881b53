"""The REST half of the simulator: identity, Sync Leads and describe2 over aiohttp.

Routes (beside SOAP, on the same port and the same instance: leads, limits, call log):
    GET|POST /identity/oauth/token     client_credentials; client_id/client_secret in the
                                       query or a form body
    POST     /rest/v1/leads.json       Sync Leads (other methods: 605)
    GET      /rest/v1/leads/describe2.json
    *        /rest/...                 610 Requested resource not found

Order of checks on an API call (each refusal answers at once):
413 body over ``rest_max_payload_bytes`` (HTTP level) > injected 502 page (a gateway: not
authenticated, not counted) > bearer token 601/602 > method 605 > injected 604/608/611 (not
counted, as documented) > injected 606/615 > limits 607/606/615 (refusals not counted) >
counted from here: injected 713 > content type 612 > JSON 609 > request 1001-1011 >
injected gateway 504 (HTTP 504 at once; applied ``gateway_apply_delay_s`` later) > records.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from marketo_sim.calllog import CallRecord
from marketo_sim.config import REST_FAULT_KINDS, SimConfig
from marketo_sim.faults import pick_fault, sample_latency_s
from marketo_sim.fields import catalog
from marketo_sim.http_body import read_limited
from marketo_sim.limits import Limits
from marketo_sim.rest import (
    CONTENT_TYPE,
    HTML_413,
    RestError,
    SyncLeadsRequest,
    limit_error,
    parse_sync_leads,
    render_error,
    render_success,
    render_truncated,
    request_id,
)
from marketo_sim.rest_leads import RestSync, record_key, sync_record
from marketo_sim.soap import HTML_502

if TYPE_CHECKING:
    from marketo_sim.server import Simulator

LEADS_PATH: Final = "/rest/v1/leads.json"
DESCRIBE2_PATH: Final = "/rest/v1/leads/describe2.json"
IDENTITY_PATH: Final = "/identity/oauth/token"
_NOT_COUNTED: Final = {"timeout_604": 604, "unavailable_608": 608, "system_611": 611}
#: The query form of the token was removed on 2026-08-31; what Marketo answers a request that
#: still uses it is unknown (research §1). It carries no token then: 601, as for no token,
#: with the text of Adobe's documented 601 example.
MISSING_AUTH_TEXT: Final = "Unauthorized"


@dataclass(frozen=True, slots=True)
class _Sync:
    """A Sync Leads call read and checked, ready to apply."""

    parsed: SyncLeadsRequest
    context: RestSync
    extra_s: float  # added latency (more records than max_records, oversize_mode "slow")


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, headers={"Content-Type": CONTENT_TYPE})


class RestApi:
    """Request handlers bound to one Simulator (its config, database, limits and log)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    # --- identity --------------------------------------------------------------------

    async def identity(self, request: web.Request) -> web.Response:
        sim, config = self.sim, self.sim.config
        params: dict[str, list[str]] = {}
        for name, value in request.query.items():
            params.setdefault(name, []).append(value)
        if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
            for name, field in (await request.post()).items():
                params.setdefault(name, []).append(str(field))
        # Identity calls "are not counted towards API call limit" (swagger-identity); whether
        # they take one of the 10 concurrent slots is unknown: they do not here, as Marketo
        # documents no way for the identity endpoint to refuse with 615.
        zero = config.token_expires_in_zero_once
        answer = sim.identity.grant(
            params,
            client_id=config.client_id,
            client_secret=config.client_secret,
            lifetime_s=config.token_lifetime_s,
            scope=config.token_scope,
            now=time.monotonic(),
            expires_in_zero=zero,
        )
        if zero and answer.status == 200:
            sim.config = sim.config.patched({"token_expires_in_zero_once": False})
        return _json(json.dumps(answer.body).encode(), status=answer.status)

    # --- API calls -------------------------------------------------------------------

    async def leads(self, request: web.Request) -> web.Response:
        return await self._call(request, "sync")

    async def describe2(self, request: web.Request) -> web.Response:
        return await self._call(request, "describe")

    async def not_found(self, request: web.Request) -> web.Response:
        return await self._call(request, "unknown")

    async def _call(self, request: web.Request, operation: str) -> web.Response:
        log = self.sim.log
        call = log.start(time.time(), "rest", operation)
        rid = request_id(call.call_id, call.start_s)
        try:
            response = await self._serve(request, call, rid)
        except RestError as error:
            call.outcome, call.fault_code = "fault", error.code
            response = _json(render_error(rid, error))
        finally:
            if not self.sim.gateway.holds(call):  # a gateway-504 call ends once it is applied
                log.finish(call, time.time())
        return response

    def _authenticate(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        if "access_token" in request.query or scheme.lower() != "bearer" or not token.strip():
            raise RestError(601, MISSING_AUTH_TEXT)
        verdict = self.sim.identity.check(token.strip(), time.monotonic())
        if verdict == "expired":
            raise RestError(602)
        if verdict == "invalid":
            raise RestError(601)

    async def _serve(self, request: web.Request, call: CallRecord, rid: str) -> web.Response:
        sim, config = self.sim, self.sim.config
        body = await read_limited(request, config.rest_max_payload_bytes)
        if body is None:
            call.outcome = "rejected"
            return web.Response(status=413, body=HTML_413, content_type="text/html")
        injected = pick_fault(config, sim.rng, REST_FAULT_KINDS)
        latency_s = sample_latency_s(config, sim.rng)
        if injected == "http_502":
            await sim.sleep(latency_s)
            call.outcome = "http_502"
            return web.Response(status=502, body=HTML_502, content_type="text/html")
        self._authenticate(request)
        allowed = {"sync": "POST", "describe": "GET"}.get(call.operation)
        if allowed is None:
            raise RestError(610)
        if request.method != allowed:
            raise RestError(605)
        if injected in _NOT_COUNTED:
            await sim.sleep(latency_s)
            raise RestError(_NOT_COUNTED[injected])
        refusal = {"rate_606": "rate", "concurrency_615": "concurrency"}.get(injected or "")
        refusal = refusal or sim.limits.refusal(
            config, monotonic_s=time.monotonic(), epoch_s=time.time()
        )
        if refusal is not None:
            raise limit_error(
                refusal,
                calls=config.rate_limit_calls,
                window_s=config.rate_window_s,
                concurrent=config.max_concurrent,
            )
        limits = sim.limits
        limits.count_in(time.monotonic())
        held = False
        try:
            if injected == "transient_713":
                await sim.sleep(latency_s)
                raise RestError(713)
            if call.operation == "describe":
                if injected == "gateway_504":  # nothing to apply; the slot is held as long
                    response = self._gateway_504(call, config, limits, lambda: None)
                    held = True
                    return response
                await sim.sleep(latency_s)
                describe = catalog(config.known_fields, config.rest_dedupe_fields).describe2()
                return await self._answer(call, render_success(rid, [describe]), injected)
            sync = self._check(request, body, call, config)
            if injected == "gateway_504":
                # Marketo takes the call; the gateway gives up on it at once.
                response = self._gateway_504(call, config, limits, lambda: self._apply(sync, call))
                held = True
                return response
            return await self._sync(sync, call, rid, latency_s, injected)
        finally:
            if not held:
                limits.release()

    def _gateway_504(
        self, call: CallRecord, config: SimConfig, limits: Limits, apply: Callable[[], object]
    ) -> web.Response:
        """Hand the admitted call (its slot in ``limits``, its log record) to the gateway's
        background apply; the client gets the 504 page now."""
        sim = self.sim
        return sim.gateway.hold(
            call, log=sim.log, limits=limits, delay_s=config.gateway_apply_delay_s, apply=apply
        )

    def _check(
        self, request: web.Request, body: bytes, call: CallRecord, config: SimConfig
    ) -> _Sync:
        """Read a Sync Leads call (refusing it as a whole with RestError), note its keys."""
        sim = self.sim
        # "all JSON strings must use UTF-8 encoding" (leads.md): another charset is refused too.
        charset = (request.charset or "utf-8").lower()
        if request.content_type != "application/json" or charset not in ("utf-8", "utf8"):
            raise RestError(612)
        fields = catalog(config.known_fields, config.rest_dedupe_fields)
        parsed = parse_sync_leads(
            body,
            lookup_fields=fields.lookup_fields,
            max_records=config.max_records,
            oversize_error=config.oversize_mode == "fault",
            unknown_params="error" if config.unknown_elements == "fault" else "ignore",
        )
        keys = (record_key(r, parsed.lookup_field) for r in parsed.records)
        sim.log.set_keys(call, tuple(k for k in keys if k is not None))
        extra_s = config.oversize_delay_s if len(parsed.records) > config.max_records else 0.0
        context = RestSync(parsed, fields, config.reject_email_domains, config.rest_partitions)
        return _Sync(parsed, context, extra_s)

    def _apply(self, sync: _Sync, call: CallRecord) -> list[dict[str, Any]]:
        """Apply the records to the lead database; tally their statuses on ``call``."""
        now = time.time()
        results = [
            sync_record(self.sim.db, sync.context, record, call_id=call.call_id, now=now)
            for record in sync.parsed.records
        ]
        call.tally(result.status for result in results)
        return [result.to_json() for result in results]

    async def _sync(
        self, sync: _Sync, call: CallRecord, rid: str, latency_s: float, injected: str | None
    ) -> web.Response:
        await self.sim.sleep(latency_s + sync.extra_s)
        whole = render_success(rid, self._apply(sync, call))
        return await self._answer(call, whole, injected)

    async def _answer(self, call: CallRecord, whole: bytes, injected: str | None) -> web.Response:
        """A success answer, as sent or as an injected fault spoils it (the work is done)."""
        call.outcome = "ok"
        if injected == "truncated":
            call.outcome = "truncated"
            return _json(render_truncated(whole))
        if injected == "hang":
            call.outcome = "hang"
            await self.sim.sleep(self.sim.config.hang_s)
        return _json(whole)


def add_routes(app: web.Application, api: RestApi) -> None:
    app.router.add_get(IDENTITY_PATH, api.identity)
    app.router.add_post(IDENTITY_PATH, api.identity)
    app.router.add_route("*", LEADS_PATH, api.leads)
    app.router.add_route("*", DESCRIBE2_PATH, api.describe2)
    app.router.add_route("*", "/rest/{tail:.*}", api.not_found)
