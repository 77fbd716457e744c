"""Generation facts per machine (issue 10, item 1), against the netlab's fake NixOS hosts: a
real `orchestrator run` whose deploy step deploys a new generation to every host records what
each machine was booted into, what its reboot should boot and what it came back on — judged by
what the hosts really booted (their ground-truth `booted` events), not by what the orchestrator
believes. Hosts that are not NixOS are rebooted as before, with one warning each. A SIGKILL
while verifying does not make the resume read the facts before the reboot again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ORCHESTRATOR, REPO, latest_run
from tests.fault_lab import (
    boots,
    orchestrator,
    spawn,
    status_machines,
    wait_for_run_state,
    write_config,
)
from tests.netlab import Lab, fixtures
from tests.netlab.lab import NIXOS_KERNEL

pytestmark = pytest.mark.netlab
netlab = fixtures.netlab

HOSTS = ["h1", "h2"]
NEW_KERNEL = "6.12.3"


def deploy_every_host(lab: Lab, directory: Path) -> list[str]:
    """``deploy.command``: a small script (argv only) that runs the lab's per-machine deploy
    for each host in turn, a new generation with a new kernel; any failure fails the step."""
    argvs = [lab.deploy_command(machine=h, kernel_version=NEW_KERNEL) for h in HOSTS]
    script = directory / "deploy-all.py"
    script.write_text(
        "import json, subprocess, sys\n"
        f"for argv in json.loads({json.dumps(json.dumps(argvs))}):\n"
        "    subprocess.run(argv, check=True, stdout=sys.stderr)\n"
    )
    return [sys.executable, str(script)]


def booted_after(lab: Lab, host: str, since: float) -> dict[str, Any]:
    """The host's one real boot since ``since`` (ground truth)."""
    booted = lab.events(host, "booted", since=since)
    assert len(booted) == 1, booted
    return booted[0]


def test_a_run_records_each_machines_generation_before_and_after(netlab, tmp_path):
    lab = netlab(HOSTS, nixos=True, boot_time=0.5)
    before = {h: lab.nixos_state(h) for h in HOSTS}
    config = write_config(
        lab, tmp_path, deploy={"command": deploy_every_host(lab, tmp_path), "timeout": 120}
    )

    result = orchestrator(config, "run")

    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr
    run = latest_run(tmp_path / "state")
    assert run is not None and run.state == "done"
    shown = status_machines(config)
    for h in HOSTS:
        truth = booted_after(lab, h, result.started)
        after = lab.nixos_state(h)
        deployed = after["profile"][2]
        assert lab.booted_generations(h) == [1, 2]  # it really booted the new generation
        assert truth["system"] == deployed == after["booted_system"]
        assert deployed != before[h]["booted_system"]

        machine = run.machine(h)
        assert machine.nixos is True
        assert machine.system_before == before[h]["booted_system"] == before[h]["profile"][1]
        assert machine.system_expected == deployed
        assert machine.system_after == truth["system"]
        assert (machine.generation_before, machine.generation_expected) == (1, 2)
        assert machine.generation_after == truth["nixos_generation"] == 2

        data = shown[h]
        assert data["nixos"] is True
        assert data["system_before"] == before[h]["booted_system"]
        assert data["system_expected"] == data["system_after"] == truth["system"]
        assert (data["generation_before"], data["generation_after"]) == (1, 2)
        assert data["kernel_before"].endswith(f"-linux-{NIXOS_KERNEL}/bzImage")
        assert data["kernel_expected"].endswith(f"-linux-{NEW_KERNEL}/bzImage")
        assert data["kernel_after"] == data["kernel_expected"]
        assert f"{h}: booted into generation 1" in result.stderr
        assert f"{h}: came back on generation 2" in result.stderr
    status = subprocess.run(
        [*ORCHESTRATOR, "--config", str(config), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "80"},
    ).stdout
    rows = [line for line in status.splitlines() if line.startswith(tuple(HOSTS))]
    assert len(rows) == 2 and all("1 → 2" in row for row in rows), status
    assert "generation 1 -> 2" in result.stderr  # the summary lines


def test_hosts_that_are_not_nixos_are_rebooted_as_before_with_one_warning_each(netlab, tmp_path):
    lab = netlab(HOSTS, boot_time=0.5)
    config = write_config(lab, tmp_path)

    result = orchestrator(config, "run")

    assert result.returncode == 0, result.stderr
    run = latest_run(tmp_path / "state")
    assert run is not None and run.state == "done"
    assert boots(lab, since=result.started) == dict.fromkeys(HOSTS, 1)
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    for h in HOSTS:
        mine = [line for line in warnings if f"warning: {h}: " in line]
        assert len(mine) == 1, result.stderr
        assert mine[0].endswith(
            f"{h}: not NixOS (no /run/booted-system): generation checks skipped"
        )
        machine = run.machine(h)
        assert machine.nixos is False
        assert (machine.system_before, machine.system_expected, machine.system_after) == (
            None,
            None,
            None,
        )
    assert len(warnings) == len(HOSTS), result.stderr
    shown = status_machines(config)
    assert all(shown[h]["nixos"] is False for h in HOSTS)
    status = subprocess.run(
        [*ORCHESTRATOR, "--config", str(config), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO,
    ).stdout
    rows = [line for line in status.splitlines() if line.startswith(tuple(HOSTS))]
    assert len(rows) == 2 and all("not NixOS" in row for row in rows), status


def test_a_kill_while_verifying_then_resume_records_the_generation_after(netlab, tmp_path):
    # A slow boot keeps the run in verifying:h1 long enough to be killed there.
    lab = netlab(HOSTS, nixos=True, boot_time=2.0)
    before = {h: lab.nixos_state(h)["booted_system"] for h in HOSTS}
    config = write_config(
        lab, tmp_path, deploy={"command": deploy_every_host(lab, tmp_path), "timeout": 120}
    )
    state_dir = tmp_path / "state"
    log = tmp_path / "run.log"

    run = spawn(config, "run", log=log)
    try:
        interrupted = wait_for_run_state(state_dir, "verifying:h1")
        run.send_signal(signal.SIGKILL)
        run.wait(30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    killed = latest_run(state_dir)
    assert killed is not None and killed.state == "verifying:h1", log.read_text()
    h1 = killed.machine("h1")
    assert h1.system_before == before["h1"] and h1.system_after is None
    assert interrupted.machine("h1").system_expected == lab.nixos_state("h1")["profile"][2]

    resumed = orchestrator(config, "resume")

    context = log.read_text() + resumed.stderr
    assert resumed.returncode == 0, context
    final = latest_run(state_dir)
    assert final is not None and final.state == "done", context
    assert "h1: booted into generation" not in resumed.stderr  # the facts before: not re-read
    for h in HOSTS:
        truth = booted_after(lab, h, 0.0 if h == "h1" else resumed.started)
        machine = final.machine(h)
        assert lab.booted_generations(h) == [1, 2], context  # each booted exactly once
        # Read again after the kill, h1's "before" would be the system it has booted since.
        assert machine.system_before == before[h] != truth["system"], context
        assert machine.system_expected == machine.system_after == truth["system"], context
        assert (machine.generation_before, machine.generation_after) == (1, 2), context
