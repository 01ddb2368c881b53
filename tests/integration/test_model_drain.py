"""Model-based test of the drain: producers, the ledger, several Drainers sharing one real
Redis, dead-letter replay and the limiter, against a scripted Marketo and a reference
model (``tests/support/model.py``; every call into leadsync goes through its ``System``).
The same machine runs over both Marketo APIs, SOAP (syncMultipleLeads) and REST
(leads.json with a shared OAuth token): only the scripted Marketo's wire differs.

Invariants, checked after every step (2 after every settle, and at the end):

1. per lead, the Seq of the writes Marketo applied never goes back;
2. once settled, Marketo holds for each lead the newest write whose outcome is
   CREATED/UPDATED (a newer one only if it was applied but its answer was lost);
3. a terminal outcome never changes, a parked one reopens only by replay, and once
   settled every request is terminal (or parked because replay would be superseded);
4. no lead key is in two calls in flight at once;
5. no Redis key without a TTL, except the kinds in ``model.ALLOWED_WITHOUT_TTL``, which
   must stay bounded;
6. over REST: a record with an unknown field is skipped alone and the rest of its call
   applied (no call is spent isolating it), and one token serves every worker.

Invariant 3 also says that only a write carrying an unknown field (or merged with one)
ends FAILED, with the protocol's code (SOAP 20105, REST 1006), and never succeeds; and
that a write that succeeded carries its own lead's Marketo id.

Reproducible: derandomized, no example database. ``LEADSYNC_MODEL_EXAMPLES=<n>`` runs n
examples per protocol instead of 300 (SOAP) and 200 (REST);
``LEADSYNC_MODEL_PROTOCOLS=rest`` runs one protocol only; ``LEADSYNC_MODEL_SKIP`` and
``LEADSYNC_MODEL_BATCH_SIZE`` are triage knobs (see below).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from producers.contract import OutcomeStatus
from tests.support.model import (
    BEHAVIOURS,
    EVERY_SHARD,
    PAUSE_POINTS,
    PROTOCOLS,
    REST_FAULTS,
    SEQ,
    SOAP_FAULTS,
    VAL,
    Behaviour,
    PausePoint,
    Reference,
    RestWire,
    ScriptedMarketo,
    System,
    WireProtocol,
    wire_for,
)
from worker.marketo.rest.faults import error_for
from worker.marketo.soap.faults import fault_error

pytestmark = pytest.mark.integration

T = TypeVar("T")

#: Two leads on shard 0 and three on shard 1 (``shard_for`` with 2 shards).
PEOPLE = ("cat@x.com", "eve@x.com", "ann@x.com", "bob@x.com", "dan@x.com")

_LONG = int(os.environ.get("LEADSYNC_MODEL_EXAMPLES", "0") or 0)
#: Examples per protocol; a passing run takes about 50 s for SOAP and 30-40 s for REST
#: (REST at 300 examples took about 53 s: fewer keep the suite's added time well under a
#: minute).
EXAMPLES: dict[WireProtocol, int] = {"soap": 300, "rest": 200}
#: Triage knob: LEADSYNC_MODEL_PROTOCOLS=rest runs the machine over one protocol only.
RUN_PROTOCOLS = tuple(
    p for p in PROTOCOLS if p in os.environ.get("LEADSYNC_MODEL_PROTOCOLS", ",".join(PROTOCOLS))
)


def model_settings(protocol: WireProtocol) -> settings:
    return settings(
        max_examples=_LONG or EXAMPLES[protocol],
        stateful_step_count=40,
        derandomize=True,
        database=None,
        deadline=None,
        # No explain phase: its line tracer makes every step many times slower before 3.12.
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


#: Invariants to leave unchecked, e.g. LEADSYNC_MODEL_SKIP=1,2 (to look for other failures
#: while a known one is not fixed yet). Empty in CI.
SKIP = frozenset(int(n) for n in os.environ.get("LEADSYNC_MODEL_SKIP", "").split(",") if n)

#: Triage knob: a batch size larger than any backlog hides R1 (partial claims), so the
#: search can find what else is wrong. The suite runs with the default 3.
BATCH_SIZE = int(os.environ.get("LEADSYNC_MODEL_BATCH_SIZE", "3"))

#: Drain rounds a settle may take before the pipeline counts as stuck.
SETTLE_ROUNDS = 40


class DrainMachine(RuleBasedStateMachine):
    redis_url: ClassVar[str] = ""
    protocol: ClassVar[WireProtocol] = "soap"

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.marketo = ScriptedMarketo(wire_for(self.protocol))
        self.system = System(self.redis_url, self.marketo, batch_size=BATCH_SIZE)
        self.ref = Reference(unknown_field_code=self.marketo.wire.unknown_field_code)
        self.superseded: set[str] = set()
        self._failed = False
        self.run(self.system.start())

    # --- plumbing ------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    @contextmanager
    def step(self) -> Iterator[None]:
        """Marks the machine failed when the step raises, so teardown does not settle."""
        try:
            yield
        except BaseException:
            self._failed = True
            raise

    def observe(self) -> list[str]:
        details = self.run(self.system.outcome_details(list(self.ref.writes)))
        problems = self.ref.observe(details.statuses, details.error_codes)
        return problems + self.ref.lead_ids_agree(details.lead_ids, self.marketo)

    def teardown(self) -> None:
        try:
            if not self._failed:
                self.settle_everything()
        finally:
            self.run(self.system.close())
            self.runner.close()

    # --- rules ---------------------------------------------------------------------------

    @rule(
        writes=st.lists(
            st.tuples(
                st.sampled_from(PEOPLE),
                st.sampled_from(("a", "b", "c")),
                st.sampled_from((True, True, True, False)),  # dedup
                st.sampled_from((False, False, False, False, False, True)),  # poisoned
            ),
            min_size=1,
            max_size=4,
        )
    )
    def enqueue(self, writes: list[tuple[str, str, bool, bool]]) -> None:
        with self.step():
            for person, value, dedup, poisoned in writes:
                draft = self.ref.new_write(f"email:{person}", value, dedup=dedup, poisoned=poisoned)
                rid = self.run(self.system.enqueue(person, draft.attributes, dedup=dedup))
                self.ref.accept(replace(draft, request_id=rid))

    def _drain(self, worker: int, shard: int, pause_at: PausePoint | None) -> None:
        with self.step():
            idle = self.system.idle()
            if idle:
                self.run(self.system.drain(idle[worker % len(idle)], shard, pause_at))

    @rule(
        worker=st.integers(0, 2),
        shard=st.sampled_from((0, 1, EVERY_SHARD)),
        pause_at=st.sampled_from((None, None, None, *PAUSE_POINTS)),
    )
    def drain(self, worker: int, shard: int, pause_at: PausePoint | None) -> None:
        """One shard's drain, or (EVERY_SHARD) one call filled from both shards."""
        self._drain(worker, shard, pause_at)

    @rule(worker=st.integers(0, 2), shard=st.integers(0, 1), times=st.integers(1, 3))
    def drain_again_and_again(self, worker: int, shard: int, times: int) -> None:
        for _ in range(times):
            self._drain(worker, shard, None)

    @rule(behaviour=st.sampled_from(BEHAVIOURS), times=st.integers(1, 4))
    def script_marketo(self, behaviour: Behaviour, times: int) -> None:
        self.marketo.script.extend([behaviour] * times)

    @rule(change=st.sampled_from(("refuse", "stop_refusing", "clear_hold", "clear_quota")))
    def limits(self, change: str) -> None:
        """A limiter refusal (another pod was throttled) starts or ends; credentials are
        fixed; the quota day rolls over."""
        with self.step():
            if change in ("refuse", "stop_refusing"):
                self.run(self.system.refuse_calls(change == "refuse"))
            elif change == "clear_hold":
                self.run(self.system.clear_hold())
            else:
                self.run(self.system.clear_quota())

    @precondition(lambda self: bool(self.system.paused()))
    @rule(which=st.integers(0, 2), along=st.sampled_from((True, True, False)))
    def resume_zombie(self, which: int, along: bool) -> None:
        with self.step():
            paused = self.system.paused()
            index = paused[which % len(paused)]
            others = [i for i in self.system.idle() if i != index]
            self.run(self.system.resume(index, along_with=others[0] if along and others else None))

    @precondition(lambda self: bool(self.system.paused()))
    @rule(which=st.integers(0, 2))
    def abandon_worker(self, which: int) -> None:
        with self.step():
            paused = self.system.paused()
            self.run(self.system.abandon(paused[which % len(paused)]))

    @rule(shard=st.integers(0, 1))
    def lease_expires(self, shard: int) -> None:
        with self.step():
            self.run(self.system.expire_lease(shard))

    @rule()
    def replay_dead_letters(self) -> None:
        with self.step():
            replayed = self.run(self.system.replay_all())
            self.ref.reopened.update(replayed.replayed)

    @rule()
    def settle(self) -> None:
        with self.step():
            self.settle_everything()

    def settle_everything(self) -> None:
        """Clear every fault and refusal, let paused workers go on as zombies, then drain
        and replay until nothing is pending; then check invariants 2 and 3."""
        self.marketo.script.clear()
        self.run(self.system.clear_limits())
        for index in self.system.paused():
            self.run(self.system.resume(index))
        for _ in range(SETTLE_ROUNDS):
            for shard in range(self.system.shards):
                self.run(self.system.drain(self.system.idle()[0], shard))
            if any(self.run(self.system.backlog()).values()):
                continue
            replayed = self.run(self.system.replay_all())
            self.superseded = set(replayed.superseded)
            if not replayed.replayed:
                break
            self.ref.reopened.update(replayed.replayed)
            self.terminal_outcomes_never_change()
        else:
            pytest.fail(f"the pipeline did not settle in {SETTLE_ROUNDS} drain rounds")
        self.applied_seq_never_goes_back()
        self.no_key_in_two_calls_at_once()
        self.terminal_outcomes_never_change()
        self.rest_skips_unknown_fields_per_record_with_one_token()
        if 3 not in SKIP:
            unsettled = self.ref.unsettled(self.superseded)
            assert not unsettled, f"invariant 3 (every request terminal once settled): {unsettled}"
        if 2 not in SKIP:
            mismatches = self.ref.expected_vs_marketo(self.marketo)
            assert not mismatches, (
                f"invariant 2 (Marketo holds the newest accepted write): {mismatches}"
            )

    # --- invariants ----------------------------------------------------------------------

    @invariant()
    def applied_seq_never_goes_back(self) -> None:
        if 1 in SKIP:
            return
        with self.step():
            violations = self.marketo.order_violations
            assert not violations, f"invariant 1 (per-lead order): {violations}"

    @invariant()
    def terminal_outcomes_never_change(self) -> None:
        with self.step():
            problems = self.observe()  # always: the model needs the outcomes
            if 3 in SKIP:
                return
            assert not problems, f"invariant 3 (outcomes): {problems}"

    @invariant()
    def no_key_in_two_calls_at_once(self) -> None:
        if 4 in SKIP:
            return
        with self.step():
            overlaps = self.marketo.overlap_violations
            assert not overlaps, f"invariant 4 (in-flight keys): {overlaps}"

    @invariant()
    def every_key_expires_or_is_bounded(self) -> None:
        if 5 in SKIP:
            return
        with self.step():
            outcomes = self.run(self.system.outcomes(list(self.ref.writes)))
            problems = self.run(self.system.key_audit(outcomes))
            assert not problems, f"invariant 5 (keys without TTL or bound): {problems}"

    @invariant()
    def rest_skips_unknown_fields_per_record_with_one_token(self) -> None:
        wire = self.marketo.wire
        if 6 in SKIP or not isinstance(wire, RestWire):
            return
        with self.step():
            isolation = self.system.isolation_calls()
            assert not isolation, f"invariant 6 (REST needs no isolation): {isolation} calls"
            assert wire.identity_calls <= 1, (
                f"invariant 6 (one token): {wire.identity_calls} identity calls"
            )


