"""The daemon's configuration file (docs/configuration.md): parsed strictly, all at once.

The file is YAML, but it is read as a node tree (``yaml.compose``) rather than
``yaml.safe_load``'s plain dicts, because only the nodes remember their line: every
problem is reported as ``FILE:LINE: KEY: what was wrong``.  Unknown keys are errors
(a misspelt ``limts:`` must not silently leave the defaults in force), and every
problem in the file is collected into one :class:`ConfigError`, so an operator fixes
the file in one pass.

The result is a tree of frozen dataclasses: SIGHUP builds a whole new :class:`Config`
and swaps it in, or keeps the old one if the new file is invalid.  Parsing does no
I/O except :func:`load_config` reading the file; paths are not checked for
existence here (the inventory loaders report missing files with their own context).

Defaults follow Xen where Xen has one (xl.cfg(5): ``rdm=`` has no strategy and
``policy=relaxed``, ``rdm_mem_boundary`` is 2048 MiB, ``mmio_hole`` 256 MiB; the
SeaBIOS upstream Xen builds is 128 KiB) and are listed with every key in
``etc/rmrrd.yaml`` and ``docs/configuration.md``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor

from rmrrd import inputs
from rmrrd.errors import InputError
from rmrrd.core.guest_layout import MMIO_HOLE_MAX_MIB, MMIO_HOLE_MIN_MIB, check_seabios_size
from rmrrd.core.inventory import HOST_NAME_RE
from rmrrd.edges.logs import LEVELS
from rmrrd.edges.runtime_paths import own_xenstored_socket
from rmrrd.core.xlcfg import parse_rdm

DEFAULT_CONFIG_PATH = Path("/etc/rmrrd/rmrrd.yaml")
DEFAULT_XENSTORED_SOCKET = Path("/run/xenstored/socket")
#: Outside the 9100-9999 range Prometheus allocates to exporters, so rmrrd cannot
#: collide with any exporter an operator already runs on the same dom0.
DEFAULT_METRICS_PORT = 8407

HostSource = Union[Literal["dmar", "ivrs"], Path]
#: A peer is a path (a directory of ``*.yaml`` files, or one file) or an ``http://`` URL.
PeerSource = Union[Path, str]


class ConfigError(InputError):
    """An invalid configuration file; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class XenstoreConfig:
    path: Path
    embedded: bool = False
    #: File the embedded xenstored keeps its tree in, so it survives a restart.
    persist: Path | None = None


