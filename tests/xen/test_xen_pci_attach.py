"""``xl pci-attach`` on real Xen judges ``rmrrd check hotplug``, and rmrrd learns what it attached.

On the HVM machine (QEMU's VT-d driven by Xen, RMRRs from ``rmrr=``, dom0 with
``xen-pciback``): paused PV domains created with ``passthrough="enabled"`` (cheap: no
device model, no guest running), learned by the ``rmrrd run`` of the session.  Each
device is made assignable (``xl pci-assignable-add``); rmrrd predicts, directly or
through the ``rmrrd-xl`` wrapper, and the real xl attaches.  What Xen 4.17 does for a
PV domain (``pci_add_dm_done`` in tools/libs/light/libxl_pci.c, then
``intel_iommu_assign_device`` in xen/drivers/passthrough/vtd/iommu.c): a strict device
of a shared RMRR is disallowed, a relaxed one assigned at a risk, a device with a region
of its own assigned (a PV domain's regions are mapped 1:1 in the IOMMU only,
``set_identity_p2m_entry``), and a device another domain holds is no longer assignable (libxl's own list, before Xen).

One device per domain: libxl waits for a PCI backend that already exists to be
connected before it adds a second device, which a paused guest's never is; it has
assigned the device in Xen by then and does not take it back.
"""

from __future__ import annotations

import concurrent.futures
import re
from collections.abc import Iterator

import pytest

from xen.daemon import Rmrrd
from xen.testbed import Dom0, Guest, Result

pytestmark = pytest.mark.xen_hvm  # the HVM machine's stage (docs/testing.md)

SHARED = "00:1f.2"
"""A device of the shared RMRR at 0x7e000000 (with 00:01.0)."""
OWN = "00:1f.3"
"""The device of the region at 16 MiB, its own."""
PLAIN = "00:1f.0"
"""The device of the region at 65 MiB, attached by xl alone: rmrrd knows of it only by learning."""


@pytest.fixture(scope="module")
def domains(hvm_rmrr_dom0: Dom0, hvm_rmrrd: Rmrrd) -> Iterator[dict[str, Guest]]:
    """Three paused PV domains that may take devices, each learned by rmrrd."""
    dom0 = hvm_rmrr_dom0
    names = ("shared", "own", "plain")
    with concurrent.futures.ThreadPoolExecutor() as pool:
        guests = pool.map(lambda name: dom0.create_guest(f"attach-{name}", paused=True,
                                                         config=['passthrough = "enabled"']), names)
        created = dict(zip(names, guests))
    try:
        for guest in created.values():
            hvm_rmrrd.wait_for_log(f"domain {guest.domid}: learned from libxl (pv, its saved configuration read)")
        yield created
    finally:
        # At once: libxl gives each device's backend seconds to close, which a paused guest never does.
        with concurrent.futures.ThreadPoolExecutor() as pool:
            list(pool.map(lambda guest: dom0.run(["xl", "destroy", guest.name], timeout=120, check=False),
                          created.values()))


def check(dom0: Dom0, guest: Guest, device: str) -> Result:
    return dom0.rmrrd("check", "hotplug", "--domid", str(guest.domid), "--device", device, check=False)


def xl_pci_attach(dom0: Dom0, guest: Guest, device: str, *, wrapper: tuple[str, ...] | None = None) -> Result:
    """``xl pci-attach``, or through ``rmrrd-xl`` with ``wrapper``'s options before xl's arguments."""
    if wrapper is None:
        return dom0.run(["xl", "pci-attach", str(guest.domid), device], timeout=120, check=False)
    real_xl = dom0.run(["sh", "-c", "command -v xl"]).text.strip()  # not /usr/sbin here: the image's PATH
    return dom0.python(["-m", "rmrrd.hooks.xl", *wrapper, "pci-attach", str(guest.domid), device], timeout=120,
                       env={"RMRRD_XL": real_xl}, check=False)


def attached(dom0: Dom0, guest: Guest) -> list[str]:
    """The devices ``xl pci-list`` shows for the domain."""
    return re.findall(r"\b0000:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]\b", dom0.run(["xl", "pci-list", str(guest.domid)]).text)


def xen_says(dom0: Dom0, line: str) -> bool:
    return line in dom0.run(["xl", "dmesg"]).text


