"""The xenstore wire protocol as a sans-IO codec: bytes in, packets out, never a socket.

Both ends of rmrrd's xenstore traffic use it: the client (``client.py``) and the
simulated xenstored (``server.py``/``store.py``).  Every fact here comes from
``xen/include/public/io/xs_wire.h`` and ``docs/misc/xenstore.txt`` in xen-project/xen:

* a message is a 16-byte header ``struct xsd_sockmsg {u32 type, req_id, tx_id, len}``
  in host byte order (little-endian on every platform rmrrd runs on) followed by
  ``len`` bytes of payload;
* ``len`` is at most ``XENSTORE_PAYLOAD_MAX`` (4096) in both directions: xenstored
  kills a connection that exceeds it, so we refuse to send one (LocalProtocolError)
  and refuse to accept one (RemoteProtocolError; the client's decoder allows longer
  replies, which oxenstored sends on its socket: ``client_conn.REPLY_PAYLOAD_MAX``);
* payloads are mostly NUL-terminated strings (``split_args``/``join_args``);
* errors travel as the errno *name* (``"ENOENT\\0"``) in an ``XS_ERROR`` reply;
* paths use ``[A-Za-z0-9/_@-]`` only, no ``//``, no trailing ``/`` except the root,
  absolute ones at most 3072 bytes, relative ones at most 2048.

Like h11 and wsproto, the codec separates *local* protocol errors (our caller misused
the protocol: a bug in rmrrd, outside the error roots of :mod:`rmrrd.errors`) from
*remote* ones (the peer sent garbage: a :class:`~rmrrd.errors.PeerError`); both carry
the errno name a server would answer with.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Iterable
from typing import ClassVar, NamedTuple

from rmrrd.errors import PeerError


class Op(enum.IntEnum):
    """Message types, numbered as ``enum xsd_sockmsg_type`` in xs_wire.h."""

    CONTROL = 0  # formerly XS_DEBUG; the header keeps DEBUG as an alias
    DEBUG = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    # 20 was XS_RESTRICT, removed from Xen: the header skips it (SET_TARGET + 2).
    RESET_WATCHES = 21
    DIRECTORY_PART = 22
    GET_FEATURE = 23
    SET_FEATURE = 24
    GET_QUOTA = 25
    SET_QUOTA = 26


# A dict lookup is several times faster than ``Op(n)`` on the decode hot path.
_OPS: dict[int, Op] = {op.value: op for op in Op}

HEADER = struct.Struct("<IIII")
"""``struct xsd_sockmsg``: type, req_id, tx_id, len."""

PAYLOAD_MAX = 4096
"""``XENSTORE_PAYLOAD_MAX``: the largest payload either side may send."""
ABS_PATH_MAX = 3072
"""``XENSTORE_ABS_PATH_MAX``: longest absolute path, in bytes."""
REL_PATH_MAX = 2048
"""``XENSTORE_REL_PATH_MAX``: longest relative path, in bytes."""

_U32_MAX = 0xFFFFFFFF
DOMID_T_MAX = 0xFFFF
"""A ``domid_t`` is 16 bits: the ids a permission entry may name (xenstore.txt, ``<domid>``)."""
DOMID_FIRST_RESERVED = 0x7FF0
"""``DOMID_FIRST_RESERVED`` (xen/include/public/xen.h): ids from here up are not
domains (``DOMID_SELF``, ``DOMID_IO``...), so never introduced, released or guests."""

SPECIAL_PATHS = ("@introduceDomain", "@releaseDomain")
"""The special watch paths xenstored fires itself (xenstore.txt, WATCH)."""


# -- errors --------------------------------------------------------------------------

XS_ERRORS: tuple[str, ...] = (
    "EINVAL", "EACCES", "EEXIST", "EISDIR", "ENOENT", "ENOMEM", "ENOSPC", "EIO",
    "ENOTEMPTY", "ENOSYS", "EROFS", "EBUSY", "EAGAIN", "EISCONN", "E2BIG", "EPERM",
)
"""The errno names of ``xsd_errors[]`` in xs_wire.h, in the header's order."""


