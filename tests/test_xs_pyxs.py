"""Debian's python3-pyxs (an independent pure-Python client; it checks reply ids)
against the simulated xenstored, run under /usr/bin/python3 where it is installed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import trio

from rmrrd.xenstore.server import XenstoredHandle

SYSTEM_PYTHON = "/usr/bin/python3"


def _has_pyxs() -> bool:
    try:
        return subprocess.run([SYSTEM_PYTHON, "-c", "import pyxs"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = [pytest.mark.skipif(not _has_pyxs(), reason="python3-pyxs not installed"), pytest.mark.process]

SCRIPT = r"""
import json, sys
from pyxs import Client, PyXSError
out = {}
with Client(unix_socket_path=sys.argv[1]) as c:
    c.write(b"/py/a", b"1")
    c.write(b"/py/empty", b"")
    out["read"] = [c.read(b"/py/a").decode(), c.read(b"/py/empty").decode()]
    out["ls"] = sorted(x.decode() for x in c.list(b"/py"))
    c.set_perms(b"/py/a", [b"n0", b"r3"])
    out["perms"] = [p.decode() for p in c.get_perms(b"/py/a")]
    try:
        c.read(b"/py/missing")
    except PyXSError as e:
        out["missing"] = e.args[0]
    c.transaction()
    c.write(b"/py/tx", b"in")
    c.commit()
    out["tx"] = c.read(b"/py/tx").decode()
    with c.monitor() as m:
        m.watch(b"/py", b"tok")
        first = next(m.wait())
        c.write(b"/py/b", b"2")
        second = next(m.wait())
        out["watch"] = [[p.decode(), t.decode()] for p, t in (first, second)]
    out["domain_path"] = c.get_domain_path(3).decode()
print(json.dumps(out))
"""


async def test_pyxs_read_write_ls_perms_transaction_watch(xenstored: XenstoredHandle, tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(SCRIPT)
    done = await trio.run_process(
        [SYSTEM_PYTHON, str(script), str(xenstored.socket_path)], capture_stdout=True, capture_stderr=True, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    out = json.loads(done.stdout)
    assert out["read"] == ["1", ""]
    assert out["ls"] == ["a", "empty"]
    assert out["perms"] == ["n0", "r3"]
    assert out["missing"] == 2  # ENOENT as errno
    assert out["tx"] == "in"
    assert out["watch"] == [["/py", "tok"], ["/py/b", "tok"]]
    assert out["domain_path"] == "/local/domain/3"
