"""The tree itself, and a transaction's view of it.

Both offer the same small interface (``get``, ``touch``, ``put``, ``set_perms``,
``delete``, ``count``) so every operation is written once and runs either on the
live tree or inside a transaction.

Transactions follow C xenstored since Xen 4.9 (``tools/xenstored/transaction.c``):
a node is copied into the transaction the first time the transaction touches it
(read or write), with the generation it had; later accesses see that copy, so the
transaction never sees other writers.  At commit, if any node it touched has a new
generation (or appeared, or vanished) the commit fails with EAGAIN; otherwise its
copies replace the live nodes.  This is the "only conflicting writes" behaviour that
xenstore.txt announces; a transaction that read nothing another client changed
commits.
"""

from __future__ import annotations

from rmrrd.xenstore.store_node import Node
from rmrrd.xenstore.wire import Perm, XenstoreError

_MISSING = -1


class Tree:
    """The live tree: a flat dict from absolute path to node, plus per-owner counts."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.counts: dict[int, int] = {}
        # Global generation counter: every change stamps the node it changed, and
        # the persistence task compares it to know whether to write.
        self.gen = 0

    def _next_gen(self) -> int:
        self.gen += 1
        return self.gen

    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def touch(self, path: str) -> None:
        """Record that the node at ``path`` was changed in place."""
        self.nodes[path].gen = self._next_gen()

    def put(self, path: str, node: Node) -> None:
        """Insert or replace a whole node, keeping the owner counts right."""
        old = self.nodes.get(path)
        if old is not None:
            self.counts[old.owner] -= 1
        self.counts[node.owner] = self.counts.get(node.owner, 0) + 1
        node.gen = self._next_gen()
        self.nodes[path] = node

    def set_perms(self, path: str, perms: tuple[Perm, ...]) -> None:
        node = self.nodes[path]
        self.counts[node.owner] -= 1
        node.perms = perms
        self.counts[node.owner] = self.counts.get(node.owner, 0) + 1
        self.touch(path)
        node.perms_gen = node.gen

    def delete(self, path: str) -> None:
        node = self.nodes.pop(path)
        self.counts[node.owner] -= 1
        self._next_gen()

    def count(self, domid: int) -> int:
        """Nodes owned by ``domid`` (the "nodes" quota)."""
        return self.counts.get(domid, 0)


class TxView:
    """A transaction: private copies of touched nodes over the live tree."""

    def __init__(self, tree: Tree, node_limit: int | None) -> None:
        self._tree = tree
        # None marks a node deleted (or known absent) inside the transaction.
        self._nodes: dict[str, Node | None] = {}
        self._seen: dict[str, int] = {}
        self._modified: dict[str, None] = {}
        self._deltas: dict[int, int] = {}
        self._node_limit = node_limit

    def get(self, path: str) -> Node | None:
        try:
            return self._nodes[path]
        except KeyError:
            pass
        if self._node_limit is not None and len(self._nodes) >= self._node_limit:
            # The "transaction-nodes" quota; C xenstored answers ENOSPC too.
            raise XenstoreError("ENOSPC", f"transaction touches more than {self._node_limit} nodes")
        live = self._tree.get(path)
        self._seen[path] = live.gen if live is not None else _MISSING
        copy = live.copy() if live is not None else None
        self._nodes[path] = copy
        return copy

    def touch(self, path: str) -> None:
        self._modified[path] = None

    def _recount(self, old: Node | None, new: Node | None) -> None:
        if old is not None:
            self._deltas[old.owner] = self._deltas.get(old.owner, 0) - 1
        if new is not None:
            self._deltas[new.owner] = self._deltas.get(new.owner, 0) + 1

    def put(self, path: str, node: Node) -> None:
        self._recount(self.get(path), node)
        self._nodes[path] = node
        self._modified[path] = None

    def set_perms(self, path: str, perms: tuple[Perm, ...]) -> None:
        node = self.get(path)
        assert node is not None  # the caller found it before asking
        self._recount(node, None)
        node.perms = perms
        node.perms_gen = self._tree.gen  # set now: after every domain introduced so far
        self._recount(None, node)
        self._modified[path] = None

    def delete(self, path: str) -> None:
        self._recount(self.get(path), None)
        self._nodes[path] = None
        self._modified[path] = None

    def count(self, domid: int) -> int:
        return self._tree.count(domid) + self._deltas.get(domid, 0)

    def conflicts(self) -> bool:
        """True if any node this transaction touched changed in the live tree."""
        for path, gen in self._seen.items():
            live = self._tree.get(path)
            if (live.gen if live is not None else _MISSING) != gen:
                return True
        return False

    def apply(self) -> None:
        """Write the transaction's changes into the live tree (after ``conflicts``)."""
        for path in self._modified:
            node = self._nodes[path]
            if node is None:
                if self._tree.get(path) is not None:
                    self._tree.delete(path)
            else:
                self._tree.put(path, node)
