"""Files and documents handed to rmrrd, read within bounds.

Every file rmrrd reads (the configuration, inventories, peers' files and answers,
firmware tables, xl.cfg and libvirt XML, the simulated xenstored's tree) comes
through here, so each is refused the same way when it is not what it should be:
larger than its cap (``/dev/zero`` as a configuration used to read until memory ran
out), nested deeper than anyone writes (a parser's recursion used to end in
RecursionError), or YAML with aliases (``*name``; an alias of an alias of a list
expands exponentially, the "billion laughs").  Each refusal is one
:class:`~rmrrd.errors.InputError` whose message starts with the file's name, so a
daemon's reload keeps its old state and logs one line, and a command exits 2.

The caps are far above any real file and far below what would hurt a dom0: they
say "this is not an input", not "this input is large".
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from rmrrd.errors import InputError

if TYPE_CHECKING:  # yaml is imported only where YAML is read: the short commands need none
    import yaml

MAX_DEPTH = 64
"""Deepest nesting of lists and mappings accepted in any YAML or JSON document
(rmrrd's own formats nest four levels at most)."""
SMALL = 1024 * 1024
"""Cap of files an operator writes: the configuration, an xl.cfg, a domain's XML."""
INVENTORY = 16 * 1024 * 1024
"""Cap of an inventory file or a peer's answer (hundreds of thousands of regions)."""
TABLE = 16 * 1024 * 1024
"""Cap of an ACPI table (real DMAR and IVRS tables are kilobytes)."""
STORE = 256 * 1024 * 1024
"""Cap of the simulated xenstored's tree and journal files."""


def read_bytes(path: str | os.PathLike[str], limit: int, what: str) -> bytes:
    """The bytes of ``path``, at most ``limit`` of them.

    Reads one byte past the cap rather than trusting the size the file system
    reports (``/dev/zero`` and sysfs files say 0), so nothing larger is ever
    held.  Raises InputError naming the file and ``what`` it should have been.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise InputError(f"{os.fspath(path)}: cannot read the {what}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InputError(f"{os.fspath(path)}: larger than {limit} bytes: not a {what}")
    return data


def read_text(path: str | os.PathLike[str], limit: int, what: str) -> str:
    """:func:`read_bytes`, as UTF-8 text; InputError naming the file if it is not."""
    data = read_bytes(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{os.fspath(path)}: not UTF-8 text (byte {exc.start}): not a {what}") from None


def parse_json(data: bytes | str, source: str, *, depth: int = MAX_DEPTH) -> Any:
    """A JSON document, refused (InputError naming ``source``) if it does not parse
    or nests deeper than ``depth``."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and bytes that are not UTF-8/16/32;
        # RecursionError, arrays nested thousands deep.
        raise InputError(f"{source}: not valid JSON: {str(exc)[:120]}") from None
    level: list[Any] = [document]
    for _ in range(depth):
        level = [child for item in level if isinstance(item, (list, dict))
                 for child in (item.values() if isinstance(item, dict) else item)]
    if any(isinstance(item, (list, dict)) for item in level):
        raise InputError(f"{source}: nested deeper than {depth} levels")
    return document


def compose_yaml(text: str, source: str, *, depth: int = MAX_DEPTH) -> yaml.Node | None:
    """The node tree of a YAML document (None if it is empty).

    The parser's events are read first, which needs no recursion, so a document
    nested deeper than ``depth`` or holding an alias is refused before the
    (recursive) composer sees it.  Raises InputError ``SOURCE:LINE: why``.
    """
    import yaml

    try:
        nesting = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            where = f"{source}:{event.start_mark.line + 1}" if event.start_mark is not None else source
            if isinstance(event, yaml.AliasEvent):
                raise InputError(f"{where}: YAML alias *{event.anchor} refused: "
                                 "rmrrd's files need none, and aliases can expand without bound")
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                nesting += 1
                if nesting > depth:
                    raise InputError(f"{where}: nested deeper than {depth} levels")
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                nesting -= 1
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(f"{source}{line}: not valid YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: not valid YAML: {str(exc)[:120]}") from None
