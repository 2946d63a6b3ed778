"""One domain's lifecycle as a pure state machine: events in, effects out.

Shaped like h11's ``_state.py``: every state a domain can be in, every event that
moves it, and one method, :meth:`DomainMachine.handle`, that applies an event and
returns the effects to carry out, in order.  Nothing here awaits, reads a clock or
touches xenstore: the trio task that owns the domain (:mod:`rmrrd.daemon.owner`)
feeds it events one at a time, carries out each effect, and feeds back what an
effect found (a setup's outcome, a query's value) as the next event.  That one
owner and this one table are what make a domain's history a sequence: a guest's
query, a toolstack's attach, a rewritten setup and a release can no longer
interleave across awaits (an allocation recorded after the setup that dropped the
allocations, say).

States (:class:`State`) and what moves them::

    WAITING --RequestChanged, RetrySetup--> PLANNING --SetupDone(written, rewritten,
       ^                           |        relearned, current)--> ANSWERED
       |                           |--SetupDone(waiting)--> back where it came from
       |                           |--SetupFailed--> back where it came from, RetrySetup later
       |                           '--SetupDone(absent)--> RELEASED
       |
    ANSWERED --RequestChanged, RetrySetup, AnswerVanished, QueriesListed(None)--> PLANNING
    PLANNING --SetupDone(written) finding our answer gone, or SetupDone(waiting) finding
       request and answer gone--> (old state dropped) ANSWERED, WAITING
    WAITING, ANSWERED --Released--> RELEASED

Nothing that fails on the xenstore side is left for a later event that may never
come: a failed setup (:class:`SetupFailed`) schedules a :class:`RetrySetup`, and a
guest-query watch that stopped a :class:`RestartQueries`, each after a delay that
doubles from :data:`RETRY_FIRST` to :data:`RETRY_MAX` (:func:`retry_delay`), until
it succeeds or the domain goes.  The first failure of a run of them is one warning
line, the next ones debug, the success after them one info line.

Queries, checks, attachments, reloads and introductions are served in WAITING and
ANSWERED without changing the state.  PLANNING lasts exactly as long as the owner
carries out :class:`RunSetup`, so the only events it takes are that effect's results.
An event in a state that does not take it is a bug in rmrrd and raises
:class:`DomainStateError`.

A domain re-created on the same domid (``xl create`` reuses the id; libxl's
``libxl__domain_make`` removes ``/local/domain/<domid>`` and ``/libxl/<domid>`` with
everything rmrrd wrote there) shows as the answer vanishing.  Whatever noticed it (the
guest-query watch seeing its node go, :class:`AnswerVanished`, or a change under
``/libxl``) runs a setup, and the setup's result decides, so a listing older than the
new domain's answer drops nothing: no answer where one was written and the request
there (``SetupDone(written)`` while a plan is known), or neither answer nor request
(``SetupDone(waiting)`` with ``answer_present`` false), drops what the old domain held
(its allocations, attached devices, replies, rate limit) with one log line, and serves
whatever request is there now.
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from rmrrd.core.guest_queries import Allocations, QueryResult, handle_query
from rmrrd.core.libxl_domain import LibxlDomain
from rmrrd.core.newest import note_newest
from rmrrd.core.pci import Bdf
from rmrrd.core.planner import DomainRequest, Plan
from rmrrd.core.ranges import Range
from rmrrd.core.rate_limit import TokenBucket
from rmrrd.protocol import is_valid_id

RETRY_FIRST = 0.1
"""Seconds before the first retry of a failed setup or a stopped query watch."""
RETRY_MAX = 5.0
"""The longest wait between retries (the owner spreads each over 50-100% of it)."""

LEARN_RETRIES = 12
LEARN_RETRY_SECONDS = 1.0
LEARN_RETRY_MAX_SECONDS = 60.0
"""A domain learned before libxl saved its configuration (written at the end of ``xl
create``, after the introduction: seconds, or tens of them for a slow device model) is
learned again after 1 s, then after twice as long each time up to a minute, at most
12 times (about seven minutes), until it is read."""

REPLIES_KEPT = 64
"""Replies kept per domain, oldest removed first: reply nodes are dom0's, outside the
guest's node quota, so without a bound a guest writing fresh ids would grow the store."""

