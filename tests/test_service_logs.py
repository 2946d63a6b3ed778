"""What ``rmrrd run`` logs for the seed scenario, under journald's conditions."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import trio

from support.processes import Daemon, start_daemon
from rmrrd.app.demo import scenario
from rmrrd.xenstore.client import open_xenstore

pytestmark = pytest.mark.process

LINE = re.compile(r"<(?P<priority>[3467])>(?P<logger>rmrrd(\.\w+)*): (?P<message>.+)")
BDF = re.compile(r"\b[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]\b")
DOMAIN = re.compile(r"\bdomain \d+\b")


def _seed_log(workdir: Path, daemons: list[Daemon], *args: str) -> list[str]:
    daemon = start_daemon(workdir, journal=True, args=args)
    daemons.append(daemon)

    async def play() -> int:
        async with open_xenstore(str(daemon.xenstore)) as xs:
            steps = await scenario(xs, daemon.xenstore, lambda domid: Path(f"{daemon.xenstore}.d/{domid}"), lambda _: None)
        return sum(step.ok for step in steps)

    assert trio.run(play) == 15
    assert daemon.stop() == 0
    return daemon.log_lines()


def test_every_line_has_the_journal_priority_and_no_timestamp(workdir: Path, daemons: list[Daemon]) -> None:
    lines = _seed_log(workdir, daemons)
    assert lines
    bad = [line for line in lines if not LINE.fullmatch(line)]
    assert bad == []
    assert "<6>rmrrd.app.service: rmrrd stopped" == lines[-1]


def test_lines_about_a_domain_name_it_and_its_device(workdir: Path, daemons: list[Daemon]) -> None:
    lines = _seed_log(workdir, daemons)
    daemon_lines = [m for m in map(LINE.fullmatch, lines) if m and m["logger"].startswith("rmrrd.daemon.")]
    # A device, a region or a request concerns a domain: the line says which.
    about_a_domain = [m["message"] for m in daemon_lines
                      if BDF.search(m["message"]) or "region 0x" in m["message"] or "request " in m["message"]]
    assert len(about_a_domain) >= 10
    assert [text for text in about_a_domain if not DOMAIN.search(text)] == []
    by_priority = {(m["priority"], m["message"]) for m in daemon_lines}
    assert ("4", "domain 1: region 0xe0000-0xeffff (hotplug 0000:00:14.0) overlaps bios: warned") in by_priority
    assert any(p == "6" and t.startswith("domain 1: request 1 ready: lowmem_end 0xa0000000") for p, t in by_priority)
    assert any(p == "3" and t.startswith("domain 2: request 1 refused: region 0xa0000000-0xa37fffff "
                                         "(pci 0000:00:02.0)") for p, t in by_priority)
    assert any(p == "6" and t.startswith("request ") and ": domain 1 assign 0000:00:02.0: ok:" in t
               for p, t in by_priority)
    assert any(p == "4" and ": domain 1 hotplug 0000:00:14.0: fail:" in t for p, t in by_priority)


def test_one_line_per_event(workdir: Path, daemons: list[Daemon]) -> None:
    lines = _seed_log(workdir, daemons)
    repeated = [line for line, count in Counter(lines).items() if count > 1]
    assert repeated == []
    # Each of the five toolstack checks is one line, however many watch events it caused.
    requests = [line for line in lines if "rmrrd.daemon.toolstack: request " in line]
    assert len(requests) == 5


def test_log_level_warning_keeps_only_warnings_and_errors(workdir: Path, daemons: list[Daemon]) -> None:
    lines = _seed_log(workdir, daemons, "--log-level", "warning")
    assert {line[:3] for line in lines} == {"<3>", "<4>"}
