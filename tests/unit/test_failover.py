"""How long leases stay quiet after a master change (worker.failover)."""

from __future__ import annotations

from worker.failover import GUARD_LUA, lease_quiet_s
from worker.settings import Settings


def test_without_replicas_leases_wait_out_any_call_that_may_still_be_applied() -> None:
    settings = Settings(unknown_outcome_rest_s=90, request_timeout_s=60)
    assert lease_quiet_s(settings) == 90
    assert lease_quiet_s(Settings(unknown_outcome_rest_s=5, request_timeout_s=60)) == 60


def test_with_replicas_confirming_leases_they_survive_the_switch_and_need_no_quiet() -> None:
    assert lease_quiet_s(Settings(enqueue_replicas=1)) == 0


def test_the_guard_is_one_lua_function_named_as_the_steps_call_it() -> None:
    assert "local function failover_quiet_s(guard_key, quiet_s)" in GUARD_LUA
