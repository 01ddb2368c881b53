"""The one error tree of leadsync. Branches say what the caller should do.

::

    LeadsyncError
    ├── ConfigError                settings are missing or malformed
    ├── InvalidLead                a lead value breaks the contract (field-level)
    ├── LedgerError                the Redis ledger is not in the expected shape
    │   └── LeaseLost              a fenced write was refused: another worker owns the shard
    └── MarketoError               a Marketo call (SOAP or REST) did not succeed
        ├── TransientError         not received: retry with backoff, bounded; then leave pending
        │   └── TransportError     never reached Marketo: connect, DNS, TLS, a 5xx before
        │                          the request body was written
        ├── OutcomeUnknown         maybe applied: never retried in place; the shard rests and
        │   │                      the call keeps its slot for LEADSYNC_UNKNOWN_OUTCOME_REST_S
        │   ├── CallTimeout        no answer in time
        │   ├── ReplyLost          a 5xx page or a disconnect after the request was written
        │   └── ProtocolError      a reply cut short, unreadable, oversized, hostile or not
        │                          matching the request
        ├── ResignError            20016: sign again (or re-authenticate), retry at once
        ├── ThrottledError         20023 / 20024: cooldown shared by every pod
        ├── QuotaExceededError     20015: pause until the daily quota resets
        ├── AuthError              20013 / 20014: hold the pipeline, keep leads pending
        └── BadRequestError        a record made the whole call fault: isolate it

Messages never carry lead values or secrets: they travel into logs and Flower.
"""

from __future__ import annotations

# The root and the two errors a web app meets live in the light producers package;
# re-exported here so that ``from worker.errors import InvalidLead`` keeps working.
# (The ``X as X`` form marks them as re-exported for mypy's strict mode.)
from producers import ConfigError as ConfigError
from producers import InvalidLead as InvalidLead
from producers import LeadsyncError as LeadsyncError


class LedgerError(LeadsyncError):
    """Raised when the Redis ledger is missing (for example after Redis lost its data)."""


class LeaseLost(LedgerError):
    """Raised when a ledger write is refused because this worker's shard lease expired
    (a pause past the lease TTL): another worker owns the entries now, so this one must
    drop everything it planned. Nothing it would have written is written."""

    def __init__(self, shard: int, step: str) -> None:
        super().__init__(f"shard {shard}: lease lost, {step} refused")
        self.shard = shard
        self.step = step


class MarketoError(LeadsyncError):
    """A Marketo call did not succeed. ``code`` is Marketo's fault code, if any. Each
    protocol maps its own codes onto these branches (``worker.marketo.soap.faults``)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message if code is None else f"{code}: {message}")
        self.code = code
        self.detail = message


class TransientError(MarketoError):
    """Raised when Marketo did not act on the call and a retry may succeed: internal
    errors it reported, limits and codes documented as "not executed". A call that may
    have been applied is never one of these: see :class:`OutcomeUnknown`, a sibling, so
    that no ``except TransientError: retry`` can resend it."""


class TransportError(TransientError):
    """Raised when the request never reached Marketo: connection refused, DNS, TLS, a
    connect timeout, or a 5xx answered before the request body was written."""


class OutcomeUnknown(MarketoError):
    """Raised when the request was written but no usable answer came back: Marketo may
    have applied the call, or may still be applying it. Sending the same leads again at
    once would put one key in two calls (a duplicate lead, or an older value applied
    after a newer one), so the call is never retried in place: its shards rest and its
    concurrency slot stays taken for LEADSYNC_UNKNOWN_OUTCOME_REST_S, and its
    dedup=false records are parked (a resend would create a second lead)."""


class CallTimeout(OutcomeUnknown):
    """Raised when Marketo did not answer in time."""


class ReplyLost(OutcomeUnknown):
    """Raised when a gateway answered 5xx, or the connection dropped, after the request
    was written."""


class ProtocolError(OutcomeUnknown):
    """Raised when a reply is cut short, unparseable, oversized, hostile or does not match
    the request. (An identity call changes nothing: its token source retries these as
    plain transient faults.)"""


class ResignError(MarketoError):
    """Raised when the credentials' proof expired (SOAP 20016: the signature is too old):
    sign again, or fetch a new token, and retry at once."""


class ThrottledError(MarketoError):
    """Raised on 20023 (rate) and 20024 (concurrency): every pod cools down."""


class QuotaExceededError(MarketoError):
    """Raised on 20015: the daily call quota is used up until it resets."""


class AuthError(MarketoError):
    """Raised on 20013 / 20014: credentials or access are wrong; the pipeline holds."""


class BadRequestError(MarketoError):
    """Raised when some record made the whole call fault (20105, 20017, 20110, 20114, ...).

    ``fields`` holds the attribute names Marketo named as unknown (20105), case-folded:
    the records carrying them are the faulty ones, no bisection needed. ``named_text`` is
    the part of Marketo's text that names them (bounded), to find names the list could
    not be split into."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        fields: frozenset[str] = frozenset(),
        named_text: str = "",
    ) -> None:
        super().__init__(message, code=code)
        self.fields = fields
        self.named_text = named_text


class LimitReached(LeadsyncError):
    """Raised when the shared limiter refuses a call; nothing was sent.

    ``reason`` is one of hold, cooldown, quota, rate, concurrency.
    """

    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(f"call not allowed now ({reason}); retry in {retry_after_s:.1f} s")
        self.reason = reason
        self.retry_after_s = retry_after_s


class ReshardError(LedgerError):
    """Raised when ``leadsync reshard`` cannot change the shard count now: what stands in
    the way (a bulk backlog, dead letters, another reshard under way) or what did not
    happen in time. Nothing was changed: the old count stays in force."""
