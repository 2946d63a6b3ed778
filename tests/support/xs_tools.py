"""Debian's xenstore-utils as the toolstack: what a dom0 script sees, through libxenstore.

The end-to-end tests play the toolstack with the genuine ``xenstore-write`` /
``xenstore-read`` / ``xenstore-list`` / ``xenstore-rm`` / ``xenstore-watch`` binaries
(``XENSTORED_PATH`` pointing at the xenstored under test), not through rmrrd's own
client.  Waiting is event driven: :func:`watching` runs ``xenstore-watch`` and
re-reads a value after every event until it is what the test waits for, under one
deadline.  Paths come from :mod:`rmrrd.protocol`; ``test_protocol`` pins them to the
schema page.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from rmrrd.protocol import REGION_FIELDS, answer_path, rdm_path, request_entries, request_path, result_path

XENSTORE_TOOLS = Path("/usr/bin/xenstore-write")
WAIT_TIMEOUT = 10.0

needs_xenstore_tools = pytest.mark.skipif(not XENSTORE_TOOLS.exists(), reason="xenstore-utils not installed")


@dataclass
class Xenstore:
    """A xenstored socket, reached through the genuine xenstore-utils binaries."""

    socket: Path
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.env = dict(os.environ, XENSTORED_PATH=str(self.socket))

    def guest_socket(self, domid: int) -> Path:
        """Where the simulated xenstored accepts ``domid``'s connection once introduced."""
        return Path(f"{self.socket}.d/{domid}")

    async def tool(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        done = await trio.run_process(list(argv), env=self.env, capture_stdout=True,
                                      capture_stderr=True, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode().strip()}")
        return done

    async def read(self, path: str) -> str | None:
        """``xenstore-read PATH``, or None when the node is not there."""
        done = await self.tool("xenstore-read", path, check=False)
        if done.returncode != 0:
            assert b"couldn't read path" in done.stderr, done.stderr
            return None
        return done.stdout.decode().removesuffix("\n")

    async def read_many(self, *paths: str) -> list[str]:
        """Several values with one ``xenstore-read`` (one transaction); all must exist."""
        done = await self.tool("xenstore-read", *paths)
        values = done.stdout.decode().split("\n")[:-1]
        assert len(values) == len(paths), done.stdout
        return values

    async def list(self, path: str) -> list[str]:
        """``xenstore-list PATH``; empty when the node is not there."""
        done = await self.tool("xenstore-list", path, check=False)
        return done.stdout.decode().split() if done.returncode == 0 else []

    async def write(self, pairs: Mapping[str, str]) -> None:
        """Every pair with one ``xenstore-write`` call: the tool wraps it in one transaction."""
        await self.tool("xenstore-write", *(item for pair in pairs.items() for item in pair))

    async def rm(self, path: str) -> None:
        await self.tool("xenstore-rm", path)


class _Lines:
    """Lines from a byte stream (xenstore-watch prints one event path per line)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self) -> str:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some(4096)
            if not data:
                raise AssertionError("xenstore-watch exited")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()


@dataclass
class Watching:
    """A running ``xenstore-watch``; :meth:`until` waits for a value to be as wanted."""

    xs: Xenstore
    events: _Lines

    async def until(self, path: str, wanted: Callable[[str | None], bool], timeout: float = WAIT_TIMEOUT) -> str | None:
        """Re-read ``path`` after every event until ``wanted`` holds; its last value.

        The value is read before the first wait too, so a change that happened
        between starting the watch and calling this is not missed.
        """
        with trio.fail_after(timeout):
            while True:
                value = await self.xs.read(path)
                if wanted(value):
                    return value
                await self.events.next()


@asynccontextmanager
async def watching(xs: Xenstore, path: str) -> AsyncIterator[Watching]:
    """Run ``xenstore-watch PATH`` for the block; events are registered on entry.

    Entry waits for the watch's initial event (xenstored fires one on registration),
    so anything the block writes afterwards is seen.
    """
    process = await trio.lowlevel.open_process(["xenstore-watch", path], env=xs.env, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        lines = _Lines(process.stdout)
        with trio.fail_after(WAIT_TIMEOUT):
            assert await lines.next() == path
        yield Watching(xs, lines)
    finally:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


# --- the toolstack's side, through the tools -----------------------------------------------

@dataclass(frozen=True)
class Region:
    range: str
    source: str
    conflict: str
    action: str


@dataclass(frozen=True)
class Answer:
    """A domain's setup answer as ``xenstore-read`` shows it."""

    generation: str
    status: str
    error: str | None
    lowmem_end: str | None
    highmem_end: str | None
    regions: dict[str, Region]
    e820: list[str]


async def read_answer(xs: Xenstore, domid: int) -> Answer:
    base = answer_path(domid)
    generation, status = await xs.read_many(f"{base}/generation", f"{base}/status")
    regions: dict[str, Region] = {}
    for n in sorted(await xs.list(f"{base}/region"), key=int):
        fields = await xs.read_many(*(f"{base}/region/{n}/{key}" for key in REGION_FIELDS))
        regions[fields[0]] = Region(*fields)
    e820_keys = sorted(await xs.list(f"{base}/e820"), key=int)
    e820 = await xs.read_many(*(f"{base}/e820/{n}" for n in e820_keys)) if e820_keys else []
    return Answer(generation, status, await xs.read(f"{base}/error"), await xs.read(f"{base}/lowmem_end"),
                  await xs.read(f"{base}/highmem_end"), regions, e820)


async def request_setup(xs: Xenstore, domid: int, keys: Mapping[str, str], generation: str = "1") -> Answer:
    """Write a domain's keys and ``request`` in one ``xenstore-write``; wait for the answer."""
    base = answer_path(domid)
    async with watching(xs, f"{base}/generation") as watch:
        await xs.write({f"{rdm_path(domid)}/{key}": value for key, value in request_entries(keys, generation)})
        await watch.until(f"{base}/generation", lambda value: value == generation)
    return await read_answer(xs, domid)


@dataclass(frozen=True)
class Result:
    verdict: str
    reason: str
    conflicts: list[str]


async def toolstack_check(xs: Xenstore, req_id: str, request: str) -> Result:
    """``xenstore-write /tool/rmrrd/request/<id>``; wait for and read the verdict."""
    base = result_path(req_id)
    async with watching(xs, base) as watch:
        await xs.write({request_path(req_id): request})
        verdict = await watch.until(f"{base}/verdict", lambda value: value is not None)
    assert verdict is not None
    conflicts = sorted(await xs.list(f"{base}/conflict"), key=int)
    return Result(verdict, await xs.read(f"{base}/reason") or "",
                  await xs.read_many(*(f"{base}/conflict/{n}" for n in conflicts)) if conflicts else [])
