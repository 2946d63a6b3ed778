"""Asking the running daemon for a toolstack check, blocking: ``rmrrd check``, the xl
wrapper and the demo share it.

Toolstack hooks run a check for every operation they check, so this path is kept
short: a blocking xenstore client (:mod:`rmrrd.xenstore.blocking`), no trio, no YAML,
nothing imported that the check does not use (``tests/test_short_paths.py`` holds it
to that, docs/performance.md measures it).  The request and the result are the
protocol's (:func:`rmrrd.protocol.format_request`, :func:`rmrrd.protocol.decode_result`).
"""

from __future__ import annotations

import os
import time

from rmrrd.errors import InputError
from rmrrd.protocol import Result, decode_result, request_path, result_path
from rmrrd.xenstore.blocking import BlockingXenstore, XenstoreUnavailable
from rmrrd.xenstore.wire import NoEntry


def ask(xs: BlockingXenstore, request: str, timeout: float) -> tuple[str, Result]:
    """Write ``request``; its id and its result once the verdict is there.

    Raises :class:`InputError` when no verdict comes within ``timeout`` (the request is
    withdrawn then, so a daemon that starts later does not answer it for nobody).
    """
    req_id = f"cli-{os.getpid()}-{os.urandom(4).hex()}"  # what secrets.token_hex does, without its imports
    result = result_path(req_id)
    deadline = time.monotonic() + timeout
    xs.watch(result, req_id)
    xs.write(request_path(req_id), request)
    verdict = None
    while verdict is None and xs.next_event(deadline) is not None:  # the initial event, then one per key
        verdict = xs.read_text(f"{result}/verdict")
    if verdict is None:
        try:
            xs.rm(request_path(req_id))
        except NoEntry:
            pass
        raise InputError(f"no verdict within {timeout:g} s: is rmrrd running on this xenstore?")
    xs.unwatch(result, req_id)
    entries = {"verdict": verdict, "reason": xs.read_text(f"{result}/reason") or ""}
    for kind in ("conflict", "rank"):
        entries.update((f"{kind}/{n}", value) for n, value in enumerate(xs.read_list(f"{result}/{kind}")))
    return req_id, decode_result(entries)


def ask_daemon(xenstore: str | None, request: str, timeout: float) -> tuple[str, Result]:
    """Connect, :func:`ask`, disconnect; an unreachable xenstore is an :class:`InputError`."""
    try:
        with BlockingXenstore(xenstore, timeout=timeout) as xs:
            return ask(xs, request, timeout)
    except XenstoreUnavailable as exc:
        raise InputError(f"cannot reach xenstore: {exc}") from None
