"""The outcome model: where a request stands, and the Redis hash the worker writes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from producers.wire import text as as_text


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

    def to_fields(self) -> dict[str, str]:
        """The Redis hash stored at Keys.outcome (empty values are left out; times to the
        millisecond). Workers leave ``enqueued_at`` out: readers take it from the request
        id, and an outcome is kept a week per upsert, so every byte counts."""
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
