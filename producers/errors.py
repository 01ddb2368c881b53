"""The root of leadsync's error tree and the two errors a web app can meet.

The worker's branches (``worker.errors``) subclass :class:`LeadsyncError` too, so one
``except LeadsyncError`` catches everything leadsync raises on purpose.

Messages never carry lead values or secrets: they travel into logs and Flower.
"""

from __future__ import annotations


class LeadsyncError(Exception):
    """Root of every error leadsync raises on purpose."""


class ConfigError(LeadsyncError):
    """Raised when settings are missing or malformed; the message names the variable."""


class InvalidLead(LeadsyncError, ValueError):
    """Raised when a lead breaks the contract. ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message
