"""The error family rmrrd raises for bad input.

Every error that reaches a user (a config file, a firmware table, an inventory, a
command-line argument, a toolstack request) is an :class:`InputError` whose message
names what was wrong and where.  The CLI turns it into one line on stderr and exit
status 2; the daemon turns it into an ``error`` answer in xenstore.  Anything else
that escapes is a bug in rmrrd, not in the input.
"""


class RmrrdError(Exception):
    """Base class of every error rmrrd raises on purpose."""


class InputError(RmrrdError, ValueError):
    """Input that rmrrd refuses: the message says what and where, in one line."""
