"""``rmrrd-libvirt-hook`` run as libvirtd runs ``/etc/libvirt/hooks/libxl``.

argv is ``GUEST OPERATION SUB-OPERATION EXTRA``, the domain XML comes on stdin and
the environment is libvirt's bare one (docs/hooks.rst in libvirt).  The XML is in
libvirt's format for the libxl driver, each variant checked against libvirt's own
schema by ``virt-xml-validate`` (Debian's libvirt-clients).  This host is the seed's
node-a: a USB controller (00:14.0) with a region in the BIOS area, a GPU (00:02.0)
with one near 2.5 GiB.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process

REPO = Path(__file__).resolve().parent.parent
HOOK = Path(sys.executable).parent / "rmrrd-libvirt-hook"
GPU_XML = (REPO / "tests" / "data" / "libvirt" / "hvm-gpu.xml").read_text()
GPU_SOURCE = "<address domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>"
USB_SOURCE = "<address domain='0x0000' bus='0x00' slot='0x14' function='0x0'/>"
HOSTDEV_START, HOSTDEV_END = "    <hostdev mode='subsystem'", "    </hostdev>\n"


def without_hostdev(xml: str) -> str:
    return xml[:xml.index(HOSTDEV_START)] + xml[xml.index(HOSTDEV_END) + len(HOSTDEV_END):]


VARIANTS = {
    "gpu": GPU_XML,
    "usb": GPU_XML.replace(GPU_SOURCE, USB_SOURCE),
    "no-devices": without_hostdev(GPU_XML),
    # A NIC given as <interface type='hostdev'>: libvirt passes it to libxl as a PCI device.
    "usb-as-interface": without_hostdev(GPU_XML).replace(
        "    <input type='mouse'",
        f"    <interface type='hostdev' managed='yes'>\n      <mac address='00:16:3e:2e:e7:fc'/>\n"
        f"      <source>\n        {USB_SOURCE.replace('<address ', '<address type=' + repr('pci') + ' ')}\n"
        f"      </source>\n    </interface>\n    <input type='mouse'"),
    "gpu-pod": GPU_XML.replace("<currentMemory unit='KiB'>4194304", "<currentMemory unit='KiB'>2097152"),
    "usb-pv": GPU_XML.replace("<type arch='x86_64' machine='xenfv'>hvm</type>",
                              "<type arch='x86_64' machine='xenpv'>linux</type>")
                     .replace(GPU_SOURCE, USB_SOURCE)
                     .replace("    <loader type='rom'>/usr/lib/xen-4.17/boot/hvmloader</loader>\n", "")
                     .replace("    <boot dev='hd'/>\n", "").replace("    <pae/>\n", "")
                     .replace("    <hap state='on'/>\n", "").replace("    <apic/>\n", "")
                     .replace("    <acpi/>\n", "").replace("      <model type='cirrus' vram='8192' heads='1' primary='yes'/>",
                                                          "      <model type='xen' vram='4096' heads='1' primary='yes'/>")
                     .replace("    <input type='mouse' bus='ps2'/>\n    <input type='keyboard' bus='ps2'/>\n", ""),
}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "rmrrd.yaml"
    path.write_text(f"host:\n  name: node-a\n  sources: [{REPO / 'etc' / 'inventories' / 'node-a.yaml'}]\n")
    return path


def run_hook(xml: str, *argv: str, config: Path | None,
             extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The hook as libvirtd's virHookCall runs it (plus where to find its files, for the test)."""
    env = {"LC_ALL": "C", "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/root", "USER": "root", "LOGNAME": "root", **(extra or {})}
    if config is not None:
        env["RMRRD_CONFIG"] = str(config)
    env.setdefault("RMRRD_RUNTIME_DIR", str(config.parent / "run") if config is not None else "/nonexistent")
    return subprocess.run([str(HOOK), *argv], input=xml, env=env, capture_output=True, text=True, check=False)


