"""The simulated xenstored never takes a socket it does not own, and removes only its own.

Real unix sockets throughout: a "live" socket is one a listener in the test accepts
connections on, as Xen's xenstored would on a dom0.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from rmrrd.errors import InputError
from rmrrd.xenstore.server import serve_xenstored
from rmrrd.xenstore.wire import Op
from support.raw_xenstore import RawClient, listening_socket


@pytest.fixture
def live_socket(tmp_path: Path) -> Iterator[Path]:
    """A listening socket at ``tmp_path/socket``: someone else's running server."""
    with listening_socket(tmp_path / "socket"):
        yield tmp_path / "socket"


def accepts(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


async def serve_until_cancelled(nursery: trio.Nursery, path: Path) -> trio.CancelScope:
    """Start the server on ``path``; cancelling the returned scope stops it."""
    scope = trio.CancelScope()

    async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await serve_xenstored(path, task_status=task_status)

    await nursery.start(serve)
    return scope


def dead_socket(path: Path) -> None:
    """A socket file nobody listens on any more, as a killed run leaves it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


async def test_a_live_socket_is_refused_and_keeps_working(live_socket: Path) -> None:
    with pytest.raises(InputError) as info:
        await serve_xenstored(live_socket)
    assert str(live_socket) in str(info.value) and "accepts connections" in str(info.value)
    assert accepts(live_socket)
    assert not Path(f"{live_socket}.d").exists()  # nothing created beside it either


async def test_anything_else_at_the_path_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "socket"
    path.write_text("not a socket")
    with pytest.raises(InputError, match="is not a socket"):
        await serve_xenstored(path)
    assert path.read_text() == "not a socket"


async def test_a_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "no" / "socket"
    with pytest.raises(InputError, match=f"its directory {tmp_path / 'no'} does not exist"):
        await serve_xenstored(path)


async def test_a_dead_socket_is_replaced_and_removed_at_exit(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "socket"
    dead_socket(path)
    assert not accepts(path)
    scope = await serve_until_cancelled(nursery, path)
    client = await RawClient.connect(path)
    assert (await client.call(Op.READ, b"/")).op is Op.READ
    await client.stream.aclose()
    scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert not path.exists() and not Path(f"{path}.d").exists()


async def test_at_exit_a_socket_that_replaced_ours_stays(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "socket"
    guest_dir = Path(f"{path}.d")
    scope = await serve_until_cancelled(nursery, path)
    dom0 = await RawClient.connect(path)
    assert (await dom0.call(Op.INTRODUCE, b"7", b"100", b"3")).op is Op.INTRODUCE
    # Someone else's server takes both paths over while ours runs...
    path.unlink()
    (guest_dir / "7").unlink()
    theirs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.bind(str(path))
    theirs.listen(1)
    their_guest = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    their_guest.bind(str(guest_dir / "7"))
    their_guest.listen(1)
    await dom0.stream.aclose()
    scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    # ...and keeps them: ours removes only the files it bound.
    assert accepts(path) and accepts(guest_dir / "7")
    theirs.close()
    their_guest.close()


async def test_a_guest_path_held_by_a_live_socket_does_not_stop_the_server(
        nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "socket"
    guest_dir = Path(f"{path}.d")
    guest_dir.mkdir()
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(str(guest_dir / "9"))
    squatter.listen(1)
    handle = await nursery.start(serve_xenstored, path)
    dom0 = await RawClient.connect(path)
    assert (await dom0.call(Op.INTRODUCE, b"9", b"100", b"3")).op is Op.INTRODUCE
    assert (await dom0.call(Op.IS_DOMAIN_INTRODUCED, b"9")).payload == b"T\0"
    assert any("dom9: no guest socket" in record.getMessage() for record in caplog.records)
    assert accepts(guest_dir / "9") and handle.store is not None
    squatter.close()


@pytest.mark.process
def test_rmrrd_xenstored_refuses_a_live_socket_in_one_line(live_socket: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "rmrrd", "xenstored", "--socket", str(live_socket)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines()[-1].startswith(f"rmrrd xenstored: {live_socket}: a socket there accepts")
    assert "Traceback" not in done.stderr and accepts(live_socket)
