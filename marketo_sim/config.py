"""Every knob of the simulator, with defaults that match a real Marketo SOAP instance."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

#: Marketo standard lead fields (REST "describe" names, which SOAP shares).
STANDARD_LEAD_FIELDS: frozenset[str] = frozenset(
    {
        "Email",
        "FirstName",
        "MiddleName",
        "LastName",
        "Salutation",
        "Title",
        "Company",
        "Phone",
        "MobilePhone",
        "Fax",
        "Address",
        "City",
        "State",
        "Country",
        "PostalCode",
        "Website",
        "Industry",
        "LeadSource",
        "LeadStatus",
        "LeadScore",
        "LeadRole",
        "Rating",
        "NumberOfEmployees",
        "AnnualRevenue",
        "SICCode",
        "Department",
        "DateofBirth",
        "DoNotCall",
        "DoNotCallReason",
        "Unsubscribed",
        "UnsubscribedReason",
        "EmailInvalid",
        "EmailInvalidCause",
        "AnonymousIP",
        "InferredCompany",
        "InferredCountry",
        "MarketingSuspended",
        "MarketingSuspendedReason",
        "BillingStreet",
        "BillingCity",
        "BillingState",
        "BillingCountry",
        "BillingPostalCode",
        "MainPhone",
        "Site",
        "AccountOwnerEmailAddress",
        "LeadPartitionId",
        "Priority",
        "Urgency",
        "RelativeScore",
    }
)

OversizeMode = Literal["fault", "slow"]
#: How 20105's text writes each unknown name: as is, or between single or double quotes.
UnknownFieldQuotes = Literal["none", "single", "double"]

#: Names of the injectable fault kinds; ``fault_<kind>_rate`` is each one's probability.
FAULT_KINDS: tuple[str, ...] = (
    "hang",
    "http_502",
    "truncated",
    "doctype",
    "internal_10001",
    "internal_20011",
    "rate_20023",
    "concurrency_20024",
    "timeout_604",
    "unavailable_608",
    "system_611",
    "transient_713",
    "rate_606",
    "concurrency_615",
    "gateway_504",
)
#: The kinds each protocol can be given; ``hang``, ``http_502``, ``truncated`` and
#: ``gateway_504`` are shared. Order matters: one uniform draw walks the kinds in this order,
#: so a new kind goes last (at rate 0 it leaves every seeded draw as it was).
SOAP_FAULT_KINDS: tuple[str, ...] = (
    "hang",
    "http_502",
    "truncated",
    "doctype",
    "internal_10001",
    "internal_20011",
    "rate_20023",
    "concurrency_20024",
    "gateway_504",
)
REST_FAULT_KINDS: tuple[str, ...] = (
    "hang",
    "http_502",
    "truncated",
    "timeout_604",
    "unavailable_608",
    "system_611",
    "transient_713",
    "rate_606",
    "concurrency_615",
    "gateway_504",
)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """The simulator's configuration. Every field can be patched at runtime (POST /admin/config)."""

    # Credentials (Admin > Web Services in a real instance).
    user_id: str = "leadsync_sim_user"
    encryption_key: str = "leadsync-sim-key"
    # Largest |now - requestTimestamp| accepted; None disables the age check (20016).
    timestamp_window_s: float | None = 300.0

    # Limits, as documented for SOAP: 100 calls / 20 s, 10 in flight, 10,000 a day.
    rate_limit_calls: int = 100
    rate_window_s: float = 20.0
    max_concurrent: int = 10
    daily_quota: int = 10_000
    # The daily quota resets at 00:00 US Central Standard Time (UTC-6, no DST).
    quota_reset_utc_offset_h: float = -6.0
    max_records: int = 300
    # More than max_records: a 20017 fault, or an answer delayed by oversize_delay_s.
    oversize_mode: OversizeMode = "fault"
    oversize_delay_s: float = 30.0
    max_payload_bytes: int = 8 * 1024 * 1024
    # REST bodies: "1 MB" gives HTTP 413 (Adobe error-codes.md); read as 1,000,000 bytes, the
    # smaller of the two readings (1 MiB would let a 1,048,000-byte body through).
    rest_max_payload_bytes: int = 1_000_000

    # Leads: known attribute names (anything else faults the call with 20105).
    known_fields: frozenset[str] = STANDARD_LEAD_FIELDS
    # How 20105's text names the unknown fields: "none" writes Marketo's documented
    # ``unknown fields for import: Pants, Shoe``; "single" and "double" quote each name
    # (``'Pants', 'Shoe'``, ``"Pants", "Shoe"``), as the text is seen through other clients
    # and proxies.
    unknown_field_quotes: UnknownFieldQuotes = "none"
    # A simulator rule, not documented Marketo behaviour: with max_value_chars > 0, a SOAP
    # attribute value longer than it faults the whole call with 20110 (Bad Parameter), naming
    # neither the field nor the record (a record fault the client can only find by splitting
    # the batch). 0 (the default) sets no limit. REST calls are not checked.
    max_value_chars: int = 0
    # An email on one of these domains gets a FAILED syncStatus (per-record failure trigger).
    reject_email_domains: tuple[str, ...] = ("invalid.example",)
    # Elements the WSDL does not declare: "fault" (20012) catches client mistakes;
    # "ignore" behaves like Marketo's lenient binding (which silently drops them).
    # REST: "fault" refuses unknown Sync Leads parameters (1003), "ignore" drops them.
    unknown_elements: Literal["fault", "ignore"] = "fault"
    # dedupEnabled when the element is absent (undocumented; clients send it explicitly).
    default_dedup: bool = True
    # Ids handed to new leads count up from here.
    first_lead_id: int = 1

    # Latency of every call: latency_s * lognormal(0, sigma) + uniform(0, jitter_s).
    latency_s: float = 0.0
    latency_jitter_s: float = 0.0
    latency_lognormal_sigma: float = 0.0
    seed: int | None = 0

    # Fault injection: the probability of each kind per call (their sum must stay <= 1).
    fault_hang_rate: float = 0.0
    fault_http_502_rate: float = 0.0
    fault_truncated_rate: float = 0.0
    fault_doctype_rate: float = 0.0
    fault_internal_10001_rate: float = 0.0
    fault_internal_20011_rate: float = 0.0
    fault_rate_20023_rate: float = 0.0
    fault_concurrency_20024_rate: float = 0.0
    # REST only: whole-call errors with HTTP 200 (604, 608, 611 are not counted against the
    # rate or the quota, as documented; 713 is; 606 and 615 are refused before counting).
    fault_timeout_604_rate: float = 0.0
    fault_unavailable_608_rate: float = 0.0
    fault_system_611_rate: float = 0.0
    fault_transient_713_rate: float = 0.0
    fault_rate_606_rate: float = 0.0
    fault_concurrency_615_rate: float = 0.0
    # Both protocols: a gateway in front of Marketo answers HTTP 504 (an HTML page) at once
    # while Marketo still works on the call: it is counted (window, quota, a concurrency slot)
    # and applied to the leads gateway_apply_delay_s later, holding its slot until then.
    fault_gateway_504_rate: float = 0.0
    gateway_apply_delay_s: float = 5.0
    # How long a "hang" holds the connection: longer than any sane client timeout.
    hang_s: float = 120.0

    # The wire: with reply_chunk_bytes > 0 every reply body (admin API aside) is written in
    # pieces of at most that many bytes, reply_chunk_gap_s apart, under a correct
    # Content-Length (a WAN behind a gateway); 0 writes each reply in one piece.
    reply_chunk_bytes: int = 0
    reply_chunk_gap_s: float = 0.0

    # REST identity (Admin > Integration > LaunchPoint): client credentials and tokens.
    client_id: str = "leadsync-sim-client"
    client_secret: str = "leadsync-sim-secret"  # noqa: S105 - a sample, like encryption_key
    # A new token lives this long; identity calls before then return it with what is left.
    token_lifetime_s: float = 3600.0
    # The scope of the token: the email of the API-only user.
    token_scope: str = "apis@leadsync.sim"  # noqa: S105 - an email, not a secret
    # One shot: the next identity call returns the current token with "expires_in": 0 and the
    # token ends right then (its first use gets 602); the flag turns itself off.
    token_expires_in_zero_once: bool = False
    # REST lookupField values besides "email" and "id" (custom dedupe fields, REST names,
    # e.g. the field that replaces ForeignSysPersonId); they are known REST fields too, stored
    # under the same name (SOAP calls may write them only if known_fields lists them).
    rest_dedupe_fields: frozenset[str] = frozenset()
    # partitionName values the API user may write to.
    rest_partitions: tuple[str, ...] = ("Default",)

    def __post_init__(self) -> None:
        total = sum(self.fault_rate(kind) for kind in FAULT_KINDS)
        if not 0.0 <= total <= 1.0 + 1e-9:
            raise ValueError("fault rates must be >= 0 and sum to at most 1")
        if any(self.fault_rate(kind) < 0 for kind in FAULT_KINDS):
            raise ValueError("fault rates must be >= 0")
        for name in (
            "rate_limit_calls",
            "max_concurrent",
            "max_records",
            "max_payload_bytes",
            "rest_max_payload_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.daily_quota < 0 or self.rate_window_s <= 0:
            raise ValueError("daily_quota must be >= 0 and rate_window_s > 0")
        if self.oversize_mode not in ("fault", "slow"):
            raise ValueError("oversize_mode must be 'fault' or 'slow'")
        if self.unknown_elements not in ("fault", "ignore"):
            raise ValueError("unknown_elements must be 'fault' or 'ignore'")
        if self.unknown_field_quotes not in ("none", "single", "double"):
            raise ValueError("unknown_field_quotes must be 'none', 'single' or 'double'")
        if self.token_lifetime_s <= 0:
            raise ValueError("token_lifetime_s must be > 0")
        for name in (
            "reply_chunk_bytes",
            "reply_chunk_gap_s",
            "gateway_apply_delay_s",
            "max_value_chars",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        from marketo_sim.fields import check_field_names  # the mapping lives with the fields

        check_field_names(self.known_fields, self.rest_dedupe_fields)

    def fault_rate(self, kind: str) -> float:
        """The injection probability of one fault kind (see FAULT_KINDS)."""
        return float(getattr(self, f"fault_{kind}_rate"))

    def patched(self, patch: Mapping[str, Any]) -> SimConfig:
        """A copy with ``patch`` applied; JSON values are coerced to each field's type."""
        hints = typing.get_type_hints(SimConfig)
        names = {f.name for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for name, value in patch.items():
            if name not in names:
                raise ValueError(f"unknown config field: {name}")
            changes[name] = _coerce(name, hints[name], value)
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The configuration as JSON-friendly values (the encryption key is masked)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, frozenset | tuple):
                value = sorted(value) if isinstance(value, frozenset) else list(value)
            out[f.name] = value
        out["encryption_key"] = "***"
        out["client_secret"] = "***"  # noqa: S105 - the mask
        return out


def _coerce(name: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(name, inner, value)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{name} must be one of {', '.join(map(str, args))}")
        return value
    if origin in (frozenset, tuple):
        if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
            raise ValueError(f"{name} must be a list of strings")
        if not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name} must be a list of strings")
        return frozenset(value) if origin is frozenset else tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
        return value
    raise ValueError(f"{name} cannot be patched")  # pragma: no cover - every field is covered
