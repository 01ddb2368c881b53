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


class Retryable(LeadsyncError):
    """Raised when Redis could not take or keep the work now, but will: retry after
    ``retry_after_s`` (the HTTP API answers 503 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReplicated(Retryable):
    """Raised when LEADSYNC_ENQUEUE_REPLICAS asks for replicas and ``WAIT`` did not see
    that many take the write in time. The write is on the master and will usually be
    delivered, but a failover now could lose it: retry (an upsert is safe to repeat; a
    ``dedup=False`` one may then create two leads). ``results`` holds, in record order,
    the request id (or InvalidLead) of every record written so far: for ``upsert``, its
    one id; for ``upsert_many``, every record up to the unconfirmed chunk."""

    def __init__(
        self,
        results: list[object],
        wanted: int,
        seen: int,
        retry_after_s: float,
        *,
        refused: bool = False,
    ) -> None:
        super().__init__(
            "refused: the Redis master has fewer replicas than min-replicas-to-write; retry"
            if refused
            else f"written but confirmed by {seen} of {wanted} replica(s) in time; retry",
            retry_after_s,
        )
        self.results = results
        self.wanted = wanted
        self.seen = seen


class Backpressure(Retryable):
    """Raised when Redis is filling up (a shard's backlog at LEADSYNC_MAX_SHARD_BACKLOG, or
    its memory at LEADSYNC_MEMORY_HIGH_WATER of maxmemory): the upsert was refused with
    nothing written, before Redis would refuse everything. Retry after ``retry_after_s``.
    ``results``, for ``upsert_many``, holds every record of the call before the refused
    chunk (a request id or an InvalidLead each): resend from ``len(results)`` on."""

    def __init__(
        self, message: str, retry_after_s: float, results: list[object] | None = None
    ) -> None:
        super().__init__(message, retry_after_s)
        self.results = results or []


class Resharded(Retryable):
    """Raised when the shard count changed (``leadsync reshard``) since this producer
    placed its records: nothing was written. The producer places them again by the
    stored count ``shards`` on its own; this escapes only when the count keeps changing."""

    def __init__(self, shards: int) -> None:
        super().__init__(f"the shard count changed to {shards}; retry", 0.0)
        self.shards = shards


class Rekeyed(Retryable):
    """Raised when the lead key rule a worker stored (``rule``: how a lead's key is made,
    under REST the lookup field's value) is not the one this producer placed its records
    by: nothing was written. The producer places them again by the stored rule on its
    own, so a lead's writes are ordered by the key Marketo matches on."""

    def __init__(self, rule: str) -> None:
        super().__init__(f"the lead key rule changed to {rule}; retry", 0.0)
        self.rule = rule
