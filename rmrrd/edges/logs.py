"""Logging set-up: one line per event on stderr, readable by people and by journald.

Under systemd, stderr is a stream into journald.  journald reads a ``<N>`` prefix at
the start of each line as the syslog priority of that line (sd-daemon(3), "log
levels"), so ``journalctl -p warning`` and the journal's colouring work without a
journal library.  On a terminal the same prefix is noise, so it is added only when
stderr really is the journal stream (``JOURNAL_STREAM`` names stderr's device and
inode, as systemd.exec(5) documents) or when the caller asks for it.  Timestamps are
left out under journald, which stamps every line itself, and kept otherwise.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import IO

from rmrrd.errors import InputError

#: The levels ``log.level`` and ``--log-level`` accept, least verbose last.
LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# syslog priorities (RFC 5424 severities) journald reads from a "<N>" line prefix.
_PRIORITY_CRIT = 2
_PRIORITY_ERR = 3
_PRIORITY_WARNING = 4
_PRIORITY_INFO = 6
_PRIORITY_DEBUG = 7


def parse_level(text: str) -> int:
    """The ``logging`` level for a level name; :class:`InputError` for any other name."""
    try:
        return LEVELS[text.lower()]
    except (KeyError, AttributeError):
        raise InputError(
            f"log level: expected one of {', '.join(LEVELS)}, got {text!r}"
        ) from None


def syslog_priority(levelno: int) -> int:
    """The syslog priority journald should file a record of ``levelno`` under."""
    if levelno >= logging.CRITICAL:
        return _PRIORITY_CRIT
    if levelno >= logging.ERROR:
        return _PRIORITY_ERR
    if levelno >= logging.WARNING:
        return _PRIORITY_WARNING
    if levelno >= logging.INFO:
        return _PRIORITY_INFO
    return _PRIORITY_DEBUG


class JournalFormatter(logging.Formatter):
    """``<N>logger: message``, one line per record.

    A message or traceback with newlines would become several journal entries, the
    later ones without a priority; they are folded into one line instead, so one
    event stays one entry.
    """

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"<{syslog_priority(record.levelno)}>" + text.replace("\n", " | ")


class PlainFormatter(logging.Formatter):
    """``2026-01-01 12:00:00 WARNING logger: message``, one line per record."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def stderr_is_journal(stream: IO[str], environ: Mapping[str, str]) -> bool:
    """Whether ``stream`` is the journald stream systemd connected, per JOURNAL_STREAM.

    systemd sets ``JOURNAL_STREAM=DEV:INODE`` for the stream it connected to the
    journal; comparing with the stream's own ``fstat`` tells a service's stderr apart
    from a terminal of a shell that merely inherited the variable.
    """
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        # A stream with no file descriptor (pytest's capture, StringIO) is no journal.
        return False
    return info.st_dev == int(device) and info.st_ino == int(inode)


def setup_logging(
    level: str,
    *,
    journal: bool | None = None,
    stream: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Send every rmrrd log record at ``level`` or above to ``stream`` (stderr).

    ``journal`` forces the priority-prefixed format on (True) or off (False); None
    detects journald through JOURNAL_STREAM.  Calling it again (on SIGHUP, with a new
    ``log.level``) replaces the handler it installed before rather than adding a
    second one, so lines are never doubled.  Returns the installed handler.

    Raises :class:`InputError` for an unknown level name, before changing anything.
    """
    levelno = parse_level(level)
    out = sys.stderr if stream is None else stream
    if journal is None:
        journal = stderr_is_journal(out, os.environ if environ is None else environ)
    handler = logging.StreamHandler(out)
    handler.setFormatter(JournalFormatter() if journal else PlainFormatter())
    handler.set_name("rmrrd")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "rmrrd"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levelno)
    return handler
