"""The one trio task that owns a domain: a mailbox in, its state machine's effects out.

Everything that concerns one domain (its setups, its guest's queries, toolstack
checks that may attach a device to it, its release) arrives as an event in its
owner's mailbox and is handled to the end, effects and all, before the next one is
taken.  :class:`rmrrd.daemon.lifecycle.DomainMachine` decides; this module only
carries out what it decided, and feeds back what that found.

The mailbox is first in, first out, with two economies:

* a request change already waiting in the mailbox absorbs the next ones, and a
  setup that had to wait for one of the :data:`rmrrd.daemon.domains.SETUP_CONCURRENCY`
  slots also serves the change that arrived meanwhile: it reads the state as it is
  when it runs, so one run answers a burst of triggers;
* a second release waiting behind the first is the same release.

Senders that must not run ahead (the guest-query watch, the toolstack handler)
await :meth:`DomainOwner.call`, so a flooding guest fills its own watch queue
(bounded, see :mod:`rmrrd.xenstore.client_watch`), never this mailbox.

The owner runs a task only while its mailbox holds letters: an idle domain costs no
task.  An owner ends when its domain holds nothing (released, or waiting with no
plan, record or retry) and its mailbox is empty; the next event for that domid
starts a new one.

xenstore trouble never ends an event half done: when an effect fails (xenstored
gone, a request timed out, a quota), the owner carries out the rest of the
event's effects again, from the one that failed, after a delay that doubles up to
:data:`rmrrd.daemon.lifecycle.RETRY_MAX`, until they succeed or the domain's release
is waiting.  Every effect is safe to repeat (a write of the same value, a removal,
a transaction that reads before it writes).  One warning line per domain when it
starts failing, one info line when it goes through again.

One fault of xenstored (stopped for a while, say) makes several of a domain's
operations fail at once, each in its own way: a setup, an effect, the guest-query
watch.  Their first-failure lines closer together than :data:`FAULT_EPISODE` are
one fault, and only the first is a warning (:meth:`DomainOwner.fault_line`): a fault
costs each domain one warning line.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import trio

from rmrrd.core.pci import Bdf
from rmrrd.errors import InputError, PeerError, TransportError
from rmrrd.protocol import (allocated_path, allocation_entry, answer_path, assigned_path, query_path,
                            reply_path)
from rmrrd.xenstore.client import Transaction
from rmrrd.xenstore.wire import NoEntry

from rmrrd.daemon.lifecycle import (AnswerCheck, AnswerVanished, CheckIntroduced, CountQuery, DomainMachine,
                                    Effect, Event, GrantAnswer, IntroducedSeen, Later, LearnLater, Log, QueriesListed,
                                    QueriesStopped, QueryRead, QueryWritten, ReadQuery, RecordAllocation, Released,
                                    Reloaded, RemoveAnswer, RemoveQuery, RemoveRecords, RemoveReply, ReportSetup,
                                    RequestChanged, RestartQueries, RetrySetup, RunSetup, SetupDone, SetupFailed,
                                    StartQueries, State, StopQueries, WriteReply, retry_delay)
from rmrrd.daemon.learn import learn
from rmrrd.daemon.setup import decide, grant_answer, run_setup
from rmrrd.xenstore.ops import gather, rm_quietly

if TYPE_CHECKING:
    from rmrrd.daemon.domains import Domains

log = logging.getLogger(__name__)

FOLLOW_ON = (QueriesListed, QueryWritten, QueriesStopped, RetrySetup, RestartQueries)
"""Events from the guest-query watch and the retries: they concern the domain they
were meant for, so a release drops those still waiting."""
FAULT_EPISODE = 30.0
"""Seconds: a domain's xenstore-failure warnings closer together than this are one
fault (longer than a request's timeout plus the longest retry delay, so the
operations a fault caught all fail within it)."""
WORK = (RequestChanged, Released, Reloaded, AnswerVanished)
"""Events :meth:`Domains.wait_idle` waits for: what a reconcile or a shutdown must
see finished.  Queries and checks are not (a flooding guest would hold it forever)."""


@dataclass(eq=False)
class Letter:
    """One event in a mailbox; ``done`` is set once it has been handled (or dropped)."""

    event: Event
    work: bool
    """One of :data:`WORK`, counted by :meth:`Domains.wait_idle`."""
    done: trio.Event = field(default_factory=trio.Event)


class DomainOwner:
    """The owner of one domain: its state machine, its mailbox, the task that empties it."""

    def __init__(self, domid: int, domains: Domains) -> None:
        self.domid = domid
        self.machine = DomainMachine(domid, domains.limits)
        self._domains = domains
        self._mailbox: deque[Letter] = deque()
        self._running = False
        self._queries: trio.CancelScope | None = None
        self._ended = False
        self._last_fault = -FAULT_EPISODE

    # --- the mailbox -------------------------------------------------------------------

    def post(self, event: Event) -> Letter | None:
        """Queue ``event``; None when an equal one already waits and absorbs it.

        An owner that has ended passes it to the domid's next owner, except what a
        watch of the ended one saw.
        """
        if self._ended:
            if not isinstance(event, FOLLOW_ON):
                self._domains.post(self.domid, event)
            return None
        if isinstance(event, (RequestChanged, Released)):
            if any(type(letter.event) is type(event) for letter in self._mailbox):
                return None
        letter = Letter(event, work=isinstance(event, WORK))
        if letter.work:
            self._domains.work_started()
        self._mailbox.append(letter)
        if not self._running:
            # A task only while there is mail: an idle domain costs no task (with
            # thousands of domains, idle tasks were objects every GC pass visited).
            self._running = True
            self._domains.nursery.start_soon(self.run, name=f"domain {self.domid}")
        return letter

    async def call(self, event: Event) -> None:
        """Queue ``event`` and return once it has been handled."""
        letter = self.post(event)
        if letter is not None:
            await letter.done.wait()

    def _finish(self, letter: Letter) -> None:
        letter.done.set()
        if letter.work:
            self._domains.work_finished()

    def _drop_waiting(self, keep: Callable[[Letter], bool]) -> None:
        for letter in [letter for letter in self._mailbox if not keep(letter)]:
            self._mailbox.remove(letter)
            self._finish(letter)

    # --- the task ----------------------------------------------------------------------

    async def run(self) -> None:
        """Handle the mailbox in order until it is empty (then the task ends; the
        next letter starts another), and end the owner once its domain holds nothing."""
        try:
            while self._mailbox:
                letter = self._mailbox.popleft()
                try:
                    await self._handle(letter.event)
                finally:
                    self._finish(letter)
                if self.machine.state is State.RELEASED:
                    # What the watch saw, and repeated releases, concerned the domain
                    # just released; anything else is for the domid's next domain.
                    self._drop_waiting(lambda letter: not isinstance(letter.event, (*FOLLOW_ON, Released)))
                    if self._mailbox:
                        self.machine = DomainMachine(self.domid, self._domains.limits)
            if self.machine.holds_nothing:
                self._end()
        finally:
            self._running = False

    def _end(self) -> None:
        self._ended = True
        self._domains.ended(self)

    async def _handle(self, event: Event) -> None:
        """Feed ``event``, carry out its effects, feed back what they found, depth first."""
        before = self.machine.state
        pending: deque[Effect] = deque(self._feed(event))
        failures = 0
        try:
            while pending:
                try:
                    found = await self._carry_out(pending[0])
                except (PeerError, TransportError) as exc:
                    # Foreseen (xenstore gone or stalled, a quota): the rest of this
                    # event is carried out again, from the effect that failed.
                    failures += 1
                    if self._release_waiting():
                        log.info("domain %d: %s left undone: the domain is being released", self.domid,
                                 type(event).__name__)
                        return
                    delay = retry_delay(failures)
                    self.fault_line(logging.WARNING if failures == 1 else logging.DEBUG,
                                    f"domain {self.domid}: {type(event).__name__} not completed: "
                                    f"{type(exc).__name__}: {exc}; retrying in up to {delay:g} s")
                    await trio.sleep(delay * random.uniform(0.5, 1.0))
                    continue
                pending.popleft()
                if found is not None:
                    pending.extendleft(reversed(self._feed(found)))
            if failures:
                log.info("domain %d: %s completed after %d failed attempts", self.domid, type(event).__name__,
                         failures)
        except Exception:
            # A bug: its trace is what a developer needs.  Contained to this event of
            # this domain, so one domain's bug never stops the others.
            log.exception("domain %d: %s failed", self.domid, type(event).__name__)
        finally:
            if self.machine.state is not before:
                self._domains.state_changed(self.domid, self.machine.state)

    def _feed(self, event: Event) -> list[Effect]:
        """One event into the machine; the devices the domain holds kept current in
        :meth:`Domains.devices_elsewhere`'s index, which the other domains' checks read."""
        before = self._devices()
        effects = self.machine.handle(event)
        after = self._devices()
        if after != before:
            self._domains.devices_changed(self.domid, before, after)
        return effects

    def _release_waiting(self) -> bool:
        return any(isinstance(letter.event, Released) for letter in self._mailbox)

    def _devices(self) -> set[Bdf]:
        return set() if self.machine.state is State.RELEASED else self.machine.domain.devices()

    # --- effects -------------------------------------------------------------------------

    async def _carry_out(self, effect: Effect) -> Event | None:
        domains, xs, domid = self._domains, self._domains.xs, self.domid
        match effect:
            case RunSetup(known):
                return await self._run_setup(known)
            case StartQueries():
                self._queries = trio.CancelScope()
                domains.nursery.start_soon(self._watch_queries, self._queries)
            case StopQueries():
                if self._queries is not None:
                    self._queries.cancel()
                    self._queries = None
            case CheckIntroduced():
                return IntroducedSeen(await xs.is_introduced(domid))
            case LearnLater(seconds):
                domains.nursery.start_soon(self._later, seconds, RequestChanged(trio.current_time() + seconds))
            case GrantAnswer():
                async with domains.setup_slots:
                    count = await xs.run_transaction(partial(grant_answer, domid=domid))
                log.info("domain %d: introduced; permissions of its %d answer nodes set again", domid, count)
            case RemoveAnswer(why):
                async with domains.setup_slots:
                    await xs.run_transaction(partial(_remove_all, domid=domid))
                log.info("domain %d: %s; answer removed", domid, why)
            case RemoveRecords():
                await gather(partial(rm_quietly, xs), (assigned_path(domid), allocated_path(domid)))
            case ReportSetup(generation, outcome, seconds):
                domains.report_setup(domid, generation, outcome, seconds)
            case ReadQuery(name):
                try:
                    raw: bytes | None = await xs.read(query_path(domid, name))
                except NoEntry:
                    raw = None
                return QueryRead(name, raw, trio.current_time(), domains.settings.max_query_length)
            case RecordAllocation(rng, held):
                key, value = allocation_entry(rng)
                path = f"{allocated_path(domid)}/{key}"
                await (xs.write(path, value) if held else rm_quietly(xs, path))
            case WriteReply(name, reply):
                await xs.write(reply_path(domid, name), reply)
            case RemoveQuery(name):
                await rm_quietly(xs, query_path(domid, name))
            case RemoveReply(name):
                await rm_quietly(xs, reply_path(domid, name))
            case CountQuery(kind, outcome):
                domains.observer.guest_query(kind, outcome)
            case AnswerCheck(check):
                return await check.answer(self.machine.domain)
            case Log(level, message):
                self.fault_line(level, message)
            case Later(delay, event):
                domains.nursery.start_soon(self._later, delay, event)
        return None

    def fault_line(self, level: int, message: str) -> None:
        """Log ``message``; a warning (only xenstore failures are) within
        :data:`FAULT_EPISODE` of the last one is the same fault's, and goes at debug."""
        if level == logging.WARNING:
            now = trio.current_time()
            if now - self._last_fault < FAULT_EPISODE:
                level = logging.DEBUG
            self._last_fault = now
        log.log(level, "%s", message)

    async def _later(self, delay: float, event: Event) -> None:
        # Spread over 50-100% of the delay, so domains that failed together do not
        # all retry in the same instant.
        await trio.sleep(delay * random.uniform(0.5, 1.0))
        self.post(event)

    async def _run_setup(self, known: str | None) -> Event:
        domains = self._domains
        async with domains.setup_slots:
            # Changes that came while this run waited for its slot are served by it:
            # it reads the state as it is now.
            self._drop_waiting(lambda letter: not isinstance(letter.event, RequestChanged))
            settings = domains.settings
            try:
                result = await domains.xs.run_transaction(
                    partial(run_setup, domid=self.domid, known=known,
                            decide_for=partial(decide, defaults=settings.defaults, host=settings.host,
                                               peers=settings.peers),
                            learn_for=partial(learn, libxl_dir=settings.libxl_dir, defaults=settings.defaults,
                                              host=settings.host, peers=settings.peers,
                                              laid_out=self.machine.domain.laid_out)))
            except (PeerError, TransportError, InputError) as exc:
                return SetupFailed(f"{type(exc).__name__}: {exc}")
            except Exception as exc:
                # A bug in planning or writing: said with its trace, and the domain
                # leaves PLANNING so that the next change can try again.
                log.exception("domain %d: setup failed", self.domid)
                return SetupFailed(f"{type(exc).__name__}: {exc} (a bug: see the trace above)")
        return SetupDone(result, trio.current_time())

    async def _watch_queries(self, scope: trio.CancelScope) -> None:
        """Forward the guest-query node's watch events, waiting for each to be handled."""
        domains, xs = self._domains, self._domains.xs
        queries = query_path(self.domid)
        with scope:
            try:
                async with xs.watch(queries) as events:
                    async for event in events:
                        domains.observer.watch_event("query")
                        if event.path == queries:
                            # The initial event (also after a reconnect), or the node went.
                            await self.call(QueriesListed(await self._list_queries()))
                        elif event.path.startswith(queries + "/"):
                            await self.call(QueryWritten(event.path[len(queries) + 1:].split("/", 1)[0]))
            except (PeerError, TransportError) as exc:
                # The watch itself is gone (xenstored refused it, or did not answer):
                # the machine watches again later.
                self.post(QueriesStopped(f"{type(exc).__name__}: {exc}"))

    async def _list_queries(self) -> tuple[str, ...] | None:
        """The names under the query node (None: it is gone), retried until xenstored
        answers: a query listed in an event that was the last one must not wait forever."""
        xs, queries = self._domains.xs, query_path(self.domid)
        failures = 0
        while True:
            try:
                return tuple(await xs.directory(queries))
            except NoEntry:
                return None
            except (PeerError, TransportError) as exc:
                failures += 1
                self.fault_line(logging.WARNING if failures == 1 else logging.DEBUG,
                                f"domain {self.domid}: guest queries not listed: {type(exc).__name__}: {exc}; retrying")
                await trio.sleep(retry_delay(failures) * random.uniform(0.5, 1.0))


async def _remove_all(tx: Transaction, domid: int) -> None:
    await rm_quietly(tx, answer_path(domid))
    await rm_quietly(tx, assigned_path(domid))
    await rm_quietly(tx, allocated_path(domid))

