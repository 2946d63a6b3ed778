"""The error family: three roots, each used for one kind of failure."""

from __future__ import annotations

import pytest

from rmrrd.edges.config import ConfigError
from rmrrd.daemon.lifecycle import DomainStateError
from rmrrd.errors import InputError, PeerError, RmrrdError, TransportError
from rmrrd.edges.http_client import HttpError, HttpUnreachable
from rmrrd.xenstore.client import XenstoreTimeout
from rmrrd.xenstore.client_conn import ConnectionLost
from rmrrd.xenstore.wire import (XS_ERRORS, LocalProtocolError, RemoteProtocolError, XenstoreError, error_for)

ROOTS = (InputError, PeerError, TransportError)


@pytest.mark.parametrize(("error", "root"), [
    (ConfigError("rmrrd.yaml: line 3: limits.query_rate: not a number"), InputError),
    (RemoteProtocolError("unknown message type 99"), PeerError),
    (HttpError("http://node-b/inventory: HTTP status 404"), PeerError),
    (ConnectionLost("xenstored closed the connection"), TransportError),
    (XenstoreTimeout("no answer to READ within 10 s"), TransportError),
    (HttpUnreachable("http://node-b/inventory: cannot connect"), TransportError),
    *((error_for(name), PeerError) for name in XS_ERRORS),
])
def test_each_error_has_exactly_one_root(error: RmrrdError, root: type[RmrrdError]) -> None:
    assert [candidate for candidate in ROOTS if isinstance(error, candidate)] == [root]


def test_a_lost_connection_is_not_an_errno_from_xenstored() -> None:
    assert not isinstance(ConnectionLost("gone"), XenstoreError)
    assert not isinstance(XenstoreTimeout("slow"), XenstoreError)


@pytest.mark.parametrize("bug", [LocalProtocolError("invalid xenstore path 'a//b'"),
                                 DomainStateError("domain 1: SetupDone in state waiting")])
def test_rmrrds_own_bugs_are_in_no_root(bug: Exception) -> None:
    assert not isinstance(bug, RmrrdError)
