"""The newest names rmrrd keeps of the nodes it writes per request, oldest dropped.

A guest's replies and the toolstack's results are written under ids the client
chooses; a client writing fresh ids would grow the store without end.  The domain's
state machine (replies) and the toolstack handler (results) each keep a bounded
deque of names, oldest first, through :func:`note_newest`, and remove from xenstore
the names it drops.
"""

from __future__ import annotations

from collections import deque


def note_newest(kept: deque[str], name: str, limit: int) -> list[str]:
    """Note ``name`` as the newest of ``kept``; the oldest beyond ``limit``, taken out
    of ``kept``, oldest first, for the caller to remove from the store."""
    if name in kept:
        kept.remove(name)
    kept.append(name)
    return [kept.popleft() for _ in range(len(kept) - limit)]