class XenstoreError(PeerError):
    """The other end of a xenstore connection said no, or sent garbage;
    ``errno_name`` is the xsd_errors name for it.

    A server answers a failed request with ``error_packet(..., exc.errno_name)``; a
    client raises the subclass :func:`error_for` picks for the name it received.
    A lost connection or a timeout is not one of these: it is a
    :class:`~rmrrd.errors.TransportError` (``ConnectionLost``, ``XenstoreTimeout``).
    """

    errno_name: str

    def __init__(self, errno_name: str, message: str = "") -> None:
        super().__init__(f"{errno_name}: {message}" if message else errno_name)
        self.errno_name = errno_name


class RemoteProtocolError(XenstoreError):
    """The peer sent bytes that are not valid xenstore protocol; drop the connection."""

    def __init__(self, message: str, errno_name: str = "EIO") -> None:
        super().__init__(errno_name, message)


class LocalProtocolError(Exception):
    """We were asked to send something the protocol forbids (bad path, oversized payload).

    A bug in the caller, so not one of the error roots: every path and value rmrrd
    sends is built from input it validated first.  ``errno_name`` is what xenstored
    would have answered.
    """

    def __init__(self, message: str, errno_name: str = "EINVAL") -> None:
        super().__init__(f"{errno_name}: {message}")
        self.errno_name = errno_name


class ErrnoError(XenstoreError):
    """Base of the one-class-per-errno family, so callers can ``except NoEntry``."""

    ERRNO: ClassVar[str] = "EIO"

    def __init__(self, message: str = "") -> None:
        super().__init__(self.ERRNO, message)


class InvalidArgument(ErrnoError):
    """EINVAL: the request was malformed."""

    ERRNO = "EINVAL"


class PermissionDenied(ErrnoError):
    """EACCES: the node's permissions forbid the access."""

    ERRNO = "EACCES"


class AlreadyExists(ErrnoError):
    """EEXIST: the node or domain already exists."""

    ERRNO = "EEXIST"


class IsADirectory(ErrnoError):
    """EISDIR: the node is a directory."""

    ERRNO = "EISDIR"


class NoEntry(ErrnoError):
    """ENOENT: no such node, watch, domain or transaction."""

    ERRNO = "ENOENT"


class OutOfMemory(ErrnoError):
    """ENOMEM: xenstored ran out of memory."""

    ERRNO = "ENOMEM"


class NoSpace(ErrnoError):
    """ENOSPC: a quota was exceeded."""

    ERRNO = "ENOSPC"


class InputOutputError(ErrnoError):
    """EIO: xenstored failed internally."""

    ERRNO = "EIO"


class NotEmpty(ErrnoError):
    """ENOTEMPTY: the node has children."""

    ERRNO = "ENOTEMPTY"


class NotSupported(ErrnoError):
    """ENOSYS: the server does not implement the request."""

    ERRNO = "ENOSYS"


class ReadOnly(ErrnoError):
    """EROFS: xenstored is read-only."""

    ERRNO = "EROFS"


class Busy(ErrnoError):
    """EBUSY: too many transactions or requests in flight."""

    ERRNO = "EBUSY"


class Again(ErrnoError):
    """EAGAIN: the transaction conflicted with another change: retry it."""

    ERRNO = "EAGAIN"


class AlreadyConnected(ErrnoError):
    """EISCONN: the domain is already introduced."""

    ERRNO = "EISCONN"


class TooBig(ErrnoError):
    """E2BIG: the request or its answer is too large."""

    ERRNO = "E2BIG"


class NotPermitted(ErrnoError):
    """EPERM: only a privileged connection may do this."""

    ERRNO = "EPERM"


_ERROR_CLASSES: dict[str, type[ErrnoError]] = {cls.ERRNO: cls for cls in ErrnoError.__subclasses__()}


def error_for(errno_name: str, message: str = "") -> XenstoreError:
    """The exception for an errno name a server sent: its subclass, or the base class
    for a name xs_wire.h does not list (servers may grow new ones)."""
    cls = _ERROR_CLASSES.get(errno_name)
    return cls(message) if cls is not None else XenstoreError(errno_name, message)


# -- packets -------------------------------------------------------------------------


