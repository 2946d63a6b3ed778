"""sd_notify against a real datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from rmrrd.errors import InputError
from rmrrd.edges.sdnotify import Notifier, watchdog_loop, watchdog_usec


class FakeSystemd:
    """A bound SOCK_DGRAM unix socket, as systemd listens on NOTIFY_SOCKET."""

    def __init__(self, env_value: str, bind_address: str) -> None:
        self.env_value = env_value
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_address)

    def messages(self) -> list[str]:
        """Every datagram received so far, without waiting for more."""
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096, socket.MSG_DONTWAIT).decode())
            except BlockingIOError:
                return out


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeSystemd]:
    if request.param == "path":
        path = str(tmp_path / "notify")
        fake = FakeSystemd(path, path)
    else:
        name = f"rmrrd-test-{os.getpid()}-{id(tmp_path)}"
        fake = FakeSystemd("@" + name, "\0" + name)
    with fake.sock:
        yield fake


def test_ready_status_stopping_watchdog(systemd: FakeSystemd) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": systemd.env_value})
    notifier.ready("serving 3 domains")
    notifier.status("reloading\nconfiguration")
    notifier.watchdog()
    notifier.stopping()
    assert systemd.messages() == [
        "READY=1\nSTATUS=serving 3 domains",
        "STATUS=reloading configuration",
        "WATCHDOG=1",
        "STOPPING=1",
    ]


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_env({"WATCHDOG_USEC": "1000000"})
    notifier.ready("x")  # no socket, no error
    assert notifier.watchdog_interval() is None


def test_bad_notify_socket_is_input_error() -> None:
    with pytest.raises(InputError, match="NOTIFY_SOCKET"):
        Notifier.from_env({"NOTIFY_SOCKET": "relative/path"})


def test_vanished_socket_does_not_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    notifier.ready("x")
    notifier.watchdog()
    assert len([r for r in caplog.records if "cannot notify systemd" in r.message]) == 1


def test_assignment_must_be_one_line() -> None:
    with pytest.raises(ValueError):
        Notifier("/x").notify("READY=1\nSTATUS=x")


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"WATCHDOG_USEC": "4000000"}, 4_000_000),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1234"}, 4_000_000),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_usec(env: dict[str, str], expected: int | None) -> None:
    assert watchdog_usec(env, pid=1234) == expected


def test_watchdog_interval_is_half(systemd: FakeSystemd) -> None:
    env = {"NOTIFY_SOCKET": systemd.env_value, "WATCHDOG_USEC": "3000000"}
    assert Notifier.from_env(env).watchdog_interval() == 1.5


async def test_watchdog_loop_pings_at_half_interval(
    systemd: FakeSystemd, autojump_clock: trio.testing.MockClock
) -> None:
    env = {"NOTIFY_SOCKET": systemd.env_value, "WATCHDOG_USEC": "2000000"}
    notifier = Notifier.from_env(env)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watchdog_loop, notifier)
        await trio.sleep(9.5)  # pings at 0, 1, ..., 9 virtual seconds
        nursery.cancel_scope.cancel()
    assert systemd.messages() == ["WATCHDOG=1"] * 10


async def test_watchdog_loop_returns_when_disabled(systemd: FakeSystemd) -> None:
    await watchdog_loop(Notifier(systemd.env_value))
    assert systemd.messages() == []


def test_reloading_carries_the_monotonic_time(systemd: FakeSystemd) -> None:
    """RELOADING=1 with MONOTONIC_USEC on CLOCK_MONOTONIC, as systemd >= 253 insists."""
    notifier = Notifier.from_env({"NOTIFY_SOCKET": systemd.env_value})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    sent = notifier.reloading("reloading")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= sent <= after
    assert systemd.messages() == [f"RELOADING=1\nMONOTONIC_USEC={sent}\nSTATUS=reloading"]
