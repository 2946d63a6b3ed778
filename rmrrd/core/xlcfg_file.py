"""The xl.cfg file format, read as xl 4.17's own parser reads it (libxlutil).

Grammar and tokens follow ``tools/libs/util/libxlu_cfg_l.l`` and ``libxlu_cfg_y.y``:

* a setting is ``KEY = VALUE`` or ``KEY += VALUE``, ended by a newline or ``;`` (the
  last one may end the file); keys are ``[a-z][._0-9a-z]*`` (no capitals);
* a value is a number (``[0-9][0-9a-fx]*``, kept as its text), a string in single or
  double quotes on one line, or a list ``[ v, v, ... ]`` of values (lists nest;
  newlines and a trailing comma are allowed inside);
* ``#`` starts a comment that runs to the end of the line; a comment on the last
  line needs its newline, as in xl (flex matches ``\\#.*\\n`` only);
* whitespace is space and tab only: a carriage return is a lexical error.

What the settings mean is xl's business (``libxlu_cfg.c``), reproduced here because it
decides what a file does:

* the last assignment of a key wins; ``+=`` appends to the previous string or list
  (``xlu__cfg_set_store``) and a string cannot be added to a list;
* reading a number uses ``strtol(value, &end, 0)``: ``0x`` is hexadecimal, a leading
  ``0`` octal, and the whole value must be used; a quoted ``"1024"`` is a number too;
* a value of the wrong shape (a list where one value is expected, a number that does
  not parse, ``+=`` on a number) makes xl print a warning and ignore the key.

Anything xl refuses to parse raises :class:`InputError` naming the file and line;
what xl only warns about is returned as a :class:`Problem`, so callers can say what
xl will do with it.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple, Union

from rmrrd import inputs
from rmrrd.errors import InputError

LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1
"""The range of a C ``long`` on the 64-bit hosts Xen's dom0 runs on."""

Value = Union[str, "list[Value]"]
"""An atom (a string, or a number's text) or a list of values."""

_TOKEN_RE = re.compile(r"""
    (?P<space>[ \t]+)
  | (?P<newline>\n|\#[^\n]*\n)
  | (?P<ident>[a-z][._0-9a-z]*)
  | (?P<number>[0-9][0-9a-fx]*)
  | (?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
  | (?P<add>\+=)
  | (?P<punct>[,\[\]=;])
""", re.VERBOSE)

_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
            "t": "\t", "v": "\v"}


class Setting(NamedTuple):
    """One key as xl sees it: its value, the line of that value, and whether it was ``+=``."""

    key: str
    value: Value
    line: int
    added: bool = False


class Problem(NamedTuple):
    """Something xl warns about and then ignores (the setting is treated as absent)."""

    line: int
    key: str
    message: str


class _Token(NamedTuple):
    kind: str
    text: str
    line: int


