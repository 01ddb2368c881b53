"""Marketo REST error codes, each mapped once to the branch of the error tree that says
what the drain does. A 6xx means the whole request failed and was not executed. A 502
in the body does not: Marketo documents it as "the remote server returned an error,
likely a timeout", so the call may still be running behind the gateway (maybe applied,
never resent in place). 713 (transient) and 719 (lock wait timeout) stay "not
received": Marketo's advice for both is to wait and retry, and a lock wait times out
before the write it waited for.

Where Marketo's documentation leaves the meaning open, the safe reading is taken: a code
that would fail every call the same way (610 wrong URL, 612 content type, 609 JSON, 605
method, a whole-call 1xxx) holds the pipeline with the reason instead of retrying in a
loop; an unknown code is transient (bounded retries, then dead letters)."""

from __future__ import annotations

from worker.errors import (
    AuthError,
    MarketoError,
    QuotaExceededError,
    ReplyLost,
    ResignError,
    ThrottledError,
    TransientError,
)

ERROR_CODES: dict[int, type[MarketoError]] = {
    502: ReplyLost,  # Bad Gateway, likely a timeout: maybe applied, the shards rest
    601: ResignError,  # Access token invalid: fetch a new token, retry at once
    602: ResignError,  # Access token expired: fetch a new token, retry at once
    603: AuthError,  # Access denied (permission or IP allow-list): hold
    604: TransientError,  # Request time-out
    605: AuthError,  # HTTP method not supported: a defect, said plainly (hold)
    606: ThrottledError,  # Max rate limit exceeded: cluster cooldown
    607: QuotaExceededError,  # Daily quota reached: pause until the reset
    608: TransientError,  # API temporarily unavailable
    609: AuthError,  # Invalid JSON: a defect, said plainly (hold)
    610: AuthError,  # Requested resource not found: LEADSYNC_MARKETO_REST_URL is wrong (hold)
    611: TransientError,  # System error
    612: AuthError,  # Invalid content type: a defect, said plainly (hold)
    614: TransientError,  # Invalid subscription: usually temporary inaccessibility
    615: ThrottledError,  # Concurrent access limit reached: cluster cooldown
    713: TransientError,  # Transient error: wait, then retry
    719: TransientError,  # Lock wait timeout
}

#: Codes whose hold message names what to fix.
ADVICE: dict[int, str] = {
    603: "the API user lacks a permission or the IP is not allowed (Admin > Web Services)",
    605: "a defect in leadsync's REST client (wrong HTTP method); please report it",
    609: "a defect in leadsync's REST client (invalid JSON); please report it",
    610: "check LEADSYNC_MARKETO_REST_URL (https://<munchkin>.mktorest.com)",
    612: "a defect in leadsync's REST client (content type); please report it",
}


#: A whole-call 1xxx is about the request's shape (an unsupported lookup field or partition,
#: an unknown parameter): every call fails the same way until the configuration changes.
REQUEST_SHAPE_ADVICE = (
    "Marketo refused the request itself: check LEADSYNC_MARKETO_ACTION, "
    "LEADSYNC_MARKETO_LOOKUP_FIELD and LEADSYNC_MARKETO_PARTITION"
)


def error_for(code: int | None, message: str) -> MarketoError:
    """The error for a whole-call REST error (``success: false``). A whole-call 1xxx holds
    the pipeline with Marketo's message, as 609 and 612 do: retrying would fail the same
    way, call after call."""
    if code is not None and 1000 <= code < 2000:
        return AuthError(f"{message}: {REQUEST_SHAPE_ADVICE}", code=code)
    error_type = ERROR_CODES.get(code, TransientError) if code is not None else TransientError
    advice = ADVICE.get(code) if code is not None else None
    return error_type(f"{message}: {advice}" if advice else message, code=code)
