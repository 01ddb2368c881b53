"""SoapApi: the MarketoApi over SOAP. One signed syncMultipleLeads exchange = codec +
transport.

Each call builds a fresh AuthenticationHeader (a header is never reused, so a
retry after 20016 carries a new timestamp and signature)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from pydantic import SecretStr

from producers.contract import LeadUpsert
from worker.errors import ConfigError
from worker.marketo.base import SyncResult
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

    async def ready(self) -> None:
        """Nothing: a SOAP call is signed when it is built."""

    async def sync(self, leads: Sequence[LeadUpsert], *, dedup: bool) -> list[SyncResult]:
        """One attempt: sign, build, POST, parse. Raises the MarketoError tree."""
        auth = make_auth_header(self.user_id, self._encryption_key.get_secret_value(), self._now())
        body = build_sync_multiple_leads(leads, auth=auth, dedup=dedup)
        reply = await self.transport.post(self.endpoint, body, REQUEST_HEADERS)
        return parse_sync_response(
            reply.body,
            http_status=reply.status,
            expected_count=len(leads),
            content_type=reply.content_type,
            max_bytes=self.max_response_bytes,
        )