@dataclass(frozen=True)
class HostConfig:
    name: str
    sources: tuple[HostSource, ...] = ("dmar", "ivrs")
    #: Root under which ``sys/firmware/acpi/tables`` and ``sys/bus/pci`` are read.
    sysfs_root: Path = Path("/")
    libxl_dir: Path = Path("/var/lib/xen")
    #: Other names of this host (as ``xl migrate`` or libvirt name it), served in
    #: ``/inventory`` so that peers accept them as migration targets.
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class DefaultsConfig:
    rdm: str = "policy=relaxed"
    rdm_mem_boundary: int = 2048
    mmio_hole: int = 256
    #: KiB of the SeaBIOS image hvmloader loads below 1 MiB (upstream 128, Debian 256).
    seabios_size: int = 128


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_METRICS_PORT

    @property
    def listen(self) -> str:
        """The ``address:port`` form the file uses (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class LimitsConfig:
    #: Guest queries per second per domain (token bucket refill rate).
    query_rate: int = 20
    #: Queries a domain may send at once before the rate applies.
    query_burst: int = 40
    #: Outstanding ``alloc`` results per domain.
    max_allocations: int = 64
    #: Toolstack results kept under ``/tool/rmrrd/result/``, oldest removed first.
    results_kept: int = 256
    #: Longest guest query accepted, in bytes.
    max_query_length: int = 256
    #: How long SIGTERM waits for in-flight answers before exiting.
    shutdown_grace_seconds: float = 5.0


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"


@dataclass(frozen=True)
class Config:
    xenstore: XenstoreConfig
    host: HostConfig
    peers: tuple[PeerSource, ...] = ()
    defaults: DefaultsConfig = field(default_factory=DefaultsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    #: The file this came from, or None for the built-in defaults.
    source: Path | None = None


def default_xenstore_path(environ: Mapping[str, str], *, embedded: bool = False) -> Path:
    """``xenstore.path`` when the file gives none.

    ``$XENSTORED_PATH`` when set (as libxenstore honours it); else, for the embedded
    simulated xenstored, a socket of rmrrd's own (:mod:`rmrrd.edges.runtime_paths`), so that
    it never lands on Xen's; else Xen's socket, to connect to.
    """
    value = environ.get("XENSTORED_PATH", "")
    if value:
        return Path(value)
    return own_xenstored_socket(environ) if embedded else DEFAULT_XENSTORED_SOCKET


def default_config(
    *, environ: Mapping[str, str] | None = None, hostname: str | None = None, embedded: bool = False
) -> Config:
    """Every key at its default: what ``run`` uses when no file is given."""
    return parse_config_text("", "<defaults>", environ=environ, hostname=hostname, embedded=embedded)


def load_config(
    path: Path, *, environ: Mapping[str, str] | None = None, hostname: str | None = None,
    embedded: bool = False,
) -> Config:
    """Read and parse ``path``; :class:`ConfigError` if it is unreadable or invalid
    (larger than :data:`rmrrd.inputs.SMALL`, not UTF-8, nested too deep, YAML aliases)."""
    try:
        text = inputs.read_text(path, inputs.SMALL, "configuration")
    except InputError as exc:
        raise ConfigError([str(exc)]) from None
    return parse_config_text(text, path, environ=environ, hostname=hostname, embedded=embedded)


def parse_config_text(
    text: str,
    source: Path | str,
    *,
    environ: Mapping[str, str] | None = None,
    hostname: str | None = None,
    embedded: bool = False,
) -> Config:
    """Parse configuration ``text`` read from ``source`` (a path, or a label).

    Relative paths in the file resolve against ``source``'s directory.  ``environ``
    and ``hostname`` supply the defaults of ``xenstore.path`` and ``host.name``
    (the process's own when None), so tests need not touch the environment.
    ``embedded`` is ``run --simulate``: ``xenstore.embedded`` true whatever the file
    says, with the default path that goes with it.
    Raises :class:`ConfigError` listing every problem found.
    """
    reader = _Reader(str(source), Path(source).parent)
    sections = reader.read(text)
    if reader.problems:
        raise ConfigError(reader.problems)
    env = os.environ if environ is None else environ
    xenstore = sections.get("xenstore", {})
    if embedded:
        xenstore["embedded"] = True
    xenstore.setdefault("path", default_xenstore_path(env, embedded=xenstore.get("embedded", False)))
    host = sections.get("host", {})
    host.setdefault("name", socket.gethostname() if hostname is None else hostname)
    return Config(
        xenstore=XenstoreConfig(**xenstore),
        host=HostConfig(**host),
        peers=sections.get("peers", {}).get("peers", ()),
        defaults=DefaultsConfig(**sections.get("defaults", {})),
        metrics=MetricsConfig(**sections.get("metrics", {})),
        limits=LimitsConfig(**sections.get("limits", {})),
        log=LogConfig(**sections.get("log", {})),
        source=Path(source) if isinstance(source, Path) else None,
    )


# --- Reading the node tree -------------------------------------------------------


class _Bad(Exception):
    """One problem with one value; ``node`` (when set) locates it better than the key."""

    def __init__(self, message: str, node: yaml.Node | None = None, key: str = "") -> None:
        super().__init__(message)
        self.node = node
        self.key = key


_Convert = Callable[["_Reader", yaml.Node], Any]


def _scalar(node: yaml.Node) -> Any:
    """The Python value of a scalar node, as ``safe_load`` would build it."""
    if not isinstance(node, yaml.ScalarNode):
        raise _Bad(f"expected a single value, got {_kind(node)}")
    try:
        return SafeConstructor().construct_object(node)
    except (yaml.YAMLError, ValueError):
        # An explicit tag safe_load refuses (!!python/object, ...), or one that does
        # not fit its value (!!int x): never constructed.
        raise _Bad(f"cannot read {node.value!r} as YAML tag {node.tag}") from None


def _kind(node: yaml.Node) -> str:
    """What a node is, for messages: a list, a mapping, or the scalar's value."""
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    return _describe(_scalar(node))


def _describe(value: Any) -> str:
    return "nothing" if value is None else repr(value)


def _boolean(_: _Reader, node: yaml.Node) -> bool:
    value = _scalar(node)
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {_describe(value)}")
    return value


def _int_between(low: int, high: int) -> _Convert:
    def convert(_: _Reader, node: yaml.Node) -> int:
        value = _scalar(node)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"expected a positive integer, got {_describe(value)}")
        if not low <= value <= high:
            raise _Bad(f"expected an integer from {low} to {high}, got {value}")
        return value

    return convert


