"""What the daemon remembers between xenstore events, per domain.

The state is a cache of xenstore, not a second source of truth: everything in it
can be rebuilt from the keys the toolstack and the daemon wrote (that is what
reconciliation does after a restart or a reconnect), so losing the process loses
nothing.  Only trio tasks of one daemon touch it, so it needs no locks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio

from rmrrd.guest_queries import Allocations
from rmrrd.pci import Bdf
from rmrrd.planner import DomainRequest, Plan
from rmrrd.rate_limit import TokenBucket


@dataclass
class Domain:
    """One guest rmrrd has answered (or is about to answer)."""

    domid: int
    limiter: TokenBucket
    allocations: Allocations
    generation: str | None = None
    request: DomainRequest | None = None
    plan: Plan | None = None
    attached: dict[Bdf, str] = field(default_factory=dict)
    """Devices accepted by an ``assign`` or ``hotplug`` check, with that op."""
    introduced: bool = False
    """Seen as introduced to xenstored: only then does ``@releaseDomain`` concern it."""
    replies: deque[str] = field(default_factory=deque)
    """Ids of the replies written, oldest first (bounded by the query handler)."""
    queries: trio.CancelScope | None = None
    """The scope of the task answering this domain's guest queries, once started."""

    def devices(self) -> set[Bdf]:
        """Every device this domain holds: statically assigned plus attached."""
        static = {spec.bdf for spec in self.request.pci} if self.request else set()
        return static | set(self.attached)


class Registry:
    """The domains the daemon knows, by domid."""

    def __init__(self, *, query_rate: float, query_burst: int, max_allocations: int) -> None:
        self._domains: dict[int, Domain] = {}
        self._query_rate = query_rate
        self._query_burst = query_burst
        self._max_allocations = max_allocations

    def __len__(self) -> int:
        return len(self._domains)

    def __iter__(self) -> Iterator[Domain]:
        return iter(list(self._domains.values()))

    def get(self, domid: int) -> Domain | None:
        return self._domains.get(domid)

    def ensure(self, domid: int) -> Domain:
        """The domain's record, created empty on first sight."""
        domain = self._domains.get(domid)
        if domain is None:
            domain = Domain(domid, TokenBucket(self._query_rate, self._query_burst), self.new_allocations())
            self._domains[domid] = domain
        return domain

    def new_allocations(self) -> Allocations:
        """An empty allocation table with the cap fixed when the daemon started."""
        return Allocations(self._max_allocations)

    def forget(self, domid: int) -> Domain | None:
        return self._domains.pop(domid, None)

    def devices_elsewhere(self, domid: int) -> dict[Bdf, int]:
        """Devices held by every domain but ``domid``, with their holder.

        This is what makes a region shared with another guest's device a ``fail``:
        the map is rebuilt from xenstore on every reconcile.
        """
        held: dict[Bdf, int] = {}
        for other in self._domains.values():
            if other.domid != domid:
                for device in other.devices():
                    held.setdefault(device, other.domid)
        return held