def test_a_strict_device_of_a_shared_rmrr_is_refused(hvm_rmrr_dom0: Dom0, domains: dict[str, Guest]) -> None:
    dom0, guest = hvm_rmrr_dom0, domains["shared"]
    predicted = check(dom0, guest, SHARED)
    assert predicted.rc == 1 and "Xen's VT-d refuses the device under rdm_policy=strict" in predicted.text, \
        predicted.describe()
    wrapped = xl_pci_attach(dom0, guest, SHARED, wrapper=())
    assert wrapped.rc == 1 and "rmrrd: refused: hotplug 0000:00:1f.2" in wrapped.stderr.decode(), wrapped.describe()
    assert attached(dom0, guest) == []  # the wrapper did not run xl
    forced = xl_pci_attach(dom0, guest, SHARED, wrapper=("--force",))
    assert not forced.ok and "xc_assign_device failed: Operation not permitted" in forced.stderr.decode(), \
        forced.describe()
    assert xen_says(dom0, f"It's disallowed to assign 0000:00:1f.2 with shared RMRR at 7e000000 for d{guest.domid}.")
    assert attached(dom0, guest) == []


def test_the_same_device_relaxed_is_assigned_at_a_risk(hvm_rmrr_dom0: Dom0, domains: dict[str, Guest]) -> None:
    dom0, guest = hvm_rmrr_dom0, domains["shared"]
    device = f"{SHARED},rdm_policy=relaxed"
    predicted = check(dom0, guest, device)
    assert predicted.rc == 3 and "shared RMRR (also 0000:00:01.0): assigned at a risk" in predicted.text, \
        predicted.describe()
    wrapped = xl_pci_attach(dom0, guest, device, wrapper=())
    assert wrapped.ok and "rmrrd: warning: hotplug 0000:00:1f.2" in wrapped.stderr.decode(), wrapped.describe()
    assert xen_says(dom0, f"It's risky to assign 0000:00:1f.2 with shared RMRR at 7e000000 for d{guest.domid}.")
    assert attached(dom0, guest) == ["0000:00:1f.2"]


def test_a_device_with_a_region_of_its_own_is_assigned(hvm_rmrr_dom0: Dom0, domains: dict[str, Guest]) -> None:
    dom0, guest = hvm_rmrr_dom0, domains["own"]
    predicted = check(dom0, guest, OWN)
    assert predicted.rc == 0 and predicted.text.startswith("ok: hotplug 0000:00:1f.3"), predicted.describe()
    attach = xl_pci_attach(dom0, guest, OWN)
    assert attach.ok, attach.describe()
    assert attached(dom0, guest) == ["0000:00:1f.3"]


def test_rmrrd_learns_what_xl_attached(hvm_rmrr_dom0: Dom0, hvm_rmrrd: Rmrrd, domains: dict[str, Guest]) -> None:
    """A device xl attached with no check before it: rmrrd knows of it from libxl's new
    backend ``dev-N``, and refuses it, and the devices of its region, to any other domain,
    as libxl does (the device is no longer in its assignable list)."""
    dom0, holder, other = hvm_rmrr_dom0, domains["plain"], domains["shared"]
    answer = f"{holder.home}/rmrr/generation"
    before = dom0.xs_read(answer)
    attach = xl_pci_attach(dom0, holder, PLAIN)
    assert attach.ok, attach.describe()
    assert dom0.xs_read(f"/local/domain/0/backend/pci/{holder.domid}/0/dev-0") == "0000:00:1f.0"
    dom0.wait_until(f'[ "$(xenstore-read {answer})" != "{before}" ]', 30)  # learned again
    assert dom0.xs_read(f"{holder.home}/rmrr/origin") == "learned"
    predicted = check(dom0, other, PLAIN)
    assert predicted.rc == 1 and (f"region 0x4100000-0x4100fff is shared with 0000:00:1f.0, assigned to domain "
                                  f"{holder.domid}") in predicted.text, predicted.describe()
    attach = xl_pci_attach(dom0, other, PLAIN)
    assert not attach.ok and "PCI device 0:0:1f.0 is not assignable" in attach.stderr.decode(), attach.describe()
    # The other device of the RMRR the first domain holds 00:1f.2 of (Xen's side is not
    # tried: 00:01.0 is the testbed's own serial port).
    predicted = check(dom0, domains["own"], "00:01.0,rdm_policy=relaxed")
    assert predicted.rc == 1 and (f"region 0x7e000000-0x7e003fff is shared with 0000:00:1f.2, assigned to domain "
                                  f"{other.domid}") in predicted.text, predicted.describe()
    assert "Traceback" not in hvm_rmrrd.log()
