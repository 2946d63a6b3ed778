"""A dom0 that boots Debian 12 with systemd, and rmrrd installed as an operator installs it.

The testbed's other machines start only the agent and bring the toolstack up step by
step; this one is a Debian system.  ``debootstrap`` makes a bookworm root with systemd
and Debian's own Xen userspace: ``xen-utils-4.17`` (xl, both xenstoreds) and
``xen-utils-common``, whose ``/etc/init.d/xen`` systemd runs as ``xen.service``
(xenfs, xenstored, xenconsoled) and ``/etc/init.d/xendomains`` as ``xendomains.service``.
systemd is its ``/sbin/init``.

rmrrd goes in the way docs/operations.md tells an operator: a virtualenv in
``/opt/rmrrd`` with the wheel built from this checkout (its dependencies are the PyPI
wheels the host runs, installed offline), the configuration and the unit copied from
the wheel's data files in ``/opt/rmrrd/share/rmrrd``, the page's own drop-in for a
virtualenv, then ``systemctl enable rmrrd``.  Nothing of the test is in rmrrd's way:
the testbed's command agent runs as ``testbed-agent.service``, so the host's hands work
as on the other machines.

The whole root is dom0's initramfs (no disk, so no driver to load for one), with the
testbed kernel's Xen and virtio modules.  The debootstrap tree is cached in the
testbed cache's ``systemd/`` (keyed by the package list and the mirror); each session
copies it, installs this checkout's rmrrd and packs it (about half a minute).
Building needs root (debootstrap, chroot).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

from xen import packages
from xen.image import HERE, Cpio
from xen.packages import REPO, SetupError, run_tool

PACKAGES = ("systemd", "systemd-sysv", "udev", "kmod", "procps", "python3", "python3-venv",
            "xen-utils-4.17", "xen-utils-common", "xenstore-utils")
"""What the root has beyond debootstrap's minbase: systemd as init, Debian's Xen tools
and init scripts, Python with venv for rmrrd."""
MIRROR_ENV = "RMRRD_DEBIAN_MIRROR"
MIRROR = "http://deb.debian.org/debian"
KERNEL_DRIVERS = ("xen", "virtio", "char")
"""Module folders of the testbed's kernel copied in: xenfs and the Xen devices the init
script loads, and the virtio console the agent talks through (depmod resolves the rest)."""
MODULES_LOAD = ("virtio_pci", "virtio_console")
"""Loaded at boot for the agent's port; the Xen modules are the init script's business."""
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
"""A clean environment for commands in the root: nothing of the host's pip or Python."""
AGENT_UNIT = """\
[Unit]
Description=testbed command agent (tests/xen): the host's hands in this dom0
DefaultDependencies=no
After=systemd-modules-load.service

[Service]
ExecStart=/usr/bin/python3 /opt/testbed/agent.py
Restart=always
RestartSec=1

[Install]
WantedBy=sysinit.target
"""


def mirror() -> str:
    return os.environ.get(MIRROR_ENV) or MIRROR


def remove(tree: Path) -> None:
    """Delete ``tree``, unmounting first what an interrupted debootstrap left mounted in
    it (/proc, /sys, /dev/pts): deleting through those would reach the host's."""
    mounts = [line.split()[1].replace("\\040", " ") for line in Path("/proc/mounts").read_text().splitlines()]
    inside = sorted((point for point in mounts if Path(point).is_relative_to(tree)), key=len, reverse=True)
    for point in inside:
        run_tool(["umount", "--lazy", point])
    if tree.exists():
        shutil.rmtree(tree)


def fetch(cache: Path) -> tuple[Path, Path]:
    """The bookworm root and the dependencies' wheels, made once, in ``cache/systemd``
    under a lock of its own: the testbed's other downloads go on meanwhile."""
    if os.geteuid() != 0:
        raise SetupError("the systemd dom0 is built with debootstrap and chroot, which need root")
    home = cache / "systemd"
    with packages.locked(home):
        root, wheels = debootstrap_root(home), dependency_wheels(home)
        packages.prune(home, [root.parent, wheels])
    return root, wheels


def debootstrap_root(home: Path) -> Path:
    """The bookworm root with :data:`PACKAGES`: ``home/root-<key>/root``."""
    key = hashlib.sha256(" ".join([*PACKAGES, mirror()]).encode()).hexdigest()[:16]
    made = home / f"root-{key}"
    if (made / ".complete").exists():
        return made / "root"
    remove(made)
    partial = made / "root.partial"
    made.mkdir()
    run_tool(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", "bookworm", str(partial),
              mirror()], env=CHROOT_ENV, timeout=1200)
    run_tool(["chroot", str(partial), "apt-get", "clean"], env=CHROOT_ENV)
    for bulk in ("var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale"):
        shutil.rmtree(partial / bulk, ignore_errors=True)
    (partial / "etc/hostname").write_text("dom0\n")
    partial.rename(made / "root")
    (made / ".complete").touch()
    return made / "root"


