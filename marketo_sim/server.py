"""The aiohttp application: SOAP endpoint, ?WSDL, REST (see ``rest_app``), the JSON admin API.

Routes:
    POST /soap/mktows/{version}        syncMultipleLeads, describeMObject (LeadRecord) (any
                                       version, e.g. 2_2; the operation is the Body's element)
    GET  /soap/mktows/{version}?WSDL   the 2_2 WSDL, its soap:address pointing here
    GET|POST /identity/oauth/token, POST /rest/v1/leads.json, GET /rest/v1/leads/describe2.json
    GET  /admin/calls | /admin/summary | /admin/leads | /admin/config
    POST /admin/config (JSON patch of SimConfig fields) | /admin/reset
    POST /admin/token/expire           the current REST token expires now (next use: 602)

Every reply but the admin API's goes through ``wire.middleware`` (``reply_chunk_bytes``: the
body in pieces); ``gateway_504`` calls are applied later by ``gateway.Gateway``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Final
from xml.sax.saxutils import quoteattr

from aiohttp import web

from marketo_sim.auth import check_auth
from marketo_sim.calllog import CallLog, CallRecord
from marketo_sim.config import STANDARD_LEAD_FIELDS, SimConfig
from marketo_sim.faults import pick_fault, sample_latency_s
from marketo_sim.fields import lead_record_fields
from marketo_sim.gateway import Gateway
from marketo_sim.http_body import read_limited
from marketo_sim.identity import TokenIssuer
from marketo_sim.limits import Limits
from marketo_sim.rest_app import RestApi, add_routes
from marketo_sim.soap import (
    CONTENT_TYPE,
    HTML_502,
    OPERATIONS,
    DescribeRequest,
    SimFault,
    SyncRequest,
    SyncStatus,
    parse_operation_bytes,
    render_describe,
    render_doctype_bomb,
    render_fault,
    render_success,
    render_truncated,
)
from marketo_sim.state import LeadDatabase
from marketo_sim.wire import middleware as wire_middleware

logger = logging.getLogger(__name__)

SOAP_PATH: Final = "/soap/mktows/{version:[0-9]+_[0-9]+}"
SOAP_ACTION: Final = OPERATIONS["paramsSyncMultipleLeads"]
DESCRIBE_ACTION: Final = OPERATIONS["paramsDescribeMObject"]
#: The one MObject the simulator describes (Marketo also describes ActivityRecord,
#: Opportunity and OpportunityPersonRole; any other objectName is a bad parameter here).
DESCRIBED_OBJECT: Final = "LeadRecord"
_WSDL_ADDRESS: Final = '<soap:address location="https://na-aba.marketo.com/soap/mktows/2_2" />'


def load_wsdl() -> str:
    """The packaged 2_2 WSDL, verbatim."""
    return resources.files("marketo_sim").joinpath("mktows.wsdl").read_text(encoding="utf-8")


class Simulator:
    """One simulated Marketo instance: config, lead database, limits and call log."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._closing = asyncio.Event()
        # Tokens outlive /admin/reset (a client holding one keeps it); their counters do not.
        self.identity = TokenIssuer()
        # Calls answered 504 by the gateway that are still to be applied (their own tasks).
        self.gateway = Gateway(self.sleep)
        self.reset()

    def reset(self) -> None:
        """Forget every lead, call and limit counter; keep the configuration. Pending
        gateway-504 applies must be cancelled first (see :meth:`reset_now`)."""
        self.db = LeadDatabase(self.config.first_lead_id)
        self.limits = Limits()
        self.log = CallLog()
        self.rng = random.Random(self.config.seed)
        self.identity.reset_counters()

    def configure(self, patch: dict[str, Any]) -> None:
        self.config = self.config.patched(patch)
        if "seed" in patch:
            self.rng = random.Random(self.config.seed)

    async def reset_now(self) -> None:
        """Cancel the pending gateway-504 applies, then :meth:`reset` (POST /admin/reset)."""
        pending = self.gateway.cancel_all()
        self.reset()
        await pending

    def close(self) -> None:
        """Release calls that are hanging on purpose (server shutdown)."""
        self._closing.set()

    async def shut_down(self) -> None:
        """Cancel the pending gateway-504 applies and release hanging calls (app shutdown)."""
        pending = self.gateway.cancel_all()
        self.close()
        await pending

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)

    # --- SOAP ----------------------------------------------------------------------

    async def handle_soap(self, request: web.Request) -> web.Response:
        call = self.log.start(time.time(), "soap")
        try:
            response = await self._serve(request, call)
        except SimFault as fault:
            call.outcome, call.fault_code = "fault", fault.code
            response = _xml(render_fault(fault), status=500)
        finally:
            if not self.gateway.holds(call):  # a gateway-504 call ends once it is applied
                self.log.finish(call, time.time())
        return response

    async def _serve(self, request: web.Request, call: CallRecord) -> web.Response:
        config = self.config
        if request.content_type != "text/xml":
            call.outcome = "rejected"
            return web.Response(status=415, text="SOAP 1.1 requests must be sent as text/xml\n")
        body = await read_limited(request, config.max_payload_bytes)
        if body is None:
            call.outcome = "rejected"
            return web.Response(status=413, text="Request entity too large\n")
        injected = pick_fault(config, self.rng)
        latency_s = sample_latency_s(config, self.rng)
        if injected == "http_502":
            await self.sleep(latency_s)
            call.outcome = "http_502"
            return web.Response(status=502, body=HTML_502, content_type="text/html")

        action = request.headers.get("SOAPAction", "").strip().strip('"')
        if action and action not in OPERATIONS.values():
            raise SimFault(
                20019,
                "Unsupported Operation: SOAPAction is not syncMultipleLeads or describeMObject",
            )
        operation = parse_operation_bytes(body, unknown_elements=config.unknown_elements)
        if isinstance(operation, DescribeRequest):
            call.operation = "describe"
            if action and action != DESCRIBE_ACTION:
                raise SimFault(20019, "Unsupported Operation: SOAPAction does not match the Body")
            return await self._describe(operation, call, config, injected, latency_s)
        if action and action != SOAP_ACTION:
            raise SimFault(20019, "Unsupported Operation: SOAPAction does not match the Body")
        sync = operation
        self.log.set_keys(call, tuple(r.key for r in sync.records if r.key is not None))
        check_auth(sync.auth, config, datetime.now(UTC))
        raise_injected_fault(injected)

        limits = self.limits
        limits.admit(config, monotonic_s=time.monotonic(), epoch_s=time.time())
        held = False
        try:
            latency_s += self._check(sync, config)
            if injected == "gateway_504":
                # Marketo takes the call; the gateway gives up on it at once.
                response = self.gateway.hold(
                    call,
                    log=self.log,
                    limits=limits,
                    delay_s=config.gateway_apply_delay_s,
                    apply=lambda: self._apply(sync, call, config),
                )
                held = True
                return response
            return await self._sync(sync, call, config, latency_s, injected)
        finally:
            if not held:
                limits.release()

    async def _describe(
        self,
        describe: DescribeRequest,
        call: CallRecord,
        config: SimConfig,
        injected: str | None,
        latency_s: float,
    ) -> web.Response:
        """describeMObject, signed and counted like any call: the fields syncMultipleLeads
        accepts (``known_fields``, by SOAP name) and the read-only Id."""
        check_auth(describe.auth, config, datetime.now(UTC))
        raise_injected_fault(injected)
        limits = self.limits
        limits.admit(config, monotonic_s=time.monotonic(), epoch_s=time.time())
        held = False
        try:
            if describe.object_name != DESCRIBED_OBJECT:
                raise SimFault(
                    20110,
                    f"Bad Parameter: objectName {describe.object_name[:40]!r} "
                    f"(the simulator describes {DESCRIBED_OBJECT} only)",
                )
            if injected == "gateway_504":  # nothing to apply; the slot is held as long
                response = self.gateway.hold(
                    call,
                    log=self.log,
                    limits=limits,
                    delay_s=config.gateway_apply_delay_s,
                    apply=lambda: None,
                )
                held = True
                return response
            await self.sleep(latency_s)
            fields = lead_record_fields(config.known_fields, STANDARD_LEAD_FIELDS)
            whole = render_describe(DESCRIBED_OBJECT, fields, description="Lead record")
            call.outcome = "ok"
            if injected == "truncated":
                call.outcome = "truncated"
                return _xml(whole[: len(whole) * 2 // 3])
            if injected == "doctype":
                call.outcome = "doctype"
                return _xml(render_doctype_bomb())
            if injected == "hang":
                call.outcome = "hang"
                await self.sleep(config.hang_s)
            return _xml(whole)
        finally:
            if not held:
                limits.release()

    def _check(self, sync: SyncRequest, config: SimConfig) -> float:
        """Refuse a call Marketo refuses as a whole; return its extra latency (oversize)."""
        unknown = sorted({a.name for r in sync.records for a in r.attributes} - config.known_fields)
        if unknown:
            raise SimFault(20105, unknown_fields_message(unknown, config.unknown_field_quotes))
        if config.max_value_chars and any(
            len(a.value) > config.max_value_chars for r in sync.records for a in r.attributes
        ):
            # The simulator's own rule (max_value_chars): the fault names no field or record.
            raise SimFault(
                20110,
                f"Bad Parameter: a lead attribute value is longer than {config.max_value_chars} characters",
            )
        if len(sync.records) > config.max_records:
            if config.oversize_mode == "fault":
                raise SimFault(
                    20017, f"Invalid Request: more than {config.max_records} lead records"
                )
            return config.oversize_delay_s
        return 0.0

    def _apply(self, sync: SyncRequest, call: CallRecord, config: SimConfig) -> list[SyncStatus]:
        """Apply the records to the lead database; tally their statuses on ``call``."""
        dedup = config.default_dedup if sync.dedup is None else sync.dedup
        now = time.time()
        statuses: list[SyncStatus] = [
            self.db.sync(
                record,
                dedup=dedup,
                call_id=call.call_id,
                now=now,
                reject_domains=config.reject_email_domains,
            )
            for record in sync.records
        ]
        call.tally(status.status for status in statuses)
        return statuses

    async def _sync(
        self,
        sync: SyncRequest,
        call: CallRecord,
        config: SimConfig,
        latency_s: float,
        injected: str | None,
    ) -> web.Response:
        await self.sleep(latency_s)
        statuses = self._apply(sync, call, config)
        call.outcome = "ok"
        if injected == "truncated":
            call.outcome = "truncated"
            return _xml(render_truncated(statuses))
        if injected == "doctype":
            call.outcome = "doctype"
            return _xml(render_doctype_bomb())
        if injected == "hang":
            call.outcome = "hang"
            await self.sleep(config.hang_s)
        return _xml(render_success(statuses))

    async def handle_wsdl(self, request: web.Request) -> web.Response:
        if not any(key.lower() == "wsdl" for key in request.query):
            return web.Response(
                status=405, text="POST SOAP requests here; GET ?WSDL for the WSDL\n"
            )
        own_url = f"{request.scheme}://{request.host}/soap/mktows/{request.match_info['version']}"
        wsdl = load_wsdl().replace(_WSDL_ADDRESS, f"<soap:address location={quoteattr(own_url)} />")
        return web.Response(text=wsdl, content_type="text/xml", charset="UTF-8")

    # --- admin ---------------------------------------------------------------------

    async def admin_calls(self, request: web.Request) -> web.Response:
        return web.json_response({"calls": [c.to_json() for c in self.log.calls]})

    async def admin_summary(self, request: web.Request) -> web.Response:
        summary = self.log.summary(self.config.rate_window_s)
        summary["leads_in_database"] = len(self.db.leads)
        summary["identity"] = self.identity.to_json()
        return web.json_response(summary)

    async def admin_leads(self, request: web.Request) -> web.Response:
        return web.json_response({"leads": self.db.to_json()})

    async def admin_get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.config.to_json())

    async def admin_set_config(self, request: web.Request) -> web.Response:
        try:
            patch = await request.json()
        except json.JSONDecodeError:
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        if not isinstance(patch, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        try:
            self.configure(patch)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        logger.info("simulator config patched: %s", ", ".join(sorted(patch)))
        return web.json_response(self.config.to_json())

    async def admin_expire_token(self, request: web.Request) -> web.Response:
        return web.json_response({"expired": self.identity.expire_now(time.monotonic())})

    async def admin_reset(self, request: web.Request) -> web.Response:
        await self.reset_now()
        return web.json_response({"reset": True})


#: Injected faults that are SOAP faults with the code their name ends in.
INJECTED_SOAP_FAULTS: Final = (
    "internal_10001",
    "internal_20011",
    "rate_20023",
    "concurrency_20024",
)


#: The quote each ``unknown_field_quotes`` setting puts around a name in 20105's text.
_QUOTES: Final = {"none": "", "single": "'", "double": '"'}


def unknown_fields_message(names: list[str], quotes: str = "none") -> str:
    """20105's text for ``names``: Marketo's ``... unknown fields for import: A, B``, each
    name between quotes when ``quotes`` is "single" or "double".

    >>> unknown_fields_message(["Pants", "Shoe"], "single")
    "syncMultipleLeads operation failed: unknown fields for import: 'Pants', 'Shoe'"
    """
    quote = _QUOTES[quotes]
    listed = ", ".join(f"{quote}{name}{quote}" for name in names)
    return f"syncMultipleLeads operation failed: unknown fields for import: {listed}"


def raise_injected_fault(injected: str | None) -> None:
    """Raise the SOAP fault an injected fault kind stands for (other kinds are served)."""
    if injected in INJECTED_SOAP_FAULTS:
        raise SimFault(int(injected.rsplit("_", 1)[1]), "Injected fault")


def _xml(body: bytes, *, status: int = 200) -> web.Response:
    return web.Response(status=status, body=body, headers={"Content-Type": CONTENT_TYPE})


SIMULATOR_KEY: Final = web.AppKey("simulator", Simulator)


def create_app(config: SimConfig | None = None) -> web.Application:
    """The simulator as an aiohttp application; ``app[SIMULATOR_KEY]`` is its state."""
    sim = Simulator(config or SimConfig())
    app = web.Application(middlewares=[wire_middleware(sim)])
    app[SIMULATOR_KEY] = sim
    app.router.add_post(SOAP_PATH, sim.handle_soap)
    app.router.add_get(SOAP_PATH, sim.handle_wsdl)
    app.router.add_get("/admin/calls", sim.admin_calls)
    app.router.add_get("/admin/summary", sim.admin_summary)
    app.router.add_get("/admin/leads", sim.admin_leads)
    app.router.add_get("/admin/config", sim.admin_get_config)
    app.router.add_post("/admin/config", sim.admin_set_config)
    app.router.add_post("/admin/reset", sim.admin_reset)
    app.router.add_post("/admin/token/expire", sim.admin_expire_token)
    add_routes(app, RestApi(sim))

    async def _on_shutdown(_: web.Application) -> None:
        await sim.shut_down()

    app.on_shutdown.append(_on_shutdown)
    return app


def run(host: str = "127.0.0.1", port: int = 8765, config: SimConfig | None = None) -> None:
    """Serve the simulator until interrupted (``leadsync sim`` and ``python -m marketo_sim``)."""
    base = f"http://{host}:{port}"
    logger.info(
        "Marketo simulator: SOAP %s/soap/mktows/2_2, REST base URL %s (%s/rest/v1/leads.json, "
        "identity %s/identity/oauth/token), admin %s/admin/summary",
        base,
        base,
        base,
        base,
        base,
    )
    web.run_app(create_app(config), host=host, port=port, print=None, shutdown_timeout=2.0)
