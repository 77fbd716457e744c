"""Shared by the fault-matrix tests (tests/test_fault_*.py, issue 3): the real orchestrator
process pointed at a netlab, and the ground-truth questions those tests ask the lab.

Only addresses, keys, paths, commands and timings differ from a production config."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.store import RunRecord, Store
from tests.conftest import ORCHESTRATOR, REPO, latest_run
from tests.netlab import Lab

# Short polls keep the suite fast; everything else is the lab's production-shaped config.
FAST_REBOOT = {"poll_interval": 0.2, "probe_timeout": 2}


def write_config(lab: Lab, directory: Path, name: str = "orchestrator", **overrides: Any) -> Path:
    """The lab's config (state in ``directory/state``) with fast polls and ``overrides``."""
    reboot = {**FAST_REBOOT, **overrides.pop("reboot", {})}
    return lab.write_config(
        directory / f"{name}.yaml", directory / "state", reboot=reboot, **overrides
    )


@dataclass(frozen=True)
class Finished:
    returncode: int
    stderr: str
    started: float  # time.time(), comparable with the lab's ground-truth timestamps
    ended: float

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def orchestrator(config: Path, *args: str, timeout: float = 120) -> Finished:
    """One real `orchestrator` process in this (the root) namespace, to completion."""
    started = time.time()
    result = subprocess.run(
        [*ORCHESTRATOR, "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    return Finished(result.returncode, result.stderr, started, time.time())


def spawn(config: Path, *args: str, log: Path, umask: int = -1) -> subprocess.Popen[bytes]:
    """A real `orchestrator` process in the background; its output goes to ``log``.
    ``umask``: the child's (e.g. 0o077, as the systemd units set); -1 keeps ours."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [*ORCHESTRATOR, "--config", str(config), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            umask=umask,
        )


def all_runs(state_dir: Path) -> list[RunRecord]:
    with Store.open(state_dir, create=False) as store:
        return store.runs()


def visited_states(state_dir: Path, run_id: int) -> list[str]:
    with Store.open(state_dir, create=False) as store:
        return [state for state, _ in store.steps(run_id)]


def wait_for_run_state(state_dir: Path, wanted: str, timeout: float = 60) -> RunRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = latest_run(state_dir)
        if run is not None and run.state == wanted:
            return run
        time.sleep(0.005)
    raise AssertionError(f"the run never reached {wanted} (last: {latest_run(state_dir)})")


# -- ground truth -------------------------------------------------------------------------------


def reboots_requested(lab: Lab, since: float | None = None) -> list[str]:
    """Hosts in the order they were asked to reboot (whether or not they did)."""
    return [e["host"] for e in lab.events(event="reboot_requested", since=since)]


def boots(lab: Lab, since: float | None = None) -> Counter[str]:
    """How many times each host really rebooted (wrote a new boot id)."""
    return Counter(e["host"] for e in lab.events(event="booted", since=since))


def first_event(lab: Lab, host: str, event: str, since: float | None = None) -> dict[str, Any]:
    found = lab.events(host, event, since)
    assert found, f"{host} never reported {event}: {lab.events(host)}"
    return found[0]


def assert_each_healthy_before_the_next_was_asked(lab: Lab, order: list[str]) -> None:
    for previous, following in itertools.pairwise(order):
        healthy = first_event(lab, previous, "healthy")["t"]
        asked = first_event(lab, following, "reboot_requested")["t"]
        assert healthy < asked, f"{following} was asked to reboot before {previous} was healthy"


# -- what the owner sees ------------------------------------------------------------------------


def status_json(config: Path) -> dict[str, Any]:
    """`orchestrator status --json`, as a person would ask it."""
    result = subprocess.run(
        [*ORCHESTRATOR, "--config", str(config), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def status_machines(config: Path) -> dict[str, dict[str, Any]]:
    """The machines of `status --json`, by name."""
    return {machine["name"]: machine for machine in status_json(config)["machines"]}


def status_text(config: Path, columns: int = 200) -> str:
    """`orchestrator status` on a terminal of ``columns``, without colour."""
    result = subprocess.run(
        [*ORCHESTRATOR, "--config", str(config), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def ssh(lab: Lab, host: str, command: str, timeout: float = 60) -> tuple[int, str, str]:
    """One command over plain `ssh` (strict host key checking): exit code, stdout, stderr.
    ``timeout``: a busy 2-core machine, where ssh, sshd and the shims all need a turn."""
    result = subprocess.run(
        lab.ssh_argv(host, command, connect_timeout=5),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr
