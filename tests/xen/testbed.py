"""The real-Xen testbed: Xen 4.17 with a Debian dom0 under QEMU, driven from the host.

Usage (pytest fixtures in ``tests/xen/conftest.py`` wrap this; docs/testing.md has
more)::

    testbed = Testbed(workdir)
    dom0 = testbed.boot(BootConfig(name="mine", xen_args=("rmrr=...",)))
    print(dom0.run("xl info").text)
    guest = dom0.create_guest("g1", kind="pvh")
    guest.wait_ready()
    guest.run("xenstore-read domid")
    testbed.close()

A machine is QEMU's q35 with software emulation (``-accel tcg``) and the CPU flags
Xen needs for HVM and PVH guests (``svm`` and nested paging).  dom0 starts only a
command agent; the host then brings up the toolstack as checked steps (xenstored,
``xen-init-dom0``, xenconsoled, ``xl info``), so a step that fails raises
``StepFailed`` with that step's own output.  Every command has a timeout, the
machine a lifetime, and QEMU dies with the process that started it (``PR_SET_PDEATHSIG``)
if nothing else stops it.
"""

from __future__ import annotations

import base64
import ctypes
import queue
import shlex
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import Future
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xen import image, packages, systemd_dom0
from xen.channel import Channel, ChannelClosed

QEMU = "qemu-system-x86_64"
PORT_NAME = "org.rmrrd.testbed"
XEN_ARGS = ("console=com1", "com1=115200,8n1", "loglvl=all", "guest_loglvl=all", "iommu=verbose",
            "noreboot", "console_timestamps=boot")
DOM0_ARGS = ("console=hvc0", "earlyprintk=xen", "rdinit=/init", "quiet", "loglevel=4")
SYSTEMD_DOM0_ARGS = ("rdinit=/sbin/init",)
"""A systemd dom0 (``BootConfig.systemd``): its initramfs is the whole root, systemd its init."""
SYSTEMD_UP_TIMEOUT = 480.0
"""From the agent's hello to ``systemctl is-system-running`` saying ``running``: under
emulation rmrrd alone takes half a minute to import and start."""
BOOT_TIMEOUT = 240.0
"""From QEMU's start to the agent's hello: Xen, the dom0 kernel and unpacking the initramfs."""
MACHINE_LIFETIME = 1800.0
"""A machine left running this long is killed: the bound on a session nobody ends."""


@dataclass(frozen=True)
class BootConfig:
    """One machine configuration; equal configurations share one boot per session.

    ``xenstored``: ``"xenstored"`` (C), ``"oxenstored"``, or None to start none (the
    harness's own failure test).  ``iommu``: QEMU's VT-d (``-device intel-iommu``), which
    Xen then drives; dom0 sees its DMAR table as ``RMAD``.  ``acpi_tables``: extra ACPI
    tables for the firmware (QEMU's ``-acpitable``); a DMAR needs ``iommu`` too, or Xen
    panics on the DMAR's register block.  ``xen_args`` are appended to Xen's command line
    (e.g. ``rmrr=...``), ``dom0_args`` to dom0's, ``qemu_args`` to QEMU's.  ``systemd``:
    dom0 is a Debian 12 system booted by systemd, with rmrrd installed from the wheel
    and enabled (``systemd_dom0.py``); Debian's ``xen.service`` starts xenstored (its
    choice: oxenstored), so ``xenstored`` is not used, and there is no warm Python.
    """

    name: str = "xenstored"
    xenstored: str | None = "xenstored"
    iommu: bool = True
    acpi_tables: tuple[Path, ...] = ()
    xen_args: tuple[str, ...] = ()
    dom0_args: tuple[str, ...] = ()
    qemu_args: tuple[str, ...] = ()
    hvm: bool = False
    systemd: bool = False
    memory_mib: int = 2048
    dom0_memory_mib: int = 1024
    cpus: int = 2


@dataclass(frozen=True)
class Result:
    """What one command in dom0 (or a guest) did."""

    command: str
    rc: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.timed_out and self.error is None

    @property
    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    def describe(self) -> str:
        """The command, how it ended and its output, for a failure message."""
        how = (self.error or (f"timed out after {self.seconds:.0f} s" if self.timed_out
                              else f"exited {self.rc} after {self.seconds:.1f} s"))
        lines = [f"$ {self.command}", f"  ({how})"]
        for name, data in (("stdout", self.stdout), ("stderr", self.stderr)):
            if data.strip():
                lines += [f"--- {name}", data.decode(errors="replace").rstrip()[-6000:]]
        return "\n".join(lines)