@pytest.mark.timeout(1800)  # shrinking a failure takes minutes; a passing run about a minute
@pytest.mark.parametrize("protocol", RUN_PROTOCOLS)
def test_the_drain_keeps_its_promises_under_faults_zombies_and_replays(
    redis_url: str, protocol: WireProtocol
) -> None:
    DrainMachine.redis_url = redis_url
    DrainMachine.protocol = protocol
    run_state_machine_as_test(DrainMachine, settings=model_settings(protocol))


@pytest.mark.parametrize("behaviour", sorted(SOAP_FAULTS))
def test_each_scripted_fault_means_the_same_to_the_worker_over_both_apis(behaviour: str) -> None:
    """The model expects the same of a behaviour (refused, transient, hold) whatever the
    protocol: the worker classifies its SOAP and REST codes as the same error."""
    soap = fault_error(SOAP_FAULTS[behaviour], "scripted")
    rest = error_for(REST_FAULTS[behaviour], "scripted")
    assert type(soap) is type(rest), (behaviour, soap, rest)


# --- named regressions --------------------------------------------------------------------------


async def _system(
    redis_url: str, protocol: WireProtocol = "soap", **overrides: Any
) -> tuple[System, ScriptedMarketo, Reference]:
    marketo = ScriptedMarketo(wire_for(protocol))
    system = System(redis_url, marketo, **{"shards": 1, **overrides})
    await system.start()
    return system, marketo, Reference(unknown_field_code=marketo.wire.unknown_field_code)


