"""What a guest may ask xenstored, and what it is answered: one table for the
simulated xenstored (``tests/test_xs_guest_requests.py``) and for C xenstored and
oxenstored in the real-Xen tier (``tests/xen/test_xen_guest_requests.py``, a PV
guest writing the same bytes to its ``/dev/xen/xenbus``).

Each request is sent by guest ``G`` (``{g}`` in its arguments) about itself, about
dom0, or about another guest ``O`` (``{o}``), outside any transaction unless it
names one.  (No watches: through a guest's xenbus device the kernel answers
WATCH itself, and RESET_WATCHES would drop the kernel's own.)  The expected outcome is the errno name xenstored answers, or for a
request it carries out, the reply's type and payload (NULs shown as ``|``).  The
facts come from C xenstored (Xen 4.17, tools/xenstore/xenstored_core.c
``process_message``: a type it does not know is ENOSYS, then every request
flagged ``XS_FLAG_PRIV`` in ``wire_funcs[]`` is EACCES for an unprivileged domain
before its arguments are looked at; then the permission checks of each request).
"""

from __future__ import annotations

from dataclasses import dataclass

from rmrrd.xenstore.wire import Op, Packet, encode


@dataclass(frozen=True)
class GuestRequest:
    name: str
    op: int
    args: tuple[str, ...]
    expected: str
    tx_id: int = 0
    oxenstored: str | None = None
    """What oxenstored answers instead, where it differs (the simulated xenstored
    follows C)."""

    def packet(self, g: int, o: int) -> bytes:
        """The request's bytes on the wire, for guest ``g`` and other domain ``o``."""
        payload = b"".join(arg.format(g=g, o=o).encode() + b"\0" for arg in self.args)
        return encode(Packet(Op(self.op), 1, self.tx_id, payload))

    def outcome(self, g: int, o: int, *, oxenstored: bool = False) -> str:
        expected = self.oxenstored if oxenstored and self.oxenstored is not None else self.expected
        return expected.format(g=g, o=o)


REQUESTS = [
    # XS_FLAG_PRIV: EACCES whatever they ask (XSA-115: not even whether a domain exists).
    GuestRequest("is_introduced(dom0)", Op.IS_DOMAIN_INTRODUCED, ("0",), "EACCES"),
    GuestRequest("is_introduced(self)", Op.IS_DOMAIN_INTRODUCED, ("{g}",), "EACCES"),
    GuestRequest("is_introduced(other)", Op.IS_DOMAIN_INTRODUCED, ("{o}",), "EACCES"),
    GuestRequest("is_introduced(none)", Op.IS_DOMAIN_INTRODUCED, ("31000",), "EACCES"),
    GuestRequest("introduce", Op.INTRODUCE, ("{o}", "1", "1"), "EACCES"),
    GuestRequest("release(other)", Op.RELEASE, ("{o}",), "EACCES"),
    GuestRequest("release(self)", Op.RELEASE, ("{g}",), "EACCES"),
    GuestRequest("resume(self)", Op.RESUME, ("{g}",), "EACCES"),
    GuestRequest("set_target", Op.SET_TARGET, ("{g}", "{o}"), "EACCES"),
    # oxenstored lets a guest's CONTROL "print" through (it logs the text).
    GuestRequest("control", Op.CONTROL, ("print", "hello"), "EACCES", oxenstored="CONTROL OK|"),
    # Not privileged: any domain's home path is public knowledge.
    GuestRequest("get_domain_path(other)", Op.GET_DOMAIN_PATH, ("{o}",), "GET_DOMAIN_PATH /local/domain/{o}|"),
    # Types Xen 4.17's xenstored does not know (quotas and features came later).
    GuestRequest("get_quota", 25, ("{g}",), "ENOSYS"),
    GuestRequest("set_quota", 26, ("{g}", "nodes", "1"), "ENOSYS"),
    GuestRequest("get_feature", 23, ("{g}",), "ENOSYS"),
    # Permissions: what is not the guest's own is EACCES, never "absent".
    GuestRequest("read(dom0's home)", Op.READ, ("/local/domain/0",), "EACCES"),
    GuestRequest("directory(/)", Op.DIRECTORY, ("/",), "EACCES"),
    GuestRequest("get_perms(other's home)", Op.GET_PERMS, ("/local/domain/{o}",), "EACCES"),
    GuestRequest("write(other's home)", Op.WRITE, ("/local/domain/{o}/x", "v"), "EACCES"),
    GuestRequest("rm(other's home)", Op.RM, ("/local/domain/{o}",), "EACCES"),
    GuestRequest("set_perms(own home)", Op.SET_PERMS, ("/local/domain/{g}", "n{g}"), "EACCES"),
    # Its own: allowed.
    GuestRequest("read(own domid)", Op.READ, ("/local/domain/{g}/domid",), "READ {g}"),
    # A transaction it never opened.
    GuestRequest("read in transaction 99", Op.READ, ("/local/domain/{g}/domid",), "ENOENT", tx_id=99),
    GuestRequest("transaction_end(99)", Op.TRANSACTION_END, ("T",), "ENOENT", tx_id=99),
]


def describe(reply: Packet) -> str:
    """A reply as :attr:`GuestRequest.expected` spells it."""
    if reply.op is Op.ERROR:
        return reply.payload.rstrip(b"\0").decode()
    return f"{reply.op.name} {reply.payload.decode(errors='replace').replace(chr(0), '|')}"