class CommandFailed(AssertionError):
    """A command that had to succeed did not; the message has its output."""

    def __init__(self, result: Result, what: str = "") -> None:
        super().__init__(f"{what + ': ' if what else ''}{result.describe()}")
        self.result = result


class StepFailed(RuntimeError):
    """A step of bringing a machine up failed; the message has the step's output."""


class BootFailed(RuntimeError):
    """The machine never came up to a working agent; the message has the console's tail."""


def _die_with_parent() -> None:
    """In QEMU's child process: be killed if the test process dies, however it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Launcher:
    """Starts QEMU from one thread that lives as long as the process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the
    process; boots run in short-lived threads, so they hand the fork to this one.
    """

    def __init__(self) -> None:
        self._requests: queue.Queue[tuple[Callable[[], subprocess.Popen[bytes]], Future[subprocess.Popen[bytes]]]]
        self._requests = queue.Queue()
        threading.Thread(target=self._serve, name="testbed-launcher", daemon=True).start()

    def _serve(self) -> None:
        while True:
            spawn, future = self._requests.get()
            try:
                future.set_result(spawn())
            except BaseException as exc:
                future.set_exception(exc)

    def spawn(self, spawn: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        future: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((spawn, future))
        return future.result()


_launcher = _Launcher()


class Machine:
    """One QEMU running Xen and dom0."""

    def __init__(self, config: BootConfig, images: Images, workdir: Path) -> None:
        self.config = config
        self.images = images
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)  # dom0's initramfs is written there first
        self.console = workdir / "console.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.channel: Channel | None = None
        self._watchdog: threading.Timer | None = None

    def qemu_argv(self, socket_path: Path, initrd: Path) -> list[str]:
        config = self.config
        xen_args = [*XEN_ARGS, f"dom0_mem={config.dom0_memory_mib}M,max:{config.dom0_memory_mib}M", *config.xen_args]
        dom0_args = [*DOM0_ARGS, *(SYSTEMD_DOM0_ARGS if config.systemd else ()), *config.dom0_args]
        argv = [QEMU, "-accel", "tcg", "-machine", "q35", "-cpu", "qemu64,+svm,+npt",
                "-smp", str(config.cpus), "-m", str(config.memory_mib),
                "-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot",
                "-serial", f"file:{self.console}",
                "-device", "virtio-serial-pci,id=testbed-serial",
                "-chardev", f"socket,id=testbed,path={socket_path}",
                "-device", f"virtserialport,bus=testbed-serial.0,chardev=testbed,name={PORT_NAME}",
                "-kernel", str(self.images.xen), "-append", " ".join(xen_args),
                "-initrd", f"{self.images.vmlinux} {' '.join(dom0_args)},{initrd}"]
        if config.iommu:
            argv += ["-device", "intel-iommu"]
        for table in config.acpi_tables:
            argv += ["-acpitable", f"file={table}"]
        return argv + list(config.qemu_args)

    def start(self, initrd: Path) -> Channel:
        """Start QEMU with dom0's ``initrd`` and wait for dom0's agent; BootFailed with the
        console if it does not come."""
        socket_path = self.workdir / "agent.sock"
        socket_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(socket_path))
        listener.listen(1)
        argv = self.qemu_argv(socket_path, initrd)
        (self.workdir / "qemu.argv").write_text(shlex.join(argv) + "\n")
        with open(self.workdir / "qemu.log", "wb") as log:
            self.process = _launcher.spawn(lambda: subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent))
        self._watchdog = threading.Timer(MACHINE_LIFETIME, self.stop)
        self._watchdog.daemon = True
        self._watchdog.start()
        deadline = time.monotonic() + BOOT_TIMEOUT
        try:
            listener.settimeout(1.0)
            while True:
                self._check_alive("before connecting the agent's port")
                try:
                    conn, _ = listener.accept()
                    break
                except socket.timeout:
                    if time.monotonic() > deadline:
                        raise self._failed("QEMU did not connect the agent's port") from None
        finally:
            listener.close()
        self.channel = Channel(conn)
        while not self.channel.wait_hello(1.0):
            self._check_alive("before dom0's agent started")
            if self.channel.closed is not None:
                raise self._failed(self.channel.closed)
            if time.monotonic() > deadline:
                raise self._failed(f"dom0's agent did not start within {BOOT_TIMEOUT:.0f} s")
        return self.channel

    def _check_alive(self, when: str) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise self._failed(f"QEMU exited with status {self.process.returncode} {when}")

    def _failed(self, why: str) -> BootFailed:
        qemu_log = (self.workdir / "qemu.log").read_text(errors="replace")[-2000:]
        return BootFailed(f"{self.config.name}: {why}\n--- QEMU\n{qemu_log}\n--- console (last lines)\n"
                          f"{self.console_tail()}")

    def console_tail(self, lines: int = 60) -> str:
        try:
            text = self.console.read_bytes().decode(errors="replace")
        except OSError:
            return "(no console output)"
        return "\n".join(text.replace("\r", "").splitlines()[-lines:])

    def stop(self) -> None:
        """Kill QEMU (nothing in the machine needs a clean shutdown) and wait for it."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.channel is not None:
            self.channel.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass(frozen=True)