RATE_LIMITED = QueryResult("error EBUSY query rate limit reached; retry later", "other", "rejected")
NO_ANSWER = QueryResult("error ENODEV this domain has no reserved-memory answer yet", "other", "error")


class DomainStateError(Exception):
    """An event reached a domain in a state that cannot take it: a bug in rmrrd."""


def retry_delay(failures: int) -> float:
    """Seconds before retrying after the ``failures``-th failure in a row."""
    return min(RETRY_FIRST * 2.0 ** min(max(failures - 1, 0), 16), RETRY_MAX)


class State(enum.Enum):
    WAITING = "waiting"
    """Nothing of ours in xenstore: no request yet, or one still to be read."""
    PLANNING = "planning"
    """A setup runs: read the request, plan it, write the answer."""
    ANSWERED = "answered"
    """An answer is in xenstore; its plan serves queries and checks."""
    RELEASED = "released"
    """The domain is gone and its answer removed; the machine takes nothing more."""


# --- what a setup found ------------------------------------------------------------------

SetupKind = Literal["absent", "waiting", "current", "relearned", "written", "rewritten"]


def setup_kind(requested: str, answered: str | None, known: str | None) -> SetupKind:
    """What a setup must do, from the generations requested, in xenstore and in memory.

    ``current``: answered and known, nothing to do.  ``relearned``: answered before a
    restart; the guest was built on that layout, so it is kept and only the plan is
    learnt again.  ``written``: no answer yet.  ``rewritten``: an older answer to
    replace (for a request, a new layout is a new boot: allocations in the old one
    mean nothing; a learned domain runs on).
    """
    if answered == requested:
        return "current" if known == requested else "relearned"
    return "written" if answered is None else "rewritten"


def ends_placements(kind: SetupKind, outcome: SetupOutcome) -> bool:
    """Whether the setup's answer starts a new boot, so that the guest's ``alloc``
    placements in the old layout mean nothing: a rewritten answer to a request.  A
    learned domain's answer is rewritten while the guest runs on (an attach: libxl
    never lays a guest out again), and a domain re-created on its domid is released
    first."""
    return kind == "rewritten" and outcome.learned is None


@dataclass(frozen=True, slots=True)
class SetupOutcome:
    """What the planner made of a request: a plan, or why there is none."""

    request: DomainRequest | None
    plan: Plan | None
    error: str | None
    learned: str | None = None
    """The guest type of a domain learned from libxl (None: answered from a request)."""
    saved: bool = False
    """For a learned domain: whether libxl's saved configuration was read."""
    laid_out: LibxlDomain | None = None
    """For a learned HVM domain: the domain its layout was planned from."""

    @property
    def status(self) -> str:
        return self.plan.status if self.plan is not None else "error"


@dataclass(frozen=True, slots=True)
class SetupResult:
    """What one setup transaction did (see :func:`setup_kind`; ``absent``: no
    ``/libxl/<domid>`` at all, ``waiting``: no ``request`` in it)."""

    kind: SetupKind
    generation: str | None = None
    outcome: SetupOutcome | None = None
    answer_present: bool = False
    """For ``absent`` and ``waiting``: whether an answer of ours is still in xenstore."""


# --- the domain's data ---------------------------------------------------------------------

