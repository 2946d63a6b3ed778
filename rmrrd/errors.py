"""The error family: three roots, by whose move it is to fix what went wrong.

* :class:`InputError`: what the user must fix: a configuration file, a firmware
  table, an inventory, a command-line argument, a toolstack request, a guest's
  query.  The message names what was wrong and where, in one line.  The CLI turns
  it into that line on stderr and exit status 2; the daemon into an ``error``
  answer in xenstore or a ``fail`` verdict.
* :class:`PeerError`: what a peer did wrong or said: xenstored answered with an
  errno (:class:`rmrrd.xenstore.wire.XenstoreError` and its one class per errno),
  sent bytes that are not the protocol, or a peer host answered its ``/inventory``
  badly.  The peer was reached and answered; asking again the same way gets the
  same answer unless something changed.
* :class:`TransportError`: the way to the peer failed: the connection was refused,
  dropped or timed out.  Whether the request was carried out is unknown; the
  client reconnects, and reconciliation redoes the work.

Anything else that escapes is a bug in rmrrd, and shows as one, with a trace:
:class:`rmrrd.xenstore.wire.LocalProtocolError` (rmrrd tried to send what the
protocol forbids) and :class:`rmrrd.daemon.lifecycle.DomainStateError` (an event a
domain's state cannot take) are deliberately outside these roots.
"""


class RmrrdError(Exception):
    """Base of the three roots below: an error rmrrd raises on purpose."""


class InputError(RmrrdError, ValueError):
    """Input that rmrrd refuses: the message says what and where, in one line."""


class PeerError(RmrrdError):
    """A peer (xenstored, a peer host, a client of the simulated xenstored) did
    something wrong or said no."""


class TransportError(RmrrdError):
    """The connection to a peer could not be made, was lost, or timed out."""
