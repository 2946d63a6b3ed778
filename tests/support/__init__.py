"""What the tests share, imported as ``support.<module>`` (pytest puts tests/ on sys.path).

No tests here.  The pieces, by what they drive:

- :mod:`support.processes`: the one subprocess harness: ``rmrrd run`` and
  ``rmrrd xenstored`` as systemd or a dom0 would run them, their log read through a
  pipe, readiness taken from sd_notify's ``READY=1`` or the log line, never polled.
- :mod:`support.inprocess`: the daemon started in the test's own trio run with
  ``nursery.start``, on the embedded simulated xenstored, where the mock clock can
  stand in for time.
- :mod:`support.xs_tools`: Debian's xenstore-utils as the toolstack: what a dom0
  script would see, through libxenstore.
- :mod:`support.raw_xenstore`: the wire codec as the peer: requests to a pure
  ``Store``, or bytes on a socket.
- :mod:`support.prometheus`: ``promtool`` and a live Prometheus server.
- :mod:`support.xs_backends`: the xenstored ``tests/test_xs_conformance.py`` runs
  against: the simulated one here, a real one in the real-Xen tier's dom0.
"""

from __future__ import annotations

from pathlib import Path

from rmrrd.app.demo import D1, D2, D3, SEED_DOMAIN

REPO = Path(__file__).resolve().parents[2]
INVENTORIES = REPO / "etc" / "inventories"
WAIT = 30.0
"""How long a test waits for anything the daemon should do promptly: a bound for a
hang, not a performance claim (the two cores are shared with other suites)."""

__all__ = ["D1", "D2", "D3", "INVENTORIES", "REPO", "SEED_DOMAIN", "WAIT"]