async def _write(
    system: System, ref: Reference, email: str, value: str, *, poisoned: bool = False
) -> str:
    draft = ref.new_write(f"email:{email}", value, dedup=True, poisoned=poisoned)
    rid = await system.enqueue(email, draft.attributes, dedup=True)
    ref.accept(replace(draft, request_id=rid))
    return rid


async def _settle(system: System, shard: int = 0, rounds: int = 20) -> None:
    for _ in range(rounds):
        await system.drain(system.idle()[0], shard)
        if not (await system.backlog())[shard]:
            return
    raise AssertionError("the shard did not drain")


async def test_a_refused_cycle_never_lets_an_older_pending_write_win(redis_url: str) -> None:
    """Code review A1 (R1): a refused cycle leaves more pending entries than one claim takes."""
    system, marketo, ref = await _system(redis_url, batch_size=4)
    try:
        for v in range(1, 7):
            for person in ("k0", "k1", "k2"):
                await _write(system, ref, f"{person}@x.com", f"v{v}")
        await system.refuse_calls(True)  # another pod just got 20023
        await system.drain(0, 0)  # reads 16 entries, refused: all stay pending
        await system.refuse_calls(False)
        await _write(system, ref, "k0@x.com", "NEWEST")
        await _settle(system)
        assert marketo.leads["email:k0@x.com"][VAL] == "NEWEST", marketo.applied
        assert not marketo.order_violations
    finally:
        await system.close()


