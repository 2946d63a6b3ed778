"""libxlutil's parsers of xl.cfg's ``rdm=`` and ``pci=`` strings, as xl 4.17 runs them.

``tools/libs/util/libxlu_pci.c``, behaviour for behaviour, bugs included (see
docs/xl-config.md), so that rmrrd predicts what stock xl does rather than what the
man page says:

* ``xlu_rdm_parse``: since 4.15 (commit "libxlu: introduce
  xlu_pci_parse_spec_string()") the test of ``parse_rdm_policy()`` is inverted, so a
  *valid* ``policy=`` makes the parse fail, and an invalid one is skipped;
* ``xlu_pci_parse_spec_string``: ``[DDDD:]BB:DD.F[@VSLOT][,KEY=VALUE...]`` with no
  spaces; ``rdm_policy`` is case-insensitive, as every libxl enum
  (``libxl__enum_from_string``), and "invalid" is one of its names.  rmrrd refuses the
  few spellings only ``sscanf("%x")``'s leniency lets through (``01: 00.0``,
  ``01:00.0x``).

:mod:`rmrrd.core.xlcfg` is rmrrd's own, strict reading of the same strings, for requests
written to rmrrd.  Both are held against libxlutil itself in the tests.
"""

from __future__ import annotations

import enum
import re

from rmrrd.errors import InputError
from rmrrd.core.pci import Bdf
from rmrrd.core.xlcfg import Policy


class RdmParse(enum.Enum):
    """How ``xlu_rdm_parse`` ends for an ``rdm=`` string."""

    HOST = "host"
    """Parsed, ``strategy=host`` set; the policy is left as it was (uninitialised)."""
    NO_STRATEGY = "no-strategy"
    """Parsed without any strategy set: strategy and policy are both left uninitialised."""
    POLICY_BUG = "policy-bug"
    """Failed because a *valid* ``policy=`` was named: the inverted test of 4.15+."""
    INVALID = "invalid"
    """Failed on a genuinely bad string (unknown key or strategy, stray comma)."""


def _enum_policy(text: str) -> Policy | None:
    """``libxl_rdm_reserve_policy_from_string``: case-insensitive; "invalid" is a name too.

    Returns the policy, or ``None`` for libxl's INVALID (a device then becomes strict);
    raises :class:`ValueError` when the text is not a name (the call fails).
    """
    lowered = text.lower()
    if lowered == "invalid":
        return None
    return Policy(lowered)


def xlu_rdm_parse(text: str) -> RdmParse:
    """xl's ``xlu_rdm_parse`` state machine, character by character as in C.

    A *valid* ``policy=`` makes the parse fail (``if (!parse_rdm_policy(...)) goto
    parse_error``); an invalid one is reported by xl and skipped.
    """
    host = False
    state, token_start = "type", 0
    for position in range(len(text) + 1):
        char = text[position] if position < len(text) else "\0"
        token = text[token_start:position]
        if state == "type":
            if char == "=":
                if token not in ("strategy", "policy"):
                    return RdmParse.INVALID  # "Unknown RDM state option"
                state, token_start = token, position + 1
        elif state != "terminal" and char in (",", "\0"):
            if state == "strategy":
                if token != "host":
                    return RdmParse.INVALID  # "Unknown RDM strategy option"
                host = True
            else:
                try:
                    _enum_policy(token)
                except ValueError:
                    pass  # "Unknown RDM policy": reported, and parsing goes on
                else:
                    return RdmParse.POLICY_BUG
            state, token_start = ("type" if char == "," else "terminal"), position + 1
    if state != "terminal":
        return RdmParse.INVALID
    return RdmParse.HOST if host else RdmParse.NO_STRATEGY


_BDF_RE = re.compile(r"(?:([0-9a-fA-F]+):)?([0-9a-fA-F]+):([0-9a-fA-F]+)\.(\*|[0-9a-fA-F]+)")


def _xl_bdf(text: str) -> tuple[list[Bdf], int] | None:
    """``parse_bdf``: the functions named (``.*`` is all eight) and where parsing stopped."""
    match = _BDF_RE.match(text)
    if match is None:
        return None
    segment, bus, device = int(match[1] or "0", 16), int(match[2], 16), int(match[3], 16)
    if segment > 0xFFFF or bus > 0xFF or device > 0x1F:
        return None
    if match[4] == "*":
        # All functions: those the host lacks have no regions, so naming all eight is exact.
        return [Bdf(segment, bus, device, function) for function in range(8)], match.end()
    function = int(match[4], 16)
    if function > 7:
        return None
    return [Bdf(segment, bus, device, function)], match.end()


def xl_pci_spec(text: str) -> tuple[list[Bdf], Policy | None]:
    """One ``pci=`` entry as ``xlu_pci_parse_spec_string`` reads it.

    Returns the functions and the ``rdm_policy`` the entry names (``None`` when it
    names none, or names libxl's "invalid").  Raises :class:`InputError` where xl
    exits with "unable to parse PCI_SPEC_STRING".
    """
    what = f"pci= entry {text!r}"
    bdfs: list[Bdf] = []
    policy: Policy | None = None
    rest = text
    parsed = _xl_bdf(text)
    if parsed is not None:
        bdfs, used = parsed
        rest = text[used:]
        if rest.startswith("@"):
            slot = re.match(r"@([0-9a-fA-F]+)", rest)
            if slot is None or int(slot[1], 16) > 0x1F:
                raise InputError(f"{what}: invalid @VSLOT: xl refuses it")
            rest = rest[slot.end():]
        if rest.startswith(","):
            rest = rest[1:]
        elif rest:
            raise InputError(f"{what}: unexpected {rest[:20]!r} after the address: xl refuses it")
    named = False
    while rest:
        key, sep, remainder = rest.partition("=")
        if not sep:
            raise InputError(f"{what}: {rest[:20]!r} is not KEY=VALUE: xl refuses it")
        value, _, rest = remainder.partition(",")
        if key == "bdf":
            parsed = _xl_bdf(value)
            if parsed is None:
                raise InputError(f"{what}: bdf={value!r} is not a PCI address: xl refuses it")
            bdfs = parsed[0]
        elif key == "rdm_policy":
            try:
                policy = _enum_policy(value)
            except ValueError:
                raise InputError(f"{what}: rdm_policy={value!r} is not strict or relaxed: xl refuses it") from None
        elif key == "name":
            named = True
        elif key not in ("vslot", "permissive", "msitranslate", "seize", "power_mgmt"):
            spaces = " (xl allows no spaces in an entry)" if key != key.strip() else ""
            raise InputError(f"{what}: unknown key {key!r}: xl refuses it{spaces}")
    if bool(bdfs) == named:
        raise InputError(f"{what}: needs an address or name=, not {'both' if named else 'neither'}: "
                         f"xl refuses it")
    if named:
        raise InputError(f"{what}: a device known by name= (xl pci-assignable-add --name): rmrrd needs "
                         f"its address")
    return bdfs, policy
