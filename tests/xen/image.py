"""The boot images of the real-Xen testbed, built in Python from the unpacked packages.

Three artefacts, all made on the host:

* ``xen``: the hypervisor as an ELF (QEMU's multiboot loader cannot take the gzip);
* ``vmlinux``: the Debian kernel, taken out of its bzImage once.  An uncompressed
  ELF boots dom0 and every guest without an xz decompression under emulation (about
  4 s per kernel load);
* the dom0 initramfs, in cpio parts the kernel unpacks one after the other: the
  **base** (busybox, Xen's tools and libraries, Python 3.11 with rmrrd's
  dependencies, kernel modules, the guests' kernel and initramfs) and the **hvm**
  part (Debian's qemu-system-xen and its firmware, for configurations that run HVM
  guests), both cached since they change only with the packages; and the
  **overlay** (``/init``, the command agent, the helper scripts, and rmrrd and its
  tests copied from the checkout under test), built for every session.

Size is boot time: the kernel unpacks the initramfs at about 8 MB/s under emulation.
So the standard library and rmrrd's dependencies go in as pycs without sources, and Python modules are
compiled on the host with dom0's own interpreter: dom0 never compiles, and an import
there costs what loading a pyc costs.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import stat
import struct
import subprocess
from collections.abc import Iterable
from pathlib import Path

from xen.packages import REPO, SetupError, run_tool

HERE = Path(__file__).resolve().parent
MULTIARCH = "x86_64-linux-gnu"
XEN_BIN = "usr/lib/xen-4.17/bin"

DOM0_MODULES = ("xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xenfs", "xen-pciback", "virtio_pci",
               "virtio_console")
"""Xen's device drivers for the toolstack (pciback: ``xl pci-assignable-add``, so a guest
can be given a device), and virtio for the command channel."""
XEN_TOOLS = ("xenstored", "oxenstored", "xl", "xen-init-dom0", "xenconsoled", "xenconsole", "libxl-save-helper",
             "xenstore-control", "init-xenstore-domain", "lsevtchn", "xen-diag", "test-xenstore")
XENSTORE_UTILS = ("xenstore", "xenstore-chmod", "xenstore-exists", "xenstore-list", "xenstore-ls",
                  "xenstore-read", "xenstore-rm", "xenstore-watch", "xenstore-write")
STDLIB_LEFT_OUT = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
                   "distutils", "venv", "__pycache__")
HVM_FIRMWARE = ("usr/share/seabios/bios-256k.bin", "usr/share/seabios/vgabios-stdvga.bin",
                "usr/share/qemu/linuxboot.bin", "usr/share/qemu/linuxboot_dma.bin", "usr/share/qemu/kvmvapic.bin",
                "usr/share/qemu/keymaps")

IMAGE_SOURCES = (Path(__file__), HERE / "domu" / "init")
"""What the cached base is built from besides the packages: a change rebuilds it."""


# --- cpio (newc), the format the kernel unpacks as initramfs ---------------------------------

def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


class Cpio:
    """A newc archive written entry by entry (what ``cpio -H newc`` makes).

    Every entry belongs to root, unless ``owners``: then each keeps its owner and group
    (a whole Debian system, ``systemd_dom0.py``, has files of other users)."""

    def __init__(self, path: Path, *, owners: bool = False) -> None:
        self._file = open(path, "wb")
        self._ino = 0
        self._owners = owners

    def _entry(self, name: str, mode: int, data: bytes = b"", mtime: int = 0, *, uid: int = 0, gid: int = 0,
               rdev: int = 0) -> None:
        self._ino += 1
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, uid, gid, 1, mtime, len(data), 0, 0, os.major(rdev), os.minor(rdev),
                  len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self._file.write(header + encoded + _pad(len(header) + len(encoded)) + data + _pad(len(data)))

    def add_tree(self, root: Path) -> None:
        """Every file, directory, symlink and device node under ``root``, named relative to it."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in [*sorted(dirnames), *sorted(filenames)]:
                path = Path(dirpath, name)
                info = path.lstat()
                rel = str(path.relative_to(root))
                uid, gid = (info.st_uid, info.st_gid) if self._owners else (0, 0)
                if stat.S_ISLNK(info.st_mode):
                    self._entry(rel, info.st_mode, os.readlink(path).encode(), uid=uid, gid=gid)
                elif stat.S_ISDIR(info.st_mode):
                    self._entry(rel, info.st_mode, uid=uid, gid=gid)
                elif stat.S_ISREG(info.st_mode):
                    self._entry(rel, info.st_mode, path.read_bytes(), int(info.st_mtime), uid=uid, gid=gid)
                elif stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
                    self._entry(rel, info.st_mode, uid=uid, gid=gid, rdev=info.st_rdev)

    def close(self) -> None:
        self._entry("TRAILER!!!", 0)
        self._file.close()


