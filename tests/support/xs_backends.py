"""Where ``tests/test_xs_conformance.py`` runs: the simulated xenstored, or a real one.

On the host, ``xs_backend`` is a fresh simulated xenstored per test, reached through
its unix socket.  In the real-Xen tier, dom0 runs the very same module with
``$RMRRD_XS_CONFORMANCE`` naming the xenstored it started (``xenstored``, the C one,
or ``oxenstored``); ``xs_backend`` then reaches that one twice, through its unix
socket and through ``/dev/xen/xenbus``.  Either way each test works under a node of
its own, ``/conformance/<test>``, removed afterwards, and domains come and go through
INTRODUCE/RELEASE on the simulated xenstored, through ``xl create -p`` / ``xl destroy``
on a real one.

A behaviour that differs between the xenstoreds is pinned, per kind, with
``XsBackend.expect``; docs/xenstore.md lists the differences.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from rmrrd.xenstore.client import XenstoreClient, open_xenstore
from rmrrd.xenstore.server import XenstoredHandle, serve_xenstored

T = TypeVar("T")

ENV = "RMRRD_XS_CONFORMANCE"
KINDS = ("simulated", "xenstored", "oxenstored")
REAL_TRANSPORTS = {"socket": "/run/xenstored/socket", "xenbus": "/dev/xen/xenbus"}
TIMEOUT = 30.0
"""Per request: generous, since a real xenstored under emulation is slow."""


def backend_params() -> list[tuple[str, str]]:
    """(kind, transport) pairs this process tests against."""
    kind = os.environ.get(ENV)
    if not kind:
        return [("simulated", "socket")]
    if kind not in KINDS[1:]:
        raise RuntimeError(f"${ENV}={kind!r}: expected one of {', '.join(KINDS[1:])}")
    return [(kind, transport) for transport in REAL_TRANSPORTS]


@dataclass
class XsBackend:
    """One xenstored and one way to reach it, as a test sees them."""

    kind: str
    transport: str
    path: str
    root: str
    """This test's own node (absolute); created empty before the test."""
    domains: list[int] = field(default_factory=list)
    _made: int = 0

    def expect(self, *, simulated: T, xenstored: T, oxenstored: T) -> T:
        """What this kind of xenstored does where the three differ (a pinned difference)."""
        return {"simulated": simulated, "xenstored": xenstored, "oxenstored": oxenstored}[self.kind]

    @property
    def real(self) -> bool:
        return self.kind != "simulated"

    async def create_domain(self) -> int:
        """A new domain, introduced to xenstored: fires ``@introduceDomain``."""
        self._made += 1
        if self.real:
            name = f"{self.root.rsplit('/', 1)[-1]}-{self._made}"[-60:]
            done = await trio.run_process(["testbed-guest-create", name, "pv", "128", "paused"],
                                          capture_stdout=True, capture_stderr=True, check=False)
            if done.returncode != 0:
                raise AssertionError(f"xl create failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
            domid = int(done.stdout)
        else:
            domid = 100 + self._made
            async with open_xenstore(self.path, timeout=TIMEOUT) as dom0:
                await dom0.introduce(domid, 1, 1)
        self.domains.append(domid)
        return domid

    async def destroy_domain(self, domid: int) -> None:
        """The domain goes: fires ``@releaseDomain``."""
        self.domains.remove(domid)
        if self.real:
            await trio.run_process(["xl", "destroy", str(domid)], capture_stdout=True, capture_stderr=True)
        else:
            async with open_xenstore(self.path, timeout=TIMEOUT) as dom0:
                await dom0.release(domid)


@pytest.fixture(params=backend_params(), ids="-".join)
async def xs_backend(request: pytest.FixtureRequest, nursery: trio.Nursery,
                     tmp_path: Path) -> AsyncIterator[XsBackend]:
    kind, transport = request.param
    if kind == "simulated":
        handle: XenstoredHandle = await nursery.start(serve_xenstored, tmp_path / "xs.sock")
        path = str(handle.socket_path)
    else:
        path = REAL_TRANSPORTS[transport]
    root = "/conformance/" + re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name).strip("-")
    backend = XsBackend(kind, transport, path, root)
    async with open_xenstore(path, timeout=TIMEOUT) as setup:
        if await setup.exists(root):  # left by an interrupted run
            await setup.rm(root)
        await setup.mkdir(root)
    try:
        yield backend
    finally:
        with trio.CancelScope(shield=True):
            for domid in list(backend.domains):
                await backend.destroy_domain(domid)
            async with open_xenstore(path, timeout=TIMEOUT) as cleanup:
                await cleanup.rm(root)


@pytest.fixture
async def xs(xs_backend: XsBackend) -> AsyncIterator[XenstoreClient]:
    """dom0's client connected to the backend."""
    async with open_xenstore(xs_backend.path, timeout=TIMEOUT) as client:
        yield client