@dataclass
class Domain:
    """What rmrrd holds for one domain; only its :class:`DomainMachine` changes it."""

    domid: int
    limiter: TokenBucket
    allocations: Allocations
    generation: str | None = None
    request: DomainRequest | None = None
    plan: Plan | None = None
    attached: dict[Bdf, str] = field(default_factory=dict)
    """Devices accepted by an ``assign`` or ``hotplug`` check, with that op."""
    introduced: bool = False
    """Seen introduced to xenstored: only then does ``@releaseDomain`` concern it."""
    replies: deque[str] = field(default_factory=deque)
    """Ids of the replies written, oldest first (at most :data:`REPLIES_KEPT`)."""
    learn_retries: int = 0
    """Setups run again for want of libxl's saved configuration (:data:`LEARN_RETRIES`)."""
    learned: bool = False
    """Answered from what libxl built (:mod:`rmrrd.daemon.learn`), not from a request:
    the devices it holds are those libxl's PCI backend lists, not those checks accepted."""
    laid_out: LibxlDomain | None = None
    """For a learned HVM domain: the domain as libxl built it, from the first saved
    configuration read.  libxl lays a guest out once: a device hot-plugged later, or a
    new ``xl mem-max``, changes what the guest holds or may grow to, not its layout
    (``rmrrd.daemon.learn``)."""

    def devices(self) -> set[Bdf]:
        """Every device this domain holds: statically assigned plus attached.

        None while its answer is not ``ready``: a domain refused at setup is never
        built, so its devices are free for the others' checks.
        """
        if self.plan is None or self.plan.status != "ready" or self.request is None:
            return set()
        return {spec.bdf for spec in self.request.pci} | set(self.attached)


@dataclass(frozen=True, slots=True)
class Limits:
    """The per-domain limits fixed when the daemon starts (a reload does not change
    a token bucket or an allocation table already made)."""

    query_rate: float
    query_burst: int
    max_allocations: int

    def fresh(self, domid: int) -> Domain:
        return Domain(domid, TokenBucket(self.query_rate, self.query_burst), Allocations(self.max_allocations))


# --- events --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RequestChanged:
    """Something under ``/libxl/<domid>`` changed, or a reconcile asks; ``at``: when."""

    at: float


@dataclass(frozen=True, slots=True)
class SetupDone:
    """The :class:`RunSetup` transaction committed; ``now``: when."""

    result: SetupResult
    now: float


@dataclass(frozen=True, slots=True)
class SetupFailed:
    """The :class:`RunSetup` transaction failed (xenstore trouble); nothing was written."""

    reason: str


@dataclass(frozen=True, slots=True)
class RetrySetup:
    """The delay after a failed setup is over: plan again (from the first trigger).

    ``machine`` is the :attr:`DomainMachine.serial` of the machine that asked: a
    machine of a later domain on the domid ignores it."""

    machine: int


@dataclass(frozen=True, slots=True)
class RestartQueries:
    """The delay after the guest-query watch stopped is over: watch again (``machine``
    as for :class:`RetrySetup`)."""

    machine: int


@dataclass(frozen=True, slots=True)
class AnswerVanished:
    """The answer's node went, removed by someone else."""


@dataclass(frozen=True, slots=True)
class Released:
    """The domain is gone (``@releaseDomain``, or no longer under ``/libxl``)."""

    why: str


@dataclass(frozen=True, slots=True)
class Reloaded:
    """A reconcile read the domain's durable records back from xenstore.

    Each is None when there is no record (memory is kept then).  Attachments are
    taken as read; allocations only while no plan is known (a start), since after a
    reconnect memory is current and a query answered meanwhile may not be recorded.
    """

    attached: Mapping[Bdf, str] | None
    allocations: tuple[Range, ...] | None


@dataclass(frozen=True, slots=True)
class IntroducedSeen:
    """xenstored says whether the domain is introduced (after a setup, or on
    ``@introduceDomain``)."""

    up: bool


@dataclass(frozen=True, slots=True)
class QueriesListed:
    """The guest-query node's own watch event: what is waiting in it, or None when
    the node is gone."""

    names: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class QueriesStopped:
    """The guest-query watch ended on its own (xenstored refused it after a
    reconnect): the next setup starts it again."""

    reason: str


@dataclass(frozen=True, slots=True)
class QueryWritten:
    """A watch event under the guest-query node: ``query/<name>``."""

    name: str


