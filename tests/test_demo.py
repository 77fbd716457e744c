"""`orchestrator demo`, the README's first command: a whole nightly run, the controller's own
reboot included, through the production code paths, ending `done`."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def test_demo_finishes_a_nightly_run_including_the_controllers_own_reboot():
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    # The run really was killed by the controller's shutdown and finished by resume.
    assert "controller: `systemctl reboot`" in log
    assert "the boot unit runs `orchestrator resume`" in log
    assert re.search(r"run 1: continuing from (rebooting|verifying):self", log)
    # The reboots happened in the seed's order, each only after the one before was healthy.
    order = re.findall(r"^\S+ (\S+): reboot requested$", log, flags=re.M)
    assert order == ["sleeper-service", "grey-area", "reverse-proxy"]
    assert "summary: run 1 (nightly) done" in log
    assert len(re.findall(r"^\S+(?: \(local\))?\s+healthy\s", result.stdout, re.M)) == 4
    assert "run 1 (nightly): done" in result.stdout
    # The owner's side, through the production hooks: one notification at the end, the
    # heartbeat's start (twice: run, then resume) and success, and the metrics file.
    [notification] = re.findall(r"notification arrived: (.*)", log)
    assert notification.startswith("lab-orchestrator: done, 4 machines in ")
    pings = re.findall(r"heartbeat ping arrived: (\w+)", log)
    assert pings == ["start", "start", "success"]
    assert "    lab_orchestrator_last_run_success 1.0" in log
    assert re.search(
        r'^    lab_orchestrator_runs_total\{kind="nightly",outcome="done"\} 1\.0$', log, re.M
    )