def _seconds(_: _Reader, node: yaml.Node) -> float:
    value = _scalar(node)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"expected a number of seconds, got {_describe(value)}")
    if not 0 < value <= 300:
        raise _Bad(f"expected more than 0 and at most 300 seconds, got {value}")
    return float(value)


def _text(_: _Reader, node: yaml.Node) -> str:
    value = _scalar(node)
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"expected a non-empty string, got {_describe(value)}")
    return value


def _path(reader: _Reader, node: yaml.Node) -> Path:
    return reader.base_dir / _text(reader, node)


def _optional_path(reader: _Reader, node: yaml.Node) -> Path | None:
    if isinstance(node, yaml.ScalarNode) and _scalar(node) is None:
        return None
    return _path(reader, node)


def _host_source(reader: _Reader, node: yaml.Node) -> HostSource:
    value = _text(reader, node)
    if value == "dmar":
        return "dmar"
    if value == "ivrs":
        return "ivrs"
    return reader.base_dir / value


def _peer(reader: _Reader, node: yaml.Node) -> PeerSource:
    value = _text(reader, node)
    if "://" not in value:
        return reader.base_dir / value
    url = urlsplit(value)
    # Peers serve plain HTTP on their metrics listener (docs/inventory.md); anything else
    # would be a URL rmrrd cannot fetch, better refused now than at the first SIGHUP.
    if url.scheme != "http" or not url.hostname:
        raise _Bad(f"expected a path or an http://HOST[:PORT] URL, got {value!r}")
    return value


def _rdm(reader: _Reader, node: yaml.Node) -> str:
    """An xl.cfg ``rdm=`` string, checked by the same parser the domains' strings get."""
    value = _text(reader, node)
    try:
        parse_rdm(value)
    except InputError as exc:
        raise _Bad(f"expected an xl.cfg rdm= string: {exc}") from None
    return value


def _seabios_size(reader: _Reader, node: yaml.Node) -> int:
    """KiB of SeaBIOS, checked as the planner checks it (page granular, at most 256)."""
    value: int = _int_between(1, 1 << 20)(reader, node)
    try:
        check_seabios_size(value, "size")
    except InputError as exc:
        raise _Bad(f"expected KiB of the SeaBIOS image: {exc}") from None
    return value


def _level(reader: _Reader, node: yaml.Node) -> str:
    value = _text(reader, node).lower()
    if value not in LEVELS:
        raise _Bad(f"expected one of {', '.join(LEVELS)}, got {value!r}")
    return value


def _host_name(reader: _Reader, node: yaml.Node) -> str:
    value = _text(reader, node)
    if HOST_NAME_RE.fullmatch(value) is None:
        raise _Bad(f"expected a host name (letters, digits, '.', '_', '-'), got {value!r}")
    return value


def _listen(reader: _Reader, node: yaml.Node) -> tuple[str, int]:
    """``ADDRESS:PORT`` with an IP literal (``[::1]:PORT`` for IPv6).

    A literal, not a host name: the daemon must not depend on DNS to start in dom0.
    """
    value = _text(reader, node)
    address, colon, port = value.rpartition(":")
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    try:
        ipaddress.ip_address(address)
        number = int(port) if colon and port.isdigit() else -1
    except ValueError:
        number = -1
    if not 1 <= number <= 65535:
        raise _Bad(f"expected ADDRESS:PORT with an IP address, e.g. 127.0.0.1:8407, got {value!r}")
    return address, number


