"""Nodes of the simulated xenstored's tree and the permission rule C xenstored applies.

A node holds a value, its permission list and its children (leaf names, in creation
order: DIRECTORY answers in that order, as C xenstored does).  The permission list's
first entry names the owner and gives the access of every domain not listed after it
(``docs/misc/xenstore.txt``, "GET_PERMS"; ``tools/xenstored/core.c``,
``perm_for_conn``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rmrrd.xenstore.wire import Perm

# Access bits, as C xenstored's XS_PERM_READ / XS_PERM_WRITE / XS_PERM_OWNER.
READ = 1
WRITE = 2
OWNER = 4
ALL = READ | WRITE | OWNER

_BITS = {"n": 0, "r": READ, "w": WRITE, "b": READ | WRITE}


class Node:
    """One node; mutated in place only by the view that owns it (see store_view).

    ``size`` is what the node was last charged to its owner's memory (see
    :meth:`charge`): the store keeps the per-domain sums current without walking
    the tree, as C xenstored does with ``domain_memory_add``.
    """

    __slots__ = ("value", "perms", "children", "gen", "perms_gen", "size", "_child_bytes")

    def __init__(self, value: bytes, perms: tuple[Perm, ...], gen: int, perms_gen: int = 0) -> None:
        self.value = value
        self.perms = perms
        # A dict keeps insertion order and removes a child in O(1).
        self.children: dict[str, None] = {}
        self.gen = gen
        self.perms_gen = perms_gen
        """The store's generation when this permission list was set (by SET_PERMS,
        or inherited at creation with the parent's): an entry naming a domain
        introduced later grants nothing (see :func:`access_bits`)."""
        self.size = 0
        self._child_bytes = 0

    @property
    def owner(self) -> int:
        """The owning domain: quotas count nodes against it."""
        return self.perms[0].domid

    def add_child(self, name: str) -> None:
        if name not in self.children:
            self.children[name] = None
            self._child_bytes += len(name) + 1

    def remove_child(self, name: str) -> None:
        if self.children.pop(name, 0) is None:
            self._child_bytes -= len(name) + 1

    def copy(self) -> Node:
        """A private copy for a transaction's overlay (children dict not shared)."""
        clone = Node(self.value, self.perms, self.gen, self.perms_gen)
        clone.children = dict(self.children)
        clone._child_bytes = self._child_bytes
        clone.size = self.size
        return clone

    def children_bytes(self) -> bytes:
        """The child list as on the wire: each leaf name followed by a NUL."""
        return b"".join(name.encode() + b"\0" for name in self.children)

    def record_size(self) -> int:
        """Size of C xenstored's stored record for this node (header of 20 bytes,
        8 per permission, value, child list); the "node-size" quota limits it."""
        return 20 + 8 * len(self.perms) + len(self.value) + self._child_bytes

    def charge(self, path: str) -> int:
        """The memory this node costs its owner now: its record and its name, as
        C xenstored's ``write_node_raw`` charges the key and the data."""
        return len(path) + self.record_size()


def access_bits(perms: Sequence[Perm], domid: int, target: int | None, *,
                introduced_at: Mapping[int, int] | None = None, perms_gen: int = 0) -> int:
    """Access of unprivileged ``domid`` (acting for ``target`` if set) to a node.

    As ``perm_for_conn``: the owner (or a domain targeting the owner) gets
    everything; otherwise the first later entry naming the domain or its target
    decides; otherwise the first entry's access is the default.  Entries naming a
    domain introduced after the list was set (``introduced_at[domid] > perms_gen``:
    the node's :attr:`Node.perms_gen`) are skipped, as C
    xenstored skips the entries it marked ``XS_PERM_IGNORE``: a permission given
    before its domain existed, or to an earlier domain with the same id, grants
    nothing (``domain_alloc_permrefs``, ``domain_adjust_node_perms`` in
    ``xenstored_domain.c``).
    """
    owner = perms[0].domid
    if owner == domid or (target is not None and owner == target):
        return ALL
    for perm in perms[1:]:
        if introduced_at is not None and introduced_at.get(perm.domid, -1) > perms_gen:
            continue
        if perm.domid == domid or (target is not None and perm.domid == target):
            return _BITS[perm.access]
    return _BITS[perms[0].access]
