"""Peer inventories (configuration key ``peers``): the hosts a guest may migrate to.

A source is one of the configuration's :data:`rmrrd.edges.config.PeerSource` values:

* a :class:`~pathlib.Path` to a directory: every ``*.yaml`` file in it, in sorted
  order, one host per file (hidden files are skipped, as a shell glob would:
  editors and copy tools leave ``.name.yaml`` files behind);
* a :class:`~pathlib.Path` to a file: that one host;
* a ``str`` ``http://host:port[/path]`` URL of a peer rmrrd: its ``/inventory``
  (appended unless the URL already ends with it), JSON as the daemon serves it
  (:func:`rmrrd.core.inventory_yaml.inventory_to_json`).

Loading never stops at the first failure: the daemon has to come up (and a SIGHUP
has to take effect) even when one peer is down or one file is broken, so every
failure becomes one line in :attr:`PeerLoad.problems` and the other sources are
still read.  What to do about a failed source (keep the previous inventory of that
host) is the daemon's decision, not this module's.

All sources are read at once, so one unreachable peer costs one ``timeout``, not
one per peer; the results are then merged in the configured order, so that when
two sources name the same host the first one configured wins, whatever finished
first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from rmrrd import inputs
from rmrrd.edges.config import PeerSource
from rmrrd.errors import InputError, PeerError, TransportError
from rmrrd.edges.http_client import http_get
from rmrrd.core.inventory import Inventory
from rmrrd.core.inventory_yaml import inventory_from_json, load_inventory_file

log = logging.getLogger(__name__)

INVENTORY_PATH = "/inventory"


@dataclass(frozen=True)
class PeerLoad:
    """What :func:`load_peers` found: the peers by host name, and what went wrong."""

    peers: dict[str, Inventory]
    #: One line each: what failed and where (file and line, or URL).
    problems: tuple[str, ...]


@dataclass
class _Found:
    """One source's result: inventories with where each came from, and problems."""

    inventories: list[tuple[str, Inventory]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def inventory_url(url: str) -> str:
    """The URL to GET for a peer: ``url`` itself if it names ``/inventory``, else
    ``url`` with ``/inventory`` appended (a peer is usually given as its listener's
    base URL, ``http://node-b:8407``)."""
    base = url.rstrip("/")
    return base if base.endswith(INVENTORY_PATH) else base + INVENTORY_PATH


def _read_path(path: Path) -> _Found:
    """Every inventory of a directory, or the one of a file (blocking: run in a thread)."""
    found = _Found()
    if path.is_dir():
        try:
            files = sorted(entry for entry in path.glob("*.yaml")
                           if not entry.name.startswith(".") and entry.is_file())
        except OSError as exc:
            found.problems.append(f"{path}: cannot list the peer directory: {exc.strerror or exc}")
            return found
    else:
        files = [path]
    for file in files:
        try:
            found.inventories.append((str(file), load_inventory_file(file)))
        except InputError as exc:
            found.problems.append(str(exc))
    return found


async def _fetch(url: str, timeout: float) -> _Found:
    """A peer rmrrd's inventory from its HTTP endpoint."""
    found = _Found()
    target = inventory_url(url)
    try:
        body = await http_get(target, timeout=timeout)
        # Decoding and validating up to 16 MiB is CPU work of a second or more:
        # a thread keeps the loop answering guests meanwhile.
        found.inventories.append((target, await trio.to_thread.run_sync(_decode, body, target)))
    except (InputError, PeerError, TransportError) as exc:
        found.problems.append(str(exc))
    return found


def _unique_aliases(inventory: Inventory, origin: str, peers: dict[str, Inventory], exclude: str | None,
                    problems: list[str]) -> Inventory:
    """``inventory`` without the aliases that already name this host or a peer read before.

    A migration target must name one host: an alias two hosts claim is dropped from the
    later one (a problem line says so), the first one configured keeps it.
    """
    taken = {name for host, inv in peers.items() for name in (host, *inv.aliases)} | {exclude}
    kept = tuple(alias for alias in inventory.aliases if alias not in taken)
    for alias in inventory.aliases:
        if alias in taken:
            problems.append(f"{origin}: alias {alias!r} of host {inventory.host!r} already names another host: "
                            f"dropped")
    return inventory._replace(aliases=kept) if kept != inventory.aliases else inventory


def _without_names_of_later_hosts(inventory: Inventory, peers: dict[str, Inventory], problems: list[str],
                                  origin: str) -> Inventory:
    """Drop an alias that is the host name of a peer read later (its own name wins)."""
    clashing = [alias for alias in inventory.aliases if alias in peers]
    for alias in clashing:
        problems.append(f"{origin}: alias {alias!r} of host {inventory.host!r} is the name of another peer: dropped")
    if not clashing:
        return inventory
    return inventory._replace(aliases=tuple(alias for alias in inventory.aliases if alias not in clashing))


def _decode(body: bytes, source: str) -> Inventory:
    """A peer's JSON answer as an inventory; :class:`InputError` naming ``source``."""
    return inventory_from_json(inputs.parse_json(body, source), source)


async def _load_source(source: PeerSource, timeout: float) -> _Found:
    if isinstance(source, Path):
        # File reads block; a thread keeps a slow (network) file system from
        # stalling the daemon's loop.  HTTP stays in the loop (see http_client).
        return await trio.to_thread.run_sync(_read_path, source)
    return await _fetch(source, timeout)


async def load_peers(sources: Sequence[PeerSource], *, timeout: float = 5.0,
                     exclude: str | None = None) -> PeerLoad:
    """Read every peer source; failures are listed, never raised.

    ``timeout`` bounds each HTTP fetch (they run concurrently).  ``exclude`` is this
    host's name: an inventory of this host among the peers (a directory copied
    whole to every host) is skipped with a problem line, as is a second source for
    a host already loaded.
    """
    results: list[_Found] = [_Found() for _ in sources]

    async def load_one(index: int, source: PeerSource) -> None:
        results[index] = await _load_source(source, timeout)

    async with trio.open_nursery() as nursery:
        for index, source in enumerate(sources):
            nursery.start_soon(load_one, index, source)

    peers: dict[str, Inventory] = {}
    origins: dict[str, str] = {}
    problems: list[str] = []
    for found in results:
        problems.extend(found.problems)
        for origin, inventory in found.inventories:
            host = inventory.host
            if host == exclude:
                problems.append(f"{origin}: host {host!r} is this host, not a peer: skipped")
            elif host in peers:
                problems.append(f"{origin}: host {host!r} already read from {origins[host]}: skipped")
            else:
                peers[host], origins[host] = _unique_aliases(inventory, origin, peers, exclude, problems), origin
                log.info("peer %s: %d regions from %s", host, len(inventory.regions), origin)
    peers = {host: _without_names_of_later_hosts(inventory, peers, problems, origins[host])
             for host, inventory in peers.items()}
    for problem in problems:
        log.warning("peer inventory problem: %s", problem)
    return PeerLoad(peers, tuple(problems))
