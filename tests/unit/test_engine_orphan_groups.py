"""How a resume recognises the process group of a step a killed orchestrator left behind
(issue 8, item 12), and how it ends it: a recycled group id is never taken for ours."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from orchestrator import process

TOKEN = "0123456789abcdef"


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.fixture
def groups() -> Iterator[list[int]]:
    started: list[int] = []
    yield started
    for pgid in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def _group(argv: list[str], groups: list[int], token: str | None = None) -> int:
    env = {**os.environ, **({process.STEP_TOKEN_VARIABLE: token} if token else {})}
    child = subprocess.Popen(argv, start_new_session=True, env=env)
    groups.append(child.pid)
    return child.pid


def test_a_live_leader_is_ours_only_with_its_start_time_on_this_boot(groups):
    pgid = _group(["sleep", "60"], groups)
    stat = process.proc_stat(pgid)
    assert stat is not None and stat.pgrp == pgid
    boot = process.boot_id()
    assert process.is_our_group(pgid, stat.start, boot, "other-token")
    # the same id, led by a process started at another time: a recycled id
    assert not process.is_our_group(pgid, stat.start + 1, boot, "other-token")
    assert not process.is_our_group(pgid, None, boot, "other-token")
    # recorded on another boot: that group ended with it
    assert not process.is_our_group(pgid, stat.start, "another-boot", "other-token")


def test_a_group_whose_leader_exited_is_ours_only_by_its_token(groups):
    script = "import subprocess, sys; subprocess.Popen(['sleep', '60']); sys.exit(0)"
    pgid = _group([sys.executable, "-c", script], groups, token=TOKEN)
    _wait(lambda: (s := process.proc_stat(pgid)) is None or s.state == "Z")
    _wait(lambda: len(process.group_members(pgid)) == 1)
    boot = process.boot_id()
    assert process.is_our_group(pgid, 1, boot, TOKEN)
    assert not process.is_our_group(pgid, 1, boot, "another-token")


def test_an_empty_group_is_not_ours_and_end_group_signals_nothing(groups):
    pgid = _group(["true"], groups, token=TOKEN)
    _wait(lambda: not process.group_members(pgid))
    assert not process.is_our_group(pgid, None, process.boot_id(), TOKEN)
    assert asyncio.run(process.end_group(pgid, grace=0.5))


def test_end_group_escalates_to_sigkill_and_waits_until_every_member_is_gone(groups):
    script = (
        "import signal, subprocess, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen(['sleep', '60'])\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], start_new_session=True, stdout=subprocess.PIPE
    )
    groups.append(child.pid)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    assert len(process.group_members(child.pid)) == 2
    started = time.monotonic()
    assert asyncio.run(process.end_group(child.pid, grace=0.5))
    assert 0.5 <= time.monotonic() - started < 5
    assert process.group_members(child.pid) == []
    child.wait()