class XlConfig:
    """The settings of one xl.cfg file, with xl's accessors.

    The accessors return ``None`` for a key that is absent *or* that xl would ignore;
    in the latter case they append a :class:`Problem` to :attr:`problems`, worded as
    xl's own warning.
    """

    def __init__(self, source: str, settings: dict[str, Setting]) -> None:
        self.source = source
        self.settings = settings
        self.problems: list[Problem] = []

    def line(self, key: str) -> int | None:
        setting = self.settings.get(key)
        return setting.line if setting else None

    def where(self, key: str) -> str:
        """``FILE:LINE: KEY`` (or ``FILE: KEY`` for a key the file does not set), for messages."""
        line = self.line(key)
        return f"{self.source}:{line}: {key}" if line is not None else f"{self.source}: {key}"

    def _warn(self, setting: Setting, message: str) -> None:
        self.problems.append(Problem(setting.line, setting.key, message))

    def string(self, key: str) -> str | None:
        """``xlu_cfg_get_string``: an atom's text; a list is ignored with a warning."""
        setting = self.settings.get(key)
        if setting is None:
            return None
        if isinstance(setting.value, list):
            self._warn(setting, "is a list but should be a single value: xl ignores it")
            return None
        return setting.value

    def number(self, key: str) -> int | None:
        """``xlu_cfg_get_long``: ``strtol`` base 0 over the whole value, else ignored with a warning."""
        text = self.string(key)
        if text is None:
            return None
        setting = self.settings[key]
        if setting.added:
            self._warn(setting, "can't use += with numbers: xl ignores it")
            return None
        value = strtol(text)
        if value is None:
            self._warn(setting, f"{text!r} is not a valid number: xl ignores it")
            return None
        if not LONG_MIN <= value <= LONG_MAX:
            self._warn(setting, f"{text!r} could not be parsed as a number (out of range): xl ignores it")
            return None
        return value

    def boolean(self, key: str) -> bool | None:
        """``xlu_cfg_get_defbool``: a number, true when not zero."""
        value = self.number(key)
        return None if value is None else value != 0

    def items(self, key: str) -> list[str] | None:
        """``xlu_cfg_get_list`` then ``xlu_cfg_get_listitem`` until it returns NULL.

        A single value is ignored with a warning; the items stop at the first one that
        is itself a list (xl's loop ends there), and a warning says which were lost.
        """
        setting = self.settings.get(key)
        if setting is None:
            return None
        if not isinstance(setting.value, list):
            self._warn(setting, "is a single value but should be a list: xl ignores it")
            return None
        items: list[str] = []
        for index, item in enumerate(setting.value):
            if isinstance(item, list):
                lost = len(setting.value) - index
                self._warn(setting, f"item {index} is a list: xl stops reading there and ignores {lost} item(s)")
                break
            items.append(item)
        return items


