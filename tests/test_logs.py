"""Log lines: journald priority prefixes, plain lines elsewhere, one line per event."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rmrrd.errors import InputError
from rmrrd.edges.logs import parse_level, setup_logging, stderr_is_journal


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def emit_all(stream: io.StringIO) -> list[str]:
    log = logging.getLogger("rmrrd.test")
    log.debug("domain 1: probing")
    log.info("domain 1: ready")
    log.warning("domain 1 device 0000:00:14.0: region 0xe0000-0xeffff overlaps bios")
    log.error("domain 2: no memory\nsecond line")
    log.critical("crashed")
    return stream.getvalue().splitlines()


def test_journal_prefixes() -> None:
    out = io.StringIO()
    setup_logging("debug", journal=True, stream=out)
    assert emit_all(out) == [
        "<7>rmrrd.test: domain 1: probing",
        "<6>rmrrd.test: domain 1: ready",
        "<4>rmrrd.test: domain 1 device 0000:00:14.0: region 0xe0000-0xeffff overlaps bios",
        "<3>rmrrd.test: domain 2: no memory | second line",
        "<2>rmrrd.test: crashed",
    ]


def test_plain_format_has_time_and_level_but_no_prefix() -> None:
    out = io.StringIO()
    setup_logging("warning", journal=False, stream=out)
    lines = emit_all(out)
    assert len(lines) == 3
    assert lines[0].endswith(" WARNING rmrrd.test: domain 1 device 0000:00:14.0: region 0xe0000-0xeffff overlaps bios")
    assert lines[1].endswith(" ERROR rmrrd.test: domain 2: no memory | second line")
    assert lines[2].endswith(" CRITICAL rmrrd.test: crashed")
    assert not any(line.startswith("<") for line in lines)


def test_setting_up_again_replaces_the_handler() -> None:
    out = io.StringIO()
    setup_logging("info", journal=True, stream=out)
    setup_logging("info", journal=True, stream=out)
    logging.getLogger("rmrrd.test").info("once")
    assert out.getvalue() == "<6>rmrrd.test: once\n"


@pytest.mark.parametrize("level", ["loud", "", "INFO2", "critical"])
def test_bad_level_is_input_error(level: str) -> None:
    before = list(logging.getLogger().handlers)
    with pytest.raises(InputError, match="log level"):
        setup_logging(level)
    assert logging.getLogger().handlers == before


def test_level_names_are_case_insensitive() -> None:
    assert parse_level("WARNING") == logging.WARNING


def test_journal_stream_detection(tmp_path: Path) -> None:
    """Only a JOURNAL_STREAM naming this very file counts as journald."""
    with open(tmp_path / "stream", "w") as stream:
        info = os.fstat(stream.fileno())
        assert stderr_is_journal(stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino + 1}"})
        assert not stderr_is_journal(stream, {"JOURNAL_STREAM": "garbage"})
        assert not stderr_is_journal(stream, {})
    assert not stderr_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


@pytest.mark.process
def test_journal_detected_on_real_stderr(tmp_path: Path) -> None:
    """A child whose stderr is the file JOURNAL_STREAM names writes prefixed lines."""
    err = tmp_path / "stderr"
    code = (
        "import logging, os, sys\n"
        "st = os.fstat(2)\n"
        "os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'\n"
        "from rmrrd.edges.logs import setup_logging\n"
        "setup_logging('info')\n"
        "logging.getLogger('rmrrd.x').warning('domain 3: late')\n"
    )
    with open(err, "w") as stream:
        subprocess.run([sys.executable, "-c", code], stderr=stream, check=True)
    assert err.read_text() == "<4>rmrrd.x: domain 3: late\n"
