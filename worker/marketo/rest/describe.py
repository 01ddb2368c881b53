"""Marketo REST Describe Lead2 (``GET /rest/v1/leads/describe2.json``): the lead fields.

The answer's ``result[0].fields[]`` carry each field's REST API ``name`` (Describe Lead2).
The older Describe Lead shape is read too: a field with a ``rest`` object is named by
``rest.name``, and a field without one is not valid for REST ("the REST child objects
appear only when the field is valid for the corresponding API") and is left out. Pure
codec and one small async call; whole-call errors map as for Sync Leads (``faults.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from worker.errors import ProtocolError, ResignError
from worker.marketo.rest.codec import read_document
from worker.marketo.rest.tokens import TokenSource
from worker.transport import Transport

DESCRIBE2_PATH: Final = "/rest/v1/leads/describe2.json"
REQUEST_HEADERS: Final[Mapping[str, str]] = MappingProxyType({"Accept": "application/json"})


def _field_name(field: object) -> str | None:
    if not isinstance(field, dict):
        return None
    if "rest" in field or "soap" in field:  # Describe Lead: valid for REST only with "rest"
        rest = field.get("rest")
        name = rest.get("name") if isinstance(rest, dict) else None
    else:
        name = field.get("name")
    return (name.strip() or None) if isinstance(name, str) else None


def parse_describe2(
    body: bytes, *, http_status: int, content_type: str | None, request_written: bool = True
) -> tuple[str, ...]:
    """The REST names of the lead fields in answer order, or the whole call's error (a
    5xx page after the request left is ReplyLost; an unreadable answer or one without
    fields a ProtocolError)."""
    document = read_document(
        body,
        http_status=http_status,
        content_type=content_type,
        request_written=request_written,
        what="describe2.json",
    )
    result = document.get("result")
    described = result[0] if isinstance(result, list) and result else None
    fields = described.get("fields") if isinstance(described, dict) else None
    if not isinstance(fields, list):
        raise ProtocolError("describe2.json answered no result[0].fields")
    names = tuple(name for name in map(_field_name, fields) if name is not None)
    if not names:
        raise ProtocolError("describe2.json listed no lead fields")
    return names


async def describe_lead_fields(
    transport: Transport, tokens: TokenSource, *, rest_url: str
) -> tuple[str, ...]:
    """One Describe Lead2 call with the cluster's token: the REST names of the lead
    fields. 601/602 drop that token and raise ResignError (the next try fetches anew)."""
    token = await tokens.token()
    reply = await transport.get(
        rest_url.rstrip("/") + DESCRIBE2_PATH,
        {**REQUEST_HEADERS, "Authorization": f"Bearer {token}"},
    )
    try:
        return parse_describe2(
            reply.body,
            http_status=reply.status,
            content_type=reply.content_type,
            request_written=reply.request_written,
        )
    except ResignError:
        await tokens.invalidate(token)
        raise
