"""The layers of ``rmrrd/`` as folders, with imports pointing one way only.

Read from the source (every ``import`` and ``from ... import``, at any depth of a
module, so an import inside a function counts too), not from what happens to be
loaded.  The layers, lowest first (``rmrrd/__init__.py`` draws the same map):

- ``rmrrd`` itself, ``errors`` and ``inputs``: the version, the error family, and
  reading input files within bounds;
- ``core``: pure logic (ranges, PCI, inventories, firmware tables, xl.cfg strings,
  the guest layout, the planner, the checks, guest queries);
- ``xenstore``: the wire codec shared by both ends, rmrrd's client, the simulated
  xenstored; it knows nothing of rmrrd's keys;
- ``protocol``: every key and value rmrrd reads or writes;
- ``daemon`` and ``edges``, side by side, neither importing the other: the domain
  lifecycle, toolstack checks and reconciliation; configuration, logs, metrics,
  HTTP, sd_notify, peers, the host inventory;
- ``app``: the wiring of all of them into one program, the toolstack's side, the demo;
- ``cli`` and ``hooks``, side by side: the ``rmrrd`` command, and the toolstack hooks
  (``rmrrd-libvirt-hook``, ``rmrrd-xl``).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rmrrd"

RANK = {"root": 0, "errors": 0, "inputs": 0, "core": 1, "xenstore": 1, "protocol": 2, "daemon": 3, "edges": 3, "app": 4, "cli": 5,
        "hooks": 5}
"""Each layer may import its own and those of a lower rank."""
APART = {("core", "xenstore"), ("xenstore", "core"), ("daemon", "edges"), ("edges", "daemon"),
         ("cli", "hooks"), ("hooks", "cli")}
"""Layers of one rank that must not import each other."""
PURE = ("trio", "socket", "subprocess", "threading", "asyncio")
"""What the core and the protocol never import: they do no I/O and keep no time."""


def layer(module: str) -> str:
    """The layer of ``rmrrd.x.y``: its first component below ``rmrrd``."""
    parts = module.split(".")
    if parts[0] != "rmrrd":
        raise ValueError(module)
    if len(parts) == 1:
        return "root"
    if parts[1] == "__main__":
        return "cli"  # ``python -m rmrrd`` is the command
    return parts[1] if parts[1] in RANK else "root"


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


@functools.cache
def imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # ``from rmrrd.cli import check`` imports the submodule rmrrd.cli.check.
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names
                      if f"{target}.{alias.name}" in ALL]
    return found


ALL = modules()


def violations() -> list[str]:
    problems = []
    for module, path in ALL.items():
        mine = layer(module)
        for line, target in imports(module, path):
            top = target.split(".")[0]
            where = f"{module}:{line} ({mine}) imports {target}"
            if top == "rmrrd":
                theirs = layer(target)
                if RANK[theirs] > RANK[mine] or (mine, theirs) in APART:
                    problems.append(f"{where} ({theirs})")
            elif mine in ("core", "protocol") and top in PURE:
                problems.append(f"{where}: I/O in a pure layer")
    return problems


def test_every_module_is_in_a_layer_folder() -> None:
    loose = [module for module in ALL if layer(module) == "root" and module not in ("rmrrd", "rmrrd.__main__")]
    assert loose == []


def test_imports_point_down_only() -> None:
    assert violations() == []


@pytest.mark.parametrize(("source", "text", "wrong"), [
    ("rmrrd/core/planner.py", "from rmrrd.daemon.lifecycle import Domain\n", True),
    ("rmrrd/daemon/owner.py", "from rmrrd.edges.metrics import Metrics\n", True),
    ("rmrrd/xenstore/client.py", "import rmrrd.protocol\n", True),
    ("rmrrd/core/ranges.py", "def f():\n    import trio\n", True),
    ("rmrrd/app/service.py", "from rmrrd.daemon.watches import Daemon\n", False),
    ("rmrrd/cli/run.py", "from ..app import service\n", False),
])
def test_the_check_can_fail(source: str, text: str, wrong: bool, tmp_path: Path) -> None:
    """The checker itself, on one added import (the test above is not vacuous)."""
    path = PACKAGE.parent / source
    module = ".".join(Path(source).with_suffix("").parts)
    copy = tmp_path / path.name
    copy.write_text(text)
    saved = ALL[module]
    ALL[module] = copy
    try:
        assert bool(violations()) == wrong
    finally:
        ALL[module] = saved
