"""What the real-Xen testbed is made of: Debian 12's own packages, fetched once.

Everything that runs inside the emulated machine comes from Debian 12 (bookworm)
packages fetched with ``apt-get download`` (no installation on the host) and unpacked
with ``dpkg-deb``: Xen 4.17's hypervisor and tools, the kernel, busybox, Python 3.11
and, for HVM guests, Debian's ``qemu-system-xen`` and SeaBIOS.  rmrrd's own Python
dependencies come from PyPI (``pip install --target``), pinned to the versions the
host's virtualenv runs, so dom0 tests the same code as the fast tiers.

The cache (``$RMRRD_XEN_CACHE``, else ``.tools/xen-testbed/`` in the checkout) keeps
the downloads and their unpacked tree; a complete download is marked by a manifest,
so a second run fetches nothing.  A file lock makes concurrent sessions wait for one
another instead of racing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE_ENV = "RMRRD_XEN_CACHE"

XEN_PACKAGES = (
    "xen-hypervisor-4.17-amd64", "xen-utils-4.17", "xen-utils-common", "xenstore-utils",
    "libxenstore4", "libxencall1", "libxenevtchn1", "libxenforeignmemory1", "libxengnttab1",
    "libxenmisc4.17", "libxentoollog1", "libxenhypfs1", "libxendevicemodel1", "libxentoolcore1", "libyajl2",
)
"""Xen 4.17 as Debian 12 ships it: the hypervisor, xl and both xenstoreds, their libraries."""
HVM_PACKAGES = ("qemu-system-xen", "qemu-system-data", "seabios")
"""The device model and firmware an HVM guest needs (hvmloader is in xen-utils-4.17)."""
BASE_PACKAGES = ("busybox-static", "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib")
KERNEL_META = "linux-image-amd64"
"""Its one dependency names the kernel ABI of the current point release (read, not assumed)."""

DOM0_PYTHON_TOOLS = ("pytest", "pytest-trio")
"""Beyond rmrrd's own dependencies: dom0 runs the xenstore conformance module with pytest."""


class SetupError(RuntimeError):
    """A download or unpack step failed; the message carries the tool's output."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or REPO / ".tools" / "xen-testbed")


def prune(cache: Path, keep: list[Path]) -> None:
    """Remove what earlier package sets or image sources left in the cache (each
    unpacked tree and image is some hundreds of MB); the caller holds the lock."""
    kinds = {path.name.split("-", 1)[0] for path in keep}
    for path in cache.iterdir():
        if path.is_dir() and path.name.split("-", 1)[0] in kinds and path not in keep:
            shutil.rmtree(path)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold ``directory/.lock`` exclusively: one session fills the cache at a time."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run_tool(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
             timeout: float = 600) -> str:
    """Run a host tool; SetupError with its output if it fails."""
    try:
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"{' '.join(argv[:3])}...: {exc}") from None
    if done.returncode != 0:
        output = (done.stdout + done.stderr).decode(errors="replace")[-4000:]
        raise SetupError(f"{' '.join(argv[:6])} exited {done.returncode}:\n{output}")
    return done.stdout.decode(errors="replace")


def _apt_download(names: list[str], into: Path) -> None:
    """``apt-get download`` into ``into``; with no package lists yet, fetch them once."""
    argv = ["apt-get", "download", "-q", *names]
    try:
        run_tool(argv, cwd=into)
    except SetupError:
        run_tool(["apt-get", "update", "-q"])
        run_tool(argv, cwd=into)


def kernel_package(meta_deb: Path) -> str:
    """The versioned kernel package ``linux-image-amd64`` depends on."""
    depends = run_tool(["dpkg-deb", "-f", str(meta_deb), "Depends"])
    found = re.search(r"linux-image-(\d[^\s,()]*-amd64)\b", depends)
    if found is None:
        raise SetupError(f"{meta_deb.name}: no linux-image-<abi>-amd64 in Depends: {depends.strip()}")
    return f"linux-image-{found.group(1)}"


def download_debs(cache: Path) -> Path:
    """Every package the testbed needs, in ``cache/debs`` (fetched once)."""
    debs = cache / "debs"
    if (debs / "MANIFEST").exists():
        return debs
    partial = cache / "debs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _apt_download([*XEN_PACKAGES, *HVM_PACKAGES, *BASE_PACKAGES, KERNEL_META], partial)
    meta = next(partial.glob(f"{KERNEL_META}_*.deb"))
    _apt_download([kernel_package(meta)], partial)
    meta.unlink()  # a metapackage: nothing to unpack
    names = sorted(path.name for path in partial.glob("*.deb"))
    (partial / "MANIFEST").write_text("".join(name + "\n" for name in names))
    shutil.rmtree(debs, ignore_errors=True)
    partial.rename(debs)
    return debs


def manifest_key(debs: Path) -> str:
    return hashlib.sha256((debs / "MANIFEST").read_bytes()).hexdigest()[:16]


def unpack(cache: Path, debs: Path) -> Path:
    """The packages unpacked into one tree, ``cache/root-<manifest hash>``."""
    root = cache / f"root-{manifest_key(debs)}"
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    for deb in sorted(debs.glob("*.deb")):
        run_tool(["dpkg-deb", "-x", str(deb), str(root)])
    (root / ".complete").touch()
    return root


def dom0_requirements(tools: tuple[str, ...] = DOM0_PYTHON_TOOLS) -> list[str]:
    """rmrrd's dependencies and dom0's test ``tools`` with everything they pull in, each
    pinned to the version the host's virtualenv runs (markers evaluated for Linux
    CPython 3.11, extras left out)."""
    from packaging.requirements import Requirement  # pytest's own dependency

    environment = {"python_version": "3.11", "sys_platform": "linux", "os_name": "posix",
                   "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
    pending = [Requirement(text) for text in importlib.metadata.requires("rmrrd") or []]
    pending += [Requirement(name) for name in tools]
    pinned: dict[str, str] = {}
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = requirement.name.lower().replace("_", "-")
        if name in pinned:
            continue
        pinned[name] = importlib.metadata.version(name)
        pending += [Requirement(text) for text in importlib.metadata.requires(name) or []]
    return [f"{name}=={version}" for name, version in sorted(pinned.items())]


def python_site(cache: Path) -> Path:
    """rmrrd's Python dependencies for dom0's Python 3.11, as wheels unpacked in a tree."""
    requirements = dom0_requirements()
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:16]
    site = cache / f"site-{key}"
    if (site / ".complete").exists():
        return site
    shutil.rmtree(site, ignore_errors=True)
    run_tool([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(site),
              "--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux2014_x86_64",
              "--only-binary=:all:", "--no-deps", *requirements])
    (site / ".complete").touch()
    return site
