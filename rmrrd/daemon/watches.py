"""The watches rmrrd holds on one xenstore connection, and what each one feeds.

``/libxl`` (setups; its initial event, which xenstored sends again after every
reconnect, runs reconciliation), ``/tool/rmrrd/request`` (toolstack checks),
``@introduceDomain`` and ``@releaseDomain``; each domain's guest-query watch is its
owner's (:mod:`rmrrd.daemon.owner`).  :class:`Daemon` runs them in one nursery with
the domains' owners, and stops them within one deadline: SIGTERM to exit stays
within ``limits.shutdown_grace_seconds`` (docs/operations.md).

None of them gives up on xenstore trouble: a watch xenstored refuses (after a
reconnect) is set again, and a handler that fails (a reconcile cut by a lost
connection, a check whose request timed out) runs again, each after a delay that
doubles up to :data:`rmrrd.daemon.lifecycle.RETRY_MAX`, with one warning line when
it starts failing and one info line when it goes through.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from rmrrd.errors import PeerError, TransportError
from rmrrd.protocol import (LIBXL_ROOT, PCI_BACKEND_ROOT, REQUEST_ROOT, classify_libxl_path, is_valid_id,
                            pci_backend_domid, request_path)
from rmrrd.xenstore.client import WatchEvent, XenstoreClient
from rmrrd.xenstore.ops import rm_quietly

from rmrrd.daemon.domains import Domains
from rmrrd.daemon.lifecycle import Limits, retry_delay
from rmrrd.daemon.settings import Observer, Settings
from rmrrd.daemon.toolstack import ToolstackHandler

log = logging.getLogger(__name__)


class Daemon:
    """The watches and handlers, over one connected xenstore client."""

    def __init__(self, xs: XenstoreClient, settings: Settings, limits: Limits, observer: Observer) -> None:
        self.xs = xs
        self.settings = settings
        """Until :meth:`serve` starts; from then on ``domains.settings``."""
        self._limits = limits
        self.observer = observer
        self.ready = trio.Event()
        self._watchers = trio.CancelScope()
        #: When in-flight work must be done by; set by :meth:`stop`.
        self._deadline = float("inf")
        self._guards: set[trio.CancelScope] = set()
        self._domains: Domains | None = None

    def __len__(self) -> int:
        """Domains answered (0 before :meth:`serve`)."""
        return 0 if self._domains is None else len(self._domains)

    @property
    def domains(self) -> Domains:
        """The domains and their owners, once :meth:`serve` has started."""
        if self._domains is None:
            raise RuntimeError("Daemon.serve has not started")
        return self._domains

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`stop`; then let in-flight setups finish, within the grace."""
        async with trio.open_nursery() as work:
            self._domains = Domains(self.xs, self.settings, self._limits, self.observer, work)
            self.toolstack = ToolstackHandler(self.domains)
            with self._watchers:
                async with trio.open_nursery() as watchers:
                    await watchers.start(self._watch, LIBXL_ROOT, self._libxl_event)
                    await watchers.start(self._watch, REQUEST_ROOT, self._request_event)
                    await watchers.start(self._watch, PCI_BACKEND_ROOT, self._backend_event)
                    await watchers.start(self._watch, "@introduceDomain",
                                         partial(self._special_event, "introduce", self.domains.introduced))
                    await watchers.start(self._watch, "@releaseDomain",
                                         partial(self._special_event, "release", self.domains.released))
                    await self.ready.wait()
                    task_status.started()
            # One deadline for the whole shutdown, fixed when it began: a shielded
            # handler still running (see _guarded) and the setups after it share
            # it, so SIGTERM to exit stays within the grace, not a multiple of it.
            with trio.move_on_at(self._deadline) as grace:
                await self.domains.wait_idle()
            if grace.cancelled_caught:
                log.warning("shutdown: domain setups still running after %.1f s, abandoned; "
                            "the next start answers them", self.domains.settings.shutdown_grace)
            work.cancel_scope.cancel()

    def stop(self) -> None:
        """Stop taking new events; :meth:`serve` returns once in-flight work is done."""
        self._deadline = trio.current_time() + self.domains.settings.shutdown_grace
        for guard in self._guards:
            guard.deadline = self._deadline
        self._watchers.cancel()

    async def _watch(self, path: str, on_event: Callable[[WatchEvent], Awaitable[None]], *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Feed every event of the watch on ``path`` to ``on_event``, in order, for
        as long as the daemon serves; a watch xenstored refuses is set again."""
        failures, started = 0, False
        while True:
            try:
                async with self.xs.watch(path) as events:
                    if not started:
                        task_status.started()
                        started = True
                    if failures:
                        log.info("watch %s set after %d failed attempts", path, failures)
                    failures = 0
                    async for event in events:
                        await on_event(event)
                return  # unwatched: the daemon stops
            except (PeerError, TransportError) as exc:
                failures += 1
                log.log(logging.WARNING if failures == 1 else logging.DEBUG, "watch %s lost: %s: %s; setting it "
                        "again", path, type(exc).__name__, exc)
                await trio.sleep(retry_delay(failures) * random.uniform(0.5, 1.0))

    async def _libxl_event(self, event: WatchEvent) -> None:
        self.observer.watch_event("setup")
        what = classify_libxl_path(event.path)
        if what is None:
            return
        if what.domid is None:
            # The initial event, again after every reconnect: reconcile.
            await self._guarded("reconcile", self.domains.reconcile)
            self.ready.set()
        elif what.request or what.domain_node:
            self.domains.changed(what.domid)

    async def _backend_event(self, event: WatchEvent) -> None:
        """libxl's PCI backends: a device attached or detached changes a learned domain."""
        await self.ready.wait()
        self.observer.watch_event("backend")
        domid = pci_backend_domid(event.path)
        if domid is not None:
            self.domains.changed(domid)

    async def _request_event(self, event: WatchEvent) -> None:
        # Checks need the domains' plans: wait for the first reconciliation.
        await self.ready.wait()
        self.observer.watch_event("request")
        if event.path == REQUEST_ROOT:
            await self._guarded("toolstack requests", self.toolstack.scan)
        elif event.path.startswith(REQUEST_ROOT + "/"):
            req_id = event.path[len(REQUEST_ROOT) + 1:].split("/", 1)[0]
            if is_valid_id(req_id):
                await self._guarded(f"request {req_id}", partial(self.toolstack.handle, req_id))
            else:
                await self._guarded(f"request {req_id[:40]!r}", partial(self._drop_request, req_id))

    async def _drop_request(self, req_id: str) -> None:
        await rm_quietly(self.xs, request_path(req_id))
        log.warning("request %r: invalid id, removed unanswered", req_id[:40])

    async def _special_event(self, kind: str, handler: Callable[[], Awaitable[None]], event: WatchEvent) -> None:
        """``@introduceDomain`` and ``@releaseDomain``, after the first reconciliation.

        Their first events come as soon as the watches are set, while the first
        reconciliation may still be reading what a previous run recorded.  A domain set
        up before it reloads a guest's placements keeps the placements of its new plan,
        so its guest could be given a range it already holds.
        """
        await self.ready.wait()
        self.observer.watch_event(kind)
        await self._guarded(event.path, handler)

    async def _guarded(self, what: str, handler: Callable[[], Awaitable[None]]) -> None:
        """Run a handler until it goes through, even during shutdown (within its
        deadline), retrying xenstore trouble with backoff.

        xenstore trouble (a lost connection, a request timed out, a quota) is one
        warning line, then retries; a bug is logged with its trace and not retried
        (it would fail again), and the next event runs the handler afresh.
        """
        # Shielded from the watchers' cancellation, so an event taken is handled to
        # the end; stop() gives it the shutdown's deadline.
        with trio.CancelScope(shield=True, deadline=self._deadline) as scope:
            self._guards.add(scope)
            failures = 0
            try:
                while True:
                    try:
                        await handler()
                    except (PeerError, TransportError) as exc:
                        failures += 1
                        log.log(logging.WARNING if failures == 1 else logging.DEBUG, "%s failed: %s: %s; retrying",
                                what, type(exc).__name__, exc)
                        await trio.sleep(retry_delay(failures) * random.uniform(0.5, 1.0))
                        continue
                    except Exception:
                        log.exception("%s failed", what)
                    break
                if failures:
                    log.info("%s done after %d failed attempts", what, failures)
            finally:
                self._guards.discard(scope)
        if scope.cancelled_caught:
            log.warning("%s abandoned at shutdown; the next start does it", what)
