"""A zeep client for ``syncMultipleLeads``: the WSDL the simulator serves, the endpoint
overridden, every call signed with a fresh header (worker.marketo.soap.signing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import zeep
from zeep.transports import Transport

from worker.marketo.soap.signing import make_auth_header

WSDL_PATH = Path(__file__).resolve().parents[2] / "marketo_sim" / "mktows.wsdl"
BINDING = "{http://www.marketo.com/mktows/}MktowsApiSoapBinding"


@dataclass(frozen=True, slots=True)
class LeadResult:
    """One syncStatus row: the lead id and CREATED / UPDATED / FAILED."""

    lead_id: int | None
    status: str
    error: str | None


class ZeepMarketo:
    """One zeep client per process (WSDL parsed once, one HTTP session)."""

    def __init__(self, endpoint: str, user_id: str, encryption_key: str, timeout_s: float = 60):
        session = requests.Session()
        transport = Transport(session=session, timeout=timeout_s)  # type: ignore[no-untyped-call]
        self._client = zeep.Client(str(WSDL_PATH), transport=transport)  # type: ignore[no-untyped-call]
        self._service = self._client.create_service(BINDING, endpoint)  # type: ignore[no-untyped-call]
        self._header = self._client.get_element("ns0:AuthenticationHeader")  # type: ignore[no-untyped-call]
        self._user_id = user_id
        self._key = encryption_key

    def sync(self, leads: Sequence[Mapping[str, Any]]) -> list[LeadResult]:
        """One signed call for ``leads`` (each ``{"email": ..., "attributes": {...}}``)."""
        auth = make_auth_header(self._user_id, self._key)
        header = self._header(
            mktowsUserId=auth.user_id,
            requestSignature=auth.signature,
            requestTimestamp=auth.timestamp,
        )
        records = [
            {
                "Email": lead["email"],
                "leadAttributeList": {
                    "attribute": [
                        {"attrName": name, "attrValue": str(value)}
                        for name, value in lead.get("attributes", {}).items()
                    ]
                },
            }
            for lead in leads
        ]
        answer = self._service.syncMultipleLeads(
            leadRecordList={"leadRecord": records}, dedupEnabled=True, _soapheaders=[header]
        )
        rows = answer.syncStatus  # zeep unwraps successSyncMultipleLeads.result.syncStatusList
        return [LeadResult(row.leadId, str(row.status), row.error) for row in rows]
