"""What a guest may ask the simulated xenstored, against the same table the real-Xen
tier checks C xenstored with (``support.guest_requests``): a guest gets the answer
it would get on a real host, request for request."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from support.guest_requests import REQUESTS, describe
from support.raw_xenstore import RawClient
from rmrrd.xenstore.server import XenstoredHandle, serve_xenstored
from rmrrd.xenstore.wire import Op, Packet, encode

pytestmark = pytest.mark.unit
G, O = 5, 6


async def libxl_domain(dom0: RawClient, domid: int) -> None:
    """A domain's home as libxl makes it (``libxl__domain_make``): dom0's, readable
    by the domain, with its ``domid``."""
    await dom0.call(Op.INTRODUCE, str(domid).encode(), b"1", b"1")
    home = f"/local/domain/{domid}".encode()
    await dom0.call(Op.MKDIR, home)
    await dom0.call(Op.SET_PERMS, home, b"n0", f"r{domid}".encode())
    await dom0.stream.send_all(encode(Packet(Op.WRITE, 1, 0, home + b"/domid\0" + str(domid).encode())))
    assert (await dom0.receive()).op is Op.WRITE


async def test_a_guest_is_answered_as_c_xenstored_answers_it(nursery: trio.Nursery, tmp_path: Path) -> None:
    handle: XenstoredHandle = await nursery.start(serve_xenstored, tmp_path / "xs.sock")
    dom0 = await RawClient.connect(handle.socket_path)
    for domid in (G, O):
        await libxl_domain(dom0, domid)
    guest = await RawClient.connect(handle.guest_socket(G))
    got = {}
    for request in REQUESTS:
        await guest.stream.send_all(request.packet(G, O))
        got[request.name] = describe(await guest.receive())
    assert got == {request.name: request.outcome(G, O) for request in REQUESTS}
