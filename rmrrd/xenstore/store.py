"""The simulated xenstored's state machine: requests in, replies and watch events out.

Pure and sans-IO (no sockets, no files, no clock): ``Store.handle(conn, packet)``
returns an :class:`Output`: the packets to send, each with the connection to send
it on, in the order they must go out (the reply first, then the watch events the
request caused), and the domains introduced or released, which the I/O layer acts
on.  :meth:`Store.introduce` and :meth:`Store.release`, called without a request,
return theirs the same way: nothing is parked in the store for later.  The trio
layer (``rmrrd.xenstore.server``) only moves bytes.  Persistence goes through
:meth:`Store.snapshot`, :meth:`Store.from_snapshot` and :attr:`Store.generation`.

Behaviour follows C xenstored (``tools/xenstored/core.c``, ``watch.c``,
``transaction.c``, ``domain.c``) and ``docs/misc/xenstore.txt``; docs/xenstore.md
lists what differs.  Connections of domain 0 are privileged (as a dom0 socket
connection is): they bypass permissions and quotas.  Any other domain id is a guest
with its real permissions and quotas, counted per domain (:class:`Usage`) however
many connections it opens.

Whatever a client sends, the store answers it or refuses it: every reply and watch
event is checked against the wire's limits before it is built (an event too large
for the wire is dropped, as C's ``send_event`` drops it), so one client can never
make the server fail for the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from rmrrd.xenstore.store_node import OWNER, READ, WRITE, Node, access_bits
from rmrrd.xenstore.store_view import Tree, TxView
from rmrrd.xenstore.store_watch import Watch, WatchIndex
from rmrrd.xenstore.wire import (
    ABS_PATH_MAX,
    ABSOLUTE_PATH,
    DOMID_FIRST_RESERVED,
    PAYLOAD_MAX,
    REL_PATH_MAX,
    SPECIAL_PATHS,
    Op,
    Packet,
    Perm,
    XenstoreError,
    error_packet,
    format_perms,
    parse_perms,
    split_args,
)

log = logging.getLogger(__name__)

INITIAL_NODES = ("/tool", "/tool/xenstored")
"""Nodes below the root that C xenstored creates at start (``setup_structure``)."""
_OK = b"OK\0"


@dataclass(frozen=True, slots=True)
class Quotas:
    """Limits applied to unprivileged domains, each counted per domain, with C
    xenstored's defaults (``tools/xenstore/xenstored_core.c``, the ``quota_*``
    variables of Xen 4.17) where it has one."""

    nodes: int = 1000  # nodes owned per domain                 -> ENOSPC
    watches: int = 128  # watches per domain                     -> E2BIG
    transactions: int = 10  # open transactions per domain       -> ENOSPC
    transaction_nodes: int = 1024  # nodes touched per transaction -> ENOSPC
    node_perms: int = 5  # permission entries per node           -> ENOSPC
    node_size: int = 2048  # stored record size of a node        -> ENOSPC
    path_max: int = REL_PATH_MAX  # path length below the domain's home -> EINVAL
    memory: int = 2 * 1024 * 1024 + 512 * 1024
    """Bytes per domain: nodes it owns, its watches, its transactions' copies and
    the output queued for it (C's hard memory quota) -> ENOMEM, events dropped."""
    outstanding: int = 20
    """Requests per domain answered but not yet sent: beyond, the server stops
    reading the domain's connections until it reads its replies (as C's
    ``domain_can_read``)."""
    connections: int = 8
    """Connections per domain (C has one ring per domain; a guest socket takes
    more): beyond, a new connection is closed at once."""


@dataclass(eq=False, slots=True)
class Usage:
    """What one unprivileged domain holds against its :class:`Quotas`."""

    connections: int = 0
    watches: int = 0
    transactions: int = 0
    held: int = 0
    """Bytes of its watches, its transactions' copies and the output queued for
    it; the nodes it owns are counted by the tree (:meth:`Store.memory`)."""
    outstanding: int = 0
    """Replies queued for it and not yet sent (kept by the server)."""

    @property
    def idle(self) -> bool:
        return not (self.connections or self.watches or self.transactions or self.held or self.outstanding)


@dataclass(eq=False)
class Connection:
    """One client connection: its domain, watches and open transactions.

    ``usage`` is its domain's, shared by every connection of that domain (None
    for a privileged connection: nothing is counted).
    """

    id: int
    domid: int
    usage: Usage | None = None
    watches: dict[tuple[str, bytes], Watch] = field(default_factory=dict)
    transactions: dict[int, Transaction] = field(default_factory=dict)
    next_tx: int = 1

    @property
    def privileged(self) -> bool:
        return self.domid == 0


@dataclass(frozen=True, slots=True)
class DomainChange:
    """An INTRODUCE or RELEASE the I/O layer must act on (open/close guest sockets)."""

    introduced: bool
    domid: int


@dataclass(slots=True)
class Output:
    """What one request (or introduce, or release) produced, in order."""

    sends: list[tuple[Connection, Packet]] = field(default_factory=list)
    """Packets to send and the connection for each: a reply first, then events."""
    domain_changes: list[DomainChange] = field(default_factory=list)


Fire = Callable[[Output], None]
"""A watch event to fire into an Output: now, or when a transaction commits."""


@dataclass(eq=False)
class Transaction:
    """An open transaction and the watch events its commit will fire."""

    view: TxView
    events: list[Fire] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The persistent part of a store (what C xenstored keeps across a live update).

    ``nodes`` lists every node as (path, value, permissions), parents before their
    children and children in their order; ``domains`` maps each introduced domain
    to its (mfn, event channel).
    """

    nodes: tuple[tuple[str, bytes, tuple[Perm, ...]], ...]
    special: dict[str, tuple[Perm, ...]]
    domains: dict[int, tuple[int, int]]
    targets: dict[int, int]
    generation: int = 0
    """:attr:`Store.generation` when it was taken (journal records up to it are in it)."""


@dataclass(frozen=True, slots=True)
class Changes:
    """What changed in the persistent state since the last :meth:`Store.take_changes`.

    ``nodes`` gives each changed path its state now: (value, permissions, child
    names in order), or None when it was removed; ``meta`` the domains, targets and
    special permissions, when any of them changed.  Applied in order on top of a
    snapshot (:meth:`Store.apply_changes`), a journal of these rebuilds the store.
    """

    generation: int
    nodes: tuple[tuple[str, tuple[bytes, tuple[Perm, ...], tuple[str, ...]] | None], ...]
    meta: tuple[dict[str, tuple[Perm, ...]], dict[int, tuple[int, int]], dict[int, int]] | None


_Handler = Callable[["Store", Connection, Packet, Output], bytes]
_HANDLERS: dict[Op, _Handler] = {}
_PRIVILEGED = frozenset({Op.CONTROL, Op.INTRODUCE, Op.RELEASE, Op.IS_DOMAIN_INTRODUCED, Op.RESUME, Op.SET_TARGET})
"""Requests C xenstored answers EACCES to any unprivileged domain before looking at
them (``XS_FLAG_PRIV`` in ``wire_funcs[]``): a guest may not even ask whether
another domain is introduced (XSA-115)."""
_ANY_TRANSACTION = frozenset({Op.WATCH, Op.UNWATCH})
"""Requests whose tx_id is ignored (``XS_FLAG_NOTID``); every other request names
an open transaction of its connection or 0, else ENOENT."""


def _handles(*ops: Op) -> Callable[[_Handler], _Handler]:
    def register(func: _Handler) -> _Handler:
        for op in ops:
            _HANDLERS[op] = func
        return func

    return register


def _fail(errno_name: str, why: str) -> XenstoreError:
    return XenstoreError(errno_name, why)


def _args(payload: bytes, count: int) -> list[bytes]:
    parts = split_args(payload)
    if len(parts) != count:
        raise _fail("EINVAL", f"expected {count} arguments, got {len(parts)}")
    return parts


def _one_arg(payload: bytes) -> bytes:
    # As C's onearg(): exactly one string, NUL-terminated.
    if not payload.endswith(b"\0") or payload.count(b"\0") != 1:
        raise _fail("EINVAL", "expected one NUL-terminated argument")
    return payload[:-1]


def _domid(raw: bytes) -> int:
    if not raw.isdigit() or len(raw) > 5 or int(raw) >= DOMID_FIRST_RESERVED:
        raise _fail("EINVAL", f"bad domain id {raw!r}")
    return int(raw)


def _parent(path: str) -> str:
    cut = path.rfind("/")
    return path[:cut] if cut > 0 else "/"


def _leaf(path: str) -> str:
    return path[path.rfind("/") + 1 :]


def home(domid: int) -> str:
    """A domain's home path (GET_DOMAIN_PATH, and the base of relative paths)."""
    return f"/local/domain/{domid}"


class Store:
    """The whole xenstored state; see the module docstring."""

    def __init__(self, quotas: Quotas | None = None) -> None:
        self.quotas = quotas or Quotas()
        self.tree = Tree()
        self.tree.put("/", Node(b"", (Perm(0, "n"),), 0))
        # As C xenstored's setup_structure: a fresh store holds /tool/xenstored, so
        # ``xenstore-ls /`` shows what it shows against the real daemon.
        for path in INITIAL_NODES:
            self.tree.nodes[_parent(path)].add_child(_leaf(path))
            self.tree.touch(_parent(path))
            self.tree.put(path, Node(b"", (Perm(0, "n"),), 0))
        self.special_perms: dict[str, tuple[Perm, ...]] = {p: (Perm(0, "n"),) for p in SPECIAL_PATHS}
        self.introduced: dict[int, tuple[int, int]] = {}  # domid -> (mfn, event channel)
        self.introduced_at: dict[int, int] = {}
        """The tree's generation when each domain was introduced (none for those a
        snapshot restored): a permission entry set before then grants it nothing,
        as in C xenstored, where a domain exists from its creation and a
        permission for a domain that does not exist is marked to be ignored.
        Here a domain exists from its introduction (there is no hypervisor to ask),
        and any domid a connection acts as without one is taken as existing."""
        self.targets: dict[int, int] = {}
        self.connections: dict[int, Connection] = {}
        self.usage: dict[int, Usage] = {}
        """Each unprivileged domain's, while it holds anything."""
        self._watches = WatchIndex()
        self._next_conn = 1
        self._meta_changed = False

    # -- connections ---------------------------------------------------------------

    def connect(self, domid: int = 0) -> Connection:
        """A new connection acting as ``domid`` (0: privileged, as a dom0 socket).

        Raises XenstoreError (ENOSPC) when the domain has its quota of connections:
        the caller closes it.  Privileged connections are never refused.
        """
        usage = None
        if domid != 0:
            usage = self.usage.setdefault(domid, Usage())
            if usage.connections >= self.quotas.connections:
                raise _fail("ENOSPC", f"dom{domid} has {usage.connections} connections")
            usage.connections += 1
        conn = Connection(self._next_conn, domid, usage)
        self._next_conn += 1
        self.connections[conn.id] = conn
        return conn

    def disconnect(self, conn: Connection) -> None:
        """Forget a closed connection: its watches and transactions go with it.

        Costs what the connection holds, not what the whole store holds.
        """
        if self.connections.pop(conn.id, None) is None:
            return
        self._reset(conn)
        if conn.usage is not None:
            conn.usage.connections -= 1
            self._forget_idle(conn)

    def _forget_idle(self, conn: Connection) -> None:
        if conn.usage is not None and conn.usage.idle and self.usage.get(conn.domid) is conn.usage:
            del self.usage[conn.domid]

    def _reset(self, conn: Connection) -> None:
        for watch in conn.watches.values():
            self._watches.remove(watch)
            self._charge(conn, -watch.size, check=False)
        if conn.usage is not None:
            conn.usage.watches -= len(conn.watches)
        conn.watches.clear()
        for tx_id in list(conn.transactions):
            self._drop_transaction(conn, tx_id)

    def memory(self, domid: int) -> int:
        """Bytes charged to ``domid``: the nodes it owns and what :class:`Usage` holds."""
        usage = self.usage.get(domid)
        return self.tree.memory.get(domid, 0) + (usage.held if usage is not None else 0)

    def _charge(self, conn: Connection, amount: int, *, check: bool) -> None:
        """Add ``amount`` bytes to the domain of ``conn`` (nothing for a privileged
        one); with ``check``, ENOMEM instead if that would pass the memory quota."""
        usage = conn.usage
        if usage is None:
            return
        if check and amount > 0 and self.memory(conn.domid) + amount > self.quotas.memory:
            raise _fail("ENOMEM", f"dom{conn.domid} would hold more than {self.quotas.memory} bytes")
        usage.held += amount

    # -- the entry point -------------------------------------------------------------

    def handle(self, conn: Connection, packet: Packet) -> Output:
        """Process one request: the reply first, then the events it caused.

        A failed request changes nothing and gets an ERROR reply naming the errno;
        replies echo the request's req_id and tx_id (pyxs checks both).
        """
        handler = _HANDLERS.get(packet.op)
        out = Output()
        try:
            # In C xenstored's order (process_message): the type, the privilege,
            # the transaction.
            if handler is None:
                raise _fail("ENOSYS", f"{packet.op.name} is not a request this server takes")
            if packet.op in _PRIVILEGED:
                self._require_privileged(conn, f"send {packet.op.name}")
            if packet.tx_id and packet.op not in _ANY_TRANSACTION:
                self._transaction(conn, packet.tx_id)
            payload = handler(self, conn, packet, out)
            if len(payload) > PAYLOAD_MAX:  # as C's send_reply
                raise _fail("E2BIG", f"{packet.op.name} reply of {len(payload)} bytes")
        except XenstoreError as exc:
            log.debug("dom%d conn %d %s failed: %s", conn.domid, conn.id, packet.op.name, exc)
            out.sends.insert(0, (conn, error_packet(packet.req_id, packet.tx_id, exc.errno_name)))
            return out
        out.sends.insert(0, (conn, Packet(packet.op, packet.req_id, packet.tx_id, payload)))
        return out

    # -- persistence ------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Grows with every change of the persistent state: compare to know whether to save."""
        return self.tree.gen

    def snapshot(self) -> Snapshot:
        """The persistent part of the store (see :class:`Snapshot`)."""
        nodes = []
        stack = ["/"]
        while stack:
            path = stack.pop()
            node = self.tree.nodes[path]
            nodes.append((path, node.value, node.perms))
            prefix = path if path != "/" else ""
            stack.extend(f"{prefix}/{child}" for child in reversed(node.children))
        return Snapshot(tuple(nodes), dict(self.special_perms), dict(self.introduced), dict(self.targets),
                        self.generation)

    def track_changes(self) -> None:
        """Start keeping what :meth:`take_changes` returns (for a journal)."""
        if self.tree.changed is None:
            self.tree.changed = {}

    def take_changes(self) -> Changes | None:
        """What changed since the last call (None: nothing); needs :meth:`track_changes`."""
        changed = self.tree.changed
        if not changed and not self._meta_changed:
            return None
        nodes = []
        for path in changed or ():
            node = self.tree.nodes.get(path)
            nodes.append((path, None if node is None else (node.value, node.perms, tuple(node.children))))
        meta = (dict(self.special_perms), dict(self.introduced), dict(self.targets)) if self._meta_changed else None
        self.tree.changed = {}
        self._meta_changed = False
        return Changes(self.generation, tuple(nodes), meta)

    def apply_changes(self, changes: Changes) -> None:
        """Replay one journal record (from :meth:`take_changes`) on this store.

        Records at or below the store's generation are already in it (a snapshot
        taken after them) and are skipped.  ValueError if the record leaves a node
        whose parent or child is missing.
        """
        if changes.generation <= self.generation:
            return
        tree = self.tree
        for path, state in changes.nodes:
            node = None
            if state is not None:
                value, perms, children = state
                node = Node(value, perms, 0)
                for name in children:
                    node.add_child(name)
            tree.restore(path, node)
        for path, _ in changes.nodes:
            live = tree.nodes.get(path)
            if live is None:
                continue
            missing = next((name for name in live.children if f"{path.rstrip('/')}/{name}" not in tree.nodes), None)
            if missing is not None or (path != "/" and _parent(path) not in tree.nodes):
                raise ValueError(f"record {changes.generation} leaves {path} without its parent or child {missing}")
        if changes.meta is not None:
            special, introduced, targets = changes.meta
            self.special_perms.update((name, perms) for name, perms in special.items() if name in self.special_perms)
            self.introduced, self.targets = dict(introduced), dict(targets)
        # Exactly the record's: the next record must not look older than the store.
        tree.gen = changes.generation

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot, quotas: Quotas | None = None) -> Store:
        """A store holding ``snapshot``; ValueError if it lists a child before its
        parent or has no root."""
        store = cls(quotas)
        # The saved tree replaces the initial one whole (its /tool may have been removed).
        store.tree = tree = Tree()
        built: dict[str, Node] = {}
        for path, value, perms in snapshot.nodes:
            if path in built:
                raise ValueError(f"node {path} listed twice")
            if path != "/":
                parent = built.get(_parent(path))
                if parent is None:
                    raise ValueError(f"node {path} listed before its parent")
                parent.add_child(_leaf(path))
            built[path] = Node(value, perms, 0)
        if "/" not in built:
            raise ValueError("no root node")
        for path, node in built.items():
            tree.restore(path, node)
        for name, perms in snapshot.special.items():
            if name in store.special_perms:
                store.special_perms[name] = perms
        store.introduced = dict(snapshot.domains)
        store.targets = dict(snapshot.targets)
        tree.gen = snapshot.generation
        return store

    # -- paths and permissions ---------------------------------------------------------

    def _path(self, conn: Connection, raw: bytes, *, special_ok: bool = False) -> str:
        """The absolute path a request names, validated as C's is_valid_nodename."""
        try:
            path = raw.decode("ascii")
        except UnicodeDecodeError:
            raise _fail("EINVAL", "path is not ASCII") from None
        if special_ok and path in self.special_perms:
            return path
        if path.startswith("@"):  # C's canonicalize keeps @names as they are: no node has one
            raise _fail("EINVAL", f"{path[:80]!r} names no node")
        base = home(conn.domid)
        if path and not path.startswith("/"):
            path = f"{base}/{path}"
        if len(path) > ABS_PATH_MAX or not ABSOLUTE_PATH.fullmatch(path):
            raise _fail("EINVAL", f"invalid path {path[:80]!r}")
        if not conn.privileged:
            below = len(path) - len(base) - 1 if path.startswith(base + "/") else len(path)
            if below > self.quotas.path_max:
                raise _fail("EINVAL", f"path longer than {self.quotas.path_max} below {base}")
        return path

    def _bits(self, conn: Connection, perms: tuple[Perm, ...], perms_gen: int | None = None) -> int:
        """``conn``'s access to a node with ``perms``, set at ``perms_gen`` (None:
        a watch's check, which ignores when the entries were set)."""
        if conn.privileged:
            return READ | WRITE | OWNER
        return access_bits(perms, conn.domid, self.targets.get(conn.domid),
                           introduced_at=None if perms_gen is None else self.introduced_at, perms_gen=perms_gen or 0)

    def _view(self, conn: Connection, tx_id: int) -> Tree | TxView:
        if tx_id == 0:
            return self.tree
        return self._transaction(conn, tx_id).view

    def _transaction(self, conn: Connection, tx_id: int) -> Transaction:
        try:
            return conn.transactions[tx_id]
        except KeyError:
            raise _fail("ENOENT", f"no transaction {tx_id}") from None

    def _missing(self, view: Tree | TxView, conn: Connection, path: str, need: int) -> XenstoreError:
        """The error for a missing node: ENOENT only if the nearest existing
        ancestor grants what was asked, else EACCES, so that a guest learns nothing
        about nodes it may not see (C's errno_from_parents)."""
        parent = path
        node = None
        while node is None and parent != "/":
            parent = _parent(parent)
            node = view.get(parent)
        if node is not None and self._bits(conn, node.perms, node.perms_gen) & need:
            return _fail("ENOENT", f"no node {path}")
        return _fail("EACCES", f"no access to {path}")

    def _get(self, view: Tree | TxView, conn: Connection, path: str, need: int) -> Node:
        node = view.get(path)
        if node is None:
            raise self._missing(view, conn, path, need)
        if self._bits(conn, node.perms, node.perms_gen) & need != need:
            raise _fail("EACCES", f"dom{conn.domid} may not access {path}")
        return node

    def _check_size(self, conn: Connection, node: Node, path: str) -> None:
        if not conn.privileged and node.record_size() >= self.quotas.node_size:
            raise _fail("ENOSPC", f"node {path} would exceed {self.quotas.node_size} bytes")

    # -- watch events ----------------------------------------------------------------

    def _event(self, out: Output, watch: Watch, path: str) -> None:
        conn = self.connections[watch.conn_id]
        payload = watch.event_path(path).encode() + b"\0" + watch.token + b"\0"
        if len(payload) > PAYLOAD_MAX:
            # As C's send_event: an event the wire cannot carry is not sent.
            log.debug("dom%d conn %d: watch event of %d bytes dropped", conn.domid, conn.id, len(payload))
            return
        out.sends.append((conn, Packet(Op.WATCH_EVENT, 0, 0, payload)))

    def _may_see(self, watch: Watch, perms: tuple[Perm, ...]) -> bool:
        return bool(self._bits(self.connections[watch.conn_id], perms) & READ)

    def _fire(self, out: Output, path: str, perms: tuple[Perm, ...]) -> None:
        """A change at ``path``: events to watches on it and its ancestors whose
        connection may read the node (xenstore.txt, WATCH)."""
        for watch in self._watches.matching(path):
            if self._may_see(watch, perms):
                self._event(out, watch, path)

    def _fire_removed(self, out: Output, path: str, removed: dict[str, tuple[Perm, ...]]) -> None:
        """A subtree removed: watches on it or above see ``path``; watches inside
        see their own path (xenstore.txt, WATCH_EVENT)."""
        self._fire(out, path, removed[path])
        for watch in list(self._watches.below(path)):
            if self._may_see(watch, removed.get(watch.path, removed[path])):
                self._event(out, watch, watch.path)

    def _changed(self, out: Output, view: Tree | TxView, conn: Connection, tx_id: int, path: str,
                 perms: tuple[Perm, ...]) -> None:
        """``path`` changed: its watch events, now or when the transaction commits."""
        self._later(out, view, conn, tx_id, lambda out: self._fire(out, path, perms))

    def _later(self, out: Output, view: Tree | TxView, conn: Connection, tx_id: int, event: Fire) -> None:
        # Changes inside a transaction fire only if and when it commits.
        if view is self.tree:
            event(out)
        else:
            self._transaction(conn, tx_id).events.append(event)

    # -- creation and removal (shared by WRITE, MKDIR, RM, RELEASE) ---------------------

    def _create(self, view: Tree | TxView, conn: Connection, path: str, value: bytes) -> Node:
        """Create ``path`` and any missing ancestors (each inheriting its parent's
        permissions, owned by the creating guest: C's construct_node)."""
        missing = [path]
        parent_path = _parent(path)
        parent = view.get(parent_path)
        while parent is None:
            missing.append(parent_path)
            parent_path = _parent(parent_path)
            parent = view.get(parent_path)
        perms = parent.perms
        if not conn.privileged:
            # Check every quota before changing anything: a failed request leaves
            # the tree as it was.
            if view.count(conn.domid) + len(missing) > self.quotas.nodes:
                raise _fail("ENOSPC", f"dom{conn.domid} would own more than {self.quotas.nodes} nodes")
            grown = parent.record_size() + len(_leaf(missing[-1])) + 1
            if max(grown, 20 + 8 * len(perms) + len(value)) >= self.quotas.node_size:
                raise _fail("ENOSPC", f"node under {parent_path} would exceed {self.quotas.node_size} bytes")
            self._room(conn, len(value) + sum(2 * len(p) + 21 + 8 * len(perms) for p in missing))
            perms = (Perm(conn.domid, perms[0].access), *perms[1:])
        node = parent
        for new_path in reversed(missing):
            node = Node(b"", perms, 0, parent.perms_gen)
            parent.add_child(_leaf(new_path))
            view.touch(parent_path)
            view.put(new_path, node)
            parent, parent_path = node, new_path
        node.value = value
        view.touch(path)
        return node

    def _room(self, conn: Connection, grow: int) -> None:
        """ENOMEM unless the domain of ``conn`` may hold ``grow`` more bytes."""
        self._charge(conn, grow, check=True)
        self._charge(conn, -grow, check=False)

    def _create_missing(self, view: Tree | TxView, conn: Connection, path: str, value: bytes) -> Node:
        """Create ``path``, absent from ``view``, if its nearest ancestor lets ``conn``
        write (else EACCES, so a guest learns nothing of what it may not see)."""
        error = self._missing(view, conn, path, WRITE)
        if error.errno_name != "ENOENT":
            raise error
        return self._create(view, conn, path, value)

    def _remove(self, view: Tree | TxView, path: str) -> dict[str, tuple[Perm, ...]]:
        """Delete the subtree at ``path``; return the removed paths' permissions."""
        removed: dict[str, tuple[Perm, ...]] = {}
        stack = [path]
        while stack:
            current = stack.pop()
            node = view.get(current)
            if node is None:
                continue
            removed[current] = node.perms
            prefix = current if current != "/" else ""
            stack.extend(f"{prefix}/{child}" for child in node.children)
            view.delete(current)
        parent_path = _parent(path)
        parent = view.get(parent_path)
        if parent is not None:
            parent.remove_child(_leaf(path))
            view.touch(parent_path)
        return removed

    # -- transactions -----------------------------------------------------------------

    def start_transaction(self, conn: Connection) -> int:
        usage = conn.usage
        if usage is not None:
            if usage.transactions >= self.quotas.transactions:
                raise _fail("ENOSPC", f"dom{conn.domid} has {usage.transactions} open transactions")
            usage.transactions += 1
        tx_id = conn.next_tx
        while tx_id == 0 or tx_id in conn.transactions:
            tx_id = (tx_id + 1) & 0xFFFFFFFF
        conn.next_tx = (tx_id + 1) & 0xFFFFFFFF
        if usage is None:
            view = TxView(self.tree, None)
        else:
            view = TxView(self.tree, self.quotas.transaction_nodes,
                          lambda amount, check: self._charge(conn, amount, check=check))
        conn.transactions[tx_id] = Transaction(view)
        return tx_id

    def _drop_transaction(self, conn: Connection, tx_id: int) -> Transaction:
        """Forget an open transaction, giving back what it held."""
        tx = conn.transactions.pop(tx_id)
        if conn.usage is not None:
            conn.usage.transactions -= 1
            self._charge(conn, -tx.view.charged, check=False)
        return tx

    def _end_transaction(self, out: Output, conn: Connection, tx_id: int, commit: bool) -> None:
        self._transaction(conn, tx_id)
        tx = self._drop_transaction(conn, tx_id)
        if not commit:
            return
        if tx.view.conflicts():
            raise _fail("EAGAIN", f"transaction {tx_id} conflicts with a change made since")
        tx.view.apply()
        for event in tx.events:
            event(out)

    # -- domains ------------------------------------------------------------------------

    def _require_privileged(self, conn: Connection, what: str) -> None:
        if not conn.privileged:
            raise _fail("EACCES", f"dom{conn.domid} may not {what}")

    def introduce(self, domid: int, mfn: int, port: int) -> Output:
        """Introduce a domain as an INTRODUCE request would; its events and change."""
        out = Output()
        self._introduce(out, domid, mfn, port)
        return out

    def release(self, domid: int) -> Output:
        """Release a domain as a RELEASE request would; its events and change."""
        out = Output()
        self._release(out, domid)
        return out

    def _introduce(self, out: Output, domid: int, mfn: int, port: int) -> None:
        if domid == 0:
            raise _fail("EINVAL", "domain 0 cannot be introduced")
        if domid in self.introduced:
            return
        self.introduced[domid] = (mfn, port)
        out.domain_changes.append(DomainChange(True, domid))
        log.info("dom%d introduced", domid)
        self._fire(out, "@introduceDomain", self.special_perms["@introduceDomain"])
        self._meta_changed_now()
        self.introduced_at[domid] = self.tree.gen

    def _release(self, out: Output, domid: int) -> None:
        """Forget a domain: its nodes go (as C xenstored's domain_tree_remove),
        its connections are closed by the I/O layer, @releaseDomain fires."""
        if domid not in self.introduced:
            raise _fail("ENOENT", f"dom{domid} is not introduced")
        del self.introduced[domid]
        self.introduced_at.pop(domid, None)
        self.targets.pop(domid, None)
        owned = sorted(p for p, n in self.tree.nodes.items() if n.owner == domid and p != "/")
        for path in owned:
            if self.tree.get(path) is not None:
                self._fire_removed(out, path, self._remove(self.tree, path))
        for conn in [c for c in self.connections.values() if c.domid == domid]:
            self.disconnect(conn)
        out.domain_changes.append(DomainChange(False, domid))
        log.info("dom%d released, %d of its nodes removed", domid, len(owned))
        self._fire(out, "@releaseDomain", self.special_perms["@releaseDomain"])
        self._meta_changed_now()

    def _meta_changed_now(self) -> None:
        """The domains, targets or special permissions changed (persisted state)."""
        self.tree.gen += 1
        self._meta_changed = True

    # -- request handlers, one per op: each returns the reply payload or raises XenstoreError

    @_handles(Op.READ)
    def _op_read(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        view = self._view(conn, packet.tx_id)
        path = self._path(conn, _one_arg(packet.payload))
        return self._get(view, conn, path, READ).value

    @_handles(Op.WRITE)
    def _op_write(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        raw, sep, value = packet.payload.partition(b"\0")
        if not sep:
            raise _fail("EINVAL", "WRITE without a NUL after the path")
        view = self._view(conn, packet.tx_id)
        path = self._path(conn, raw)
        node = view.get(path)
        if node is None:
            node = self._create_missing(view, conn, path, value)
        else:
            if self._bits(conn, node.perms, node.perms_gen) & WRITE == 0:
                raise _fail("EACCES", f"dom{conn.domid} may not write {path}")
            old = node.value
            node.value = value
            try:
                self._check_size(conn, node, path)
                self._room(conn, len(value) - len(old))
            except XenstoreError:
                node.value = old
                raise
            view.touch(path)
        self._changed(out, view, conn, packet.tx_id, path, node.perms)
        return _OK

    @_handles(Op.MKDIR)
    def _op_mkdir(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        view = self._view(conn, packet.tx_id)
        path = self._path(conn, _one_arg(packet.payload))
        if view.get(path) is not None:
            self._get(view, conn, path, WRITE)  # an existing node still needs write access
            return _OK
        self._changed(out, view, conn, packet.tx_id, path, self._create_missing(view, conn, path, b"").perms)
        return _OK

    @_handles(Op.RM)
    def _op_rm(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        view = self._view(conn, packet.tx_id)
        path = self._path(conn, _one_arg(packet.payload))
        if path == "/":
            raise _fail("EINVAL", "the root cannot be removed")
        if view.get(path) is None:
            error = self._missing(view, conn, path, WRITE)
            # Removing what is not there is fine if its parent exists (xenself.txt, RM).
            if error.errno_name == "ENOENT" and view.get(_parent(path)) is not None:
                return _OK
            raise error
        self._get(view, conn, path, WRITE)
        removed = self._remove(view, path)
        self._later(out, view, conn, packet.tx_id, lambda out: self._fire_removed(out, path, removed))
        return _OK

    @_handles(Op.DIRECTORY)
    def _op_directory(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        view = self._view(conn, packet.tx_id)
        path = self._path(conn, _one_arg(packet.payload))
        listing = self._get(view, conn, path, READ).children_bytes()
        if len(listing) > PAYLOAD_MAX:
            # libxenstore then falls back to DIRECTORY_PART, as against C xenstored.
            raise _fail("E2BIG", f"children of {path} exceed one payload")
        return listing

    @_handles(Op.DIRECTORY_PART)
    def _op_directory_part(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        raw, raw_offset = _args(packet.payload, 2)
        if not raw_offset.isdigit():
            raise _fail("EINVAL", f"bad DIRECTORY_PART offset {raw_offset!r}")
        view = self._view(conn, packet.tx_id)
        path = self._path(conn, raw)
        node = self._get(view, conn, path, READ)
        listing = node.children_bytes()
        gen = str(node.gen).encode() + b"\0"
        offset = int(raw_offset)
        if offset >= len(listing):
            return gen + b"\0"
        # Whole names only, as many as fit with the generation and the final NUL.
        room = PAYLOAD_MAX - len(gen) - 1
        end = offset
        while end < len(listing):
            next_end = listing.index(b"\0", end) + 1
            if next_end - offset > room:
                break
            end = next_end
        chunk = listing[offset:end]
        return gen + chunk + (b"\0" if end == len(listing) else b"")

    @_handles(Op.GET_PERMS)
    def _op_get_perms(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        # Node paths only, as C xenstored 4.17 (do_get_perms resolves a node; a special
        # path is EINVAL there, though SET_PERMS takes one).  oxenstored answers them.
        path = self._path(conn, _one_arg(packet.payload))
        perms = self._get(self._view(conn, packet.tx_id), conn, path, READ).perms
        return b"".join(p + b"\0" for p in format_perms(perms))

    @_handles(Op.SET_PERMS)
    def _op_set_perms(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        strings = split_args(packet.payload)
        if len(strings) < 2:
            raise _fail("EINVAL", "SET_PERMS needs a path and at least one permission")
        path = self._path(conn, strings[0], special_ok=True)
        perms = tuple(parse_perms(strings[1:]))
        if not conn.privileged and len(perms) > self.quotas.node_perms:
            raise _fail("ENOSPC", f"more than {self.quotas.node_perms} permissions")
        if path in self.special_perms:
            self._require_privileged(conn, f"set permissions of {path}")
            self.special_perms[path] = perms
            self._meta_changed_now()
            return _OK
        view = self._view(conn, packet.tx_id)
        node = self._get(view, conn, path, WRITE | OWNER)
        if not conn.privileged and perms[0].domid != node.owner:
            raise _fail("EPERM", f"dom{conn.domid} may not give {path} away")
        old = node.perms
        view.set_perms(path, perms)
        self._changed(out, view, conn, packet.tx_id, path, old)
        return _OK

    @_handles(Op.WATCH)
    def _op_watch(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        raw, token = _args(packet.payload, 2)
        relative = not raw.startswith((b"/", b"@"))
        if raw.startswith(b"@"):
            # Any @name is a watch C xenstored takes (check_watch_path), up to the
            # relative path limit; only the two special ones ever fire.
            if len(raw) > REL_PATH_MAX:
                raise _fail("EINVAL", "watch path too long")
            path = raw.decode("ascii", "replace")
        else:
            path = self._path(conn, raw)
        if (path, token) in conn.watches:
            raise _fail("EEXIST", f"watch {path} {token!r} already set")
        usage = conn.usage
        if usage is not None and usage.watches >= self.quotas.watches:
            raise _fail("E2BIG", f"dom{conn.domid} has {self.quotas.watches} watches")
        watch = Watch(conn.id, path, token, home(conn.domid) if relative else None)
        self._charge(conn, watch.size, check=True)
        if usage is not None:
            usage.watches += 1
        conn.watches[(path, token)] = watch
        self._watches.add(watch)
        self._event(out, watch, path)  # the initial event, after the reply
        return _OK

    @_handles(Op.UNWATCH)
    def _op_unwatch(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        raw, token = _args(packet.payload, 2)
        path = raw.decode("ascii", "replace") if raw.startswith(b"@") else self._path(conn, raw)
        watch = conn.watches.pop((path, token), None)
        if watch is None:
            raise _fail("ENOENT", f"no watch {path} {token!r}")
        self._watches.remove(watch)
        self._charge(conn, -watch.size, check=False)
        if conn.usage is not None:
            conn.usage.watches -= 1
        return _OK

    @_handles(Op.RESET_WATCHES)
    def _op_reset_watches(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        self._reset(conn)
        return _OK

    @_handles(Op.TRANSACTION_START)
    def _op_transaction_start(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        if packet.tx_id != 0:
            raise _fail("EBUSY", "TRANSACTION_START inside a transaction")
        return str(self.start_transaction(conn)).encode() + b"\0"

    @_handles(Op.TRANSACTION_END)
    def _op_transaction_end(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        arg = _one_arg(packet.payload)
        if arg not in (b"T", b"F"):
            raise _fail("EINVAL", f"TRANSACTION_END takes T or F, not {arg!r}")
        self._end_transaction(out, conn, packet.tx_id, arg == b"T")
        return _OK

    @_handles(Op.INTRODUCE)
    def _op_introduce(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        strings = split_args(packet.payload)
        if len(strings) < 3:
            raise _fail("EINVAL", "INTRODUCE needs domid, mfn and event channel")
        try:
            mfn, port = int(strings[1]), int(strings[2])
        except ValueError:
            raise _fail("EINVAL", "INTRODUCE mfn and event channel must be decimal") from None
        self._introduce(out, _domid(strings[0]), mfn, port)
        return _OK

    @_handles(Op.RELEASE)
    def _op_release(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        self._release(out, _domid(_one_arg(packet.payload)))
        return _OK

    @_handles(Op.RESUME)
    def _op_resume(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        domid = _domid(_one_arg(packet.payload))
        if domid not in self.introduced:
            raise _fail("ENOENT", f"dom{domid} is not introduced")
        return _OK

    @_handles(Op.IS_DOMAIN_INTRODUCED)
    def _op_is_introduced(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        # Privileged only (_PRIVILEGED), so a guest cannot enumerate domains.
        domid = _domid(_one_arg(packet.payload))
        return b"T\0" if domid == 0 or domid in self.introduced else b"F\0"

    @_handles(Op.GET_DOMAIN_PATH)
    def _op_get_domain_path(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        return home(_domid(_one_arg(packet.payload))).encode() + b"\0"

    @_handles(Op.SET_TARGET)
    def _op_set_target(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        raw_domid, raw_target = _args(packet.payload, 2)
        domid, target = _domid(raw_domid), _domid(raw_target)
        if domid not in self.introduced:
            raise _fail("ENOENT", f"dom{domid} is not introduced")
        self.targets[domid] = target
        self._meta_changed_now()
        return _OK

    @_handles(Op.CONTROL)
    def _op_control(self, conn: Connection, packet: Packet, out: Output) -> bytes:
        # Only the harmless commands: the rest are C xenstored internals.  Like every
        # request of _PRIVILEGED, a guest's never gets here.
        strings = split_args(packet.payload) or [b""]
        if strings[0] == b"help":
            return b"help\nprint\n\0"
        if strings[0] == b"print":
            log.info("control print: %s", b" ".join(strings[1:]).decode("ascii", "replace"))
            return _OK
        raise _fail("EINVAL", f"unknown control command {strings[0]!r}")
