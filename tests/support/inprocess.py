"""The daemon in the test's own trio run: ``run_service`` started with ``nursery.start``.

It serves the embedded simulated xenstored on a socket in the test's directory, so
a test talks to it through rmrrd's client (as dom0) and through guest sockets (as a
guest), exactly as against the subprocess, but with no process to start and no
signal to wait for: ``nursery.start`` returns once the first reconciliation is
done.  Where time matters, pytest-trio's ``mock_clock`` fixture stands in for it:
with its rate at 0 nothing times out by itself, and the test moves time with
``mock_clock.jump`` (the rate limit refilling, say).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import trio

from support import INVENTORIES
from rmrrd.edges.config import Config, LimitsConfig, MetricsConfig, default_config
from rmrrd.app.service import ServiceHandle, run_service
from rmrrd.xenstore.client import XenstoreClient, open_xenstore


def seed_config(workdir: Path, limits: Mapping[str, int | float] | None = None) -> Config:
    """The seed hosts (this host node-a, peer node-b), an embedded xenstored in
    ``workdir``, HTTP on a port of the kernel's choosing; libxl's saved
    configurations are read from ``workdir`` too."""
    base = default_config(environ={})
    return replace(
        base,
        xenstore=replace(base.xenstore, path=workdir / "xs.sock", embedded=True),
        host=replace(base.host, name="node-a", sources=(INVENTORIES / "node-a.yaml",), libxl_dir=workdir),
        peers=(INVENTORIES / "node-b.yaml",),
        metrics=MetricsConfig(port=0),
        limits=replace(LimitsConfig(), **(limits or {})),
    )


@dataclass
class InProcessDaemon:
    """A running daemon and a dom0 connection to its xenstored."""

    handle: ServiceHandle
    xs: XenstoreClient

    @property
    def socket(self) -> Path:
        return self.handle.xenstore_path

    @asynccontextmanager
    async def guest(self, domid: int) -> AsyncIterator[XenstoreClient]:
        """A connection acting as ``domid`` (introduce it first)."""
        async with open_xenstore(f"{self.socket}.d/{domid}") as client:
            yield client


@asynccontextmanager
async def inprocess_daemon(workdir: Path, limits: Mapping[str, int | float] | None = None
                           ) -> AsyncIterator[InProcessDaemon]:
    """Run the daemon for the block; cancelled (not signalled) at its end."""
    async with trio.open_nursery() as nursery:
        handle: ServiceHandle = await nursery.start(partial(run_service, seed_config(workdir, limits),
                                                            install_signals=False))
        async with open_xenstore(str(handle.xenstore_path)) as xs:
            yield InProcessDaemon(handle, xs)
        nursery.cancel_scope.cancel()
