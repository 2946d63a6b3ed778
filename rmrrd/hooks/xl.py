"""``rmrrd-xl``: ``xl`` with a check first, for ``create``, ``pci-attach`` and ``migrate``.

Installed in place of ``xl`` (docs/toolstack.md), it is called with xl's own
arguments.  For ``xl create FILE [KEY=VALUE...]`` it predicts what stock xl and libxl
do with the configuration on this host (:mod:`rmrrd.hooks.stock`, no daemon needed)
and prints xl's own traps in the file as warnings (the ``rdm=`` policy bug among
them, docs/xl-config.md).  For ``xl pci-attach DOMAIN BDF`` it asks the running rmrrd for a
``hotplug`` check of the device, for ``xl migrate [OPTIONS] DOMAIN HOST`` for a
``migrate`` check to HOST (a peer's name or alias; ``user@`` is dropped, as ssh would
take it); then it runs the real xl with the same arguments:

* verdict ``ok``: xl runs;
* ``warn``: the reason on stderr, then xl runs;
* ``fail``: the reason on stderr and exit status 1, xl does not run; on a terminal it
  asks first.  ``rmrrd-xl --force ...`` (``--force`` before xl's arguments, removed
  from them) runs xl whatever the verdict;
* no check possible (rmrrd not running, a domain it has no layout for, an ``xl``
  option it cannot follow): a line on stderr, then xl runs.  A check that cannot be
  made never stands in the way.

Every other command goes straight to xl.  The real xl is ``$RMRRD_XL``, else
``/usr/sbin/xl``.
"""

from __future__ import annotations

import getopt
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rmrrd.errors import InputError

if TYPE_CHECKING:  # imported when a check is made: other xl commands go straight to xl
    from rmrrd.xenstore.blocking import BlockingXenstore

REAL_XL = "/usr/sbin/xl"
EXIT_REFUSED = 1
CHECK_TIMEOUT = 5.0
"""Seconds to wait for the daemon's verdict: long enough for a busy dom0, short enough
that a stuck daemon costs an operator little."""
XL_GLOBAL_OPTIONS = "+vftTN"
"""``xl``'s own options before the command (``tools/xl/xl.c``)."""
MIGRATE_OPTIONS = ("hFC:s:epD", ["debug", "live", "help"])
"""``xl migrate``'s options (``tools/xl/xl_migrate.c`` ``main_migrate``)."""
CREATE_OPTIONS = ("hAFVcdef:inpq", ["defconfig=", "dryrun", "ignore-global-affinity-masks", "quiet", "vncviewer",
                                    "vncviewer-autopass", "help"])
"""``xl create``'s options (``tools/xl/xl_vmcontrol.c`` ``main_create``)."""
CHECKED_COMMANDS = ("create", "pci-attach", "migrate")


_RANK = {"ok": 0, "warn": 1, "fail": 2}


class NotChecked(Exception):
    """The operation cannot be checked; the message says why, and xl runs anyway."""


def _domid(xs: BlockingXenstore, domain: str) -> int:
    """xl's ``find_domain``: a domain id, or a name looked up under ``/local/domain``."""
    from rmrrd.xenstore.wire import NoEntry

    if domain.isdecimal():
        return int(domain)
    for entry in xs.directory("/local/domain"):
        try:
            if xs.read(f"/local/domain/{entry}/name").decode("ascii", "replace") == domain:
                return int(entry)
        except NoEntry:
            continue
    raise NotChecked(f"no domain named {domain!r}")


def _requests(command: str, args: list[str]) -> tuple[str, list[tuple[str, tuple[str, ...], str | None]]]:
    """The domain xl is asked about and the (op, devices, target) checks to make."""
    if command == "pci-attach":
        opts, rest = getopt.gnu_getopt(args, "h", ["help"])
        if opts or len(rest) < 2:
            raise NotChecked("xl pci-attach usage not understood")
        from rmrrd.core.libxlu import xl_pci_spec

        bdfs, policy = xl_pci_spec(rest[1])
        policy_text = f",rdm_policy={policy}" if policy else ""
        return rest[0], [("hotplug", (f"{bdf}{policy_text}",), None) for bdf in bdfs]
    opts, rest = getopt.gnu_getopt(args, *MIGRATE_OPTIONS)
    if any(name in ("-h", "--help") for name, _ in opts) or len(rest) < 2:
        raise NotChecked("xl migrate usage not understood")
    if any(name == "-s" and value == "" for name, value in opts):
        raise NotChecked("with -s '' the host is a command, not a host")
    return rest[0], [("migrate", (), rest[1].rpartition("@")[2])]


