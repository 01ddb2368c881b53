"""The one retry policy for a syncMultipleLeads call (inside one drain cycle).

Following the failure table: a fault Marketo did not act on backs off exponentially
with jitter (never zero), a bounded number of times; a call whose outcome is unknown (a
timeout, a gateway page or a lost or cut reply after the request was written) is never
retried here: it leaves the cycle, since Marketo may still be applying it; 20016
re-signs and retries at once. Everything else leaves the call: throttling, quota and credential errors
are handled cluster-wide by the limiter, record faults by batch splitting.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    before_sleep_log,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from worker.errors import ResignError, TransientError

logger = logging.getLogger(__name__)

#: A stale signature is retried at once, but only this often (a skewed clock is not transient).
RESIGN_RETRIES = 2


def call_policy(
    *,
    transient_retries: int,
    backoff_initial_s: float,
    backoff_max_s: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncRetrying:
    """Retry TransientError with backoff and ResignError at once; re-raise the last error."""
    backoff = wait_exponential_jitter(
        multiplier=max(backoff_initial_s, 0.05), max=backoff_max_s, jitter=backoff_initial_s
    )

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        return 0.0 if isinstance(error, ResignError) else float(backoff(state))

    failures: Counter[bool] = Counter()

    def stop(state: RetryCallState) -> bool:
        # Each kind of failure has its own budget: a re-sign does not use up a backoff retry.
        resign = isinstance(state.outcome.exception() if state.outcome else None, ResignError)
        failures[resign] += 1
        return failures[resign] > (RESIGN_RETRIES if resign else transient_retries)

    return AsyncRetrying(
        retry=retry_if_exception_type((TransientError, ResignError)),
        stop=stop,
        wait=wait,
        sleep=sleep,
        reraise=True,
        before_sleep=before_sleep_log(logger, logging.INFO),
    )
