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

Memory, as C xenstored accounts it per domain (``domain_memory_add``): the live
tree keeps, per owner, the bytes its nodes take (:meth:`Node.charge`); a
transaction charges the copies it holds to the domain that opened it, through a
:data:`Charge` the store gives it, and the store gives that back when the
transaction ends.
"""

from __future__ import annotations

from collections.abc import Callable

from rmrrd.xenstore.store_node import Node
from rmrrd.xenstore.wire import Perm, XenstoreError

_MISSING = -1

Charge = Callable[[int, bool], None]
"""``charge(amount, check)``: add ``amount`` bytes to a domain's memory; with
``check``, first raise ENOMEM if that would pass its quota."""


class Tree:
    """The live tree: a flat dict from absolute path to node, plus per-owner counts."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.counts: dict[int, int] = {}
        self.memory: dict[int, int] = {}
        """Bytes of the nodes each domain owns (:meth:`Node.charge`)."""
        # Global generation counter: every change stamps the node it changed, and
        # the persistence journal compares it to know what is durable.
        self.gen = 0
        self.changed: dict[str, None] | None = None
        """Paths changed since the journal last took them; None while nobody journals."""

    def _next_gen(self) -> int:
        self.gen += 1
        return self.gen

    def _changed(self, path: str) -> None:
        if self.changed is not None:
            self.changed[path] = None

    def _add(self, path: str, node: Node) -> None:
        owner = node.owner
        node.size = node.charge(path)
        self.counts[owner] = self.counts.get(owner, 0) + 1
        self.memory[owner] = self.memory.get(owner, 0) + node.size

    def _drop(self, node: Node) -> None:
        owner = node.owner
        self.counts[owner] -= 1
        self.memory[owner] -= node.size

    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def touch(self, path: str) -> None:
        """Record that the node at ``path`` was changed in place."""
        node = self.nodes[path]
        self._drop(node)
        self._add(path, node)
        node.gen = self._next_gen()
        self._changed(path)

    def put(self, path: str, node: Node) -> None:
        """Insert or replace a whole node, keeping the owner counts right."""
        old = self.nodes.get(path)
        if old is not None:
            self._drop(old)
        self._add(path, node)
        node.gen = self._next_gen()
        self.nodes[path] = node
        self._changed(path)

    def set_perms(self, path: str, perms: tuple[Perm, ...]) -> None:
        node = self.nodes[path]
        self._drop(node)
        node.perms = perms
        self._add(path, node)
        node.gen = self._next_gen()
        self._changed(path)
        node.perms_gen = node.gen

    def delete(self, path: str) -> None:
        self._drop(self.nodes.pop(path))
        self._next_gen()
        self._changed(path)

    def restore(self, path: str, node: Node | None) -> None:
        """Set ``path`` to ``node`` (None: remove it) as it was saved: no generation
        is stamped and nothing is marked changed (loading, replaying a journal)."""
        old = self.nodes.pop(path, None)
        if old is not None:
            self._drop(old)
        if node is not None:
            self._add(path, node)
            self.nodes[path] = node

    def count(self, domid: int) -> int:
        """Nodes owned by ``domid`` (the "nodes" quota)."""
        return self.counts.get(domid, 0)


class TxView:
    """A transaction: private copies of touched nodes over the live tree.

    ``charged`` is the memory its copies cost, charged through ``charge`` (None
    for a privileged connection, whose memory nobody counts).
    """

    def __init__(self, tree: Tree, node_limit: int | None, charge: Charge | None = None) -> None:
        self._tree = tree
        # None marks a node deleted (or known absent) inside the transaction.
        self._nodes: dict[str, Node | None] = {}
        self._seen: dict[str, int] = {}
        self._modified: dict[str, None] = {}
        self._deltas: dict[int, int] = {}
        self._node_limit = node_limit
        self._charge = charge
        self.charged = 0

    def _account(self, amount: int, check: bool) -> None:
        if self._charge is not None:
            self._charge(amount, check)
            self.charged += amount

    def get(self, path: str) -> Node | None:
        try:
            return self._nodes[path]
        except KeyError:
            pass
        if self._node_limit is not None and len(self._nodes) >= self._node_limit:
            # The "transaction-nodes" quota; C xenstored answers ENOSPC too.
            raise XenstoreError("ENOSPC", f"transaction touches more than {self._node_limit} nodes")
        live = self._tree.get(path)
        copy = live.copy() if live is not None else None
        # Charged before anything is recorded: over the quota, nothing changed.
        self._account(len(path) + (copy.size if copy is not None else 0), True)
        self._seen[path] = live.gen if live is not None else _MISSING
        self._nodes[path] = copy
        return copy

    def touch(self, path: str) -> None:
        node = self._nodes[path]
        if node is not None:
            size = node.charge(path)
            self._account(size - node.size, False)
            node.size = size
        self._modified[path] = None

    def _recount(self, old: Node | None, new: Node | None) -> None:
        if old is not None:
            self._deltas[old.owner] = self._deltas.get(old.owner, 0) - 1
        if new is not None:
            self._deltas[new.owner] = self._deltas.get(new.owner, 0) + 1

    def put(self, path: str, node: Node) -> None:
        self._recount(self.get(path), node)
        node.size = node.charge(path)
        self._account(node.size, False)
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
