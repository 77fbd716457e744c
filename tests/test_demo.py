"""`orchestrator demo`, the README's first command: a whole nightly run, the controller's own
reboot included, through the production code paths, ending `done`; and `demo --break
MACHINE`, the rollback path end to end, judged by what the simulated machines booted."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"},
    )


def test_demo_finishes_a_nightly_run_including_the_controllers_own_reboot():
    result = demo()
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
    # Each simulated NixOS machine was deployed just before its reboot and came back on it.
    assert len(re.findall(r"^\S+\s+healthy\s+\S+ → \S+\s+2 → 3\s", result.stdout, re.M)) == 3
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


def test_demo_break_rolls_the_broken_machine_back_and_stops_the_rollout_there():
    result = demo("--break", "grey-area", "--keep")
    kept = re.search(r"^demo files kept in (\S+)$", result.stderr, re.M)
    assert kept, result.stderr[-3000:]
    directory = Path(kept.group(1))
    try:
        truth = json.loads((directory / "lab" / "truth.json").read_text())
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    log = result.stderr
    # Exit 0: the run ended as the demo means it to (aborted at grey-area, rolled back).
    assert result.returncode == 0, log[-3000:]

    # Ground truth, from the simulated machines themselves. grey-area booted the deployed
    # generation 3 once, then the rollback's generation 4, which is generation 2's system.
    grey = truth["grey-area"]["nixos"]
    assert truth["grey-area"]["reboots"] == 2
    first, second = grey["boots"]
    assert first == {**first, "generation": 3, "system": grey["generations"]["3"]}
    assert first["system"] in grey["broken"]
    assert second == {**second, "generation": 4, "system": grey["generations"]["2"]}
    assert grey["profile_generation"] == 4 and grey["booted"] == grey["generations"]["2"]
    # sleeper-service went first and came back on its new generation; reverse-proxy, after the
    # failed machine, was neither deployed nor rebooted; nor was the controller.
    sleeper = truth["sleeper-service"]["nixos"]
    assert truth["sleeper-service"]["reboots"] == 1
    assert [b["generation"] for b in sleeper["boots"]] == [3] == [sleeper["profile_generation"]]
    proxy = truth["reverse-proxy"]
    assert proxy["reboots"] == 0 and proxy["nixos"]["profile_generation"] == 2
    assert "deploy reverse-proxy" not in log and "controller: `systemctl reboot`" not in log

    # The engine's path through the states, in order, for grey-area.
    states = re.findall(r"^\S+ run 1: (\S+:grey-area)$", log, re.M)
    assert states == [
        "deploying:grey-area",
        "rebooting:grey-area",
        "verifying:grey-area",
        "rolling-back:grey-area",
        "verifying-rollback:grey-area",
    ]
    # The run's final error is the rollback line, with the numbers the machine really booted.
    rollback = (
        r"grey-area: generation 3 failed \(last probe: http \S+/health: HTTP 503 \(want 200\)\); "
        r"rolled back to generation 2: healthy"
    )
    errors = re.findall(r"^\S+ run 1 aborted: (.*)$", log, re.M)
    assert len(errors) == 1 and re.fullmatch(rollback, errors[0]), errors
    status = result.stdout
    assert "run 1 (nightly): aborted" in status
    [error] = re.findall(r"^error: (.*?)\n\n", status, re.M | re.S)
    assert re.fullmatch(rollback, " ".join(error.split())), status
    assert re.search(r"^grey-area\s+rolled-back\s", status, re.M), status
    assert re.search(r"^sleeper-service\s+healthy\s.*\s2 → 3\s", status, re.M), status
    assert re.search(r"^reverse-proxy\s+untouched\s", status, re.M), status
    assert re.search(r"^self \(local\)\s+untouched\s", status, re.M), status
    [notification] = re.findall(r"notification arrived: (.*)", log)
    assert notification == "lab-orchestrator: ABORTED at grey-area"


def test_demo_break_of_a_machine_not_in_the_demo_lab_is_one_line_and_exit_2():
    result = demo("--break", "no-such-host", timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and "'no-such-host'" in line, line
    assert "grey-area" in line  # it names the machines there are