class Images:
    """What a machine boots: Xen, the kernel (dom0's and the guests') and the parts of
    dom0's initramfs (``image.py``)."""

    xen: Path
    vmlinux: Path
    base: Path
    hvm: Path
    overlay: Path

    def initrd(self, config: BootConfig, into: Path) -> Path:
        parts = [self.base, *([self.hvm] if config.hvm else []), self.overlay]
        return image.dom0_initramfs(parts, into)


@dataclass(frozen=True)
class Step:
    name: str
    command: str
    timeout: float = 60.0


def bring_up_steps(config: BootConfig) -> list[Step]:
    """The toolstack's start in dom0, in order, as the host runs it."""
    if config.systemd:
        # systemd starts everything; "running" means no unit failed on the way.
        return [Step("systemd reaches multi-user with no unit failed",
                     "state=$(systemctl is-system-running --wait); echo $state; systemctl --failed --no-pager;"
                     " [ $state = running ]", timeout=SYSTEMD_UP_TIMEOUT)]
    steps = []
    if config.xenstored == "xenstored":
        steps.append(Step("start C xenstored", "xenstored --pid-file /run/xenstored.pid"))
    elif config.xenstored == "oxenstored":
        steps.append(Step("start oxenstored", "oxenstored --pid-file /run/xenstored.pid"))
    elif config.xenstored is not None:
        raise ValueError(f"unknown xenstored {config.xenstored!r}")
    return steps + [
        Step("xenstored answers", "testbed-xenstored-ready 30", timeout=45),
        Step("xen-init-dom0", "xen-init-dom0"),
        Step("start xenconsoled", "xenconsoled --pid-file=/run/xenconsoled.pid"),
        Step("xl info", "xl info"),
        Step("warm Python", "testbed-python-ready 240", timeout=250),
    ]


