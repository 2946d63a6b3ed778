"""Where the simulated xenstored listens when no path is configured: rmrrd's own, never Xen's."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from rmrrd.edges.config import DEFAULT_XENSTORED_SOCKET, default_config, load_config
from rmrrd.errors import InputError
from rmrrd.edges.runtime_paths import ensure_private_dir, own_xenstored_socket, runtime_dir

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parent.parent / "etc" / "rmrrd.yaml"


def test_runtime_dir_as_root_a_user_and_a_user_without_a_session() -> None:
    assert runtime_dir({"XDG_RUNTIME_DIR": "/run/user/0"}, 0) == Path("/run/rmrrd")
    assert runtime_dir({"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000) == Path("/run/user/1000/rmrrd")
    fallback = Path(tempfile.gettempdir()) / "rmrrd-1000"
    assert runtime_dir({}, 1000) == fallback
    assert runtime_dir({"XDG_RUNTIME_DIR": "relative/dir"}, 1000) == fallback


def test_embedded_default_is_rmrrds_own_socket_and_a_client_keeps_xens() -> None:
    own = own_xenstored_socket({})
    assert own.parts[-2:] == ("xenstored", "socket") and own != DEFAULT_XENSTORED_SOCKET
    assert default_config(environ={}, embedded=True).xenstore.path == own
    assert default_config(environ={}, embedded=True).xenstore.embedded
    assert default_config(environ={}).xenstore.path == DEFAULT_XENSTORED_SOCKET


def test_the_example_configuration_never_puts_the_simulation_on_xens_socket() -> None:
    # `rmrrd run --simulate --config etc/rmrrd.yaml` is a README line: on a dom0 it
    # must not even try Xen's socket.
    simulated = load_config(EXAMPLE, environ={}, hostname="h", embedded=True).xenstore
    assert simulated.embedded and simulated.path == own_xenstored_socket({})
    assert load_config(EXAMPLE, environ={}, hostname="h").xenstore.path == DEFAULT_XENSTORED_SOCKET


def test_a_configured_path_or_xenstored_path_wins_over_the_own_default(tmp_path: Path) -> None:
    config = tmp_path / "rmrrd.yaml"
    config.write_text(f"xenstore:\n  path: {tmp_path / 'xs'}\n")
    assert load_config(config, environ={}, hostname="h", embedded=True).xenstore.path == tmp_path / "xs"
    from_env = default_config(environ={"XENSTORED_PATH": "/tmp/x.sock"}, embedded=True).xenstore.path
    assert from_env == Path("/tmp/x.sock")


def test_file_with_embedded_true_gets_the_own_default_too(tmp_path: Path) -> None:
    config = tmp_path / "rmrrd.yaml"
    config.write_text("xenstore:\n  embedded: true\n")
    assert load_config(config, environ={}, hostname="h").xenstore.path == own_xenstored_socket({})


def test_private_dir_is_created_0700_and_reused(tmp_path: Path) -> None:
    target = tmp_path / "rmrrd"
    ensure_private_dir(target)
    assert target.stat().st_mode & 0o777 == 0o700
    ensure_private_dir(target)  # already there and ours: fine


def test_private_dir_refuses_what_others_could_swap_sockets_in(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(InputError, match="writable by others"):
        ensure_private_dir(shared)
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(InputError, match="not a directory"):
        ensure_private_dir(link)
    missing_parent = tmp_path / "no" / "such"
    with pytest.raises(InputError, match="cannot create"):
        ensure_private_dir(missing_parent)


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root")
def test_private_dir_refuses_another_users_directory(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(InputError, match="owned by uid 65534"):
        ensure_private_dir(theirs)
