"""What a real guest is answered by C xenstored and oxenstored, request for
request, against the table the simulated xenstored is held to
(``support.guest_requests``, ``tests/test_xs_guest_requests.py``).

A PV guest writes each request's bytes to its own ``/dev/xen/xenbus`` (the kernel
passes them on its ring, as the guest's) and reads the reply back; the other domain
it asks about is a paused PV domain.  The simulated xenstored follows C; where
oxenstored differs, the table says what it answers instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.guest_requests import REQUESTS, describe
from xen.testbed import Dom0, Guest
from rmrrd.xenstore.wire import Decoder, Op


@pytest.fixture(scope="module", params=["dom0", "ox_dom0"])
def asker(request: pytest.FixtureRequest) -> Iterator[tuple[Guest, Guest, bool]]:
    """A running PV guest that asks, a paused one it asks about, and whether the
    machine runs oxenstored (``ox_dom0``) rather than C xenstored (``dom0``)."""
    dom0: Dom0 = request.getfixturevalue(request.param)
    other = dom0.create_guest("req-other", kind="pv", paused=True)
    guest = dom0.create_guest("req-asker", kind="pv")
    try:
        guest.wait_ready()
        yield guest, other, request.param == "ox_dom0"
    finally:
        for name in ("req-asker", "req-other"):
            dom0.run(["xl", "destroy", name], check=False)


LITERAL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/_@.-")
SCRIPT_MAX = 1500
"""Bytes of script per exchange: a command travels as one xenstore value, which C
xenstored holds to 2048 bytes with its node's metadata."""
SEND = ("exec 3<>/dev/xen/xenbus\n"
        "x() { printf \"$1\" >&3; dd bs=4096 count=1 <&3 2>/dev/null | od -An -tx1 -v | tr -d ' \\n'; echo; }\n")
"""Write a request's bytes (a printf format) to the guest's xenbus device and print
the reply (one read returns one message) in hex on a line of its own."""


def printf_format(data: bytes) -> str:
    """``data`` as a short printf format (busybox's printf writes NULs too)."""
    out = []
    for i, byte in enumerate(data):
        if byte in LITERAL:
            out.append(chr(byte))
        elif byte == 0 and data[i + 1:i + 2] not in tuple(bytes([d]) for d in b"01234567"):
            out.append("\\0")
        else:
            out.append(f"\\{byte:03o}")
    return "".join(out)


def exchanges(lines: list[str]) -> list[str]:
    """The request lines cut into scripts short enough to travel."""
    scripts, current = [], SEND
    for line in lines:
        if len(current) + len(line) > SCRIPT_MAX:
            scripts.append(current)
            current = SEND
        current += line
    return [*scripts, current]


def test_a_guest_is_answered_as_the_simulated_xenstored_answers_it(asker: tuple[Guest, Guest, bool]) -> None:
    guest, other, oxenstored = asker
    g, o = guest.domid, other.domid
    lines = [f"x '{printf_format(request.packet(g, o))}'\n" for request in REQUESTS]
    output = [line for script in exchanges(lines) for line in guest.run(script, timeout=120).text.splitlines()]
    assert len(output) == len(REQUESTS), output
    got = {}
    for request, line in zip(REQUESTS, output):
        decoder = Decoder()
        decoder.feed(bytes.fromhex(line))
        reply = decoder.next_packet()
        assert reply is not None and reply.op is not Op.WATCH_EVENT, (request.name, line)
        got[request.name] = describe(reply)
    assert got == {request.name: request.outcome(g, o, oxenstored=oxenstored) for request in REQUESTS}