class Packet(NamedTuple):
    """One message: header fields plus the raw payload (framing only, no meaning)."""

    op: Op
    req_id: int
    tx_id: int
    payload: bytes


def encode(packet: Packet) -> bytes:
    """The bytes of one message.

    Raises LocalProtocolError for a payload over PAYLOAD_MAX (xenstored would kill the
    connection) or ids that do not fit the header's u32 fields.
    """
    size = len(packet.payload)
    if size > PAYLOAD_MAX:
        raise LocalProtocolError(f"{packet.op.name} payload of {size} bytes exceeds {PAYLOAD_MAX}", "E2BIG")
    try:
        return HEADER.pack(packet.op, packet.req_id, packet.tx_id, size) + packet.payload
    except struct.error:
        raise LocalProtocolError(
            f"{packet.op.name} req_id {packet.req_id} / tx_id {packet.tx_id} not in 0..{_U32_MAX}"
        ) from None


class Decoder:
    """Turns a byte stream into packets.

    Bytes are fed as they arrive, split anywhere; a header is consumed only once its
    whole payload is buffered, so a short read never loses a message.  Garbage raises
    RemoteProtocolError, after which the stream cannot be resynchronised (there are no
    frame markers) and the connection should be closed.
    """

    __slots__ = ("_buf", "_pos", "_max_payload")

    def __init__(self, max_payload: int = PAYLOAD_MAX) -> None:
        """``max_payload``: longer payloads are garbage.  XENSTORE_PAYLOAD_MAX, except
        where a peer is known to exceed it (the client's replies: ``client_conn.py``)."""
        self._buf = bytearray()
        self._pos = 0  # start of the first unconsumed byte in _buf
        self._max_payload = max_payload

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        if self._pos:
            # Drop consumed bytes before growing, so the buffer stays small.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a packet (a partial message at EOF)."""
        return len(self._buf) - self._pos

    def next_packet(self) -> Packet | None:
        """The next complete packet, or None when more bytes are needed."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 16:
            return None
        kind, req_id, tx_id, size = HEADER.unpack_from(buf, pos)
        op = _OPS.get(kind)
        if op is None:
            raise RemoteProtocolError(f"unknown message type {kind} at stream offset +{pos}")
        if size > self._max_payload:
            raise RemoteProtocolError(f"{op.name} announces a {size}-byte payload (limit {self._max_payload})",
                                      "E2BIG")
        end = pos + 16 + size
        if len(buf) < end:
            return None
        self._pos = end
        return Packet(op, req_id, tx_id, bytes(buf[pos + 16 : end]))

    def packets(self) -> list[Packet]:
        """Every complete packet buffered now (the fast path for a reader loop).

        If garbage follows some good packets, those are still consumed and the error
        raised; the caller drops the connection either way.
        """
        out: list[Packet] = []
        while (packet := self.next_packet()) is not None:
            out.append(packet)
        return out


# -- payload strings -----------------------------------------------------------------


def split_args(payload: bytes) -> list[bytes]:
    """The strings of a ``<foo>|*`` payload.

    Each string is followed by a NUL; as C xenstored's ``get_strings`` does, a last
    string without its NUL is accepted too.  An empty payload has no strings.
    """
    parts = payload.split(b"\0")
    if parts[-1] == b"":
        parts.pop()
    return parts


def join_args(*args: bytes, trailing_nul: bool = True) -> bytes:
    """A payload of NUL-separated strings.

    ``trailing_nul=False`` is for requests whose last part is binary data, not a
    string (WRITE's ``<path>|<value|>``): only that last part may contain NULs.
    Raises LocalProtocolError for a NUL inside any other part.
    """
    strings = args if trailing_nul else args[:-1]
    for arg in strings:
        if b"\0" in arg:
            raise LocalProtocolError(f"argument {arg[:40]!r} contains a NUL byte")
    joined = b"\0".join(args)
    return joined + b"\0" if trailing_nul and args else joined


# -- paths ---------------------------------------------------------------------------

ABSOLUTE_PATH = re.compile(r"/|(?:/[A-Za-z0-9_@-]+)+")
"""A well-formed absolute path (use ``fullmatch``): both ends check paths with it."""
_RELATIVE = re.compile(r"[A-Za-z0-9_@-]+(?:/[A-Za-z0-9_@-]+)*")


def validate_path(path: str, *, special_ok: bool) -> None:
    """Refuse a path xenstored would reject, before sending it.

    xenstore.txt: ASCII alphanumerics and ``-/_@``; no doubled or trailing slash
    (except the root ``/``); not empty; absolute paths up to ABS_PATH_MAX bytes,
    relative ones (taken below /local/domain/<domid> by a guest) up to REL_PATH_MAX.
    ``special_ok`` admits the special watch paths ``@introduceDomain`` and
    ``@releaseDomain`` (WATCH, UNWATCH, GET/SET_PERMS); any other path starting
    with ``@`` is refused.  ``fullmatch``, not
    ``match(...$)``, so a trailing newline is refused too.
    Raises LocalProtocolError (EINVAL) naming the path.
    """
    if path.startswith("@"):
        # A leading @ names a special path; as a relative node name it would be legal
        # but is surely a mistake (xenstore.txt: "@ should be avoided").
        if special_ok and path in SPECIAL_PATHS:
            return
        allowed = " or ".join(sorted(SPECIAL_PATHS)) if special_ok else "no special path here"
        raise LocalProtocolError(f"invalid xenstore path {path!r}: expected {allowed}")
    if path.startswith("/"):
        limit, pattern = ABS_PATH_MAX, ABSOLUTE_PATH
    else:
        limit, pattern = REL_PATH_MAX, _RELATIVE
    if len(path) > limit:
        raise LocalProtocolError(f"path {path[:60]!r}... is {len(path)} bytes, over {limit}")
    if not pattern.fullmatch(path):
        raise LocalProtocolError(f"invalid xenstore path {path!r}")


# -- permissions ---------------------------------------------------------------------

_ACCESS = frozenset("nrwb")


class _PermFields(NamedTuple):
    domid: int
    access: str


class Perm(_PermFields):
    """One ``<perm-as-string>``: access letter ``n`` none, ``r`` read, ``w`` write,
    ``b`` both, for ``domid``.  In a node's list the first entry names the owner, and
    its letter is the access of every domain not listed after it.  A bad letter or
    domid raises :class:`InvalidArgument` when made."""

    __slots__ = ()

    def __new__(cls, domid: int, access: str) -> Perm:
        if access not in _ACCESS or len(access) != 1:
            raise InvalidArgument(f"permission letter {access!r} is not one of n r w b")
        if not 0 <= domid <= DOMID_T_MAX:
            raise InvalidArgument(f"domid {domid} not in 0..{DOMID_T_MAX}")
        return super().__new__(cls, domid, access)

    def __bytes__(self) -> bytes:
        return f"{self.access}{self.domid}".encode()


_PERM = re.compile(rb"([nrwb])([0-9]{1,5})")


def parse_perms(args: list[bytes]) -> list[Perm]:
    """Permission strings (``[b"n0", b"r5"]``) as Perm objects.

    Raises InvalidArgument (EINVAL) for an empty list or a malformed entry, naming it.
    """
    if not args:
        raise InvalidArgument("a permission list needs at least the owner entry")
    perms = []
    for index, arg in enumerate(args):
        match = _PERM.fullmatch(arg)
        if match is None:
            raise InvalidArgument(f"permission #{index} {arg[:20]!r} is not <n|r|w|b><domid>")
        perms.append(Perm(int(match[2]), match[1].decode()))
    return perms


def format_perms(perms: Iterable[Perm]) -> list[bytes]:
    """Perm objects as the strings SET_PERMS sends and GET_PERMS returns.

    Raises InvalidArgument for an empty list: a node always has an owner.
    """
    out = [bytes(perm) for perm in perms]
    if not out:
        raise InvalidArgument("a permission list needs at least the owner entry")
    return out


def error_packet(req_id: int, tx_id: int, errno_name: str) -> Packet:
    """The XS_ERROR reply to a request: the errno name, NUL-terminated, ids echoed."""
    return Packet(Op.ERROR, req_id, tx_id, errno_name.encode() + b"\0")