async def test_replay_never_overwrites_a_newer_pending_upsert(redis_url: str) -> None:
    """Code review A2 (R2): replaying Old while New is still pending must not send Old last."""
    system, marketo, ref = await _system(redis_url, max_attempts=1)
    try:
        await _write(system, ref, "ann@x.com", "Old")
        marketo.script.append("fault_10001")
        await system.drain(0, 0)  # faults: pending, one attempt used
        await system.drain(0, 0)  # exhausted: dead-lettered
        assert len(await system.dead_letters()) == 1
        await _write(system, ref, "ann@x.com", "New")
        await system.replay_all()
        await _settle(system)
        assert marketo.leads["email:ann@x.com"][VAL] == "New", marketo.calls
    finally:
        await system.close()


async def test_a_worker_whose_lease_expired_cannot_commit_or_dead_letter(redis_url: str) -> None:
    """R5: a paused worker whose lease expired comes back while another worker owns the
    shard mid-cycle. Neither its commit nor its dead-lettering may take effect."""
    problems: list[str] = []

    # (a) paused after its call was answered: the zombie's commit must be refused
    system, _marketo, ref = await _system(redis_url)
    try:
        rid = await _write(system, ref, "ann@x.com", "A")
        assert await system.drain(0, 0, pause_at="after_send")
        await system.expire_lease(0)
        assert await system.drain(1, 0, pause_at="after_claim")  # the new owner, mid-cycle
        await system.resume(0)  # the zombie goes on (its lease is already gone)
        after = (await system.outcomes([rid]))[rid]
        if after is not OutcomeStatus.PENDING:
            problems.append(f"the zombie committed: outcome {after} written without the lease")
        if not (await system.backlog())[0]:
            problems.append("the zombie acknowledged and deleted an entry it no longer owns")
    finally:
        await system.close()

    # (b) paused after claiming an entry on its last attempt: the zombie must not park it
    system, marketo, ref = await _system(redis_url, max_attempts=1)
    try:
        rid = await _write(system, ref, "bob@x.com", "B")
        marketo.script.append("fault_10001")
        await system.drain(0, 0)  # one attempt used; the next bump exhausts it
        assert await system.drain(0, 0, pause_at="after_claim")
        await system.expire_lease(0)
        assert await system.drain(1, 0, pause_at="after_claim")  # the new owner, mid-cycle
        await system.resume(0)
        letters = await system.dead_letters()
        if letters:
            problems.append(f"the zombie created dead-letter records {letters}")
        after = (await system.outcomes([rid]))[rid]
        if after is not OutcomeStatus.PENDING:
            problems.append(f"the zombie rewrote the outcome to {after}")
    finally:
        await system.close()
    assert not problems, problems