def _config_text(args: list[str]) -> tuple[str, str]:
    """The xl.cfg ``xl create ARGS`` reads, and its name, as ``main_create`` assembles it.

    The configuration file comes first or as ``-f``/``--defconfig``; each ``KEY=VALUE``
    argument is a line appended to the file's text (``create_domain``'s ``extra_config``).
    """
    path = None
    if args and not args[0].startswith("-") and "=" not in args[0]:
        path, args = args[0], args[1:]
    opts, rest = getopt.gnu_getopt(args, *CREATE_OPTIONS)
    for name, value in opts:
        if name in ("-h", "--help"):
            raise NotChecked("xl create --help")
        if name in ("-f", "--defconfig"):
            path = value
    extra = "".join(f"{arg}\n" for arg in rest if "=" in arg)
    others = [arg for arg in rest if "=" not in arg]
    if path is None and others:
        path, others = others[0], others[1:]
    if path is None or others:
        raise NotChecked("xl create usage not understood")
    from rmrrd import inputs

    try:
        text = inputs.read_text(path, inputs.SMALL, "xl.cfg file")  # /dev/null too: xl reads it as empty
    except InputError as exc:
        raise NotChecked(str(exc)) from None
    return text + (f"\n{extra}\n" if extra else ""), path


def check_create(args: list[str]) -> tuple[str, str, list[str]]:
    """``xl create ARGS``: the verdict, its reason and xl's warnings about the file.

    Predicted without the daemon (:mod:`rmrrd.hooks.stock`).  Raises
    :class:`NotChecked` when it cannot be (a file xl itself would refuse included:
    xl then says why).
    """
    from rmrrd.hooks.stock import predict
    from rmrrd.core.libxl_domain import from_xl_config
    from rmrrd.core.xlcfg_file import parse_xl_config

    try:
        text, path = _config_text(args)
        cfg = parse_xl_config(text, path)
        name = cfg.string("name") or path
        prediction = from_xl_config(cfg)
        outcome, line = predict(prediction.domain, name)
    except (getopt.GetoptError, InputError) as exc:
        raise NotChecked(str(exc)) from None
    return outcome, line or "", prediction.warnings


def check(command: str, args: list[str], xenstore: str | None = None) -> tuple[str, str]:
    """The worst verdict of the checks ``xl COMMAND ARGS`` needs from the daemon, and its reason.

    Raises :class:`NotChecked` when it cannot be checked.
    """
    from rmrrd.app.check import ask
    from rmrrd.protocol import READY, STATUS_KEY, answer_path, format_request
    from rmrrd.xenstore.blocking import BlockingXenstore, XenstoreUnavailable

    try:
        domain, requests = _requests(command, args)
    except (getopt.GetoptError, InputError) as exc:
        raise NotChecked(str(exc)) from None
    try:
        with BlockingXenstore(xenstore, timeout=CHECK_TIMEOUT) as xs:
            if xs.read_text(STATUS_KEY) != READY:
                raise NotChecked("rmrrd is not running on this host")
            domid = _domid(xs, domain)
            if xs.read_text(f"{answer_path(domid)}/status") is None:
                raise NotChecked(f"rmrrd has no layout for domain {domid} "
                                 "(neither requested nor learned from libxl)")
            worst = ("ok", "")
            for op, devices, target in requests:
                _, result = ask(xs, format_request(op, domid, devices, target), CHECK_TIMEOUT)  # type: ignore[arg-type]
                if _RANK[result.verdict] > _RANK[worst[0]]:
                    worst = (result.verdict, result.reason)
            return worst
    except (XenstoreUnavailable, InputError) as exc:
        raise NotChecked(str(exc)) from None


def _confirm(reason: str) -> bool:
    """On a terminal, ask whether to run xl anyway."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    print(f"rmrrd: {reason}\nrmrrd: run xl anyway? [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def main(argv: Sequence[str] | None = None) -> int:
    """Check, then exec the real xl; returns only when xl is not run."""
    args = list(sys.argv[1:] if argv is None else argv)
    force = bool(args) and args[0] == "--force"
    if force:
        args = args[1:]
    real_xl = os.environ.get("RMRRD_XL") or REAL_XL
    try:
        _, rest = getopt.getopt(args, XL_GLOBAL_OPTIONS)
    except getopt.GetoptError:
        rest = []
    command = rest[0] if rest else ""
    if command in CHECKED_COMMANDS and not force:
        try:
            if command == "create":
                verdict, reason, warnings = check_create(rest[1:])
                for warning in warnings:
                    print(f"rmrrd: warning: {warning}", file=sys.stderr)
            else:
                verdict, reason = check(command, rest[1:])
        except NotChecked as exc:
            print(f"rmrrd: xl {command} not checked: {exc}", file=sys.stderr)
        else:
            if verdict == "warn":
                print(f"rmrrd: warning: {reason}", file=sys.stderr)
            elif verdict == "fail" and not _confirm(reason):
                print(f"rmrrd: refused: {reason} (rmrrd-xl --force ... runs xl anyway)", file=sys.stderr)
                return EXIT_REFUSED
    if os.path.realpath(real_xl) == os.path.realpath(sys.argv[0]):
        print(f"rmrrd: {real_xl} is this wrapper: set RMRRD_XL to the real xl", file=sys.stderr)
        return 2
    try:
        os.execv(real_xl, [real_xl, *args])
    except OSError as exc:
        print(f"rmrrd: cannot run {real_xl}: {exc.strerror or exc}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
