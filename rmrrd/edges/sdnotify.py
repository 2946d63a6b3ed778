"""systemd's notify protocol (``Type=notify``), with no library.

The protocol is one datagram per message to the unix socket named by
``$NOTIFY_SOCKET``: a path, or ``@name`` for the abstract namespace (systemd's
``man/notify-selfcontained-example.py`` and sd_notify(3)).  The payload is
newline-separated ``KEY=VALUE`` assignments: ``READY=1``, ``STATUS=...``,
``RELOADING=1``, ``STOPPING=1``, ``WATCHDOG=1``.  When the variable is unset (not under systemd, or
a unit that is not ``Type=notify``) every call does nothing, so the daemon calls the
notifier unconditionally.

Sending a datagram to a local socket does not block in practice, and a notifier
failure must never stop the daemon: errors are logged once per kind and dropped.

The watchdog: systemd sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, the process
meant to ping) when the unit has ``WatchdogSec=``; sd_watchdog_enabled(3) advises
pinging at half that interval, which :func:`watchdog_loop` does.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

import trio

from rmrrd.errors import InputError

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages to one socket address, or nowhere."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        """``address`` is ``$NOTIFY_SOCKET`` as given (``/path`` or ``@abstract``).

        Raises :class:`InputError` for an address of neither form, as systemd's
        example does: a wrong variable is a deployment error worth reporting.
        """
        if address is not None and not address.startswith(("/", "@")):
            raise InputError(f"NOTIFY_SOCKET: expected /PATH or @NAME, got {address!r}")
        self._address = None if address is None else _socket_address(address)
        self._watchdog_usec = watchdog_usec
        self._failed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd's environment asks for (a no-op one outside systemd)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=watchdog_usec(env))

    def notify(self, *assignments: str) -> None:
        """Send ``KEY=VALUE`` lines as one datagram; nothing when there is no socket."""
        if self._address is None:
            return
        for item in assignments:
            if "=" not in item or "\n" in item:
                raise ValueError(f"not a single KEY=VALUE assignment: {item!r}")
        payload = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(payload)
        except OSError as exc:
            # systemd may be restarting, or the socket gone after a daemon-reexec:
            # rmrrd keeps serving; one warning is enough to tell the operator why.
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", self._address, exc)
            self._failed = True
        else:
            self._failed = False

    def ready(self, status: str) -> None:
        """Start-up is complete (inventories loaded, xenstore connected)."""
        self.notify("READY=1", _status(status))

    def reloading(self, status: str) -> int:
        """A reload begins; ``READY=1`` (:meth:`ready`) says it ended, whatever its outcome.

        ``MONOTONIC_USEC`` is when, on CLOCK_MONOTONIC: systemd >= 253 uses it to
        tell a reload that began after its own SIGHUP (``Type=notify-reload``) from an
        older one, and ignores a ``RELOADING=1`` without it.  Returns that time, for
        whoever else waits for this reload's outcome.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", _status(status))
        return usec

    def status(self, text: str) -> None:
        """A one-line status ``systemctl status`` shows."""
        self.notify(_status(text))

    def stopping(self) -> None:
        """Shutdown has begun."""
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        """Still alive: resets systemd's ``WatchdogSec=`` timer."""
        self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WatchdogSec), or None when disabled."""
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000


def watchdog_usec(environ: Mapping[str, str], pid: int | None = None) -> int | None:
    """``WATCHDOG_USEC`` when it applies to this process (``WATCHDOG_PID`` unset or ours).

    A malformed or zero value disables the watchdog rather than failing start-up,
    as sd_watchdog_enabled(3) treats it.
    """
    value = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not value.isdigit() or int(value) == 0:
        return None
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(value)


async def watchdog_loop(notifier: Notifier) -> None:
    """Ping systemd's watchdog at half its interval until cancelled.

    Returns at once when no watchdog is configured, so the daemon can start it in
    its nursery unconditionally.  It runs in the daemon's own trio loop on purpose:
    a loop that is stuck (a blocking call, a task that never yields, a stopped
    process) stops pinging, and systemd kills and restarts the service, which is
    what the watchdog is for.  It says nothing about xenstore: while xenstored is
    away the loop is alive and reconnecting, a restart would not bring xenstored
    back, and readiness (``/healthz``, ``STATUS=``, the metrics) says what is wrong.
    """
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    while True:
        notifier.watchdog()
        await trio.sleep(interval)


def _socket_address(address: str) -> str:
    # Python spells the abstract namespace with a leading NUL byte.
    return "\0" + address[1:] if address.startswith("@") else address


def _status(text: str) -> str:
    # STATUS is one line; a newline would start a new, bogus assignment.
    return "STATUS=" + " ".join(text.split())