@pytest.mark.skipif(shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None,
                    reason="virt-xml-validate (libvirt-clients) or xmllint not installed")
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_is_valid_libvirt_xml(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.xml"
    path.write_text(VARIANTS[name])
    done = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("operation", ["prepare", "migrate"])
def test_refuses_a_device_xen_would_refuse(operation: str, config: Path) -> None:
    """The USB controller's region lies in the BIOS area: libxl fails it under strict."""
    done = run_hook(VARIANTS["usb"], "hvm-gpu", operation, "begin", "-", config=config)
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("rmrrd: Xen would refuse domain hvm-gpu on node-a: region 0xe0000-0xeffff")
    assert "rdm_policy=strict" in line


def test_the_same_device_as_a_network_interface_is_refused(config: Path) -> None:
    assert run_hook(VARIANTS["usb-as-interface"], "hvm-gpu", "prepare", "begin", "-", config=config).returncode == 1


def test_accepts_a_device_xen_would_accept(config: Path) -> None:
    """The GPU's region is above rdm_mem_boundary: libxl moves low RAM below it."""
    done = run_hook(VARIANTS["gpu"], "hvm-gpu", "prepare", "begin", "-", config=config)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_never_blocks_a_domain_without_pci_devices(tmp_path: Path) -> None:
    """Not even when rmrrd's configuration is broken: it is never read."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("host: [\n")
    for operation in ("prepare", "migrate", "start"):
        done = run_hook(VARIANTS["no-devices"], "hvm-gpu", operation, "begin", "-", config=broken)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


@pytest.mark.parametrize("operation", ["start", "started", "stopped", "release", "reconnect"])
def test_other_operations_are_never_checked(operation: str, config: Path) -> None:
    """A failing reconnect hook would make libvirt kill the domain: they all pass."""
    done = run_hook(VARIANTS["usb"], "hvm-gpu", operation, "begin", "-", config=config)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_pod_with_a_device_is_refused_as_libxl_refuses_it(config: Path) -> None:
    done = run_hook(VARIANTS["gpu-pod"], "hvm-gpu", "prepare", "begin", "-", config=config)
    assert done.returncode == 1
    assert "PoD" in done.stderr and len(done.stderr.splitlines()) == 1


def test_pv_guests_have_no_reserved_regions_to_check(config: Path) -> None:
    assert run_hook(VARIANTS["usb-pv"], "pv-usb", "prepare", "begin", "-", config=config).returncode == 0


def test_a_broken_rmrrd_setup_allows_and_says_why(tmp_path: Path) -> None:
    missing = tmp_path / "rmrrd.yaml"
    missing.write_text(f"host:\n  sources: [{tmp_path / 'missing.yaml'}]\n")
    done = run_hook(VARIANTS["usb"], "hvm-gpu", "prepare", "begin", "-", config=missing)
    assert done.returncode == 0
    [line] = done.stderr.splitlines()
    assert line.startswith("rmrrd: not checked, allowing prepare of hvm-gpu: ")
    garbage = run_hook("<domain><name>x</name><devices><hostdev", "x", "prepare", "begin", "-", config=missing)
    assert garbage.returncode == 0 and "not checked" in garbage.stderr


def test_the_inventory_is_cached_until_a_file_it_came_from_changes(tmp_path: Path, config: Path) -> None:
    """The second run reads the cache; editing the inventory file makes the hook load again."""
    inventory = tmp_path / "node-a.yaml"
    inventory.write_text((REPO / "etc" / "inventories" / "node-a.yaml").read_text())
    config.write_text(f"host:\n  name: node-a\n  sources: [{inventory}]\n")
    runtime = tmp_path / "run"
    env_extra = {"RMRRD_RUNTIME_DIR": str(runtime)}
    assert run_hook(VARIANTS["usb"], "g", "prepare", "begin", "-", config=config, extra=env_extra).returncode == 1
    cache = runtime / "host-inventory.json"
    assert json.loads(cache.read_text())["depends"][0][0] == str(inventory)
    # A cache that says something else than its files is not believed...
    record = json.loads(cache.read_text())
    record["inventory"]["regions"] = []
    cache.write_text(json.dumps(record))
    assert run_hook(VARIANTS["usb"], "g", "prepare", "begin", "-", config=config, extra=env_extra).returncode == 0
    # ...until a file it depends on changes: the USB controller's region is gone from the host.
    inventory.write_text(inventory.read_text().replace("0xe0000-0xeffff", "0xf0000000-0xf00fffff") + "\n")
    done = run_hook(VARIANTS["usb"], "g", "prepare", "begin", "-", config=config, extra=env_extra)
    assert done.returncode == 0 and done.stderr == ""
    inventory.write_text((REPO / "etc" / "inventories" / "node-a.yaml").read_text())
    assert run_hook(VARIANTS["usb"], "g", "prepare", "begin", "-", config=config, extra=env_extra).returncode == 1