@dataclass(frozen=True, slots=True)
class QueryRead:
    """The value of ``query/<name>`` (None: answered already); ``now`` for the rate
    limit, ``max_length`` from the running configuration."""

    name: str
    raw: bytes | None
    now: float
    max_length: int


class Check(Protocol):
    """A toolstack check concerning one domain, answered in that domain's order."""

    async def answer(self, domain: Domain) -> DeviceAttached | None:
        """Evaluate against ``domain`` and write the result; the device it attaches, if any."""


@dataclass(frozen=True, slots=True)
class CheckAsked:
    """A toolstack check concerning this domain, handed back in :class:`AnswerCheck`."""

    check: Check


@dataclass(frozen=True, slots=True)
class DeviceAttached:
    """An ``assign`` or ``hotplug`` check was answered ok or warn: the domain holds it."""

    bdf: Bdf
    op: str


Event = (RequestChanged | SetupDone | SetupFailed | RetrySetup | RestartQueries | AnswerVanished | Released
         | Reloaded | IntroducedSeen | QueriesListed | QueriesStopped | QueryWritten | QueryRead | CheckAsked
         | DeviceAttached)


# --- effects -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RunSetup:
    """Read the request and answer it in one transaction; feed back SetupDone or SetupFailed."""

    known_generation: str | None


@dataclass(frozen=True, slots=True)
class StartQueries:
    """Watch the guest-query node; its events come back as QueriesListed / QueryWritten."""


@dataclass(frozen=True, slots=True)
class StopQueries:
    """Stop watching the guest-query node."""


@dataclass(frozen=True, slots=True)
class CheckIntroduced:
    """Ask xenstored whether the domain is introduced; feed back IntroducedSeen."""


@dataclass(frozen=True, slots=True)
class GrantAnswer:
    """Set the answer's permissions again, now that the domain is introduced.

    C xenstored ignores a permission entry naming a domain that did not exist when
    it was set (``domain_alloc_permrefs``) or that is younger than the node
    (``domain_adjust_node_perms``), and new nodes inherit the mark: an answer
    written before its domain was created would stay unreadable to its guest.
    """


@dataclass(frozen=True, slots=True)
class LearnLater:
    """Post a RequestChanged after ``seconds``: learn the domain again."""

    seconds: float


@dataclass(frozen=True, slots=True)
class RemoveAnswer:
    """Remove the answer, the attachments and the allocations, in one transaction."""

    why: str


@dataclass(frozen=True, slots=True)
class RemoveRecords:
    """Remove the attachments and allocations recorded for an earlier domain."""


@dataclass(frozen=True, slots=True)
class ReportSetup:
    """Metrics and log lines of a written answer."""

    generation: str
    outcome: SetupOutcome
    seconds: float


@dataclass(frozen=True, slots=True)
class ReadQuery:
    """Read ``query/<name>``; feed back QueryRead."""

    name: str


@dataclass(frozen=True, slots=True)
class RecordAllocation:
    """Write (``held``) or remove the allocation's record under ``/tool/rmrrd/allocated``."""

    range: Range
    held: bool


@dataclass(frozen=True, slots=True)
class WriteReply:
    name: str
    reply: str


@dataclass(frozen=True, slots=True)
class RemoveQuery:
    name: str


@dataclass(frozen=True, slots=True)
class RemoveReply:
    """Drop an old reply beyond :data:`REPLIES_KEPT`."""

    name: str


@dataclass(frozen=True, slots=True)
class CountQuery:
    kind: str
    outcome: str


@dataclass(frozen=True, slots=True)
class AnswerCheck:
    """Evaluate and answer the check; feed back DeviceAttached if it attaches a device."""

    check: Check


@dataclass(frozen=True, slots=True)
class Log:
    """One log line about this domain (the message names it)."""

    level: int
    message: str


@dataclass(frozen=True, slots=True)
class Later:
    """Feed ``event`` back after ``delay`` seconds (a retry)."""

    delay: float
    event: RetrySetup | RestartQueries