class Dom0:
    """Commands in a running machine's dom0, and the guests it creates."""

    def __init__(self, machine: Machine, channel: Channel) -> None:
        self.machine = machine
        self.config = machine.config
        self._channel = channel
        self._guest_lock = threading.Lock()

    def run(self, command: str | Sequence[str], *, timeout: float = 60.0, input: bytes | str | None = None,
            env: Mapping[str, str] | None = None, cwd: str | None = None, check: bool = True) -> Result:
        """Run a shell command line (a string) or an argv (a sequence) in dom0.

        ``check``: raise CommandFailed (an AssertionError, with the output) unless it
        exits 0.  The command is killed, with its process group, after ``timeout`` s.
        A command that leaves a process in the background must redirect that process's
        output, or the command lasts as long as it does.
        """
        request: dict[str, object]
        if isinstance(command, str):
            request, shown = {"sh": command}, command
        else:
            request, shown = {"argv": list(command)}, shlex.join(command)
        return self._call(request, shown, timeout=timeout, input=input, env=env, cwd=cwd, check=check)

    def _call(self, request: dict[str, object], shown: str, *, timeout: float, input: bytes | str | None,
              env: Mapping[str, str] | None, cwd: str | None, check: bool) -> Result:
        request = {**request, "timeout": timeout, "env": dict(env or {}), "cwd": cwd}
        if input is not None:
            request["stdin"] = base64.b64encode(input.encode() if isinstance(input, str) else input).decode()
        try:
            reply = self._channel.call(request, timeout + 30)
        except (ChannelClosed, TimeoutError) as exc:
            raise CommandFailed(Result(shown, None, b"", b"", error=f"{exc}\n--- console (last lines)\n"
                                       f"{self.machine.console_tail()}")) from None
        result = Result(shown, reply["rc"], base64.b64decode(reply["stdout"]), base64.b64decode(reply["stderr"]),
                        reply["timed_out"], reply.get("seconds", 0.0), reply["error"])
        if check and not result.ok:
            raise CommandFailed(result)
        return result

    def python(self, args: Sequence[str], *, timeout: float = 60.0, input: bytes | str | None = None,
               env: Mapping[str, str] | None = None, cwd: str = "/opt/rmrrd", output: str | None = None,
               check: bool = True) -> Result:
        """Run ``python3 ARGS`` in dom0 as a fork of its warm interpreter (``dom0/pyzygote.py``):
        the same program, without the ten seconds an import of trio takes there.
        ``output``: a dom0 file that gets stdout and stderr (appended), for a daemon
        whose log a test reads while it runs."""
        request: dict[str, object] = {"python": list(args), "output": output}
        return self._call(request, "python3 " + shlex.join(args), timeout=timeout, input=input, env=env, cwd=cwd,
                          check=check)

    def rmrrd(self, *args: str, timeout: float = 60.0, output: str | None = None, check: bool = True) -> Result:
        """``rmrrd ARGS`` (``python3 -m rmrrd``) with the checkout's rmrrd."""
        return self.python(["-m", "rmrrd", *args], timeout=timeout, output=output, check=check)

    def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        self.run(["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"', "-", path,
                  f"{mode:o}"], input=data)

    def xs_read(self, path: str) -> str | None:
        """A xenstore value (dom0's view), or None when the node does not exist."""
        result = self.run(["xenstore-read", path], check=False)
        return result.text.removesuffix("\n") if result.ok else None

    def xs_wait(self, path: str, value: str | None = None, timeout: float = 30.0) -> str:
        """Wait until ``path`` exists (and holds ``value``); its value."""
        argv = ["testbed-xs-wait", str(int(timeout)), path] + ([value] if value is not None else [])
        return self.run(argv, timeout=timeout + 10).text.removesuffix("\n")

    def xs_ls(self, path: str) -> dict[str, str]:
        """Every node under ``path`` with its value, by path relative to ``path``
        (``xenstore-ls -f``; values as it prints them, unquoted)."""
        tree = {}
        for line in self.run(["xenstore-ls", "-f", path]).text.splitlines():
            node, _, value = line.partition(" = ")
            tree[node.removeprefix(path).lstrip("/")] = value.removeprefix('"').removesuffix('"')
        return tree

    def wait_until(self, condition: str, timeout: float = 30.0) -> None:
        """Wait until a shell condition holds in dom0 (``dom0/bin/testbed-wait``)."""
        self.run(["testbed-wait", str(int(timeout)), condition], timeout=timeout + 10)

    def create_guest(self, name: str, *, kind: str = "pv", memory_mib: int = 128, paused: bool = False,
                     config: Sequence[str] = (), timeout: float = 120.0) -> Guest:
        """``xl create`` a guest of the test guest image (``dom0/bin/testbed-guest-create``);
        returns once xl does, the guest booting (or paused).  ``kind``: ``pv``, ``pvh`` or
        ``hvm``, or ``hvm-firmware`` (no kernel: hvmloader and SeaBIOS alone); ``config``: more
        xl.cfg lines (``'rdm = "strategy=host"'``), which win over the script's own."""
        result = self.run(["testbed-guest-create", name, kind, str(memory_mib), "paused" if paused else "running",
                           *config], timeout=timeout)
        return Guest(self, name, int(result.text))

    def next_domid(self) -> int:
        """The domid the next ``xl create`` will get.

        Xen gives domids in turn (``XEN_DOMCTL_createdomain``'s ``rover`` in
        xen/common/domctl.c), never the most recent again until the range wraps, so the
        next one is one more than that of a domain created and destroyed now.
        """
        with self._guest_lock:
            probe = self.create_guest("testbed-domid-probe", paused=True)
            probe.destroy()
        return probe.domid + 1