def strtol(text: str) -> int | None:
    """C's ``strtol(text, &end, 0)`` when it uses the whole text, else ``None``.

    Leading whitespace and a sign are allowed; ``0x``/``0X`` means hexadecimal and a
    leading ``0`` octal, as in C (``0400`` is 256).
    """
    match = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if match is None:
        return None
    digits = match[2]
    if digits[:2] in ("0x", "0X"):
        value = int(digits[2:], 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    return -value if match[1] == "-" else value


def _dequote(token: _Token, source: str) -> str:
    """``xlu__cfgl_dequote``: the named escapes; xl mishandles numeric ones, so they are refused."""
    body, out, index = token.text[1:-1], [], 0
    while index < len(body):
        char = body[index]
        if char == "\\":
            escaped = body[index + 1]
            if escaped in _ESCAPES:
                out.append(_ESCAPES[escaped])
            elif escaped == "x" or escaped in "01234567":
                # libxlu_cfg.c's NUMERIC_CHAR rejects every \xHH and drops \NNN's character.
                raise InputError(f"{source}:{token.line}: numeric escape '\\{escaped}' in {token.text}: "
                                 f"xl cannot decode it (libxlu_cfg.c xlu__cfgl_dequote)")
            else:
                raise InputError(f"{source}:{token.line}: invalid character after backslash in {token.text}")
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


def _key_prefix(key: str | None) -> str:
    """``KEY: `` for an error inside a setting, so that it names the key as well as the line."""
    return f"{key}: " if key is not None else ""


def _open_setting(tokens: list[_Token]) -> str | None:
    """The key of the setting the tokens so far end inside, if any (for a lexical error)."""
    start, depth = 0, 0
    for index, token in enumerate(tokens):
        depth += {"[": 1, "]": -1}.get(token.kind, 0)
        if depth <= 0 and token.kind in ("newline", ";"):
            start = index + 1
    if len(tokens) - start >= 2 and tokens[start].kind == "ident" and tokens[start + 1].kind in ("=", "add"):
        return tokens[start].text
    return None


def _tokens(text: str, source: str) -> list[_Token]:
    tokens: list[_Token] = []
    line, pos = 1, 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            bad = re.match(r"[^ \t\n]*", text[pos:])
            word = bad[0] if bad and bad[0] else text[pos]
            hint = " (a comment on the last line needs a newline)" if word.startswith("#") else ""
            if word.startswith("\r") or "\r" in word:
                hint = " (carriage return: xl reads Unix line ends only)"
            raise InputError(f"{source}:{line}: {_key_prefix(_open_setting(tokens))}lexical error near "
                             f"{word[:40]!r}{hint}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(_Token(kind if kind != "punct" else match[0], match[0], line))
        line += match[0].count("\n")
        pos = match.end()
    tokens.append(_Token("eof", "", line))
    return tokens


class _Parser:
    """Recursive descent over ``libxlu_cfg_y.y``; stops at the first error."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.tokens = _tokens(text, source)
        self.pos = 0
        self.key: str | None = None
        """The key of the setting being read, for errors."""

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def error(self, token: _Token, what: str) -> InputError:
        near = "<newline>" if token.kind == "newline" else ("end of file" if token.kind == "eof" else token.text)
        return InputError(f"{self.source}:{token.line}: {_key_prefix(self.key)}config parsing error near "
                          f"{near!r}: {what}")

    def skip_newlines(self) -> None:
        while self.peek().kind == "newline":
            self.take()

    def value(self) -> tuple[Value, int]:
        token = self.take()
        if token.kind == "number":
            return token.text, token.line
        if token.kind == "string":
            return _dequote(token, self.source), token.line
        if token.kind != "[":
            raise self.error(token, "expected a number, a string or a list")
        self.skip_newlines()
        items: list[Value] = []
        while self.peek().kind != "]":
            items.append(self.value()[0])
            self.skip_newlines()
            if self.peek().kind == ",":
                self.take()
                self.skip_newlines()
            elif self.peek().kind != "]":
                raise self.error(self.peek(), "expected ',' or ']' in a list")
        self.take()
        return items, token.line

    def settings(self) -> list[Setting]:
        found: list[Setting] = []
        while self.peek().kind != "eof":
            token = self.take()
            if token.kind in ("newline", ";"):
                continue
            if token.kind != "ident":
                raise self.error(token, "expected a setting KEY = VALUE")
            self.key = token.text
            op = self.take()
            if op.kind not in ("=", "add"):
                raise self.error(op, f"expected '=' or '+=' after {token.text}")
            value, line = self.value()
            end = self.peek()
            if end.kind in ("newline", ";"):
                self.take()
            elif end.kind != "eof":
                raise self.error(end, "expected the end of the line or ';' after the value")
            found.append(Setting(token.text, value, line, op.kind == "add"))
            self.key = None
        return found


def _store(settings: list[Setting], source: str) -> dict[str, Setting]:
    """Apply the assignments in order: the last one wins, ``+=`` concatenates."""
    store: dict[str, Setting] = {}
    for setting in settings:
        previous = store.get(setting.key)
        if setting.added and previous is not None:
            if isinstance(previous.value, list) != isinstance(setting.value, list):
                raise InputError(f"{source}:{setting.line}: {setting.key}: can't add [list] to \"string\" "
                                 f"or vice versa")
            if isinstance(previous.value, list) and isinstance(setting.value, list):
                setting = Setting(setting.key, previous.value + setting.value, setting.line, True)
            elif isinstance(previous.value, str) and isinstance(setting.value, str):
                setting = Setting(setting.key, previous.value + setting.value, setting.line, True)
        store[setting.key] = setting
    return store


def parse_xl_config(text: str, source: str = "<xl.cfg>") -> XlConfig:
    """Parse the text of an xl.cfg file; ``source`` names it in every message.

    Raises :class:`InputError` (``SOURCE:LINE: ...``) where xl would stop with
    "Failed to parse config".
    """
    return XlConfig(source, _store(_Parser(text, source).settings(), source))


def load_xl_config(path: str | os.PathLike[str]) -> XlConfig:
    """Read and parse an xl.cfg file; an unreadable, non-text or oversized
    (:data:`rmrrd.inputs.SMALL`) file is an :class:`InputError`."""
    text = inputs.read_text(path, inputs.SMALL, "xl.cfg file")
    if "\0" in text:
        raise InputError(f"{path}: contains a NUL byte: not an xl.cfg file")
    return parse_xl_config(text, str(path))