Effect = (RunSetup | StartQueries | StopQueries | CheckIntroduced | GrantAnswer | LearnLater | RemoveAnswer
          | RemoveRecords | ReportSetup | ReadQuery | RecordAllocation | WriteReply | RemoveQuery | RemoveReply
          | CountQuery | AnswerCheck | Log | Later)


# --- the table -----------------------------------------------------------------------------

_SERVING = frozenset({State.WAITING, State.ANSWERED})
ACCEPTS: dict[type[Event], frozenset[State]] = {
    RequestChanged: _SERVING,
    SetupDone: frozenset({State.PLANNING}),
    SetupFailed: frozenset({State.PLANNING}),
    RetrySetup: frozenset(State),
    RestartQueries: frozenset(State),
    AnswerVanished: _SERVING,
    Released: frozenset(State),
    Reloaded: _SERVING,
    IntroducedSeen: _SERVING,
    QueriesListed: _SERVING,
    QueriesStopped: frozenset(State),
    QueryWritten: _SERVING,
    QueryRead: _SERVING,
    CheckAsked: _SERVING,
    DeviceAttached: _SERVING,
}
"""Which states take which event; :meth:`DomainMachine.handle` refuses the rest.
(``Released`` is taken everywhere: a second one is a no-op; so is
``QueriesStopped``, which may race a release, and so are the retries, whose delay
may end in any state.)"""


