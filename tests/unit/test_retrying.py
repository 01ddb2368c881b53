"""The retry policy: transient faults back off (never zero), 20016 retries at once, the rest leave."""

from __future__ import annotations

import pytest

from worker.core.retrying import RESIGN_RETRIES, call_policy
from worker.errors import (
    AuthError,
    CallTimeout,
    OutcomeUnknown,
    ProtocolError,
    ReplyLost,
    ResignError,
    ThrottledError,
    TransientError,
    TransportError,
)


async def run(
    errors: list[Exception], transient_retries: int = 3
) -> tuple[int, list[float], Exception | None]:
    sleeps: list[float] = []
    attempts = 0

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    policy = call_policy(
        transient_retries=transient_retries, backoff_initial_s=0.5, backoff_max_s=30, sleep=sleep
    )
    try:
        async for attempt in policy:
            with attempt:
                attempts += 1
                if errors:
                    raise errors.pop(0)
    except Exception as exc:
        return attempts, sleeps, exc
    return attempts, sleeps, None


async def test_transient_faults_back_off_exponentially_and_never_wait_zero() -> None:
    attempts, sleeps, error = await run([TransientError("x")] * 3)
    assert attempts == 4
    assert error is None
    assert all(s > 0 for s in sleeps)
    assert sleeps[2] > sleeps[0]


async def test_transient_retries_are_bounded_and_the_last_error_is_raised() -> None:
    attempts, _, error = await run([TransientError("x", code=10001)] * 10, transient_retries=2)
    assert attempts == 3
    assert isinstance(error, TransientError)


async def test_an_expired_signature_is_retried_at_once_with_its_own_budget() -> None:
    attempts, sleeps, error = await run(
        [ResignError("old", code=20016), TransientError("x")], transient_retries=1
    )
    assert attempts == 3
    assert sleeps[0] == 0
    assert error is None
    attempts, _, error = await run([ResignError("old", code=20016)] * 5)
    assert attempts == RESIGN_RETRIES + 1
    assert isinstance(error, ResignError)


@pytest.mark.parametrize("error", [ThrottledError("r", code=20023), AuthError("a", code=20014)])
async def test_limits_and_credentials_are_not_retried_in_place(error: Exception) -> None:
    attempts, sleeps, raised = await run([error])
    assert attempts == 1
    assert sleeps == []
    assert raised is error


async def test_a_timeout_is_not_retried_in_place_because_marketo_may_still_apply_it() -> None:
    timeout = CallTimeout("no answer")
    attempts, sleeps, raised = await run([timeout])
    assert attempts == 1
    assert sleeps == []
    assert raised is timeout


def test_maybe_applied_is_no_kind_of_not_received() -> None:
    """Every maybe-applied error sits apart from TransientError, so that no handler that
    retries "not received" faults can resend a call Marketo may still be applying."""
    for unknown in (OutcomeUnknown, CallTimeout, ReplyLost, ProtocolError):
        assert not issubclass(unknown, TransientError)
    assert issubclass(TransportError, TransientError)