async def test_a_zombie_claim_cannot_steal_entries(redis_url: str) -> None:
    """R5: after its lease expired, a worker's next cycle must not claim entries that the
    new owner holds mid-cycle (nor count attempts for them)."""
    system, _marketo, ref = await _system(redis_url, batch_size=3)
    try:
        for person in ("p1", "p2", "p3", "p4"):
            await _write(system, ref, f"{person}@x.com", "v")
        # the first cycle sends three leads and commits; the zombie pauses before its next
        assert await system.drain(0, 0, pause_at="after_commit")
        await system.expire_lease(0)
        assert await system.drain(1, 0, pause_at="after_claim")  # claims the fourth entry
        owners_before = await system.pending_owners(0)
        attempts_before = await system.attempts(0)
        assert set(owners_before.values()) == {system.consumer(1)}
        await system.resume(0)
        owners_after = await system.pending_owners(0)
        assert owners_after == owners_before, (
            f"the zombie claimed entries: {owners_before} -> {owners_after}"
        )
        assert await system.attempts(0) == attempts_before
    finally:
        await system.close()


async def test_the_model_accepts_a_clean_run(redis_url: str) -> None:
    """The reference model itself: a run without faults, zombies or replays passes."""
    system, marketo, ref = await _system(redis_url, shards=2)
    try:
        for n, person in enumerate(PEOPLE * 2):
            await _write(system, ref, person, f"v{n}")
        for shard in (0, 1):
            await _settle(system, shard)
        assert not ref.observe(await system.outcomes(list(ref.writes)))
        assert not ref.expected_vs_marketo(marketo)
        assert not ref.unsettled(())
        assert not marketo.order_violations
        assert {k: v[SEQ] for k, v in marketo.leads.items()} == {
            w.key: str(w.seq) for w in sorted(ref.writes.values(), key=lambda w: w.seq)
        }
        assert not await system.key_audit(dict(ref.status))
    finally:
        await system.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_an_unknown_field_fails_only_its_record(
    redis_url: str, protocol: WireProtocol
) -> None:
    """SOAP: the whole call faults with 20105, the bad record fails, the rest goes in one
    more call. REST: Marketo skips the bad record (1006) and applies the rest in the same
    call, so no call is spent isolating it."""
    system, marketo, ref = await _system(redis_url, protocol, batch_size=4)
    try:
        rids = [await _write(system, ref, f"p{n}@x.com", "v", poisoned=n == 1) for n in range(3)]
        await _settle(system)
        details = await system.outcome_details(rids)
        outcomes, codes = details.statuses, details.error_codes
        assert not ref.observe(outcomes, codes)
        assert not ref.lead_ids_agree(details.lead_ids, marketo)
        assert [outcomes[r] for r in rids] == [
            OutcomeStatus.CREATED,
            OutcomeStatus.FAILED,
            OutcomeStatus.CREATED,
        ]
        assert codes[rids[1]] == marketo.wire.unknown_field_code
        assert not ref.expected_vs_marketo(marketo)
        assert "email:p1@x.com" not in marketo.leads
        if protocol == "rest":
            (call,) = marketo.calls
            assert call.applied
            assert call.skipped == ("email:p1@x.com",)
            assert system.isolation_calls() == 0
        else:
            assert [c.applied for c in marketo.calls] == [False, True]
            assert marketo.calls[1].keys == ("email:p0@x.com", "email:p2@x.com")
    finally:
        await system.close()


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_every_scripted_behaviour_keeps_the_promises(
    redis_url: str, protocol: WireProtocol, behaviour: Behaviour
) -> None:
    """Each behaviour once, on each protocol's wire, then settled: the model's checks hold.
    (The machine's search reaches some behaviours rarely: most of what it scripts is
    cleared by a settle before a call takes it.)"""
    system, marketo, ref = await _system(redis_url, protocol, batch_size=4)
    try:
        for n in range(3):
            await _write(system, ref, f"p{n}@x.com", "v1")
        marketo.script.append(behaviour)
        await system.drain(0, 0)
        assert [c.behaviour for c in marketo.calls] == [behaviour]
        await _write(system, ref, "p0@x.com", "v2")
        await system.clear_limits()
        await _settle(system)
        details = await system.outcome_details(list(ref.writes))
        assert not ref.observe(details.statuses, details.error_codes)
        assert not ref.lead_ids_agree(details.lead_ids, marketo)
        assert not ref.unsettled(())
        assert not ref.expected_vs_marketo(marketo)
        assert not marketo.order_violations
        assert not marketo.overlap_violations
        assert marketo.leads["email:p0@x.com"][VAL] == "v2"
    finally:
        await system.close()
