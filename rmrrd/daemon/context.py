"""What every handler of the daemon needs, in one place.

A mutable record: SIGHUP swaps ``config``, ``host`` and ``peers`` for new ones as a
whole (never a half-updated mix, since handlers only read them between awaits).
"""

from __future__ import annotations

from dataclasses import dataclass

from rmrrd.config import Config
from rmrrd.inventory import Inventory
from rmrrd.metrics import Metrics
from rmrrd.xenstore.client import XenstoreClient

from rmrrd.daemon.state import Registry


@dataclass
class Context:
    xs: XenstoreClient
    config: Config
    host: Inventory
    peers: dict[str, Inventory]
    registry: Registry
    metrics: Metrics
