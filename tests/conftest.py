"""Markers and fixtures for the whole suite.

Tiers, chosen with ``-m``:

- ``unit``: everything that runs inside the test process: pure functions, the
  simulated xenstored and rmrrd's client on sockets in the same trio run, the
  daemon started in process (``support.inprocess``).  ``pytest -m unit`` runs them
  alone, in well under 20 s on two cores.
- ``process``: starts programs: ``rmrrd run`` / ``rmrrd xenstored`` as systemd or a
  dom0 would (``support.processes``), xenstore-utils, pyxs, promtool, Prometheus,
  pip, systemd-analyze.  A module marks itself with ``pytestmark = pytest.mark.process``
  (or a test with ``@pytest.mark.process``).

- ``xen``: the real-Xen tier, ``tests/xen/`` (its conftest marks them): Xen and a dom0
  under QEMU.  Left out unless asked for (``pytest -m xen``; docs/testing.md).

Every test that is neither ``process`` nor ``xen`` is ``unit``: this file adds the mark
(many pure modules also carry it themselves), and refuses a test marked both unit and
process.  The markers are registered in ``pyproject.toml``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from support.processes import (daemon_limits, daemons, rmrrd_daemon, servers, workdir,  # noqa: F401 (fixtures)
                               xenstored_process)
from rmrrd.xenstore.client import XenstoreClient, open_xenstore
from rmrrd.xenstore.server import XenstoredHandle, serve_xenstored



def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    both = [item.nodeid for item in items
            if item.get_closest_marker("process") is not None and item.get_closest_marker("unit") is not None]
    if both:
        raise pytest.UsageError(f"marked both unit and process: {', '.join(both)}")
    for item in items:
        if item.get_closest_marker("process") is None and item.get_closest_marker("xen") is None:
            item.add_marker(pytest.mark.unit)


@pytest.fixture
async def xenstored(nursery: trio.Nursery, tmp_path: Path) -> XenstoredHandle:
    """The simulated xenstored in the test's own trio run, on a socket in ``tmp_path``."""
    handle: XenstoredHandle = await nursery.start(serve_xenstored, tmp_path / "xs.sock")
    return handle


@pytest.fixture
async def xs(xenstored: XenstoredHandle) -> AsyncIterator[XenstoreClient]:
    """rmrrd's client, connected to :func:`xenstored` as dom0."""
    async with open_xenstore(str(xenstored.socket_path)) as client:
        yield client
