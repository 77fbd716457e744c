"""Issue 8, item 12: an orchestrator SIGKILLed outside systemd leaves its update/deploy step
running (its own process group). The step's process group is recorded in the store, and the
resume ends it — SIGTERM, then SIGKILL, checked gone — before it starts the step again; a
process group id that now belongs to someone else is never signalled.

A real `orchestrator run` is killed (the process alone, not its group), then a real
`orchestrator resume`. The step is a script that logs, at each start, its pid and which
processes of earlier starts are still alive."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

from orchestrator.process import proc_stat
from orchestrator.store import STORE_FILE
from tests.conftest import latest_run, orchestrator, spawn, wait_for_run, write_config

STEP = """
import os, pathlib, signal, subprocess, sys, time

events = pathlib.Path(sys.argv[1])
first = not events.exists()

def alive(pid):
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"

earlier = [int(line.split()[1]) for line in (events.read_text() if not first else "").splitlines()
           if line.startswith("pid ")]
with events.open("a") as log:
    log.write(f"start {os.getpid()} alive={[p for p in earlier if alive(p)]}\\n")
if first:
    # A child that ignores SIGTERM, so only the SIGKILL that follows ends it.
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
    time.sleep(0.2)  # let it install its handler
    with events.open("a") as log:
        log.write(f"pid {os.getpid()}\\npid {child.pid}\\n")
    time.sleep(300)
"""


def alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat.state != "Z"


def _events(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_resume_ends_the_orphaned_step_before_running_it_again(tmp_path, make_lab):
    lab = make_lab(["alpha"])
    events = tmp_path / "events"
    state_dir = tmp_path / "state"
    config = write_config(
        tmp_path / "lab.yaml",
        lab.lab.config(
            state_dir,
            update={"command": [sys.executable, "-c", STEP, str(events)], "timeout": "10m"},
        ),
    )
    first = spawn(config, "run")
    _wait_for(lambda: len([e for e in _events(events) if e.startswith("pid ")]) == 2)
    old = [int(e.split()[1]) for e in _events(events) if e.startswith("pid ")]
    interrupted = latest_run(state_dir)
    assert interrupted is not None and interrupted.state == "updating"
    assert interrupted.step_process is not None and interrupted.step_process.pgid == old[0]

    first.send_signal(signal.SIGKILL)  # the orchestrator alone, as a crash would
    first.wait()
    try:
        assert all(alive(pid) for pid in old), "the step did not outlive the orchestrator"

        resumed = orchestrator(config, "resume", timeout=120)

        assert resumed.returncode == 0, resumed.stderr
        starts = [e for e in _events(events) if e.startswith("start ")]
        assert len(starts) == 2, _events(events)
        # The second start saw none of the first start's processes alive.
        assert starts[1].endswith(" alive=[]"), _events(events)
        assert not any(alive(pid) for pid in old)
        assert "stopping it before starting again" in resumed.stderr
        run = latest_run(state_dir)
        assert run.state == "done" and run.step_process is None
        assert lab.reboots("alpha") == 1
    finally:
        for pid in old:  # whatever happened, leave nothing behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_recorded_process_group_that_is_no_longer_ours_is_left_alone(tmp_path, make_lab):
    """The store names a process group whose id now belongs to an unrelated program (the step
    ended and the id was reused): resume must not signal it."""
    lab = make_lab(["alpha"])
    state_dir = tmp_path / "state"
    config = write_config(
        tmp_path / "lab.yaml",
        lab.lab.config(state_dir, deploy={"command": ["sleep", "300"], "timeout": "10m"}),
    )
    first = spawn(config, "run")
    run = wait_for_run(state_dir, lambda r: r.state == "deploying" and r.step_process is not None)
    first.send_signal(signal.SIGKILL)
    first.wait()
    step = run.step_process
    assert step is not None
    os.killpg(step.pgid, signal.SIGKILL)  # the step has ended by itself
    _wait_for(lambda: not alive(step.pgid))
    # An unrelated program leading its own process group, recorded in the step's place: its
    # start time is not the recorded one, and it does not carry the step's token.
    unrelated = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        with contextlib.closing(sqlite3.connect(state_dir / STORE_FILE)) as db, db:
            db.execute("UPDATE runs SET step_pgid=? WHERE run_id=?", (unrelated.pid, run.run_id))
        fixed = _fast_deploy(config)
        resumed = orchestrator(fixed, "resume", timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        assert unrelated.poll() is None, "an unrelated process group was signalled"
        assert latest_run(state_dir).state == "done"
    finally:
        unrelated.kill()
        unrelated.wait()


def _fast_deploy(config: Path) -> Path:
    data = yaml.safe_load(config.read_text())
    data["deploy"]["command"] = ["true"]
    return write_config(config.with_name("fast.yaml"), data)
