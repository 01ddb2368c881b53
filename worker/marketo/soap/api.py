"""SoapApi: the MarketoApi over SOAP. One signed syncMultipleLeads exchange = codec +
transport.

Each send builds a fresh AuthenticationHeader (a header is never reused, so a
retry after 20016 carries a new timestamp and signature)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from pydantic import SecretStr

from producers.contract import LeadUpsert
from worker.errors import ConfigError
from worker.marketo.base import Fence, PreparedCall, SyncResult, no_fence, sync_once
from worker.marketo.soap.envelope import REQUEST_HEADERS, build_sync_multiple_leads
from worker.marketo.soap.response import parse_sync_response
from worker.marketo.soap.signing import make_auth_header
from worker.transport import Transport


class SoapApi:
    """Sends one batch of leads and returns one SyncResult per lead, in order."""

    def __init__(
        self,
        transport: Transport,
        *,
        endpoint: str,
        user_id: str,
        encryption_key: SecretStr,
        max_response_bytes: int,
        now: Callable[[], datetime | None] = lambda: None,
    ) -> None:
        if not user_id:
            raise ConfigError("LEADSYNC_MARKETO_USER_ID is not set")
        if not encryption_key.get_secret_value():
            raise ConfigError("LEADSYNC_MARKETO_ENCRYPTION_KEY is not set")
        self.transport = transport
        self.endpoint = endpoint
        self.user_id = user_id
        self._encryption_key = encryption_key
        self.max_response_bytes = max_response_bytes
        self._now = now

    def prepare(self, leads: Sequence[LeadUpsert], *, dedup: bool) -> PreparedCall:
        """The leads as they go; the envelope is built at the send, with its signature."""
        return PreparedCall.carrying_all(leads, dedup)

    async def ready(self) -> str:
        """Nothing: a SOAP call is signed when it is sent."""
        return ""

    async def send(
        self, call: PreparedCall, *, credential: str = "", fence: Fence = no_fence
    ) -> list[SyncResult]:
        """One attempt: sign, build, check the fence, POST, parse. Raises the MarketoError tree."""
        auth = make_auth_header(self.user_id, self._encryption_key.get_secret_value(), self._now())
        body = build_sync_multiple_leads(call.leads, auth=auth, dedup=call.dedup)
        fence()
        reply = await self.transport.post(self.endpoint, body, REQUEST_HEADERS)
        return parse_sync_response(
            reply.body,
            http_status=reply.status,
            expected_count=len(call.leads),
            content_type=reply.content_type,
            max_bytes=self.max_response_bytes,
            request_written=reply.request_written,
        )

    async def sync(self, leads: Sequence[LeadUpsert], *, dedup: bool) -> list[SyncResult]:
        """One unguarded attempt (prepare, ready, send)."""
        return await sync_once(self, leads, dedup=dedup)
