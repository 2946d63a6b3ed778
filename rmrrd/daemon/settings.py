"""What the daemon is given: the settings it answers with, and who hears about it.

The daemon never reads a configuration file nor knows Prometheus: the application
(:mod:`rmrrd.app.service` for now) builds a :class:`Settings` from the file and
the inventories, and swaps in a new one whole on SIGHUP (handlers read it between
awaits, so never see half a reload); the metrics satisfy :class:`Observer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rmrrd.core.inventory import Inventory
from rmrrd.core.planner import RequestDefaults


@dataclass(frozen=True, slots=True)
class Settings:
    """The inputs of every answer; replaced whole, never changed in place."""

    defaults: RequestDefaults
    """xl's defaults for keys a request leaves out (``defaults.*``)."""
    host: Inventory
    peers: Mapping[str, Inventory]
    max_query_length: int
    results_kept: int
    shutdown_grace: float
    libxl_dir: Path = Path("/var/lib/xen")
    """Where libxl keeps the domains' saved configurations (``host.libxl_dir``)."""


class Observer(Protocol):
    """What the daemon reports as it works (:class:`rmrrd.edges.metrics.Metrics` is one)."""

    def set_domains(self, count: int) -> None: ...

    def setup_done(self, status: str, seconds: float | None = None) -> None: ...

    def conflict(self, kind: str, action: str) -> None: ...

    def request_done(self, op: str, verdict: str, seconds: float) -> None: ...

    def guest_query(self, kind: str, outcome: str) -> None: ...

    def watch_event(self, watch: str) -> None: ...
