"""The maintenance window (issue 11, item 1) against real sshd hosts, judged by what the hosts
did (their reboots) and by what the steps did (a marker file per update and deploy):

- a window that closes mid-run pauses the run before the next machine (exit 0, `paused until
  … (next window)`), a `run` while it is still closed does nothing, and the next `run` inside
  the window finishes it without updating or deploying again;
- a clock that jumps (here: the controller's time zone, which moves its wall clock the same way
  an NTP step does) changes when the run goes on, never which machine is next.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ORCHESTRATOR, REPO, latest_run
from tests.fault_lab import boots, reboots_requested, status_json, status_text, write_config
from tests.netlab import fixtures

pytestmark = pytest.mark.netlab
netlab = fixtures.netlab


def counting_step(directory: Path, name: str) -> list[str]:
    """A step that appends a line to ``name``.count each time it runs."""
    marker = directory / f"{name}.count"
    return [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('ran\\n')"]


def runs_of(directory: Path, name: str) -> int:
    marker = directory / f"{name}.count"
    return len(marker.read_text().splitlines()) if marker.exists() else 0


def orchestrator_run(config: Path, tz: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"TZ": tz} if tz else {})}
    return subprocess.run(
        [*ORCHESTRATOR, "--config", str(config), "run"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=REPO,
        env=env,
    )


def hhmmss(moment: datetime) -> str:
    return moment.strftime("%H:%M:%S")


def config_with_window(lab: Any, tmp_path: Path, start: str, end: str, **extra: Any) -> Path:
    return write_config(
        lab,
        tmp_path,
        update={"command": counting_step(tmp_path, "update"), "timeout": 60},
        deploy={"command": counting_step(tmp_path, "deploy"), "timeout": 60},
        window={"start": start, "end": end},
        **extra,
    )


def test_a_window_that_closes_mid_run_pauses_and_the_next_run_finishes(netlab, tmp_path):
    lab = netlab(["h1", "h2"], boot_time=0.5)
    now = datetime.now()
    # Open since an hour ago, closing in 15 s: h1's reboot starts inside it; h2's turn comes
    # after h1's 20 s settle, when it has closed.
    config = config_with_window(
        lab,
        tmp_path,
        hhmmss(now - timedelta(hours=1)),
        hhmmss(now + timedelta(seconds=15)),
        reboot={"settle": 20},
    )

    first = orchestrator_run(config)

    assert first.returncode == 0, first.stderr
    assert "paused until " in first.stderr and "(next window)" in first.stderr, first.stderr
    assert reboots_requested(lab) == ["h1"] and boots(lab) == {"h1": 1}
    run = latest_run(tmp_path / "state")
    assert run is not None and run.state == "paused:h2" and run.paused_until is not None
    shown = status_json(config)
    assert shown["paused_until"] is not None
    assert [m["state"] for m in shown["machines"]] == ["healthy", "paused"]
    assert "waiting for the maintenance window" in status_text(config)

    # The timer fires again while the window is still closed: nothing happens.
    again = orchestrator_run(config)
    assert again.returncode == 0, again.stderr
    assert "still paused until " in again.stderr, again.stderr
    assert reboots_requested(lab) == ["h1"]

    # The next night: the window is open. The run goes on with h2, and only with h2.
    opened = datetime.now()
    config = config_with_window(
        lab, tmp_path, hhmmss(opened - timedelta(hours=1)), hhmmss(opened + timedelta(hours=1))
    )
    last = orchestrator_run(config)

    assert last.returncode == 0, last.stderr
    assert reboots_requested(lab) == ["h1", "h2"] and boots(lab) == {"h1": 1, "h2": 1}
    run = latest_run(tmp_path / "state")
    assert run is not None and run.state == "done" and run.paused_until is None
    assert (runs_of(tmp_path, "update"), runs_of(tmp_path, "deploy")) == (1, 1)


def tz_at(local_hour: int) -> str:
    """A POSIX TZ under which the local wall clock now shows ``local_hour``:MM."""
    offset = (local_hour - datetime.utcnow().hour) % 24
    offset = offset - 24 if offset > 12 else offset
    return f"LAB{-offset:+d}"  # POSIX: the sign is west of UTC


def test_a_clock_jump_changes_when_the_run_goes_on_never_which_machine_is_next(netlab, tmp_path):
    lab = netlab(["h1", "h2"], boot_time=0.5)
    config = config_with_window(lab, tmp_path, "01:00", "05:00")

    outside = orchestrator_run(config, tz=tz_at(12))  # 12:MM local: closed

    assert outside.returncode == 0, outside.stderr
    assert "paused until 01:00 (next window)" in outside.stderr, outside.stderr
    assert reboots_requested(lab) == []
    run = latest_run(tmp_path / "state")
    assert run is not None and run.state == "paused:h1"

    # The clock steps forward into the window (03:MM local): h1, then h2, once each.
    inside = orchestrator_run(config, tz=tz_at(3))

    assert inside.returncode == 0, inside.stderr
    assert reboots_requested(lab) == ["h1", "h2"] and boots(lab) == {"h1": 1, "h2": 1}
    assert (runs_of(tmp_path, "update"), runs_of(tmp_path, "deploy")) == (1, 1)
    run = latest_run(tmp_path / "state")
    assert run is not None and run.state == "done"