def dependency_wheels(home: Path) -> Path:
    """rmrrd's dependencies as the PyPI wheels of the versions the host runs:
    ``home/wheels-<key>``."""
    requirements = packages.dom0_requirements(tools=())
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:16]
    downloaded = home / f"wheels-{key}"
    if not (downloaded / ".complete").exists():
        shutil.rmtree(downloaded, ignore_errors=True)
        run_tool([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                  "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
                  "--platform", "manylinux2014_x86_64", "-d", str(downloaded), *requirements])
        (downloaded / ".complete").touch()
    return downloaded


def rmrrd_wheels(dependencies: Path, work: Path) -> Path:
    """``work/wheels``: rmrrd's wheel built from the checkout, beside its dependencies'."""
    wheels = work / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    shutil.copytree(dependencies, wheels, ignore=shutil.ignore_patterns(".complete"))
    source = work / "source"
    shutil.rmtree(source, ignore_errors=True)
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "__pycache__", "*.egg-info", "build", "dist"))
    run_tool([sys.executable, "-m", "pip", "--isolated", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
             timeout=600)
    shutil.rmtree(source)
    return wheels


def virtualenv_drop_in() -> str:
    """docs/operations.md's drop-in for rmrrd in a virtualenv, as the page gives it."""
    found: list[str] = re.findall(r"```ini\n(\[Service\]\n.*?)```", (REPO / "docs" / "operations.md").read_text(), re.S)
    if len(found) != 1:
        raise SetupError("docs/operations.md: expected one ```ini block, the virtualenv drop-in")
    return found[0]


def chroot(root: Path, *argv: str) -> str:
    return run_tool(["chroot", str(root), *argv], env=CHROOT_ENV, timeout=600)


def build(cache: Path, packages_root: Path, release: str, work: Path) -> Path:
    """This session's systemd dom0 as one initramfs: ``work/systemd-dom0.cpio``."""
    cached, dependencies = fetch(cache)
    wheels = rmrrd_wheels(dependencies, work)
    root = work / "systemd-root"
    shutil.rmtree(root, ignore_errors=True)
    run_tool(["cp", "-a", str(cached), str(root)])

    modules = root / "lib/modules" / release
    source = packages_root / "lib/modules" / release
    for folder in KERNEL_DRIVERS:
        shutil.copytree(source / "kernel/drivers" / folder, modules / "kernel/drivers" / folder)
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        shutil.copy2(source / name, modules / name)
    chroot(root, "depmod", release)
    (root / "etc/modules-load.d/testbed.conf").write_text("".join(name + "\n" for name in MODULES_LOAD))

    (root / "opt/testbed").mkdir(parents=True)
    shutil.copy2(HERE / "dom0" / "agent.py", root / "opt/testbed/agent.py")
    for name in ("testbed-wait", "testbed-xs-wait"):
        shutil.copy2(HERE / "dom0" / "bin" / name, root / "usr/local/bin" / name)
    (root / "etc/systemd/system/testbed-agent.service").write_text(AGENT_UNIT)

    # docs/operations.md, "Install", for a virtualenv.
    shutil.copytree(wheels, root / "tmp/wheels")
    (wheel,) = (path.name for path in wheels.glob("rmrrd-*.whl"))
    chroot(root, "python3", "-m", "venv", "/opt/rmrrd")
    chroot(root, "/opt/rmrrd/bin/pip", "install", "-q", "--disable-pip-version-check", "--no-index",
           "--find-links", "/tmp/wheels", f"/tmp/wheels/{wheel}")
    shutil.rmtree(root / "tmp/wheels")
    share = "/opt/rmrrd/share/rmrrd"
    chroot(root, "install", "-d", "-m", "0755", "/etc/rmrrd", "/etc/rmrrd/peers")
    chroot(root, "install", "-m", "0644", f"{share}/rmrrd.yaml", "/etc/rmrrd/rmrrd.yaml")
    chroot(root, "install", "-m", "0644", f"{share}/rmrrd.service", "/etc/systemd/system/rmrrd.service")
    (root / "etc/systemd/system/rmrrd.service.d").mkdir()
    (root / "etc/systemd/system/rmrrd.service.d/venv.conf").write_text(virtualenv_drop_in())
    run_tool(["systemctl", f"--root={root}", "enable", "rmrrd.service", "testbed-agent.service"])

    archive = work / "systemd-dom0.cpio"
    cpio = Cpio(archive, owners=True)
    cpio.add_tree(root)
    cpio.close()
    shutil.rmtree(root)
    return archive
