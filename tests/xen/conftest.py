"""Fixtures of the real-Xen tier: one testbed per session, one boot per configuration.

Every test under ``tests/xen/`` carries the ``xen`` marker (pyproject's ``addopts``
leaves it out unless asked: ``pytest -m xen``; docs/testing.md).  The machines the
selected tests need are started together when the first of those tests runs, so
one boots while tests run on another; the session's end stops them all.

A new configuration is a ``BootConfig`` and a fixture returning ``testbed.boot(it)``;
name the fixture in ``BOOT_FIXTURES`` so it is started early as well.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from xen.daemon import Rmrrd, running
from xen.rmrr_host import ASSIGNABLE, HVM_RMRR, INVENTORY, INVENTORY_TEXT, RMRRD_CONFIG_TEXT
from xen.testbed import BootConfig, Dom0, Testbed

HERE = Path(__file__).resolve().parent
FIRMWARE_TABLES = HERE.parent / "data" / "firmware" / "tables"
FIRMWARE_DMAR = FIRMWARE_TABLES / "linuxhw_Dell-Latitude-5511_A37FB9368F2A_DMAR.bin"
"""A laptop's DMAR (three RMRRs: USB, graphics stolen memory, a management engine
function), given to the machine's firmware as an extra ACPI table."""

XENSTORED = BootConfig(name="xenstored")
"""C xenstored, QEMU's VT-d: the machine most tests share."""
OXENSTORED = BootConfig(name="oxenstored", xenstored="oxenstored", acpi_tables=(FIRMWARE_DMAR,))
"""oxenstored, and a real firmware DMAR beside QEMU's (which Xen takes for its VT-d)."""
NO_XENSTORED = BootConfig(name="no-xenstored", xenstored=None)
"""The harness's own failure: a dom0 where nobody starts xenstored."""
SYSTEMD = BootConfig(name="systemd", systemd=True, xenstored=None, memory_mib=3072, dom0_memory_mib=1536)
"""Debian 12 booted by systemd, Debian's xen.service, rmrrd installed from the wheel and
enabled (``systemd_dom0.py``); its root lives in dom0's memory, hence the larger sizes."""

BOOT_FIXTURES = {"dom0": XENSTORED, "ox_dom0": OXENSTORED, "no_xenstored": NO_XENSTORED, "systemd_dom0": SYSTEMD,
                 "hvm_rmrr_dom0": HVM_RMRR}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.xen)
    # The systemd dom0 comes up last (a Debian root to build, a whole system to boot):
    # its tests go after the others, which run while it boots.
    items.sort(key=lambda item: "systemd_dom0" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def testbed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """The session's testbed; starts the boots the selected tests will ask for."""
    # SIGTERM (CI cancelling a job) then ends pytest as Ctrl-C does: fixtures are torn
    # down and the machines stopped.  A SIGKILL is covered by PR_SET_PDEATHSIG.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    testbed = Testbed(tmp_path_factory.mktemp("xen"))
    wanted = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    for name, config in BOOT_FIXTURES.items():
        if name in wanted:
            testbed.start(config)
    try:
        yield testbed
    finally:
        testbed.close()
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def dom0(testbed: Testbed) -> Dom0:
    return testbed.boot(XENSTORED)


@pytest.fixture(scope="session")
def ox_dom0(testbed: Testbed) -> Dom0:
    return testbed.boot(OXENSTORED)


@pytest.fixture(scope="session")
def hvm_rmrr_dom0(testbed: Testbed) -> Dom0:
    """HVM guests' device model and firmware, and RMRRs from Xen's ``rmrr=`` (``rmrr_host.py``)."""
    return testbed.boot(HVM_RMRR)


@pytest.fixture(scope="session")
def hvm_rmrrd(hvm_rmrr_dom0: Dom0) -> Iterator[Rmrrd]:
    """``rmrrd run`` on the HVM machine, with its regions as an inventory, before any
    guest is created there; the devices of its RMRRs made assignable."""
    dom0 = hvm_rmrr_dom0
    dom0.write_file(INVENTORY, INVENTORY_TEXT)
    for device in ASSIGNABLE:
        dom0.run(["xl", "pci-assignable-add", device])
    with running(dom0, RMRRD_CONFIG_TEXT) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def no_xenstored(testbed: Testbed) -> Testbed:
    """The testbed, for a test that boots NO_XENSTORED itself and expects it to fail."""
    return testbed


@pytest.fixture(scope="session")
def systemd_dom0(testbed: Testbed) -> Dom0:
    if os.geteuid() != 0:
        pytest.skip("the systemd dom0 is made with debootstrap and chroot, which need root")
    return testbed.boot(SYSTEMD)
