"""Where xenstore is: the socket or device every client of rmrrd's connects to.

The ``path`` argument, else ``$XENSTORED_PATH`` (as libxenstore honours it), else the
dom0 sockets ``/run/xenstored/socket`` and ``/var/run/xenstored/socket``, else the
xenbus device ``/dev/xen/xenbus`` (the same framing through the kernel).  Kept apart
from the trio client so that short-lived commands can find xenstore without it.
"""

from __future__ import annotations

import os

DEFAULT_SOCKETS = ("/run/xenstored/socket", "/var/run/xenstored/socket")
XENBUS_DEVICE = "/dev/xen/xenbus"


def locate_xenstore(path: str | None = None) -> str:
    """The socket or device to use: argument, $XENSTORED_PATH, dom0 sockets, xenbus.

    The last candidate is returned even if it does not exist, so the connect error
    names it.
    """
    if path:
        return path
    if env := os.environ.get("XENSTORED_PATH"):
        return env
    for candidate in DEFAULT_SOCKETS:
        if os.path.exists(candidate):
            return candidate
    return XENBUS_DEVICE