@dataclass
class Guest:
    """A domain created by ``Dom0.create_guest``; commands run inside it through xenstore."""

    dom0: Dom0
    name: str
    domid: int
    _commands: int = field(default=0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def home(self) -> str:
        return f"/local/domain/{self.domid}"

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Wait until the guest's /init runs (it writes ``data/testbed/ready``)."""
        try:
            self.dom0.xs_wait(f"{self.home}/data/testbed/ready", timeout=timeout)
        except CommandFailed as exc:
            console = self.dom0.run("xl list; xl dmesg | tail -20", check=False).text
            raise StepFailed(f"guest {self.name} (domain {self.domid}) not ready within {timeout:.0f} s\n"
                             f"{exc}\n--- xl list, xl dmesg\n{console}") from None

    def run(self, script: str, *, timeout: float = 60.0, check: bool = True) -> Result:
        """Run a shell script in the guest: its status and output (stdout and stderr
        together, cut at 3000 bytes, trailing newlines dropped)."""
        with self._lock:
            number = self._commands
            self._commands += 1
        result = self.dom0.run(["testbed-guest-run", str(self.domid), str(number), str(int(timeout)), script],
                               timeout=timeout + 10, check=False)
        result = Result(f"[guest {self.name}] {script}", result.rc, result.stdout, result.stderr,
                        result.timed_out, result.seconds, result.error)
        if check and not result.ok:
            raise CommandFailed(result)
        return result

    def destroy(self) -> None:
        self.dom0.run(["xl", "destroy", self.name])


class Testbed:
    """Images built once, machines booted once per configuration, all stopped by ``close``.

    ``start`` boots configurations in the background (one thread each), so machines
    come up while tests run on another; ``boot`` waits for one.  A configuration whose
    boot failed fails again, with the same message, for every later caller.
    """

    __test__ = False  # a name pytest would otherwise try to collect

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._images: Images | None = None
        self._machines: list[Machine] = []
        self._boots: dict[BootConfig, Future[Dom0]] = {}
        self._lock = threading.Lock()
        self._images_lock = threading.Lock()
        self._systemd_lock = threading.Lock()
        self._systemd_initrd: Path | None = None

    def images(self) -> Images:
        """Download, unpack and build everything a machine boots (cached across sessions)."""
        with self._images_lock:
            if self._images is None:
                cache = packages.cache_dir()
                with packages.locked(cache):
                    debs = packages.download_debs(cache)
                    root = packages.unpack(cache, debs)
                    site = packages.python_site(cache)
                    parts = image.build_base(cache, root, site)
                    packages.prune(cache, [root, site, parts["base"].parent])
                overlay = image.build_overlay(self.workdir, root)
                self._images = Images(parts["xen"], parts["vmlinux"], parts["base"], parts["hvm"], overlay)
            return self._images

    def systemd_initrd(self) -> Path:
        """The systemd dom0's initramfs (``systemd_dom0.py``), built once per session
        (minutes the first time: a lock of its own, so other machines boot meanwhile)."""
        with self._systemd_lock:
            if self._systemd_initrd is None:
                cache = packages.cache_dir()
                root = packages.unpack(cache, packages.download_debs(cache))
                self._systemd_initrd = systemd_dom0.build(cache, root, image.kernel_release(root),
                                                          self.workdir / "systemd")
            return self._systemd_initrd

    def start(self, config: BootConfig) -> Future[Dom0]:
        """Boot ``config`` in the background unless it is booting or booted already."""
        with self._lock:
            future = self._boots.get(config)
            if future is None:
                future = self._boots[config] = Future()
                threading.Thread(target=self._boot, args=(config, future), name=f"boot-{config.name}",
                                 daemon=True).start()
            return future

    def boot(self, config: BootConfig) -> Dom0:
        """The running dom0 of ``config``; raises BootFailed or StepFailed if it did not come up."""
        return self.start(config).result()

    def _boot(self, config: BootConfig, future: Future[Dom0]) -> None:
        machine: Machine | None = None
        try:
            if config.systemd:  # its own downloads, side by side with the shared images'
                systemd_dom0.fetch(packages.cache_dir())
            images = self.images()
            machine = Machine(config, images, self.workdir / f"machine-{config.name}")
            initrd = (self.systemd_initrd() if config.systemd
                      else images.initrd(config, machine.workdir / "dom0.cpio"))
            with self._lock:
                self._machines.append(machine)
            dom0 = Dom0(machine, machine.start(initrd))
            for step in bring_up_steps(config):
                result = dom0.run(step.command, timeout=step.timeout, check=False)
                if not result.ok:
                    raise StepFailed(f"{config.name}: step '{step.name}' failed\n{result.describe()}")
        except BaseException as exc:
            if machine is not None:
                machine.stop()  # a machine that failed to come up serves nobody
            future.set_exception(exc)
        else:
            future.set_result(dom0)

    def close(self) -> None:
        with self._lock:
            machines, self._machines = self._machines, []
        for machine in machines:
            machine.stop()
