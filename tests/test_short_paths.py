"""What the short paths import: not the daemon's machinery.

``rmrrd check`` and the hooks run once per toolstack operation, and ``rmrrd reload``
once per ``systemctl reload``, so each must import only what its work uses.  Each case runs the entry point in a fresh interpreter
and lists ``sys.modules`` at the end; timing is measured in bench/bench_hooks.py,
not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process

REPO = Path(__file__).resolve().parent.parent
GPU_XML = (REPO / "tests" / "data" / "libvirt" / "hvm-gpu.xml").read_text()
NO_DEVICE_XML = GPU_XML[:GPU_XML.index("    <hostdev")] + GPU_XML[GPU_XML.index("    </hostdev>\n") + 15:]

DAEMON_MACHINERY = {"trio", "yaml", "prometheus_client", "h11", "outcome", "attrs", "asyncio", "logging",
                    "rmrrd.edges.config", "rmrrd.app.service", "rmrrd.xenstore.client", "rmrrd.edges.metrics"}
"""Never on a short path: the event loop, YAML, metrics, HTTP, the daemon and its client."""
PLANNING = {"rmrrd.core.planner", "rmrrd.core.libxl_domain", "rmrrd.edges.host_inventory", "xml.etree.ElementTree"}
"""Not where nothing is planned."""
XL_CONFIG = {"rmrrd.core.xlcfg_file", "rmrrd.core.libxlu", "rmrrd.app.xl_config", "rmrrd.app.host_cache",
             "rmrrd.core.inventory_yaml", "rmrrd.cli.plan", "pathlib"}
"""The xl.cfg reader and the inventories of ``check --xl-config``, and ``pathlib`` (it
pulls in ``urllib.parse``: 4 ms, which no short path pays once the inventory is
cached): not on ``check --domid``."""
HELP_TEXT = {"shutil", "textwrap"}
"""What argparse needs only to print help (the terminal's width, wrapping)."""
CLASS_MAKERS = {"dataclasses", "inspect"}
"""What defining dataclasses costs (8 ms to import, most of it ``inspect``, and about
1 ms a class): the values the short paths use are NamedTuples (docs/design.md, "Values")."""

RUNNER = """
import json, sys
sys.argv = [{name!r}, *{args!r}]
from {module} import main
try:
    main({args!r})
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.__stderr__)
"""


def imported(module: str, args: list[str], stdin: str = "", env: dict[str, str] | None = None) -> set[str]:
    """The modules loaded by running ``module.main(args)`` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", RUNNER.format(name=module, module=module, args=args)],
                          input=stdin, capture_output=True, text=True, env=env, check=False)
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


def host_config(tmp_path: Path) -> dict[str, str]:
    """The environment of a command that loads this host's inventory: a configuration
    naming node-a's, and a runtime directory for the hooks' cache of it."""
    config = tmp_path / "rmrrd.yaml"
    config.write_text(f"host:\n  name: node-a\n  sources: [{REPO / 'etc' / 'inventories' / 'node-a.yaml'}]\n")
    return {"RMRRD_CONFIG": str(config), "RMRRD_RUNTIME_DIR": str(tmp_path / "run"), "PATH": "/usr/bin:/bin"}


def test_rmrrd_check(tmp_path: Path) -> None:
    """A check against xenstore (none here: it fails after its imports are done)."""
    modules = imported("rmrrd.cli", ["check", "hotplug", "--domid", "1", "--device", "00:02.0",
                                     "--xenstore", str(tmp_path / "none")])
    assert "rmrrd.xenstore.blocking" in modules
    never = DAEMON_MACHINERY | PLANNING | HELP_TEXT | XL_CONFIG | CLASS_MAKERS
    assert modules.isdisjoint(never), modules & never


def test_rmrrd_check_xl_config(tmp_path: Path) -> None:
    """Offline for an xl.cfg file, this host's inventory cached: the xl.cfg reader and the
    planner, but no daemon machinery (and no YAML once the cache is there)."""
    env = host_config(tmp_path)
    args = ["check", "hotplug", "--xl-config", str(REPO / "tests" / "data" / "xl" / "hvm-2g-host.cfg"),
            "--device", "00:02.0"]
    imported("rmrrd.cli", args, env=env)  # the first run loads the configuration and writes the cache
    modules = imported("rmrrd.cli", args, env=env)
    assert {"rmrrd.core.xlcfg_file", "rmrrd.core.planner", "rmrrd.core.checks"} <= modules
    never = DAEMON_MACHINERY | HELP_TEXT | CLASS_MAKERS | {"rmrrd.xenstore.blocking", "pathlib"}
    assert modules.isdisjoint(never), modules & never


def test_rmrrd_reload(tmp_path: Path) -> None:
    """The unit's ExecReload= (no such process here: it fails after its imports are done)."""
    modules = imported("rmrrd.cli", ["reload", "--pid", "999999999"], env={"RUNTIME_DIRECTORY": str(tmp_path)})
    assert "rmrrd.edges.reload_status" in modules
    assert modules.isdisjoint(DAEMON_MACHINERY | PLANNING), modules & (DAEMON_MACHINERY | PLANNING)


def test_xl_wrapper_check(tmp_path: Path) -> None:
    env = {"XENSTORED_PATH": str(tmp_path / "none"), "RMRRD_XL": "/nonexistent/xl", "PATH": "/usr/bin:/bin"}
    modules = imported("rmrrd.hooks.xl", ["pci-attach", "1", "00:02.0"], env=env)
    assert "rmrrd.xenstore.blocking" in modules
    never = DAEMON_MACHINERY | CLASS_MAKERS | {"rmrrd.core.planner", "rmrrd.edges.host_inventory"}
    assert modules.isdisjoint(never), modules & never


def test_xl_wrapper_create(tmp_path: Path) -> None:
    """The wrapper's prediction for an xl.cfg file, this host's inventory cached: the
    xl.cfg reader and the planner, no daemon machinery, no dataclasses."""
    env = {**host_config(tmp_path), "RMRRD_XL": "/nonexistent/xl"}
    args = ["create", str(REPO / "tests" / "data" / "xl" / "hvm-2g-host.cfg")]
    imported("rmrrd.hooks.xl", args, env=env)  # the first run loads the configuration and writes the cache
    modules = imported("rmrrd.hooks.xl", args, env=env)
    assert {"rmrrd.core.xlcfg_file", "rmrrd.core.planner"} <= modules
    never = DAEMON_MACHINERY | CLASS_MAKERS | {"rmrrd.xenstore.blocking", "pathlib"}
    assert modules.isdisjoint(never), modules & never


@pytest.mark.parametrize(("operation", "xml"), [("prepare", NO_DEVICE_XML), ("start", GPU_XML)])
def test_libvirt_hook_fast_exits(operation: str, xml: str) -> None:
    """No PCI device, or an operation not checked: nothing of rmrrd's beyond the hook itself."""
    modules = imported("rmrrd.hooks.libvirt", ["g", operation, "begin", "-"], stdin=xml)
    # rmrrd.inputs: the cap on what is read from stdin (it imports json and os only).
    assert {name for name in modules if name.startswith("rmrrd.")} <= {"rmrrd.hooks.libvirt", "rmrrd.errors",
                                                                        "rmrrd.inputs", "rmrrd.hooks"}
    assert modules.isdisjoint(DAEMON_MACHINERY | PLANNING)


def test_libvirt_hook_with_a_device_and_a_cached_inventory(tmp_path: Path) -> None:
    """With the inventory cached: the planner, but still no YAML, trio or logging."""
    env = host_config(tmp_path)
    first = imported("rmrrd.hooks.libvirt", ["g", "prepare", "begin", "-"], stdin=GPU_XML, env=env)
    assert "yaml" in first  # the first run reads the configuration
    modules = imported("rmrrd.hooks.libvirt", ["g", "prepare", "begin", "-"], stdin=GPU_XML, env=env)
    assert "rmrrd.core.planner" in modules
    never = DAEMON_MACHINERY | CLASS_MAKERS | {"pathlib"}
    assert modules.isdisjoint(never), modules & never
