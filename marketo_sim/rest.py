"""The simulator's own reading of a Sync Leads request (``POST /rest/v1/leads.json``) and its
JSON answers. Pure: no I/O, no clock (tests drive it directly).

Marketo answers whole-call errors with HTTP 200, ``success: false`` and ``errors[]`` of
``{"code": "<string>", "message"}``; per-record outcomes are ``result[]`` in input order, a
skipped record carrying ``reasons[]`` and no ``id`` (research §2, §3).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final, Literal

Action = Literal["createOrUpdate", "createOnly", "updateOnly", "createDuplicate"]
ACTIONS: Final[tuple[Action, ...]] = (
    "createOrUpdate",
    "createOnly",
    "updateOnly",
    "createDuplicate",
)
CONTENT_TYPE: Final = "application/json;charset=UTF-8"
_PARAMS: Final = frozenset({"action", "lookupField", "partitionName", "asyncProcessing", "input"})

#: Whole-call messages (Adobe ``error-codes.md``; 606 and 615 as live errors quote them).
ERROR_TEXT: Final[dict[int, str]] = {
    601: "Access token invalid",
    602: "Access token expired",
    603: "Access denied",
    604: "Request time-out",
    605: "HTTP Method not supported",
    606: "Max rate limit '{calls}' exceeded with in '{window}' secs",
    607: "Daily quota reached",
    608: "API Temporarily Unavailable",
    609: "Invalid JSON",
    610: "Requested resource not found",
    611: "System error",
    612: "Invalid Content Type",
    615: "Concurrent access limit '{concurrent}' reached",
    713: "Transient Error",
}


class RestError(Exception):
    """A whole-call error: nothing of the call was executed."""

    def __init__(self, code: int, message: str | None = None) -> None:
        self.code = code
        self.message = message or ERROR_TEXT.get(code, "Error")
        super().__init__(f"{code}: {self.message}")


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class RecordResult:
    status: Literal["created", "updated", "skipped"]
    lead_id: int | None = None
    reasons: tuple[Reason, ...] = ()

    def to_json(self) -> dict[str, Any]:
        if self.status == "skipped":
            return {
                "status": "skipped",
                "reasons": [{"code": r.code, "message": r.message} for r in self.reasons],
            }
        return {"id": self.lead_id, "status": self.status}


def skipped(code: int, message: str) -> RecordResult:
    return RecordResult("skipped", reasons=(Reason(str(code), message),))


class Record(dict[str, Any]):
    """One input record; ``repeated`` names keys the JSON object gave more than once."""

    repeated: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SyncLeadsRequest:
    action: Action
    lookup_field: str
    partition: str | None
    records: tuple[Record, ...] = field(default=())


def _pairs(pairs: list[tuple[str, Any]]) -> Record:
    record = Record(pairs)
    if len(record) != len(pairs):
        names = [name for name, _ in pairs]
        record.repeated = tuple(sorted({n for n in names if names.count(n) > 1}))
    return record


def _no_constants(name: str) -> Any:
    raise ValueError(name)  # NaN and Infinity are not JSON


def _type_error(value: Any, wanted: str) -> RestError:
    return RestError(1001, f"Invalid value '{json.dumps(value)}'. Required of type '{wanted}'")


def parse_sync_leads(
    body: bytes,
    *,
    lookup_fields: frozenset[str],
    max_records: int,
    oversize_error: bool = True,
    unknown_params: Literal["error", "ignore"] = "error",
) -> SyncLeadsRequest:
    """Interpret a Sync Leads body; raise RestError as (or, where unknown, stricter than)
    Marketo would."""
    try:
        document = json.loads(
            body.decode("utf-8"), object_pairs_hook=_pairs, parse_constant=_no_constants
        )
    except (UnicodeDecodeError, ValueError):
        raise RestError(609) from None
    if not isinstance(document, Record) or document.repeated:
        raise RestError(609)
    extra = sorted(set(document) - _PARAMS)
    if extra and unknown_params == "error":
        # Unknown: Marketo seems to ignore unknown parameters (marketo-rest-python sent
        # "asyncProcessing " for years); the simulator refuses them so typos show up.
        raise RestError(1003, f"Invalid data: unknown parameter '{extra[0]}'")
    for name in ("action", "lookupField", "partitionName"):
        if document.get(name) is not None and not isinstance(document[name], str):
            raise _type_error(document[name], "string")
    action = document.get("action") or "createOrUpdate"
    if action not in ACTIONS:
        raise _type_error(action, "action")
    lookup = document.get("lookupField") or "email"
    if lookup not in lookup_fields:
        # Unknown whether Sync Leads skips every record or fails the call; the call fails.
        raise RestError(1011, f"Field '{lookup}' not supported")
    partition = document.get("partitionName")
    if partition is not None and action not in ("createOnly", "createOrUpdate"):
        # "works only when action is createOnly or createOrUpdate": refused, not ignored.
        raise RestError(
            1003, "Invalid data: partitionName works only with createOnly or createOrUpdate"
        )
    asynchronous = document.get("asyncProcessing", False)
    if not isinstance(asynchronous, bool):
        raise _type_error(asynchronous, "boolean")
    if asynchronous:
        # Its response shape is unknown (research open question 4): not simulated.
        raise RestError(1003, "Invalid data: asyncProcessing is not supported by the simulator")
    records = document.get("input")
    if records is None or records == []:
        raise RestError(1002, "Missing value for the required parameter 'input'")
    if not isinstance(records, list):
        raise _type_error("...", "array")
    if not all(isinstance(record, Record) for record in records):
        raise RestError(609)
    if len(records) > max_records and oversize_error:
        # Unknown (research open question 1): refused whole, nothing written.
        raise RestError(1003, f"Invalid data: more than {max_records} records in input")
    return SyncLeadsRequest(action, lookup, partition, tuple(records))


def render_success(request_id: str, results: list[dict[str, Any]]) -> bytes:
    return json.dumps({"requestId": request_id, "success": True, "result": results}).encode()


def render_error(request_id: str, error: RestError) -> bytes:
    errors = [{"code": str(error.code), "message": error.message}]
    return json.dumps({"requestId": request_id, "success": False, "errors": errors}).encode()


def render_truncated(whole: bytes) -> bytes:
    """A success answer cut mid-document, as a dropped connection or a proxy would leave it."""
    return whole[: max(12, len(whole) * 2 // 3)]


def request_id(call_id: int, epoch_s: float) -> str:
    """Marketo's shape, e.g. ``e42b#14272d07d78`` (4 hex digits, '#', hex milliseconds)."""
    return f"{call_id & 0xFFFF:04x}#{int(epoch_s * 1000):x}"


def limit_error(kind: str, *, calls: int, window_s: float, concurrent: int) -> RestError:
    """606, 615 or 607 with Marketo's texts for a refusal ``Limits.refusal`` named."""
    code = {"rate": 606, "concurrency": 615, "quota": 607}[kind]
    return RestError(
        code, ERROR_TEXT[code].format(calls=calls, window=f"{window_s:g}", concurrent=concurrent)
    )


HTML_413: Final = (
    b"<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
    b"<center><h1>413 Request Entity Too Large</h1></center>\r\n</body>\r\n</html>\r\n"
)