# --- kernels ----------------------------------------------------------------------------------

def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF inside a bzImage (x86 boot protocol: ``payload_offset``/``payload_length``)."""
    setup_sects = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start:start + length]
    if payload.startswith(b"\xfd7zXZ\0"):
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    elif payload.startswith(b"\x1f\x8b"):
        elf = gzip.decompress(payload)
    else:
        raise SetupError(f"kernel payload compressed with an unknown method ({payload[:6].hex()})")
    if not elf.startswith(b"\x7fELF"):
        raise SetupError("the kernel payload is not an ELF image")
    return elf


def kernel_release(root: Path) -> str:
    modules = sorted(path.name for path in (root / "lib" / "modules").iterdir())
    if len(modules) != 1:
        raise SetupError(f"expected one kernel in the packages, found {modules}")
    return modules[0]


# --- staging helpers ----------------------------------------------------------------------------

class Stage:
    """A directory tree becoming one cpio part; files copied from the unpacked packages."""

    def __init__(self, path: Path, packages: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        self.path = path
        self.packages = packages

    def put(self, rel: str, data: bytes | str, mode: int = 0o644) -> Path:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        target.chmod(mode)
        return target

    def copy(self, source: Path, rel: str) -> Path:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        elif source.is_dir():
            shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
        return target

    def from_packages(self, *rels: str) -> list[Path]:
        return [self.copy(self.packages / rel, rel) for rel in rels]

    def mkdirs(self, *rels: str) -> None:
        for rel in rels:
            (self.path / rel).mkdir(parents=True, exist_ok=True)

    def busybox(self) -> None:
        """busybox with a link for every applet it has."""
        busybox = self.from_packages("bin/busybox")[0]
        self.mkdirs("sbin", "usr/bin", "usr/sbin")
        for applet in run_tool([str(busybox), "--list"]).split():
            link = self.path / "bin" / applet
            if not link.exists():
                link.symlink_to("busybox")

    def libraries(self, *files: Path, optional: bool = False) -> None:
        """Every shared library ``files`` need, from the packages first, else the host.

        A file whose library is nowhere to be found is an error, or with ``optional``
        (Python's extension modules) left out of the image.
        """
        search = [self.packages / "usr/lib" / MULTIARCH, self.packages / "lib" / MULTIARCH,
                  self.packages / "usr/lib/xen-4.17/lib" / MULTIARCH]
        env = dict(os.environ, LD_LIBRARY_PATH=":".join(map(str, search)))
        wanted: set[str] = set()
        for path in files:
            # ldd's status is 1 for a static file, which needs nothing: only its output counts.
            done = subprocess.run(["ldd", str(path)], env=env, capture_output=True, text=True, check=False)
            if "not found" in done.stdout:
                if not optional:
                    raise SetupError(f"{path.name}: missing libraries:\n{done.stdout}")
                path.unlink()
                continue
            for line in done.stdout.splitlines():
                words = line.split()
                target = words[words.index("=>") + 1:][:1] if "=>" in words else words[:1]
                if target and target[0].startswith("/"):
                    wanted.add(target[0])  # a library, or the dynamic loader itself
        for library in sorted(wanted):
            source = Path(library)
            rel = str(source.relative_to(self.packages) if source.is_relative_to(self.packages)
                      else source.relative_to("/"))
            if not (self.path / rel).exists():
                (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source.resolve(), self.path / rel)

    def modules(self, release: str, wanted: Iterable[str]) -> list[str]:
        """Copy ``wanted`` kernel modules and what they depend on; names in load order."""
        tree = self.packages / "lib" / "modules" / release
        paths = {path.name.removesuffix(".ko").replace("-", "_"): path for path in tree.rglob("*.ko")}
        builtin = {Path(line).name.removesuffix(".ko").replace("-", "_")
                   for line in (tree / "modules.builtin").read_text().split()}
        order: list[str] = []

        def add(name: str) -> None:
            name = name.replace("-", "_")
            if name in order or name in builtin:
                return
            if name not in paths:
                raise SetupError(f"kernel {release} has no module {name}")
            for field in paths[name].read_bytes().split(b"\0"):
                if field.startswith(b"depends="):
                    for dependency in filter(None, field[8:].decode().split(",")):
                        add(dependency)
            order.append(name)

        for name in wanted:
            add(name)
        for name in order:
            self.copy(paths[name], f"lib/modules/{name}.ko")
        return order

    def compile_python(self, interpreter_root: Path, *trees: str, sourceless: bool = False) -> None:
        """Compile every module under ``trees`` with dom0's Python (unchecked-hash pycs).

        ``sourceless``: the pycs go beside the sources, which are then removed (the
        standard library and the dependencies: their frames in a traceback lose the
        source line, the image 20 MB).
        """
        python = interpreter_root / "usr/bin/python3.11"
        env = dict(os.environ, PYTHONHOME=str(interpreter_root / "usr"), PYTHONDONTWRITEBYTECODE="")
        env.pop("PYTHONPATH", None)
        run_tool([str(python), "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
                  *(["-b"] if sourceless else []), "-s", str(self.path), "-p", "/",
                  *(str(self.path / tree) for tree in trees)], env=env)
        if sourceless:
            for tree in trees:
                for source in (self.path / tree).rglob("*.py"):
                    if source.with_suffix(".pyc").exists():
                        source.unlink()

    def drop(self, other: Path) -> None:
        """Remove files another stage already has (a later cpio part need not repeat them)."""
        for path in sorted(self.path.rglob("*"), reverse=True):
            twin = other / path.relative_to(self.path)
            if path.is_file() and not path.is_symlink() and twin.is_file():
                path.unlink()

    def archive(self, path: Path) -> Path:
        cpio = Cpio(path)
        cpio.add_tree(self.path)
        cpio.close()
        return path


# --- the images -----------------------------------------------------------------------------------

def _sources_key(*extra: str) -> str:
    digest = hashlib.sha256()
    for path in IMAGE_SOURCES:
        digest.update(path.read_bytes())
    for text in extra:
        digest.update(text.encode())
    return digest.hexdigest()[:16]


def _domu_initramfs(packages: Path, work: Path) -> Path:
    """The guests' initramfs: busybox, the xenstore tools and the command loop of /init."""
    stage = Stage(work / "domu", packages)
    stage.busybox()
    stage.mkdirs("proc", "sys", "dev", "run", "tmp")
    stage.copy(HERE / "domu" / "init", "init")
    tools = stage.from_packages(*(f"usr/bin/{name}" for name in XENSTORE_UTILS))
    stage.libraries(*tools)
    return stage.archive(work / "domu.cpio")


def build_base(cache: Path, packages: Path, site: Path) -> dict[str, Path]:
    """The cached parts: ``xen``, ``vmlinux``, ``base`` and ``hvm`` (built once per input).

    The caller holds the cache lock.
    """
    out = cache / f"image-{_sources_key(packages.name, site.name)}"
    parts = {"xen": out / "xen", "vmlinux": out / "vmlinux", "base": out / "base.cpio", "hvm": out / "hvm.cpio"}
    if (out / ".complete").exists():
        return parts
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    release = kernel_release(packages)
    parts["xen"].write_bytes(gzip.decompress((packages / "boot/xen-4.17-amd64.gz").read_bytes()))
    parts["vmlinux"].write_bytes(extract_vmlinux((packages / f"boot/vmlinuz-{release}").read_bytes()))
    base = Stage(out / "base", packages)
    _fill_base(base, packages, site, release)
    base.copy(_domu_initramfs(packages, out), "var/lib/testbed/domu.cpio")
    base.copy(parts["vmlinux"], "var/lib/testbed/vmlinux")
    base.archive(parts["base"])
    hvm = Stage(out / "hvm", packages)
    # QEMU loads an HVM guest's kernel itself, and only from a bzImage.
    hvm.copy(packages / f"boot/vmlinuz-{release}", "var/lib/testbed/vmlinuz")
    model = hvm.from_packages("usr/libexec/xen-qemu-system-i386")
    hvm.from_packages(*HVM_FIRMWARE)
    hvm.libraries(*model)
    hvm.drop(base.path)
    hvm.archive(parts["hvm"])
    for stage in (base, hvm):
        shutil.rmtree(stage.path)
    shutil.rmtree(out / "domu")
    (out / "domu.cpio").unlink()
    (out / ".complete").touch()
    return parts


def _fill_base(stage: Stage, packages: Path, site: Path, release: str) -> None:
    stage.busybox()
    stage.mkdirs("proc", "sys", "dev", "run", "tmp", "root", "etc/rmrrd", "var/lib/xenstored", "var/lib/xen",
                 "var/log/xen", "var/lib/testbed", "usr/local/bin")
    (stage.path / "var/run").symlink_to("../run")
    stage.put("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    stage.put("etc/group", "root:x:0:\n")
    stage.put("etc/hosts", "127.0.0.1 localhost dom0\n")
    stage.put("etc/hostname", "dom0\n")
    stage.from_packages("etc/xen")
    order = stage.modules(release, DOM0_MODULES)
    stage.put("etc/testbed/modules", "".join(name + "\n" for name in order))
    # Xen: the tools (the binaries themselves, not Debian's wrapper), libraries, hvmloader.
    tools = stage.from_packages(*(f"{XEN_BIN}/{name}" for name in XEN_TOOLS))
    tools += stage.from_packages(*(f"usr/bin/{name}" for name in XENSTORE_UTILS))
    stage.from_packages("usr/lib/xen-4.17/boot/hvmloader")
    stage.libraries(*tools)
    # xl loads libgcc_s at run time (pthread_cancel), so ldd does not list it.
    stage.copy(Path(f"/lib/{MULTIARCH}/libgcc_s.so.1").resolve(), f"lib/{MULTIARCH}/libgcc_s.so.1")
    # Python 3.11: the interpreter, the standard library less what tests never use, and
    # only the extension modules whose libraries are there.
    python = stage.from_packages("usr/bin/python3.11")[0]
    (stage.path / "usr/bin/python3").symlink_to("python3.11")
    for entry in (packages / "usr/lib/python3.11").iterdir():
        if entry.name not in STDLIB_LEFT_OUT and not entry.name.startswith("config-"):
            stage.copy(entry, f"usr/lib/python3.11/{entry.name}")
    stage.libraries(python)
    stage.libraries(*sorted((stage.path / "usr/lib/python3.11/lib-dynload").glob("*.so")), optional=True)
    shutil.copytree(site, stage.path / "opt/site", ignore=shutil.ignore_patterns(".complete", "__pycache__"))
    stage.libraries(*sorted((stage.path / "opt/site").rglob("*.so")))
    stage.compile_python(packages, "usr/lib/python3.11", "opt/site", sourceless=True)


def build_overlay(work: Path, packages: Path) -> Path:
    """This session's part: /init, the agent and helpers, rmrrd and tests from the checkout."""
    stage = Stage(work / "overlay", packages)
    stage.copy(HERE / "dom0" / "init", "init")
    for program in ("agent.py", "pyzygote.py"):
        stage.copy(HERE / "dom0" / program, f"opt/testbed/{program}")
    for script in sorted((HERE / "dom0" / "bin").iterdir()):
        stage.copy(script, f"usr/local/bin/{script.name}")
    stage.put("usr/local/bin/rmrrd", '#!/bin/sh\nexec python3 -m rmrrd "$@"\n', 0o755)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    shutil.copytree(REPO / "rmrrd", stage.path / "opt/rmrrd/rmrrd", ignore=ignore)
    shutil.copytree(REPO / "etc", stage.path / "opt/rmrrd/etc", ignore=ignore)
    shutil.copytree(REPO / "tests", stage.path / "opt/rmrrd/tests",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "xen", "data", ".hypothesis"))
    stage.copy(REPO / "pyproject.toml", "opt/rmrrd/pyproject.toml")
    stage.compile_python(packages, "opt/rmrrd", "opt/testbed")
    archive = stage.archive(work / "overlay.cpio")
    shutil.rmtree(stage.path)
    return archive


def dom0_initramfs(parts: list[Path], into: Path) -> Path:
    """The parts as one file: the kernel unpacks concatenated cpio archives in turn."""
    with open(into, "wb") as out:
        for part in parts:
            with open(part, "rb") as source:
                shutil.copyfileobj(source, out, 1 << 20)
    return into
