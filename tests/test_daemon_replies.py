"""Guest reply nodes are bounded per domain (regression: a guest writing fresh query
ids grew dom0's store without limit, since replies are dom0's and outside its quota)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from support import SEED_DOMAIN
from support.processes import Daemon
from support.xs_tools import needs_xenstore_tools, request_setup
from rmrrd.daemon.lifecycle import REPLIES_KEPT
from rmrrd.app.toolstack import guest_query
from rmrrd.xenstore.client import open_xenstore

pytestmark = [needs_xenstore_tools, pytest.mark.process]


@pytest.fixture
def daemon_limits() -> Mapping[str, int | float]:
    return {"query_rate": 1000, "query_burst": 1000}


async def test_only_the_newest_replies_are_kept(rmrrd_daemon: Daemon) -> None:
    await request_setup(rmrrd_daemon.xs, 1, SEED_DOMAIN)
    async with open_xenstore(str(rmrrd_daemon.xs.socket)) as xs:
        await xs.introduce(1, 0, 0)
        async with open_xenstore(str(rmrrd_daemon.xs.guest_socket(1))) as guest:
            for n in range(REPLIES_KEPT + 6):
                assert (await guest_query(guest, 1, f"q{n}", "regions")).startswith("ok ")
        replies = await xs.directory("/local/domain/1/rmrr/reply")
    assert sorted(replies, key=lambda name: int(name[1:])) == [f"q{n}" for n in range(6, REPLIES_KEPT + 6)]
