"""The watches rmrrd holds on one xenstore connection, and what each one feeds.

``/libxl`` (setups; its initial event, which xenstored sends again after every
reconnect, runs reconciliation), ``/tool/rmrrd/request`` (toolstack checks),
``@introduceDomain`` and ``@releaseDomain``; each domain's guest-query watch is its
owner's (:mod:`rmrrd.daemon.owner`).  :class:`Daemon` runs them in one nursery with
the domains' owners, and stops them within one deadline: SIGTERM to exit stays
within ``limits.shutdown_grace_seconds`` (docs/operations.md).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from rmrrd.protocol import (LIBXL_ROOT, PCI_BACKEND_ROOT, REQUEST_ROOT, classify_libxl_path, is_valid_id,
                            pci_backend_domid, request_path)
from rmrrd.xenstore.client import XenstoreClient
from rmrrd.xenstore.ops import rm_quietly

from rmrrd.daemon.domains import Domains
from rmrrd.daemon.lifecycle import Limits
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
                    await watchers.start(self._watch_libxl)
                    await watchers.start(self._watch_requests)
                    await watchers.start(self._watch_backends)
                    await watchers.start(self._watch_special, "@introduceDomain", self.domains.introduced)
                    await watchers.start(self._watch_special, "@releaseDomain", self.domains.released)
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
        self._watchers.cancel()

    async def _watch_libxl(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.xs.watch(LIBXL_ROOT) as events:
            task_status.started()
            async for event in events:
                self.observer.watch_event("setup")
                what = classify_libxl_path(event.path)
                if what is None:
                    continue
                if what.domid is None:
                    # The initial event, again after every reconnect: reconcile.
                    await self._guarded("reconcile", self.domains.reconcile)
                    self.ready.set()
                elif what.request or what.domain_node:
                    self.domains.changed(what.domid)

    async def _watch_backends(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """libxl's PCI backends: a device attached or detached changes a learned domain."""
        async with self.xs.watch(PCI_BACKEND_ROOT) as events:
            task_status.started()
            await self.ready.wait()
            async for event in events:
                self.observer.watch_event("backend")
                domid = pci_backend_domid(event.path)
                if domid is not None:
                    self.domains.changed(domid)

    async def _watch_requests(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.xs.watch(REQUEST_ROOT) as events:
            task_status.started()
            # Checks need the domains' plans: wait for the first reconciliation.
            await self.ready.wait()
            async for event in events:
                self.observer.watch_event("request")
                if event.path == REQUEST_ROOT:
                    await self._guarded("toolstack requests", self.toolstack.scan)
                elif event.path.startswith(REQUEST_ROOT + "/"):
                    req_id = event.path[len(REQUEST_ROOT) + 1:].split("/", 1)[0]
                    if is_valid_id(req_id):
                        await self._guarded(f"request {req_id}", partial(self.toolstack.handle, req_id))
                    else:
                        await rm_quietly(self.xs, request_path(req_id))
                        log.warning("request %r: invalid id, removed unanswered", req_id[:40])

    async def _watch_special(self, path: str, handler: Callable[[], Awaitable[None]], *,
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self.xs.watch(path) as events:
            task_status.started()
            async for _ in events:
                self.observer.watch_event("release" if path == "@releaseDomain" else "introduce")
                await self._guarded(path, handler)

    async def _guarded(self, what: str, handler: Callable[[], Awaitable[None]]) -> None:
        """Run a handler to completion even during shutdown, and contain its failure.

        A handler that fails (xenstore dropped mid-way, say) is logged; the next
        event or the reconcile after the reconnect does the work again.
        """
        # Started before stop() at the latest, so this ends by stop()'s deadline too.
        with trio.move_on_after(self.domains.settings.shutdown_grace) as scope:
            scope.shield = True
            try:
                await handler()
            except Exception as exc:
                log.error("%s failed: %s: %s", what, type(exc).__name__, exc)
                log.debug("%s failed", what, exc_info=True)