class DomainMachine:
    """One domain's state and data; :meth:`handle` is the only way to change them."""

    _serials = itertools.count(1)

    def __init__(self, domid: int, limits: Limits) -> None:
        self.serial = next(self._serials)
        """Tells this machine's retries from those of an earlier one on the domid."""
        self.limits = limits
        self.state = State.WAITING
        self.domain = limits.fresh(domid)
        self.queries_running = False
        self.setup_failures = 0
        """Setups failed in a row (xenstore trouble): the next retry's delay grows with it."""
        self.query_failures = 0
        self.retries_pending = 0
        """:class:`Later` effects not yet fed back: the owner must stay for them."""
        self._before_planning = State.WAITING
        self._triggered = 0.0

    @property
    def domid(self) -> int:
        return self.domain.domid

    @property
    def holds_nothing(self) -> bool:
        """Nothing worth a task: released, or waiting with no plan, record, watch or retry."""
        if self.state is State.RELEASED:
            return True
        domain = self.domain
        return (self.state is State.WAITING and domain.plan is None and not domain.attached
                and not len(domain.allocations) and not self.queries_running and not self.retries_pending)

    def handle(self, event: Event) -> list[Effect]:
        """Apply ``event``; the effects to carry out, in order.

        Raises :class:`DomainStateError` when the current state does not take it.
        """
        if self.state not in ACCEPTS[type(event)]:
            raise DomainStateError(f"domain {self.domid}: {type(event).__name__} in state {self.state.value}")
        match event:
            case RequestChanged(at):
                return self._plan(at)
            case SetupDone(result, now):
                return self._setup_done(result, now)
            case SetupFailed(reason):
                self.state = self._before_planning
                self.setup_failures += 1
                delay = retry_delay(self.setup_failures)
                level = logging.WARNING if self.setup_failures == 1 else logging.DEBUG
                return [Log(level, f"domain {self.domid}: setup failed: {reason}; retrying in up to {delay:g} s "
                                   f"(attempt {self.setup_failures})"), self._later(delay, RetrySetup(self.serial))]
            case RetrySetup(serial) | RestartQueries(serial) if serial != self.serial:
                return []  # an earlier domain's on this domid
            case RetrySetup():
                self.retries_pending -= 1
                if self.state in _SERVING and self.setup_failures:
                    return self._plan(self._triggered)  # the latency counts from the first trigger
                return []  # a setup runs or succeeded meanwhile, or the domain went
            case RestartQueries():
                self.retries_pending -= 1
                return self._start_queries() if self.state is State.ANSWERED else []
            case AnswerVanished() | QueriesListed(None):
                if self.state is not State.ANSWERED:
                    return []  # nothing of ours was there to vanish
                # The listing may be older than a setup that has since answered a new
                # domain on this domid (xl create and the toolstack's new request in a
                # burst): a setup looks at what is there now, and its result decides.
                return self._plan(self._triggered)
            case Released(why):
                return self._release(why)
            case Reloaded(attached, allocations):
                if attached is not None:
                    self.domain.attached = dict(attached)
                if allocations is not None and self.domain.plan is None:
                    self.domain.allocations = Allocations(self.limits.max_allocations)
                    for rng in allocations:
                        self.domain.allocations.add(rng)
                return []
            case IntroducedSeen(up):
                if not up or self.domain.introduced:
                    return []
                self.domain.introduced = True
                # Introduced now: an answer written before may grant it nothing yet.
                return [GrantAnswer()] if self.state is State.ANSWERED else []
            case QueriesListed(names):
                assert names is not None
                listed: list[Effect] = []
                if self.query_failures:
                    listed.append(Log(logging.INFO, f"domain {self.domid}: guest queries watched again"))
                    self.query_failures = 0
                return listed + [effect for name in names for effect in self._query_written(name)]
            case QueriesStopped(reason):
                self.queries_running = False
                if self.state is not State.ANSWERED:
                    return []
                self.query_failures += 1
                delay = retry_delay(self.query_failures)
                level = logging.WARNING if self.query_failures == 1 else logging.DEBUG
                return [Log(level, f"domain {self.domid}: guest queries stopped: {reason}; watching again in up "
                                   f"to {delay:g} s"), self._later(delay, RestartQueries(self.serial))]
            case QueryWritten(name):
                return self._query_written(name)
            case QueryRead(name, raw, now, max_length):
                return self._answer_query(name, raw, now, max_length)
            case CheckAsked(check):
                return [AnswerCheck(check)]
            case DeviceAttached(bdf, op):
                self.domain.attached[bdf] = op
                return []
        raise AssertionError(f"unhandled event {event!r}")  # pragma: no cover (ACCEPTS lists them all)

    # --- setups --------------------------------------------------------------------------

    def _plan(self, at: float) -> list[Effect]:
        self._before_planning = self.state
        self._triggered = at
        self.state = State.PLANNING
        return [RunSetup(self.domain.generation)]

    def _later(self, delay: float, event: RetrySetup | RestartQueries) -> Later:
        self.retries_pending += 1
        return Later(delay, event)

    def _setup_done(self, result: SetupResult, now: float) -> list[Effect]:
        if self.setup_failures:
            recovered: list[Effect] = [Log(logging.INFO, f"domain {self.domid}: setup done after "
                                                         f"{self.setup_failures} failed attempts")]
            self.setup_failures = 0
            return recovered + self._setup_result(result, now)
        return self._setup_result(result, now)

    def _setup_result(self, result: SetupResult, now: float) -> list[Effect]:
        domain = self.domain
        if result.kind == "absent":
            if (domain.plan is not None or domain.attached or len(domain.allocations) or result.answer_present
                    or self.queries_running):
                return self._release("removed from /libxl")
            self.state = State.RELEASED
            return []
        if result.kind == "waiting":
            if domain.plan is not None and not result.answer_present:
                # Our request and answer gone, /libxl/<domid> still there: what xl
                # create leaves when it takes the domid (libxl__domain_make).
                return self._drop(f"request and answer gone, /libxl/{self.domid} still there")
            self.state = self._before_planning
            return []
        if result.kind == "current":
            self.state = State.ANSWERED
            return self._start_queries() + self._learn_later(result)
        assert result.outcome is not None and result.generation is not None
        effects: list[Effect] = []
        if result.kind == "written" and domain.plan is not None:
            # We had answered, and the answer is gone: a new domain on this domid.
            effects += self._drop("answer gone when its request was served again")
            domain = self.domain
        if ends_placements(result.kind, result.outcome):
            # The transaction removed the allocation record with the old layout.
            domain.allocations = Allocations(self.limits.max_allocations)
        domain.generation = result.generation
        domain.request, domain.plan = result.outcome.request, result.outcome.plan
        domain.learned = result.outcome.learned is not None
        if domain.laid_out is None and result.outcome.saved:
            domain.laid_out = result.outcome.laid_out
        self.state = State.ANSWERED
        effects += self._start_queries()
        if not domain.introduced:
            effects.append(CheckIntroduced())
        if result.kind in ("written", "rewritten"):
            effects.append(ReportSetup(result.generation, result.outcome, now - self._triggered))
        return effects + self._learn_later(result)

    def _learn_later(self, result: SetupResult) -> list[Effect]:
        """Learn again soon, when libxl had not saved the domain's configuration yet."""
        outcome = result.outcome
        if outcome is None or outcome.learned is None or outcome.saved:
            return []
        if self.domain.learn_retries >= LEARN_RETRIES:
            return []
        delay = min(LEARN_RETRY_SECONDS * 2 ** self.domain.learn_retries, LEARN_RETRY_MAX_SECONDS)
        self.domain.learn_retries += 1
        return [LearnLater(delay)]

    def _start_queries(self) -> list[Effect]:
        if self.queries_running:
            return []
        self.queries_running = True
        return [StartQueries()]

    def _drop(self, why: str) -> list[Effect]:
        """Forget what an earlier domain on this domid held; one log line says so."""
        self.domain = self.limits.fresh(self.domid)
        self.state = State.WAITING
        return [Log(logging.INFO, f"domain {self.domid}: {why} (domain re-created on this domid?): "
                                  "its allocations and attached devices dropped"), RemoveRecords()]

    def _release(self, why: str) -> list[Effect]:
        if self.state is State.RELEASED:
            return []
        self.state = State.RELEASED
        effects: list[Effect] = []
        if self.queries_running:
            self.queries_running = False
            effects.append(StopQueries())
        return effects + [RemoveAnswer(why)]

    # --- guest queries ---------------------------------------------------------------------

    def _query_written(self, name: str) -> list[Effect]:
        # Read first, whatever the name: the removal of a node fires the watch too,
        # and only a node still there is a query to answer (or to count as rejected).
        return [ReadQuery(name)]

    def _answer_query(self, name: str, raw: bytes | None, now: float, max_length: int) -> list[Effect]:
        """The reply to one query and, for ``alloc``/``free``, its record first.

        The record first, then the reply, then the query's removal: each write is
        atomic for a reader, so no transaction is needed (one would conflict with
        every new query node the guest creates beside it, and a flooding guest would
        starve itself).  A crash in between leaves the query, answered again after
        the restart; an allocation recorded but never replied is then held until
        the domain's end (bounded by the cap), never handed out twice.
        """
        if raw is None:
            return []  # answered already: our own removal fires the watch as well
        if not is_valid_id(name):
            # No reply can be named after it; removing it is the answer.
            return [RemoveQuery(name), CountQuery("other", "rejected"),
                    Log(logging.DEBUG, f"domain {self.domid}: query node {name[:40]!r} has an invalid id: removed")]
        domain = self.domain
        if not domain.limiter.take(now):
            result = RATE_LIMITED
        elif domain.plan is None:
            result = NO_ANSWER
        else:
            result = handle_query(raw, domain.plan, domain.allocations, max_length=max_length)
        effects: list[Effect] = []
        if result.freed is not None:
            effects.append(RecordAllocation(result.freed, held=False))
        if result.allocated is not None:
            effects.append(RecordAllocation(result.allocated, held=True))
        domain.allocations.apply(result)
        # The oldest go before the new reply is written: a guest that reads its reply
        # never sees more than REPLIES_KEPT, nor the domain's quota more nodes.
        effects += [RemoveReply(old) for old in note_newest(domain.replies, name, REPLIES_KEPT)]
        effects += [WriteReply(name, result.reply), RemoveQuery(name)]
        effects.append(CountQuery(result.kind, result.outcome))
        if result.outcome != "ok":
            effects.append(Log(logging.DEBUG, f"domain {self.domid}: query {name}: {result.reply[:120]}"))
        return effects
