"""Marketo's SOAP fault codes, each mapped once to the branch of the error tree that
says what the drain does. A fault no record can cause is transient: bounded retries,
then dead letters (it would not go away by splitting the batch)."""

from __future__ import annotations

from worker.errors import (
    AuthError,
    BadRequestError,
    MarketoError,
    QuotaExceededError,
    ResignError,
    ThrottledError,
    TransientError,
)

#: Every Marketo SOAP fault code we know, mapped once to the branch that handles it.
FAULT_CODES: dict[int, type[MarketoError]] = {
    10001: TransientError,  # Internal Error: severe system failure
    20011: TransientError,  # Internal Error: API service failure
    20012: BadRequestError,  # Request Not Understood
    20013: AuthError,  # Access Denied
    20014: AuthError,  # Authentication failed
    20015: QuotaExceededError,  # Request Limit Exceeded (daily quota)
    20016: ResignError,  # Request Expired
    20017: BadRequestError,  # Invalid Request: missing expected parameter
    20018: BadRequestError,  # Bad encoding
    20019: TransientError,  # Unsupported Operation (no record causes it)
    20022: TransientError,  # Time range exceeded limit (not a syncMultipleLeads fault)
    20023: ThrottledError,  # Rate Limit Exceeded
    20024: ThrottledError,  # Concurrency Limit Exceeded
    20101: BadRequestError,  # Lead Key Required
    20102: BadRequestError,  # Lead Key Bad
    20103: BadRequestError,  # Lead Not Found
    20104: BadRequestError,  # Lead Detail Required
    20105: BadRequestError,  # Lead Attribute Bad
    20106: BadRequestError,  # Lead Sync Failed
    20107: TransientError,  # Activity Key Bad (no record causes it)
    20108: TransientError,  # Lead Owner Not Found (no record causes it)
    20109: BadRequestError,  # Parameter Required
    20110: BadRequestError,  # Bad Parameter
    20111: TransientError,  # List Not Found (no record causes it)
    20113: TransientError,  # Campaign Not Found (no record causes it)
    20114: BadRequestError,  # Bad Parameter
    20122: TransientError,  # Bad Stream Position (no record causes it)
    20123: TransientError,  # Stream at End (no record causes it)
}

#: Fault codes that a single record can cause: the batch is split to find it.
RECORD_FAULT_CODES = frozenset(
    code for code, error_type in FAULT_CODES.items() if error_type is BadRequestError
)


def fault_error(
    code: int | None,
    message: str,
    *,
    fields: frozenset[str] = frozenset(),
    named_text: str = "",
) -> MarketoError:
    """The error for a SOAP fault. Unknown codes are transient: bounded retries, then dead letters."""
    error_type = FAULT_CODES.get(code, TransientError) if code is not None else TransientError
    if error_type is BadRequestError:
        return BadRequestError(message, code=code, fields=fields, named_text=named_text)
    return error_type(message, code=code)
