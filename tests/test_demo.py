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
    assert len(re.findall(r"│ healthy\s+│", result.stdout)) == 4
    assert "run 1 (nightly): done" in result.stdout
