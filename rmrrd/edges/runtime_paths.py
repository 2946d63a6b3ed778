"""Where rmrrd keeps runtime files of its own: never in a place another program owns.

The simulated xenstored (``rmrrd run --simulate``, ``xenstore.embedded``, ``rmrrd
xenstored``) must not listen where Xen's xenstored does (``/run/xenstored/socket``):
on a dom0 that would take xenstored's socket from ``xl`` and every other client.  When
no path is configured, it listens on ``xenstored/socket`` in rmrrd's runtime directory:
``/run/rmrrd`` as root (the directory ``RuntimeDirectory=rmrrd`` gives the unit),
``$XDG_RUNTIME_DIR/rmrrd`` for another user, else ``rmrrd-<uid>`` in the temporary
directory.  The directory is created private (mode 0700) and refused if it exists
but is not this user's own private directory: the last choice is a shared place.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from rmrrd.errors import InputError

ROOT_RUNTIME_DIR = Path("/run/rmrrd")


def runtime_dir(environ: Mapping[str, str], uid: int) -> Path:
    """rmrrd's runtime directory for the user ``uid``, per the rules above."""
    if uid == 0:
        return ROOT_RUNTIME_DIR
    xdg = environ.get("XDG_RUNTIME_DIR", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "rmrrd"
    return Path(tempfile.gettempdir()) / f"rmrrd-{uid}"


def own_xenstored_socket(environ: Mapping[str, str] | None = None, uid: int | None = None) -> Path:
    """The simulated xenstored's socket when none is configured (the process's own user by default)."""
    return runtime_dir(os.environ if environ is None else environ,
                       os.getuid() if uid is None else uid) / "xenstored" / "socket"


def prepare_own_xenstored_socket() -> Path:
    """Make the directories of :func:`own_xenstored_socket` ready; the socket's path.

    Each level (rmrrd's runtime directory, then ``xenstored``) is created private or
    checked by :func:`ensure_private_dir`, so nobody else can place or swap a socket
    on the way.
    """
    socket = own_xenstored_socket()
    ensure_private_dir(socket.parent.parent)
    ensure_private_dir(socket.parent)
    return socket


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700), or check that an existing one is safe to use.

    Raises :class:`InputError` naming the directory when it cannot be created, or
    when it exists as a symlink, a non-directory, or a directory of another user or
    that others may write: a socket placed there could be swapped by someone else.
    """
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError as exc:
        raise InputError(f"{path}: cannot create the runtime directory: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise InputError(f"{path}: not a directory (a symlink or a file is in the way)")
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise InputError(f"{path}: owned by uid {info.st_uid} or writable by others; "
                         f"rmrrd keeps its sockets only in a directory of its own user")
