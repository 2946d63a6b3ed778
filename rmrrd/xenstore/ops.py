"""Small compositions of client operations, shared by the daemon, the CLI and the demo.

Pipelined ``gather``, reading a value as text or a numbered list, removing what may
already be gone, reading a whole subtree, keeping a bounded list of nodes.  They
know nothing of rmrrd's keys (that is :mod:`rmrrd.protocol`), only of xenstore.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Container, Iterable
from typing import TypeVar

import trio

from rmrrd.errors import InputError
from rmrrd.xenstore.client import Transaction, XenstoreClient
from rmrrd.xenstore.wire import NoEntry

T = TypeVar("T")
A = TypeVar("A")
Ops = Transaction | XenstoreClient
"""Anything that reads and writes: a transaction, or the client outside one."""


async def gather(fn: Callable[[A], Awaitable[T]], args: Iterable[A]) -> list[T]:
    """Await ``fn(arg)`` for every arg concurrently and return the results in order.

    On one connection this pipelines the requests: a dozen reads or writes cost one
    round trip instead of a dozen.  Only for calls whose order does not matter.
    """
    items = list(args)
    results: list[T | None] = [None] * len(items)

    async def run(index: int, arg: A) -> None:
        results[index] = await fn(arg)

    try:
        async with trio.open_nursery() as nursery:
            for index, arg in enumerate(items):
                nursery.start_soon(run, index, arg)
    except BaseExceptionGroup as group:
        # Callers catch by type (NoEntry, Again, ConnectionLost) as if the calls had
        # been made one by one: raise the first real failure, not the group.
        failure = next((exc for exc in _leaves(group) if not isinstance(exc, trio.Cancelled)), None)
        if failure is None:
            raise
        raise failure from group
    return results  # type: ignore[return-value]


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return leaves


async def read_value(tx: Ops, path: str) -> bytes | None:
    """A node's value as it is, or None if it does not exist."""
    try:
        return await tx.read(path)
    except NoEntry:
        return None


def ascii_text(path: str, raw: bytes) -> str:
    """``raw`` as ASCII text; :class:`InputError` naming ``path`` if it is not."""
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise InputError(f"{path}: value is not ASCII") from None


async def read_text(tx: Ops, path: str) -> str | None:
    """A node's value as ASCII text, or None if it does not exist.

    Raises :class:`InputError` naming the path if the value is not ASCII: the
    values rmrrd reads are numbers, xl.cfg strings and xenstore paths.
    """
    raw = await read_value(tx, path)
    return None if raw is None else ascii_text(path, raw)


async def read_values(tx: Ops, path: str) -> dict[str, bytes]:
    """The children of a numbered list node (``pci/0``, ``pci/1``...) as {n: value},
    in order, values as they are (a child gone meanwhile is left out)."""
    try:
        names = await tx.directory(path)
    except NoEntry:
        return {}
    names.sort(key=lambda name: (len(name), name))
    values = await gather(lambda name: read_value(tx, f"{path}/{name}"), names)
    return {name: value for name, value in zip(names, values) if value is not None}


async def read_list(tx: Ops, path: str) -> dict[str, str]:
    """:func:`read_values` as ASCII text; :class:`InputError` naming the first child
    that is not."""
    return {name: ascii_text(f"{path}/{name}", raw) for name, raw in (await read_values(tx, path)).items()}


async def rm_quietly(tx: Ops, path: str) -> None:
    """Remove a node if it is there; a missing one is what we wanted anyway."""
    try:
        await tx.rm(path)
    except NoEntry:
        pass


async def read_tree(tx: Ops, path: str) -> dict[str, str]:
    """Every non-empty value below ``path``, keyed relative to it; {} if absent.

    The shape the decoders of :mod:`rmrrd.protocol` take.  In rmrrd's schema a node
    has a value or children, never both, so only empty-valued nodes are listed.
    Read level by level, each level's reads pipelined.
    """
    found: dict[str, str] = {}
    level = await _children(tx, path)
    while level:
        values = await gather(lambda rel: read_text(tx, f"{path}/{rel}"), level)
        found.update((rel, value) for rel, value in zip(level, values) if value)
        parents = [rel for rel, value in zip(level, values) if not value]
        below = await gather(lambda rel: _children(tx, f"{path}/{rel}"), parents)
        level = [f"{rel}/{name}" for rel, names in zip(parents, below) for name in names]
    return found


async def list_tree(tx: Ops, path: str, prune: Container[str] = ()) -> list[str]:
    """Every node below ``path``, relative to it, parents first; [] if absent.

    The children of a node named in ``prune`` (relative) are not listed.  Read
    level by level, each level's listings pipelined.
    """
    found: list[str] = []
    level = await _children(tx, path)
    while level:
        found += level
        parents = [rel for rel in level if rel not in prune]
        below = await gather(lambda rel: _children(tx, f"{path}/{rel}"), parents)
        level = [f"{rel}/{name}" for rel, names in zip(parents, below) for name in names]
    return found


async def _children(tx: Ops, path: str) -> list[str]:
    try:
        return await tx.directory(path)
    except NoEntry:
        return []
