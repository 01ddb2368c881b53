"""The outcome model: where a request stands, and the compact value the worker stores.

An outcome is stored as one short string (:meth:`Outcome.pack`) in a field of a per-shard
bucket hash (``Keys.outcome_slot``), which Redis keeps listpack-encoded: about 30 B per
outcome instead of the ~230 B of a hash key per outcome. The previous version's hash
(``Keys.outcome``, :meth:`Outcome.from_fields`) is still read, so outcomes written before
an upgrade stay readable until they expire."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from producers.wire import entry_order
from producers.wire import text as as_text

#: Separates the parts of a packed outcome; the error text, last, may contain it.
_SEP: Final = ","


class OutcomeStatus(StrEnum):
    """Where a request stands. CREATED, UPDATED and FAILED are terminal: written once,
    never changed. DEAD_LETTERED is parked: the request waits in the dead-letter stream,
    and only ``leadsync dlq replay`` reopens it (back to PENDING). This is the one
    definition; the ledger's Lua scripts follow it too."""

    PENDING = "PENDING"
    CREATED = "CREATED"
    UPDATED = "UPDATED"
    FAILED = "FAILED"
    DEAD_LETTERED = "DEAD_LETTERED"

    @property
    def is_terminal(self) -> bool:
        """Written once and never changed again."""
        return self in _TERMINAL

    @property
    def is_parked(self) -> bool:
        """Waiting in the dead-letter stream: only a replay moves it."""
        return self is OutcomeStatus.DEAD_LETTERED

    @property
    def is_final(self) -> bool:
        """Nothing more happens without an operator: terminal or parked."""
        return self is not OutcomeStatus.PENDING


_TERMINAL: Final = frozenset({OutcomeStatus.CREATED, OutcomeStatus.UPDATED, OutcomeStatus.FAILED})
#: A packed outcome's first letter -> its status (the letters are all different).
_BY_LETTER: Final = {status.value[0]: status for status in OutcomeStatus}
assert len(_BY_LETTER) == len(OutcomeStatus)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one request. Times are Unix seconds."""

    request_id: str
    status: OutcomeStatus
    lead_id: int | None = None
    error: str | None = None
    error_code: str | None = None
    attempts: int = 0
    enqueued_at: float | None = None
    finished_at: float | None = None

    def pack(self) -> str:
        """The stored value: the status's first letter (P, C, U, F or D: each status has
        its own, so ``settle.lua`` reads it with ``string.sub(v, 1, 1)`` from either
        format) and the attempts, then, only up to the last one set: lead id, finished_at
        as milliseconds after the entry's own time (from the request id), error code
        (a comma in it becomes ``;``) and error text (last: any character). For example
        ``C1,10000001,2345`` or ``F3,,812,1003,Invalid value``. ``enqueued_at`` is not
        stored: readers take it from the request id."""
        finished = None
        if self.finished_at is not None:
            entry_ms = entry_order(self.request_id.partition("-")[2])[0]
            finished = str(round(self.finished_at * 1000) - entry_ms)
        code = None if self.error_code is None else self.error_code.replace(_SEP, ";")
        parts = [
            None if self.lead_id is None else str(self.lead_id),
            finished,
            code,
            self.error,
        ]
        while parts and parts[-1] is None:
            parts.pop()
        head = f"{self.status.value[0]}{self.attempts}"
        return _SEP.join([head, *(part or "" for part in parts)])

    @classmethod
    def unpack(cls, request_id: str, value: str | bytes) -> Outcome:
        """Read back a value written by :meth:`pack`."""
        head, *parts = as_text(value).split(_SEP, 4)
        error = parts[3] if len(parts) > 3 else None  # stored only when set, maybe empty
        lead, finished, code = [*parts, "", "", ""][:3]
        entry_ms = entry_order(request_id.partition("-")[2])[0]
        return cls(
            request_id=request_id,
            status=_BY_LETTER[head[0]],
            lead_id=int(lead) if lead else None,
            error=error,
            error_code=code or None,
            attempts=int(head[1:] or "0"),
            enqueued_at=entry_ms / 1000.0,
            finished_at=(entry_ms + int(finished)) / 1000.0 if finished else None,
        )

    def to_fields(self) -> dict[str, str]:
        """The previous version's form: a Redis hash at ``Keys.outcome`` (empty values left
        out; times to the millisecond). Kept so that tests can write what an older worker
        left behind; workers store :meth:`pack` instead."""
        fields = {"status": self.status.value, "attempts": str(self.attempts)}
        optional: dict[str, object] = {
            "lead_id": self.lead_id,
            "error": self.error,
            "error_code": self.error_code,
            "enqueued_at": self.enqueued_at,
            "finished_at": self.finished_at,
        }
        for name, value in optional.items():
            if value is not None:
                fields[name] = f"{value:.3f}" if isinstance(value, float) else str(value)
        return fields

    @classmethod
    def from_fields(cls, request_id: str, fields: Mapping[str | bytes, str | bytes]) -> Outcome:
        """Read back a hash written by :meth:`to_fields`."""
        text = {as_text(k): as_text(v) for k, v in fields.items()}

        def number(name: str) -> float | None:
            return float(text[name]) if name in text else None

        return cls(
            request_id=request_id,
            status=OutcomeStatus(text["status"]),
            lead_id=int(text["lead_id"]) if "lead_id" in text else None,
            error=text.get("error"),
            error_code=text.get("error_code"),
            attempts=int(text.get("attempts", "0")),
            enqueued_at=number("enqueued_at"),
            finished_at=number("finished_at"),
        )
