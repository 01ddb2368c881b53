"""The SOAP codec for Marketo ``syncMultipleLeads``: pure functions, no I/O.

``signing`` makes the AuthenticationHeader, ``envelope`` builds the request body and
``response`` parses per-lead results and faults (with the project's hardened XML parser).
"""

from __future__ import annotations

from worker.soap.envelope import REQUEST_HEADERS, SOAP_ACTION, build_sync_multiple_leads, check_lead
from worker.soap.response import (
    SyncResult,
    SyncStatus,
    parse_fault,
    parse_sync_response,
    parse_xml,
)
from worker.soap.signing import AuthHeader, make_auth_header, sign, w3c_timestamp

__all__ = [
    "REQUEST_HEADERS",
    "SOAP_ACTION",
    "AuthHeader",
    "SyncResult",
    "SyncStatus",
    "build_sync_multiple_leads",
    "check_lead",
    "make_auth_header",
    "parse_fault",
    "parse_sync_response",
    "parse_xml",
    "sign",
    "w3c_timestamp",
]
