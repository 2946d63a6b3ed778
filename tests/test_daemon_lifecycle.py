"""The domain state machine, transition by transition, as the simulated store is tested:
events in, effects out, no I/O.

Each test feeds what the owner task would feed and checks the state and the effects
in their order: the owner carries them out in exactly that order.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from rmrrd.daemon.lifecycle import (
    ACCEPTS,
    REPLIES_KEPT,
    AnswerCheck,
    AnswerVanished,
    CheckAsked,
    CheckIntroduced,
    CountQuery,
    DeviceAttached,
    Domain,
    DomainMachine,
    DomainStateError,
    Effect,
    GrantAnswer,
    LEARN_RETRIES,
    LearnLater,
    IntroducedSeen,
    Later,
    Limits,
    Log,
    QueriesListed,
    QueriesStopped,
    QueryRead,
    QueryWritten,
    ReadQuery,
    RecordAllocation,
    Released,
    Reloaded,
    RemoveAnswer,
    RemoveQuery,
    RemoveRecords,
    RemoveReply,
    ReportSetup,
    RequestChanged,
    RestartQueries,
    RetrySetup,
    RunSetup,
    SetupDone,
    SetupFailed,
    SetupOutcome,
    SetupResult,
    StartQueries,
    State,
    StopQueries,
    WriteReply,
    retry_delay,
    setup_kind,
)
from rmrrd.core.inventory_yaml import load_inventory_file
from rmrrd.core.pci import Bdf
from rmrrd.core.planner import parse_domain_request, plan
from rmrrd.core.ranges import Range

_ETC = Path(__file__).resolve().parent.parent / "etc" / "inventories"
D1, D2 = "0000:00:14.0", "0000:00:02.0"
LIMITS = Limits(query_rate=10, query_burst=5, max_allocations=4)
MAX_LENGTH = 256


def seed_outcome(memory: str = "4096") -> SetupOutcome:
    """Domain 1 of the seed scenario on node-a, planned as the daemon plans it."""
    request = parse_domain_request(memory, "1024", None, None, [D2], [D1], ["node-b"])
    peers = {"node-b": load_inventory_file(_ETC / "node-b.yaml")}
    return SetupOutcome(request, plan(request, load_inventory_file(_ETC / "node-a.yaml"), peers), None)


SEED = seed_outcome()


def answered(generation: str = "1") -> DomainMachine:
    """A machine that has written the answer to ``generation`` (at t=0, committed t=0.5)."""
    machine = DomainMachine(1, LIMITS)
    assert machine.handle(RequestChanged(0.0)) == [RunSetup(None)]
    machine.handle(SetupDone(SetupResult("written", generation, SEED), 0.5))
    assert machine.state is State.ANSWERED
    return machine


def query(machine: DomainMachine, name: str, raw: bytes, now: float = 1.0) -> list[Effect]:
    """A query node as the owner sees it: the watch event, then its value."""
    assert machine.handle(QueryWritten(name)) == [ReadQuery(name)]
    return machine.handle(QueryRead(name, raw, now, MAX_LENGTH))


# --- what a setup must do ----------------------------------------------------------------

@pytest.mark.parametrize(("requested", "answered_", "known", "kind"), [
    ("1", None, None, "written"),
    ("2", "1", "1", "rewritten"),
    ("1", "1", "1", "current"),
    ("1", "1", None, "relearned"),     # answered before a restart
    ("2", "2", "1", "relearned"),
    ("1", None, "1", "written"),       # our answer is gone: served again
])
def test_setup_kind(requested: str, answered_: str | None, known: str | None, kind: str) -> None:
    assert setup_kind(requested, answered_, known) == kind


# --- setups --------------------------------------------------------------------------------

def test_first_answer_starts_queries_checks_introduction_and_reports_from_the_trigger() -> None:
    machine = DomainMachine(1, LIMITS)
    assert machine.state is State.WAITING and machine.holds_nothing
    assert machine.handle(RequestChanged(10.0)) == [RunSetup(None)]
    assert machine.state is State.PLANNING
    effects = machine.handle(SetupDone(SetupResult("written", "1", SEED), 10.25))
    assert effects == [StartQueries(), CheckIntroduced(), ReportSetup("1", SEED, 0.25)]
    assert machine.state is State.ANSWERED and machine.domain.plan is SEED.plan
    assert machine.domain.generation == "1" and not machine.holds_nothing


def test_a_changed_request_replans_with_the_known_generation() -> None:
    machine = answered("1")
    machine.handle(IntroducedSeen(True))
    assert machine.handle(RequestChanged(2.0)) == [RunSetup("1")]
    other = seed_outcome("2048")
    effects = machine.handle(SetupDone(SetupResult("rewritten", "2", other), 2.5))
    # Queries already run and the domain is introduced: only the report.
    assert effects == [ReportSetup("2", other, 0.5)]
    assert machine.domain.plan is other.plan


def test_a_rewritten_answer_drops_the_allocations_of_the_old_layout() -> None:
    machine = answered()
    query(machine, "q1", b"alloc 0x1000")
    assert len(machine.domain.allocations) == 1
    machine.handle(RequestChanged(2.0))
    machine.handle(SetupDone(SetupResult("rewritten", "2", SEED), 2.0))
    assert len(machine.domain.allocations) == 0


def test_current_and_waiting_change_nothing() -> None:
    machine = answered()
    domain = machine.domain
    # waiting: the request went, our answer is still there (both gone: a domain re-created)
    for result in (SetupResult("current", "1"), SetupResult("waiting", answer_present=True)):
        machine.handle(RequestChanged(3.0))
        assert machine.handle(SetupDone(result, 3.0)) == []
        assert machine.state is State.ANSWERED and machine.domain is domain
    fresh = DomainMachine(2, LIMITS)
    fresh.handle(RequestChanged(0.0))
    assert fresh.handle(SetupDone(SetupResult("waiting"), 0.0)) == []
    assert fresh.state is State.WAITING and fresh.holds_nothing


def test_relearned_answer_is_not_reported_again() -> None:
    machine = DomainMachine(1, LIMITS)
    machine.handle(RequestChanged(0.0))
    assert machine.handle(SetupDone(SetupResult("relearned", "1", SEED), 0.0)) == [StartQueries(), CheckIntroduced()]
    assert machine.state is State.ANSWERED


def test_a_failed_setup_returns_to_where_it_was_and_retries_later() -> None:
    machine = answered()
    machine.handle(RequestChanged(1.0))
    effects = machine.handle(SetupFailed("ConnectionLost: xenstored went away"))
    assert machine.state is State.ANSWERED
    assert effects[1:] == [Later(retry_delay(1), RetrySetup(machine.serial))]
    assert effects[0] == Log(logging.WARNING, "domain 1: setup failed: ConnectionLost: xenstored went away; "
                                              "retrying in up to 0.1 s (attempt 1)")
    fresh = DomainMachine(2, LIMITS)
    fresh.handle(RequestChanged(0.0))
    fresh.handle(SetupFailed("Again"))
    assert fresh.state is State.WAITING and not fresh.holds_nothing  # it stays for its retry


def test_retries_back_off_warn_once_and_count_from_the_first_trigger() -> None:
    machine = DomainMachine(3, LIMITS)
    machine.handle(RequestChanged(10.0))
    levels, delays = [], []
    for _ in range(8):
        log_line, later = machine.handle(SetupFailed("XenstoreTimeout: no answer"))
        assert isinstance(log_line, Log) and isinstance(later, Later)
        levels.append(log_line.level)
        delays.append(later.delay)
        assert machine.handle(later.event) == [RunSetup(None)]
    assert levels == [logging.WARNING] + [logging.DEBUG] * 7
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    effects = machine.handle(SetupDone(SetupResult("written", "1", SEED), 30.0))
    assert effects[0] == Log(logging.INFO, "domain 3: setup done after 8 failed attempts")
    assert ReportSetup("1", SEED, 20.0) in effects  # from the trigger at t=10, not the last retry


def test_a_retry_that_finds_nothing_left_to_do_does_nothing() -> None:
    machine = DomainMachine(4, LIMITS)
    machine.handle(RequestChanged(0.0))
    later = machine.handle(SetupFailed("x"))[1]
    assert isinstance(later, Later)
    machine.handle(RequestChanged(1.0))  # the toolstack asked again meanwhile, and it went through
    machine.handle(SetupDone(SetupResult("written", "1", SEED), 2.0))
    assert machine.handle(later.event) == []
    assert machine.retries_pending == 0
    other = DomainMachine(4, LIMITS)  # a later domain on the domid ignores the earlier one's retries
    other.handle(RequestChanged(0.0))
    own = other.handle(SetupFailed("x"))[1]
    assert other.handle(later.event) == [] and other.retries_pending == 1
    assert isinstance(own, Later) and other.handle(own.event) == [RunSetup(None)]


def test_absent_from_libxl_releases_what_was_answered() -> None:
    machine = answered()
    machine.handle(RequestChanged(1.0))
    effects = machine.handle(SetupDone(SetupResult("absent"), 1.0))
    assert effects == [StopQueries(), RemoveAnswer("removed from /libxl")]
    assert machine.state is State.RELEASED and machine.holds_nothing


def test_absent_and_never_answered_ends_quietly_unless_an_answer_lingers() -> None:
    quiet = DomainMachine(1, LIMITS)
    quiet.handle(RequestChanged(0.0))
    assert quiet.handle(SetupDone(SetupResult("absent"), 0.0)) == []
    assert quiet.state is State.RELEASED
    stale = DomainMachine(1, LIMITS)
    stale.handle(RequestChanged(0.0))
    assert stale.handle(SetupDone(SetupResult("absent", answer_present=True), 0.0)) == [
        RemoveAnswer("removed from /libxl")]


# --- a domain re-created on the same domid ------------------------------------------------

def test_answer_vanishing_drops_the_old_domain_and_serves_the_request_again() -> None:
    machine = answered()
    query(machine, "q1", b"alloc 0x1000")
    machine.handle(CheckAsked(_NoCheck()))
    machine.handle(DeviceAttached(Bdf.parse(D1), "hotplug"))
    machine.handle(IntroducedSeen(True))
    # The query node's own event; the node is gone.  A setup looks at what is there now.
    assert machine.handle(QueriesListed(None)) == [RunSetup("1")]
    assert machine.state is State.PLANNING
    # The request is still there but not our answer: the old domain is dropped, the
    # request answered afresh; queries keep their watch.
    effects = machine.handle(SetupDone(SetupResult("written", "1", SEED), 1.0))
    logs = [effect for effect in effects if isinstance(effect, Log)]
    assert len(logs) == 1 and logs[0].level == logging.INFO
    assert "domain 1: answer gone when its request was served again (domain re-created on this domid?)" in (
        logs[0].message)
    assert effects[1:] == [RemoveRecords(), CheckIntroduced(), ReportSetup("1", SEED, 1.0)]
    domain = machine.domain
    assert (len(domain.allocations), domain.attached, domain.introduced) == (0, {}, False)
    assert machine.state is State.ANSWERED and domain.plan is SEED.plan


def test_answer_vanishing_while_the_request_is_gone_too_waits_for_the_next() -> None:
    """``xl create`` on a reused domid wipes /libxl/<domid> and /local/domain/<domid> together."""
    machine = answered()
    assert machine.handle(AnswerVanished()) == [RunSetup("1")]
    effects = machine.handle(SetupDone(SetupResult("waiting"), 1.0))
    assert [type(effect) for effect in effects] == [Log, RemoveRecords]
    assert "domain 1: request and answer gone, /libxl/1 still there (domain re-created on this domid?)" in (
        effects[0].message)  # type: ignore[union-attr]
    assert machine.state is State.WAITING and machine.domain.plan is None
    machine.handle(RequestChanged(2.0))
    assert machine.handle(SetupDone(SetupResult("written", "1", SEED), 2.0)) == [
        CheckIntroduced(), ReportSetup("1", SEED, 0.0)]


def test_a_listing_older_than_the_new_domains_answer_drops_nothing() -> None:
    # xl create and the toolstack's new request in one burst: the setup answers the new
    # domain, then the query watch's listing from before that answer arrives.
    machine = answered()
    machine.handle(RequestChanged(1.0))
    effects = machine.handle(SetupDone(SetupResult("written", "2", SEED), 1.0))
    assert sum(isinstance(effect, Log) for effect in effects) == 1
    query(machine, "q1", b"alloc 0x1000")
    assert machine.handle(QueriesListed(None)) == [RunSetup("2")]
    assert machine.handle(SetupDone(SetupResult("current", "2"), 2.0)) == []
    assert machine.state is State.ANSWERED and len(machine.domain.allocations) == 1
    # Nor does a stale listing while the request is being changed (our answer is there).
    assert machine.handle(QueriesListed(None)) == [RunSetup("2")]
    assert machine.handle(SetupDone(SetupResult("waiting", answer_present=True), 3.0)) == []
    assert machine.state is State.ANSWERED and len(machine.domain.allocations) == 1


def test_a_setup_finding_its_answer_gone_drops_the_old_domain_first() -> None:
    machine = answered()
    query(machine, "q1", b"alloc 0x1000")
    machine.handle(RequestChanged(1.0))
    effects = machine.handle(SetupDone(SetupResult("written", "1", SEED), 1.5))
    assert [type(effect) for effect in effects] == [Log, RemoveRecords, CheckIntroduced, ReportSetup]
    assert "re-created on this domid" in effects[0].message  # type: ignore[union-attr]
    assert machine.state is State.ANSWERED and len(machine.domain.allocations) == 0


def test_vanishing_means_nothing_before_an_answer() -> None:
    machine = DomainMachine(1, LIMITS)
    assert machine.handle(AnswerVanished()) == []
    assert machine.handle(QueriesListed(None)) == []
    assert machine.state is State.WAITING


# --- release ---------------------------------------------------------------------------------

def test_release_stops_queries_and_removes_the_answer_once() -> None:
    machine = answered()
    assert machine.handle(Released("released")) == [StopQueries(), RemoveAnswer("released")]
    assert machine.state is State.RELEASED and machine.holds_nothing
    assert machine.handle(Released("released")) == []


def test_a_waiting_domain_with_records_is_released_too() -> None:
    machine = DomainMachine(1, LIMITS)
    machine.handle(Reloaded({Bdf.parse(D1): "hotplug"}, None))
    assert not machine.holds_nothing
    assert machine.handle(Released("released")) == [RemoveAnswer("released")]


# --- queries ---------------------------------------------------------------------------------

def test_alloc_records_before_it_replies_then_removes_the_query() -> None:
    machine = answered()
    effects = query(machine, "q1", b"alloc 0x1000")
    allocated = Range(0xA3800000, 0xA3801000)
    assert effects == [RecordAllocation(allocated, held=True), WriteReply("q1", f"ok {allocated}"),
                       RemoveQuery("q1"), CountQuery("alloc", "ok")]
    assert machine.domain.allocations.ranges() == (allocated,)
    effects = query(machine, "q2", b"free 0xa3800000-0xa3800fff")
    assert effects[:2] == [RecordAllocation(allocated, held=False), WriteReply("q2", "ok")]
    assert len(machine.domain.allocations) == 0


def test_queries_listed_are_each_answered_and_invalid_ids_removed() -> None:
    machine = answered()
    assert machine.handle(QueriesListed(("q1", "bad.id", "q2"))) == [ReadQuery("q1"), ReadQuery("bad.id"),
                                                                      ReadQuery("q2")]
    effects = machine.handle(QueryRead("bad.id", b"e820", 1.0, MAX_LENGTH))
    assert effects[:2] == [RemoveQuery("bad.id"), CountQuery("other", "rejected")]
    assert isinstance(effects[2], Log) and effects[2].level == logging.DEBUG
    # That removal fires the watch again: the node is gone, nothing more is counted.
    assert machine.handle(QueryWritten("bad.id")) == [ReadQuery("bad.id")]
    assert machine.handle(QueryRead("bad.id", None, 1.0, MAX_LENGTH)) == []


def test_a_query_answered_already_is_left_alone() -> None:
    machine = answered()
    machine.handle(QueryWritten("q1"))
    assert machine.handle(QueryRead("q1", None, 1.0, MAX_LENGTH)) == []


def test_rate_limit_comes_before_parsing_and_refills_with_time() -> None:
    machine = answered()
    for n in range(LIMITS.query_burst):
        assert query(machine, f"q{n}", b"e820", now=1.0)[0] == WriteReply(f"q{n}", query_reply(machine))
    refused = query(machine, "over", b"alloc 0x1000", now=1.0)
    assert refused[0] == WriteReply("over", "error EBUSY query rate limit reached; retry later")
    assert refused[2] == CountQuery("other", "rejected")
    assert len(machine.domain.allocations) == 0
    later = query(machine, "later", b"e820", now=1.0 + 1 / LIMITS.query_rate)[0]
    assert isinstance(later, WriteReply) and later.reply.startswith("ok ")


def query_reply(machine: DomainMachine) -> str:
    assert machine.domain.plan is not None
    return "ok " + ",".join(str(entry) for entry in machine.domain.plan.e820)


def test_a_waiting_domain_answers_enodev() -> None:
    machine = DomainMachine(1, LIMITS)
    effects = query(machine, "q1", b"e820")
    assert effects[0] == WriteReply("q1", "error ENODEV this domain has no reserved-memory answer yet")


def test_only_the_newest_replies_are_kept() -> None:
    machine = answered()
    machine.limits = Limits(1e9, 10**6, 4)
    machine.domain = machine.limits.fresh(1)
    machine.domain.plan = SEED.plan
    dropped = []
    for n in range(REPLIES_KEPT + 3):
        dropped += [effect for effect in query(machine, f"q{n}", b"e820") if isinstance(effect, RemoveReply)]
    assert dropped == [RemoveReply("q0"), RemoveReply("q1"), RemoveReply("q2")]
    # Asking again under an old id moves it to the newest end.
    assert not [effect for effect in query(machine, "q5", b"e820") if isinstance(effect, RemoveReply)]
    assert machine.domain.replies[-1] == "q5"


def test_queries_stopped_are_started_again_later_or_by_the_next_setup() -> None:
    machine = answered()
    log_line, later = machine.handle(QueriesStopped("ENOSPC"))
    assert isinstance(log_line, Log) and log_line.level == logging.WARNING
    assert later == Later(retry_delay(1), RestartQueries(machine.serial))
    assert not machine.queries_running
    assert machine.handle(later.event) == [StartQueries()]
    assert machine.handle(QueriesListed(())) == [Log(logging.INFO, "domain 1: guest queries watched again")]
    machine.handle(QueriesStopped("ENOSPC"))
    machine.handle(RequestChanged(1.0))  # a reconcile after the reconnect, say
    assert machine.handle(SetupDone(SetupResult("current", "1"), 1.0)) == [StartQueries()]
    assert machine.queries_running
    machine.handle(RequestChanged(2.0))
    assert StartQueries() not in machine.handle(SetupDone(SetupResult("rewritten", "2", SEED), 2.0))


# --- checks, reloads, introductions ------------------------------------------------------------

class _NoCheck:
    async def answer(self, domain: Domain) -> DeviceAttached | None:
        raise AssertionError("the owner carries this out, not the machine")


def test_checks_are_handed_back_to_answer_in_order() -> None:
    machine = answered()
    check = _NoCheck()
    assert machine.handle(CheckAsked(check)) == [AnswerCheck(check)]
    assert machine.handle(DeviceAttached(Bdf.parse(D1), "hotplug")) == []
    assert machine.domain.devices() == {Bdf.parse(D1), Bdf.parse(D2)}


def test_reload_keeps_allocations_in_memory_once_a_plan_is_known() -> None:
    held = (Range(0xA3800000, 0xA3801000),)
    starting = DomainMachine(1, LIMITS)
    starting.handle(Reloaded({Bdf.parse(D1): "assign"}, held))
    assert starting.domain.allocations.ranges() == held and starting.domain.attached == {Bdf.parse(D1): "assign"}
    running = answered()
    query(running, "q1", b"alloc 0x2000")
    mine = running.domain.allocations.ranges()
    running.handle(Reloaded(None, held))
    assert running.domain.allocations.ranges() == mine


def test_introduction_is_remembered_and_grants_the_answer_once() -> None:
    machine = answered()
    assert machine.handle(IntroducedSeen(False)) == []
    assert not machine.domain.introduced
    # C xenstored gave the answer's entry for a domain not yet there nothing: set again.
    assert machine.handle(IntroducedSeen(True)) == [GrantAnswer()]
    assert machine.handle(IntroducedSeen(True)) == []
    machine.handle(IntroducedSeen(False))
    assert machine.domain.introduced
    waiting = DomainMachine(2, LIMITS)
    assert waiting.handle(IntroducedSeen(True)) == []  # no answer to grant


# --- the table ---------------------------------------------------------------------------------

@pytest.mark.parametrize("event", [SetupDone(SetupResult("written", "1", SEED), 0.0), SetupFailed("x")])
def test_setup_results_outside_planning_are_bugs(event: SetupDone | SetupFailed) -> None:
    with pytest.raises(DomainStateError, match="in state waiting"):
        DomainMachine(1, LIMITS).handle(event)


def test_planning_takes_only_the_setup_results_and_a_release() -> None:
    machine = DomainMachine(1, LIMITS)
    machine.handle(RequestChanged(0.0))
    for event in (RequestChanged(1.0), QueryWritten("q"), AnswerVanished(), IntroducedSeen(True)):
        with pytest.raises(DomainStateError, match="in state planning"):
            machine.handle(event)
    assert {event for event, states in ACCEPTS.items() if State.PLANNING in states} == {
        SetupDone, SetupFailed, Released, QueriesStopped, RetrySetup, RestartQueries}


def test_released_takes_nothing_but_release() -> None:
    machine = answered()
    machine.handle(Released("released"))
    with pytest.raises(DomainStateError, match="in state released"):
        machine.handle(RequestChanged(1.0))


def test_a_domain_learned_before_libxl_saved_its_configuration_is_learned_again_with_backoff() -> None:
    machine = DomainMachine(1, LIMITS)
    unsaved = replace(SEED, learned="hvm", saved=False)
    delays = []
    kind = "written"
    for generation in range(LEARN_RETRIES + 2):
        assert machine.handle(RequestChanged(0.0)) == [RunSetup(machine.domain.generation)]
        effects = machine.handle(SetupDone(SetupResult(kind, "learned-x", unsaved), 0.5))
        delays += [effect.seconds for effect in effects if isinstance(effect, LearnLater)]
        kind = "current"
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0] + [60.0] * (LEARN_RETRIES - 6)
    # Once read, no more.
    assert machine.handle(RequestChanged(0.0)) == [RunSetup("learned-x")]
    saved = machine.handle(SetupDone(SetupResult("rewritten", "learned-y", replace(SEED, learned="hvm", saved=True)),
                                     0.5))
    assert not any(isinstance(effect, LearnLater) for effect in saved)
    fresh = DomainMachine(2, LIMITS)
    fresh.handle(RequestChanged(0.0))
    effects = fresh.handle(SetupDone(SetupResult("written", "1", SEED), 0.5))
    assert not any(isinstance(effect, LearnLater) for effect in effects)
