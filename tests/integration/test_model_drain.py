"""Model-based test of the drain: producers, the ledger, several Drainers sharing one real
Redis, dead-letter replay and the limiter, against a scripted Marketo and a reference
model (``tests/support/model.py``; every call into leadsync goes through its ``System``).
The same machine runs over both Marketo APIs, SOAP (syncMultipleLeads) and REST
(leads.json with a shared OAuth token): only the scripted Marketo's wire differs.

Writes are partial: each sets its own non-empty subset of a few fields (``model.FIELDS``),
every value naming the write that set it. Rule ``park_writes_of_one_lead`` parks several
writes of one lead (its drains meet scripted faults until the writes run out of attempts),
with writes applied in between, and replays them through the real replay path. Over REST
some writes of a person also name the Marketo id an earlier outcome gave (as apps keep
``lead_id``): Sync Leads matches by the lookupField (email) only, so it is one lead and,
by the key rule the System stores as a worker does, one key (without that rule stored
the machine finds the person's writes in one call twice, 1036, and a field reverted).

Invariants, checked after every step (2 after every settle, and at the end):

1. per lead and field, the value Marketo holds never goes back to an older write's;
2. once settled, Marketo holds for each lead the per-field merge, in write order, of
   every accepted dedup=true write except those that ended FAILED for their own bad data
   or SUPERSEDED (``Reference.counts``); a newer write's value may show only if that write
   does not count but Marketo applied it (its answer was lost);
3. a terminal outcome never changes, a parked one reopens only by replay, and once
   settled every request is terminal (or parked because replay would be superseded);
4. no lead key is in two calls in flight at once;
5. no Redis key without a TTL, except the kinds in ``model.ALLOWED_WITHOUT_TTL``, which
   must stay bounded;
6. over REST: a record with an unknown field is skipped alone and the rest of its call
   applied (no call is bisected: at most one more call per skipped record, which sends
   the oldest write of a merged record alone), and one token serves every worker;
7. an answer is never lost on the way: a write Marketo applied and answered in full is
   not sent again (unless its worker paused after the send, past its lease), and over a
   real socket every reply written whole reaches the worker whole.

Invariant 3 also says that only a write carrying an unknown field (never a good write
merged with it) ends FAILED, with the protocol's code (SOAP 20105, REST 1006), and never
succeeds, or a replayed write every field of which a newer write Marketo applied set
(SUPERSEDED); that a write that succeeded carries its own lead's Marketo id; and that a
dedup=false write sent in a call whose outcome leadsync cannot know
(``model.UNKNOWN_OUTCOME``: a gateway page, a lost or cut answer) is parked
DEAD_LETTERED with OUTCOME_UNKNOWN.

The scripted Marketo's "gateway_504" answers at once with a gateway's 504 page and keeps
the call's keys in flight: Marketo applies it later (rule ``marketo_applies_late_calls``,
or when time passes: a shard's rest may end only after Marketo applied every late call on
its keys, since Marketo finishes a call within LEADSYNC_UNKNOWN_OUTCOME_REST_S). Invariant
4 then catches any other call carrying those keys meanwhile.

The machine runs twice per protocol: behind a MockTransport, and (issue 17) behind a real
socket whose every reply arrives in 3 to 6 pieces, read by the production
AiohttpTransport, with one in-place retry of transient faults (never of a call whose
outcome is unknown).

Reproducible: derandomized, no example database. ``LEADSYNC_MODEL_EXAMPLES=<n>`` runs n
examples per protocol instead of 300 (SOAP) and 200 (REST) behind the MockTransport
and SPLIT_EXAMPLES over the socket;
``LEADSYNC_MODEL_PROTOCOLS=rest`` runs one protocol only; ``LEADSYNC_MODEL_SKIP``,
``LEADSYNC_MODEL_BATCH_SIZE`` and ``LEADSYNC_MODEL_STRICT`` are triage knobs (see
below). With ``-s`` each run prints what the search reached (``REACHED``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import AsyncIterator, Coroutine, Iterator
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

from producers.contract import OutcomeStatus, shard_for
from tests.support.model import (
    BEHAVIOURS,
    EVERY_SHARD,
    EXCUSES,
    FIELDS,
    OUTCOME_UNKNOWN_CODE,
    PAUSE_POINTS,
    PROTOCOLS,
    REST_FAULTS,
    SEQ,
    SOAP_FAULTS,
    SUCCESS,
    SUPERSEDED_CODE,
    UNKNOWN_OUTCOME,
    VAL,
    Behaviour,
    PausePoint,
    Reference,
    RestWire,
    ScriptedMarketo,
    SplitReplies,
    System,
    WireProtocol,
    WriteSpec,
    origin,
    tag,
    wire_for,
)
from tests.support.model_regressions import REGRESSIONS, Regression
from tests.support.wire_server import WireServer, wire_server
from worker.marketo.rest.faults import error_for
from worker.marketo.soap.faults import fault_error
from worker.transport import AiohttpTransport

pytestmark = pytest.mark.integration

T = TypeVar("T")

#: Two leads on shard 0 and three on shard 1 (``shard_for`` with 2 shards).
PEOPLE = ("cat@x.com", "eve@x.com", "ann@x.com", "bob@x.com", "dan@x.com")

_LONG = int(os.environ.get("LEADSYNC_MODEL_EXAMPLES", "0") or 0)
#: Examples per protocol in ``make test``. Since writes are partial and replays merge per
#: field, an example costs about twice what it did: 300 SOAP and 200 REST examples took
#: 208 s and 177 s on a loaded 2-core machine, most of the suite's 12-minute budget; these
#: take about half. LEADSYNC_MODEL_EXAMPLES=<n> runs a longer search.
EXAMPLES: dict[WireProtocol, int] = {"soap": 150, "rest": 100}
#: Examples per protocol over the real socket with replies in pieces (every call waits
#: for its reply's pieces: an example costs several times one behind the MockTransport).
SPLIT_EXAMPLES: dict[WireProtocol, int] = {"soap": 30, "rest": 30}
#: Triage knob: LEADSYNC_MODEL_PROTOCOLS=rest runs the machine over one protocol only.
RUN_PROTOCOLS = tuple(
    p for p in PROTOCOLS if p in os.environ.get("LEADSYNC_MODEL_PROTOCOLS", ",".join(PROTOCOLS))
)


def model_settings(protocol: WireProtocol, *, split_replies: bool = False) -> settings:
    examples = (SPLIT_EXAMPLES if split_replies else EXAMPLES)[protocol]
    return settings(
        max_examples=_LONG or examples,
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

#: Known product defects invariant 2 is narrowed for, to check anyway: e.g.
#: LEADSYNC_MODEL_STRICT=failed-maybe-written or =all (``model.EXCUSES``).
_STRICT = os.environ.get("LEADSYNC_MODEL_STRICT", "")
STRICT = EXCUSES if _STRICT == "all" else frozenset(_STRICT.split(",")) & EXCUSES

#: Triage knob: a batch size larger than any backlog hides R1 (partial claims), so the
#: search can find what else is wrong. The suite runs with the default 3.
BATCH_SIZE = int(os.environ.get("LEADSYNC_MODEL_BATCH_SIZE", "3"))

#: The fields one write sets: a non-empty subset of model.FIELDS, in their order.
FIELD_SETS = st.sets(st.sampled_from(FIELDS), min_size=1).map(
    lambda chosen: tuple(name for name in FIELDS if name in chosen)
)

#: Drain rounds a settle may take before the pipeline counts as stuck.
SETTLE_ROUNDS = 40


#: What the search reached: how many examples saw each event (DrainMachine.noted). A run
#: with ``-s`` prints it, to check that the machine still reaches what it is for.
REACHED: Counter[str] = Counter()


async def _aiohttp_transport() -> AiohttpTransport:
    """The production transport, made inside the loop that uses it."""
    return AiohttpTransport.create(
        request_timeout_s=30.0, connect_timeout_s=5.0, max_response_bytes=1 << 20
    )


class DrainMachine(RuleBasedStateMachine):
    redis_url: ClassVar[str] = ""
    protocol: ClassVar[WireProtocol] = "soap"
    #: Serve the scripted Marketo on a real socket, every reply in pieces (SplitReplies).
    split_replies: ClassVar[bool] = False
    #: In-place retries of a transient fault (never of a call whose outcome is unknown).
    transient_retries: ClassVar[int] = 0

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.marketo = ScriptedMarketo(wire_for(self.protocol))
        self.split: SplitReplies | None = None
        self._server: contextlib.AbstractAsyncContextManager[WireServer] | None = None
        wire: dict[str, Any] = {}
        if self.split_replies:
            self.split = SplitReplies(self.marketo)
            self._server = wire_server(handler=self.split)
            server = self.run(self._server.__aenter__())
            wire = {"url": server.url, "transport": self.run(_aiohttp_transport())}
        self.system = System(
            self.redis_url,
            self.marketo,
            batch_size=BATCH_SIZE,
            transient_retries=self.transient_retries,
            **wire,
        )
        self.ref = Reference(
            unknown_field_code=self.marketo.wire.unknown_field_code,
            excused=EXCUSES - STRICT,
        )
        self.superseded: set[str] = set()
        self._failed = False
        #: Events this example reached (REACHED counts them once per example).
        self.noted: set[str] = set()
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
        self.ref.learn_lead_ids(details.lead_ids)
        problems += self.ref.parked_after_unknown_outcome(
            self.marketo.calls, details.statuses, details.error_codes
        )
        return problems + self.ref.lead_ids_agree(details.lead_ids, self.marketo)

    def reopen(self, request_ids: list[str]) -> None:
        self.ref.reopen(request_ids, calls_so_far=len(self.marketo.calls))

    def teardown(self) -> None:
        try:
            if not self._failed:
                self.settle_everything()
                REACHED.update(self.noted | {f"{self.protocol} examples"})
        finally:
            try:
                self.run(self.system.close())
                if self._server is not None:
                    self.run(self._server.__aexit__(None, None, None))
            finally:
                self.runner.close()

    # --- rules ---------------------------------------------------------------------------

    def write(self, spec: WriteSpec) -> str:
        """Enqueue one write; its request id. Over REST a write that asks for it names the
        lead's Marketo id (from an earlier outcome) beside the email: Marketo matches it by
        the email all the same (lookupField), so it is the same lead and the same key.
        (Over SOAP the id would be another key, as it is to Marketo: not mixed here.)"""
        person, value, dedup, poisoned, lane, fields, with_id = spec
        key = f"email:{person}"
        marketo_id = self.ref.lead_ids.get(key) if with_id and self.protocol == "rest" else None
        draft = self.ref.new_write(
            key,
            value,
            dedup=dedup,
            poisoned=poisoned,
            fields=fields,
            marketo_id=marketo_id,
            lane=lane,
        )
        rid = self.run(
            self.system.enqueue(
                person, draft.attributes, dedup=dedup, lane=lane, marketo_id=marketo_id
            )
        )
        self.ref.accept(replace(draft, request_id=rid))
        return rid

    @rule(
        writes=st.lists(
            st.tuples(
                st.sampled_from(PEOPLE),
                st.sampled_from(("a", "b", "c")),
                st.sampled_from((True, True, True, False)),  # dedup
                st.sampled_from((False, False, False, False, False, True)),  # poisoned
                st.sampled_from(("live", "live", "bulk")),
                FIELD_SETS,
                st.booleans(),  # with the lead's Marketo id (REST)
            ),
            min_size=1,
            max_size=4,
        )
    )
    def enqueue(self, writes: list[WriteSpec]) -> None:
        """Partial writes into either lane: a lead's bulk and live writes keep their order,
        and Marketo merges their fields."""
        with self.step():
            for spec in writes:
                self.write(spec)

    @rule(
        person=st.sampled_from(PEOPLE),
        writes=st.lists(
            st.tuples(
                FIELD_SETS,
                st.sampled_from(("a", "b", "c")),
                st.sampled_from((True, True, False)),  # parked, or applied by a drain
                st.booleans(),  # with the lead's Marketo id (REST)
            ),
            min_size=2,
            max_size=3,
        ),
        behaviour=st.sampled_from(("fault_10001", "fault_10001", "lost_timeout")),
        worker=st.integers(0, 2),
        replay=st.booleans(),
    )
    def park_writes_of_one_lead(
        self,
        person: str,
        writes: list[tuple[tuple[str, ...], str, bool, bool]],
        behaviour: Behaviour,
        worker: int,
        replay: bool,
    ) -> None:
        """Several partial writes of one lead, each parked (its shard's drains meet
        ``behaviour`` until it runs out of attempts; a "lost_timeout" call was applied by
        Marketo, its answer lost) or applied by a drain in between; then maybe the replay
        (the ``replay_dead_letters`` rule: a lead's parked writes go back together, and a
        field a newer write set must not be reverted)."""
        shard = shard_for(f"email:{person}", self.system.shards)
        for fields, value, park, with_id in writes:
            rid = self.write((person, value, True, False, "live", fields, with_id))
            if park:
                self._park(rid, shard, behaviour, worker)
            else:
                self._drain(worker, shard, None)
        if replay:
            self.replay_dead_letters()

    def _park(self, rid: str, shard: int, behaviour: Behaviour, worker: int) -> None:
        """Drain ``shard``, each drain's first call meeting ``behaviour``, until ``rid`` is
        parked (LEADSYNC_MAX_ATTEMPTS calls, then the cycle that parks it), or a limit
        keeps the drains from calling."""
        script = self.marketo.script
        for _ in range(self.system.settings.max_attempts + 1):
            script.insert(0, behaviour)
            waiting = len(script)
            self._drain(worker, shard, None)
            if len(script) == waiting:  # no call was made: the script is as it was
                script.pop(0)
            status = self.run(self.system.outcomes([rid]))[rid]
            if status is not OutcomeStatus.PENDING:
                return

    def _drain(
        self, worker: int, shard: int, pause_at: PausePoint | None, *, waited: bool = True
    ) -> None:
        with self.step():
            idle = self.system.idle()
            if idle:
                index = idle[worker % len(idle)]
                self.run(self.system.drain(index, shard, pause_at, waited=waited))

    @rule(
        worker=st.integers(0, 2),
        shard=st.sampled_from((0, 1, 2, 3, EVERY_SHARD)),
        pause_at=st.sampled_from((None, None, None, *PAUSE_POINTS)),
    )
    def drain(self, worker: int, shard: int, pause_at: PausePoint | None) -> None:
        """One stream's drain (2 and 3: the shards' bulk streams), or (EVERY_SHARD) one
        call filled from both shards' live streams."""
        self._drain(worker, shard, pause_at)

    @rule(worker=st.integers(0, 2), shard=st.integers(0, 3), times=st.integers(1, 3))
    def drain_again_and_again(self, worker: int, shard: int, times: int) -> None:
        for _ in range(times):
            self._drain(worker, shard, None)

    @rule(behaviour=st.sampled_from(BEHAVIOURS), times=st.integers(1, 4))
    def script_marketo(self, behaviour: Behaviour, times: int) -> None:
        self.marketo.script.extend([behaviour] * times)

    @rule(
        person=st.sampled_from(PEOPLE),
        dedup=st.sampled_from((True, True, False)),
        behaviour=st.sampled_from(sorted(UNKNOWN_OUTCOME)),
        worker=st.integers(0, 2),
        together=st.booleans(),
        queued=st.booleans(),
    )
    def write_into_an_unknown_outcome(
        self,
        person: str,
        dedup: bool,
        behaviour: Behaviour,
        worker: int,
        together: bool,
        queued: bool,
    ) -> None:
        """One more write, and a drain of its shard (or of every shard) whose first call
        meets ``behaviour``: its answer is lost, or a gateway answers 504 while Marketo goes
        on with it. (A behaviour scripted alone is mostly cleared by a settle before a call
        takes it; this one meets the next call, or is taken back.) ``queued``: then another
        worker's drain message, already queued, runs at once."""
        self.enqueue([(person, "u", dedup, False, "live", (SEQ, VAL), False)])
        script = self.marketo.script
        script.insert(0, behaviour)
        waiting = len(script)
        shard = EVERY_SHARD if together else shard_for(f"email:{person}", self.system.shards)
        self._drain(worker, shard, None)
        if len(script) == waiting:  # no call was made: the script is as it was
            script.pop(0)
        if queued:
            self._drain(worker + 1, shard, None, waited=False)

    @rule(worker=st.integers(0, 2), shard=st.sampled_from((0, 1, 2, 3, EVERY_SHARD)))
    def drain_without_waiting(self, worker: int, shard: int) -> None:
        """A drain message that was queued (or redelivered) runs before any time passes:
        a shard still resting turns it away."""
        self._drain(worker, shard, None, waited=False)

    @rule(
        change=st.sampled_from(
            ("refuse", "stop_refusing", "clear_hold", "clear_quota", "unknown_outcome_rest")
        )
    )
    def limits(self, change: str) -> None:
        """A limiter refusal (another pod was throttled) starts or ends; credentials are
        fixed; the quota day rolls over; the unknown-outcome rest passes (Marketo applied
        every late call, the slots kept for them expire)."""
        with self.step():
            if change in ("refuse", "stop_refusing"):
                self.run(self.system.refuse_calls(change == "refuse"))
            elif change == "clear_hold":
                self.run(self.system.clear_hold())
            elif change == "clear_quota":
                self.run(self.system.clear_quota())
            else:
                self.run(self.system.unknown_outcome_rest_passes())

    @precondition(lambda self: bool(self.marketo.late))
    @rule(which=st.integers(0, 3))
    def marketo_applies_late_calls(self, which: int) -> None:
        """Marketo finishes one call a gateway answered 504 for (any of them: they share
        no key, or invariant 4 has failed already)."""
        late = self.marketo.late[which % len(self.marketo.late)]
        self.marketo.apply_late(lambda call: call is late)

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
            self.reopen(replayed.replayed + replayed.superseded)
            self._note_replay(replayed.replayed + replayed.superseded)

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
            for shard in self.system.streams:
                self.run(self.system.drain(self.system.idle()[0], shard))
            if any(self.run(self.system.backlog()).values()):
                continue
            replayed = self.run(self.system.replay_all())
            self.superseded = set(replayed.superseded)
            self.reopen(replayed.replayed + replayed.superseded)
            self._note_replay(replayed.replayed + replayed.superseded)
            if not replayed.replayed:
                break
            self.terminal_outcomes_never_change()
        else:
            pytest.fail(f"the pipeline did not settle in {SETTLE_ROUNDS} drain rounds")
        self.applied_seq_never_goes_back()
        self.no_key_in_two_calls_at_once()
        self.terminal_outcomes_never_change()
        self._note_settled()
        self.rest_skips_unknown_fields_per_record_with_one_token()
        self.an_answer_is_never_lost_on_the_way()
        if 3 not in SKIP:
            unsettled = self.ref.unsettled(self.superseded)
            assert not unsettled, f"invariant 3 (every request terminal once settled): {unsettled}"
        if 2 not in SKIP:
            mismatches = self.ref.expected_vs_marketo(self.marketo)
            assert not mismatches, (
                f"invariant 2 (Marketo holds the per-field merge of the accepted writes): "
                f"{mismatches}"
            )

    # --- what the search reached (pytest --hypothesis-show-statistics) --------------------

    def _note_replay(self, request_ids: list[str]) -> None:
        dedup = [self.ref.writes[rid] for rid in request_ids if self.ref.writes[rid].dedup]
        most = max(Counter(w.key for w in dedup).values(), default=0)
        self.noted.add(
            f"a replay took back {min(most, 3)}{'+' if most >= 3 else ''} writes of one lead"
        )

    def _note_settled(self) -> None:
        writes = self.ref.writes.values()
        if any(w.marketo_id is not None for w in writes):
            self.noted.add("a write named the lead's Marketo id beside its email")
        if any(self.ref.codes.get(w.request_id) == SUPERSEDED_CODE for w in writes):
            self.noted.add("a replayed write was SUPERSEDED")
        merged = max(
            (len({origin(v) for v in held.values()}) for held in self.marketo.leads.values()),
            default=0,
        )
        self.noted.add(
            f"a lead ends merged from {min(merged, 3)}{'+' if merged >= 3 else ''} writes"
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
            # Marketo skips a bad record alone: no call is bisected. Only a skipped record
            # merging several writes of a lead costs one more call, its oldest write alone
            # (so only the write at fault fails).
            isolation = self.system.isolation_calls()
            skipped = sum(len(call.skipped) for call in self.marketo.calls)
            assert isolation <= skipped, (
                f"invariant 6 (REST isolates only skipped merged records): {isolation} "
                f"isolation calls for {skipped} skipped records"
            )
            assert wire.identity_calls <= 1, (
                f"invariant 6 (one token): {wire.identity_calls} identity calls"
            )

    @invariant()
    def an_answer_is_never_lost_on_the_way(self) -> None:
        if 7 in SKIP:
            return
        with self.step():
            resent = self.system.resent_after_ok()
            assert not resent, f"invariant 7 (an answered write is not sent again): {resent}"
            if self.split is not None:
                assert not self.split.errors, f"the scripted Marketo raised: {self.split.errors}"
                cut = self.system.replies_cut_on_the_way(self.split.written)
                assert not cut, f"invariant 7 (a reply written whole is read whole): {cut}"


@pytest.mark.timeout(1800)  # shrinking a failure takes minutes; a passing run about a minute
@pytest.mark.parametrize("protocol", RUN_PROTOCOLS)
def test_the_drain_keeps_its_promises_under_faults_zombies_and_replays(
    redis_url: str, protocol: WireProtocol
) -> None:
    DrainMachine.redis_url = redis_url
    DrainMachine.protocol = protocol
    DrainMachine.split_replies = False
    DrainMachine.transient_retries = 0
    REACHED.clear()
    run_state_machine_as_test(DrainMachine, settings=model_settings(protocol))
    print(f"reached ({protocol}): {dict(sorted(REACHED.items()))}")


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("protocol", RUN_PROTOCOLS)
def test_the_drain_keeps_its_promises_with_replies_in_pieces_over_a_socket(
    redis_url: str, protocol: WireProtocol
) -> None:
    """Issue 17: the same machine with the scripted Marketo behind a real socket, every
    reply written in pieces a few milliseconds apart and read by AiohttpTransport, and
    one in-place retry of transient faults: no reply is read as a prefix (so no answered
    call is sent again), and a gateway's 504 (Marketo applies the call later) is never
    retried in place nor its keys sent by anyone while Marketo may still apply it."""
    DrainMachine.redis_url = redis_url
    DrainMachine.protocol = protocol
    DrainMachine.split_replies = True
    DrainMachine.transient_retries = 1
    try:
        REACHED.clear()
        run_state_machine_as_test(
            DrainMachine, settings=model_settings(protocol, split_replies=True)
        )
        print(f"reached ({protocol}, replies in pieces): {dict(sorted(REACHED.items()))}")
    finally:
        DrainMachine.split_replies = False
        DrainMachine.transient_retries = 0


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
        assert tag(marketo.leads["email:k0@x.com"][VAL]) == "NEWEST", marketo.applied
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
        assert tag(marketo.leads["email:ann@x.com"][VAL]) == "New", marketo.calls
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
        assert tag(marketo.leads["email:p0@x.com"][VAL]) == "v2"
    finally:
        await system.close()


@contextlib.asynccontextmanager
async def _model(
    redis_url: str, protocol: WireProtocol, *, split: bool, **overrides: Any
) -> AsyncIterator[tuple[System, ScriptedMarketo, Reference, SplitReplies | None]]:
    """A one-shard System behind a MockTransport, or behind a socket (``split``)."""
    marketo = ScriptedMarketo(wire_for(protocol))
    async with contextlib.AsyncExitStack() as stack:
        wire: dict[str, Any] = {}
        replies = None
        if split:
            replies = SplitReplies(marketo)
            server = await stack.enter_async_context(wire_server(handler=replies))
            wire = {"url": server.url, "transport": await _aiohttp_transport()}
        system = System(redis_url, marketo, **{"shards": 1, **wire, **overrides})
        await system.start()
        try:
            yield (
                system,
                marketo,
                Reference(unknown_field_code=marketo.wire.unknown_field_code),
                replies,
            )
        finally:
            await system.close()


@pytest.mark.parametrize("split", [False, True], ids=["mock", "socket"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_late_gateway_504_holds_its_keys_until_marketo_applies_it(
    redis_url: str, protocol: WireProtocol, split: bool
) -> None:
    """The model's late fault, step by step: the 504'd call is not retried in place, a
    queued drain is turned away while the shard rests, the keys stay in flight until the
    rest ends (Marketo applied the call by then), the newer write wins, and a dedup=false
    record of such a call is parked with OUTCOME_UNKNOWN until a replay."""
    async with _model(redis_url, protocol, split=split, transient_retries=1) as (
        system,
        marketo,
        ref,
        replies,
    ):
        await _write(system, ref, "ann@x.com", "v1")
        marketo.script.append("gateway_504")
        await system.drain(0, 0)
        assert [c.behaviour for c in marketo.calls] == ["gateway_504"], "not retried in place"
        assert marketo.in_flight["email:ann@x.com"] == 1
        await system.drain(1, 0, waited=False)  # a drain message already queued
        assert len(marketo.calls) == 1, "the resting shard turned it away"
        await _write(system, ref, "ann@x.com", "v2")
        await _settle(system)  # the rest ends: Marketo applied the late call first
        assert marketo.applied["email:ann@x.com"][:2] == [1, 2]
        assert tag(marketo.leads["email:ann@x.com"][VAL]) == "v2"

        draft = ref.new_write("email:dup@x.com", "d", dedup=False, poisoned=False)
        rid = await system.enqueue("dup@x.com", draft.attributes, dedup=False)
        ref.accept(replace(draft, request_id=rid))
        marketo.script.append("gateway_504")
        await system.drain(0, 0)
        details = await system.outcome_details(list(ref.writes))
        assert (details.statuses[rid], details.error_codes[rid]) == (
            OutcomeStatus.DEAD_LETTERED,
            OUTCOME_UNKNOWN_CODE,
        )
        assert not ref.parked_after_unknown_outcome(
            marketo.calls, details.statuses, details.error_codes
        )
        await system.clear_limits()  # the rest passes: Marketo created the lead
        assert len(marketo.duplicates) == 1
        ref.reopen((await system.replay_all()).replayed, calls_so_far=len(marketo.calls))
        await _settle(system)
        details = await system.outcome_details(list(ref.writes))
        assert not ref.observe(details.statuses, details.error_codes)
        assert not ref.parked_after_unknown_outcome(
            marketo.calls, details.statuses, details.error_codes
        )
        assert not ref.unsettled(())
        assert not ref.expected_vs_marketo(marketo)
        assert not marketo.overlap_violations
        assert not marketo.order_violations
        assert not system.resent_after_ok()
        if replies is not None:
            assert not replies.errors
            assert not system.replies_cut_on_the_way(replies.written)
            assert len(replies.written) >= 3


@pytest.mark.parametrize("behaviour", ["gateway_504", "lost_timeout"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_an_older_replayed_write_is_never_applied_after_a_newer_one(
    redis_url: str, protocol: WireProtocol, behaviour: Behaviour
) -> None:
    """Found by the machine (issue 17; passes on b416c92, fails since 39536a1): v1 and v2
    of one lead both meet calls whose outcome is unknown (Marketo applied them), v1 runs
    out of attempts and is parked, the operator replays it while v2 is still pending; v2
    then runs out of attempts in the very cycle that sends the replayed v1 alone: Marketo
    applies v1 after v2 (invariant 1), and keeps it unless v2 is replayed too."""
    system, marketo, ref = await _system(redis_url, protocol, max_attempts=2)
    try:
        await _write(system, ref, "cat@x.com", "v1")
        marketo.script.append(behaviour)
        await system.drain(0, 0)
        await _write(system, ref, "cat@x.com", "v2")
        marketo.script.append(behaviour)
        await system.drain(0, 0)
        await system.drain(0, 0)  # v1 out of attempts: parked
        await _write(system, ref, "eve@x.com", "e")
        marketo.script.append(behaviour)
        await system.drain(0, 0)
        await system.replay_all()
        await system.clear_limits()
        await _settle(system)
        assert not marketo.order_violations, [(c.behaviour, c.seqs) for c in marketo.calls]
    finally:
        await system.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_dedup_false_write_never_supersedes_the_leads_parked_write(
    redis_url: str, protocol: WireProtocol
) -> None:
    """Found by the machine (issue 17; passes on b416c92, fails since 39536a1): a
    createDuplicate write makes a second lead, it does not set the fields of the lead a
    parked dedup=true write of the same email is for; a replay must still send it (not
    answer it FAILED / SUPERSEDED, the lead never written)."""
    system, marketo, ref = await _system(redis_url, protocol, max_attempts=1)
    try:
        rid = await _write(system, ref, "ann@x.com", "v1")
        marketo.script.append("fault_10001")
        await system.drain(0, 0)
        await system.drain(0, 0)  # out of attempts: parked
        draft = ref.new_write("email:ann@x.com", "dup", dedup=False, poisoned=False)
        dup = await system.enqueue("ann@x.com", draft.attributes, dedup=False)
        ref.accept(replace(draft, request_id=dup))
        await _settle(system)  # a second lead
        await system.replay_all()
        await _settle(system)
        details = await system.outcome_details([rid, dup])
        assert details.statuses[rid] in SUCCESS, (details.statuses, details.error_codes)
        assert tag(marketo.leads["email:ann@x.com"][VAL]) == "v1"
        assert len(marketo.duplicates) == 1
    finally:
        await system.close()


@pytest.mark.parametrize("regression", REGRESSIONS, ids=lambda r: r.name)
def test_a_case_the_machine_found_keeps_its_promises(
    redis_url: str, regression: Regression
) -> None:
    """Failures the machine found, replayed step by step with every invariant checked
    after each step (tests/support/model_regressions.py says what each one broke)."""
    DrainMachine.redis_url = redis_url
    DrainMachine.protocol = regression.protocol
    DrainMachine.split_replies = regression.split_replies
    DrainMachine.transient_retries = regression.transient_retries
    try:
        machine = DrainMachine()
        checks = [
            getattr(machine, name)
            for name in dir(DrainMachine)
            if getattr(getattr(DrainMachine, name), "hypothesis_stateful_invariant", None)
        ]
        assert checks, "the machine's invariants"
        try:
            for name, arguments in regression.steps:
                getattr(machine, name)(**arguments)
                for check in checks:
                    check()
        finally:
            machine.teardown()
    finally:
        DrainMachine.protocol = "soap"
        DrainMachine.split_replies = False
        DrainMachine.transient_retries = 0
