"""Watches of the simulated xenstored, indexed by path so matching costs O(depth).

xenstore.txt ("WATCH"): an event on a path matches every watch whose path is that
path or one of its ancestors; when a subtree is removed, watches set on paths inside
it fire too, with their own path as the event path.  A trie over path components
answers both questions without scanning every watch on every write.

Each trie node keeps its watches in a dict (insertion-ordered, so events go out in
the order the watches were set), so removing one costs O(depth) however many other
watches share its path: a connection's teardown costs its own watches, never the
square of everyone's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(eq=False, slots=True)
class Watch:
    """One registered watch.

    ``path`` is absolute (or a special ``@`` name); ``base`` is the prefix to strip
    from event paths when the client registered a relative path (xenstore.txt: the
    event path is relative iff the watch path was).
    """

    conn_id: int
    path: str
    token: bytes
    base: str | None

    @property
    def size(self) -> int:
        """Bytes charged to its domain's memory (C's ``add_watch``: path and token)."""
        return len(self.path) + len(self.token)

    def event_path(self, path: str) -> str:
        """The path as this watch's owner expects it in a WATCH_EVENT."""
        if self.base is not None and path.startswith(self.base + "/"):
            return path[len(self.base) + 1 :]
        return path


@dataclass(slots=True)
class _TrieNode:
    children: dict[str, _TrieNode] = field(default_factory=dict)
    watches: dict[Watch, None] = field(default_factory=dict)


def _components(path: str) -> list[str]:
    # "/" is the root itself; "@name" is a one-component path of its own.
    return [c for c in path.split("/") if c]


class WatchIndex:
    """Every watch of every connection, keyed by path components."""

    def __init__(self) -> None:
        self._root = _TrieNode()
        # "@introduceDomain" and friends match only a watch on exactly that name,
        # never one on "/": they live apart from the path trie.
        self._special: dict[str, dict[Watch, None]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, watch: Watch) -> None:
        self._count += 1
        if watch.path.startswith("@"):
            self._special.setdefault(watch.path, {})[watch] = None
            return
        node = self._root
        for part in _components(watch.path):
            node = node.children.setdefault(part, _TrieNode())
        node.watches[watch] = None

    def remove(self, watch: Watch) -> None:
        """Drop one watch, pruning trie nodes left empty."""
        self._count -= 1
        if watch.path.startswith("@"):
            special = self._special[watch.path]
            del special[watch]
            if not special:
                del self._special[watch.path]
            return
        trail = [self._root]
        parts = _components(watch.path)
        for part in parts:
            trail.append(trail[-1].children[part])
        del trail[-1].watches[watch]
        for depth in range(len(parts), 0, -1):
            node = trail[depth]
            if node.watches or node.children:
                break
            del trail[depth - 1].children[parts[depth - 1]]

    def matching(self, path: str) -> Iterator[Watch]:
        """Watches set on ``path`` or any of its ancestors (the root included)."""
        if path.startswith("@"):
            yield from self._special.get(path, ())
            return
        node: _TrieNode | None = self._root
        yield from self._root.watches
        for part in _components(path):
            node = node.children.get(part) if node is not None else None
            if node is None:
                return
            yield from node.watches

    def below(self, path: str) -> Iterator[Watch]:
        """Watches set strictly inside the subtree at ``path``."""
        node: _TrieNode | None = self._root
        for part in _components(path):
            node = node.children.get(part) if node is not None else None
            if node is None:
                return
        stack = list(node.children.values()) if node is not None else []
        while stack:
            current = stack.pop()
            yield from current.watches
            stack.extend(current.children.values())