def _list_of(item: _Convert, *, non_empty: bool) -> _Convert:
    def convert(reader: _Reader, node: yaml.Node) -> tuple[Any, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise _Bad(f"expected a list, got {_kind(node)}")
        if non_empty and not node.value:
            raise _Bad("expected at least one item")
        values = []
        for index, child in enumerate(node.value):
            try:
                values.append(item(reader, child))
            except _Bad as bad:
                raise _Bad(str(bad), child, f"[{index}]") from None
        return tuple(values)

    return convert


# Every key the file may hold, by section, with how its value is read.  A key's
# dataclass field has the same name (``metrics.listen`` fills two fields).
_SCHEMA: dict[str, dict[str, _Convert]] = {
    "xenstore": {"path": _path, "embedded": _boolean, "persist": _optional_path},
    "host": {
        "name": _text,
        "sources": _list_of(_host_source, non_empty=True),
        "sysfs_root": _path,
        "libxl_dir": _path,
        "aliases": _list_of(_host_name, non_empty=False),
    },
    "defaults": {
        "rdm": _rdm,
        # Nothing above 4 GiB is low memory, so a larger boundary would mean nothing.
        "rdm_mem_boundary": _int_between(1, 4096),
        # xl's own limits (tools/xl/xl_parse.c, see rmrrd.core.guest_layout).
        "mmio_hole": _int_between(MMIO_HOLE_MIN_MIB, MMIO_HOLE_MAX_MIB),
        "seabios_size": _seabios_size,
    },
    "metrics": {"listen": _listen},
    "limits": {
        "query_rate": _int_between(1, 10_000),
        "query_burst": _int_between(1, 100_000),
        "max_allocations": _int_between(1, 4096),
        "results_kept": _int_between(1, 100_000),
        # xenstore payloads are at most 4096 bytes (xs_wire.h XENSTORE_PAYLOAD_MAX).
        "max_query_length": _int_between(16, 4096),
        "shutdown_grace_seconds": _seconds,
    },
    "log": {"level": _level},
}
# ``peers`` is a list at the top level, not a section: kept as sections["peers"]["peers"].
_PEERS = _list_of(_peer, non_empty=False)


class _Reader:
    """Walks the composed node tree, collecting values and problems."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.problems: list[str] = []

    def problem(self, node: yaml.Node | None, key: str, message: str) -> None:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        where = f" {key}:" if key else ""
        self.problems.append(f"{self.source}{line}:{where} {message}")

    def read(self, text: str) -> dict[str, dict[str, Any]]:
        try:
            root = inputs.compose_yaml(text, self.source)
        except InputError as exc:
            self.problems.append(str(exc))
            return {}
        if root is None:
            return {}
        sections: dict[str, dict[str, Any]] = {}
        for name, value in self.mapping(root, ""):
            if name == "peers":
                self.convert(_PEERS, value, "peers", sections.setdefault("peers", {}), "peers")
            elif name in _SCHEMA:
                sections[name] = self.section(name, value)
            else:
                self.problem(value, name, f"unknown key (expected one of {_known(_SCHEMA, 'peers')})")
        return sections

    def mapping(self, node: yaml.Node, where: str) -> list[tuple[str, yaml.Node]]:
        """The (key, value node) pairs of a mapping; duplicates and odd keys are problems."""
        if where and isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return []  # "limits:" with nothing under it: all defaults
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, where, "expected a mapping of keys to values")
            return []
        pairs: list[tuple[str, yaml.Node]] = []
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            full = f"{where}.{key}" if where else str(key)
            if not isinstance(key, str):
                self.problem(key_node, where, "expected a plain key")
            elif key in seen:
                self.problem(key_node, full, "given twice")
            else:
                seen.add(key)
                pairs.append((key, value_node))
        return pairs

    def section(self, name: str, node: yaml.Node) -> dict[str, Any]:
        fields = _SCHEMA[name]
        values: dict[str, Any] = {}
        for key, value in self.mapping(node, name):
            convert = fields.get(key)
            if convert is None:
                self.problem(value, f"{name}.{key}", f"unknown key (expected one of {_known(fields)})")
            else:
                self.convert(convert, value, f"{name}.{key}", values, key)
        if "listen" in values:
            values["host"], values["port"] = values.pop("listen")
        return values

    def convert(
        self, convert: _Convert, node: yaml.Node, key: str, into: dict[str, Any], name: str
    ) -> None:
        try:
            into[name] = convert(self, node)
        except _Bad as bad:
            self.problem(bad.node or node, key + bad.key, str(bad))


def _known(names: Mapping[str, object], *extra: str) -> str:
    return ", ".join(sorted([*names, *extra]))
