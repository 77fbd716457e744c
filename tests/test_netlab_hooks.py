"""`hooks.on_start/on_done/on_abort` against the real-host lab (tests/netlab), in the controller
scenario: the orchestrator runs inside the controller's namespaces, the controller (`local:
true`) reboots last and that reboot kills it, and the `orchestrator resume` its boot unit
starts finishes the run.

Every hook here is a real command (argv, no shell) that appends one JSON line to a file: the
summary it got on stdin, the three ORCHESTRATOR_* variables, its parent's PID and the boot id
of the machine it ran on. The verdicts come from those files and from the lab's ground truth
(reboots requested, boots, `resume_started {pid}`, `resume_exited {code}`, the processes left
in the controller), not from the orchestrator's own account of itself."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ORCHESTRATOR, REPO, latest_run
from tests.fault_lab import FAST_REBOOT, boots, reboots_requested, wait_for_run_state
from tests.netlab import CONTROLLER, Fault, Lab

pytestmark = pytest.mark.netlab

RUN_TIMEOUT = 120  # one whole run on a busy 2-core machine
FAILING_TIMEOUT = 4  # reboot.timeout where the gate is expected never to pass
ENV = ("ORCHESTRATOR_RUN_ID", "ORCHESTRATOR_STATE", "ORCHESTRATOR_FAILED_MACHINE")

# The hooks are Python scripts (in files, so each logged command is one line): argv, no shell.
# Appends {stdin, env, ppid, boot_id} as one JSON line to the file named by its argument.
RECORD = f"""
import json, os, sys
line = {{
    "stdin": json.load(sys.stdin),
    "env": {{k: os.environ.get(k) for k in {ENV!r}}},
    "ppid": os.getppid(),
    "boot_id": open("/proc/sys/kernel/random/boot_id").read().strip(),
}}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(line) + "\\n")
"""

# Ignores SIGTERM, starts a grandchild in its process group, says so, and sleeps for a minute:
# only SIGKILL to the whole group ends both.
SLEEP = """
import json, os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(["sleep", "61"])
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"pid": os.getpid(), "child": child.pid, "t": time.time()}) + "\\n")
time.sleep(60)
"""

FAIL = "import sys; sys.exit(1)"


def hook(script: str, name: str, out: Path) -> list[str]:
    """argv of a hook: ``script`` saved as ``name`` next to ``out``, which it is given."""
    path = out.parent / name
    path.write_text(script)
    return [sys.executable, str(path), str(out)]


def recorder(out: Path) -> list[str]:
    return hook(RECORD, "record_hook.py", out)


def lines(path: Path) -> list[dict[str, Any]]:
    """What the hooks wrote to ``path``: one dict a run of the hook; none if it never ran."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def controller_lab(netlab, tmp_path: Path, hosts: int, **kwargs: Any) -> tuple[Lab, Path]:
    """A lab with a controller whose boot unit runs `orchestrator resume` with our config."""
    config = tmp_path / "orchestrator.yaml"
    lab = netlab(
        hosts,
        controller=True,
        boot_time=0.5,
        kill_grace=1.0,
        resume_argv=[*ORCHESTRATOR, "--config", str(config), "resume"],
        resume_cwd=REPO,
        **kwargs,
    )
    return lab, config


def write(lab: Lab, config: Path, tmp_path: Path, hooks: dict[str, Any], **overrides: Any) -> Path:
    reboot = {**FAST_REBOOT, **overrides.pop("reboot", {})}
    return lab.write_config(config, tmp_path / "state", reboot=reboot, hooks=hooks, **overrides)


def spawn_in_controller(lab: Lab, config: Path, *args: str):
    return lab.spawn_in(
        CONTROLLER,
        [*ORCHESTRATOR, "--config", str(config), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_in_controller(lab: Lab, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.run_in(
        CONTROLLER,
        [*ORCHESTRATOR, "--config", str(config), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def finish_through_the_controllers_reboot(lab: Lab, config: Path) -> tuple[str, dict[str, Any]]:
    """Run inside the controller until its own reboot kills it; then wait for the boot-time
    resume to exit. Returns the first process's output and the `resume_exited` event."""
    run = spawn_in_controller(lab, config, "run")
    out, _ = run.communicate(timeout=RUN_TIMEOUT)
    assert run.returncode in (-signal.SIGTERM, -signal.SIGKILL), (run.returncode, out)
    return out, lab.wait_event(CONTROLLER, "resume_exited", timeout=RUN_TIMEOUT)


def assert_hook_saw(line: dict[str, Any], *, event: str, run_id: int, state: str, failed: str):
    assert line["stdin"]["event"] == event
    assert line["stdin"]["run"]["run_id"] == run_id
    assert line["stdin"]["run"]["state"] == state
    assert (line["stdin"]["run"]["failed_machine"] or "") == failed
    assert line["env"] == {
        "ORCHESTRATOR_RUN_ID": str(run_id),
        "ORCHESTRATOR_STATE": state,
        "ORCHESTRATOR_FAILED_MACHINE": failed,
    }


def test_hooks_of_a_run_finished_by_the_boot_time_resume_each_run_once(netlab, tmp_path):
    lab, config = controller_lab(netlab, tmp_path, 2)
    started, done, aborted = (tmp_path / f"{n}.jsonl" for n in ("start", "done", "abort"))
    write(
        lab,
        config,
        tmp_path,
        {
            "on_start": [recorder(started)],
            "on_done": [recorder(done)],
            "on_abort": [recorder(aborted)],
        },
    )
    boot_id_before = lab.boot_id(CONTROLLER)

    _, resumed = finish_through_the_controllers_reboot(lab, config)

    resume_log = Path(resumed["log"]).read_text()
    assert resumed["code"] == 0, resume_log
    order = ["h1", "h2", CONTROLLER]
    assert reboots_requested(lab) == order
    assert boots(lab) == dict.fromkeys(order, 1)
    run = latest_run(tmp_path / "state")
    assert run.state == "done", run.error

    [start] = lines(started)
    assert start["stdin"]["resumed"] is False
    assert start["boot_id"] == boot_id_before  # the first process, before the reboot
    assert start["stdin"]["event"] == "run_started"
    assert start["stdin"]["run"]["run_id"] == run.run_id
    assert start["env"]["ORCHESTRATOR_RUN_ID"] == str(run.run_id)

    [end] = lines(done)
    assert_hook_saw(end, event="run_finished", run_id=run.run_id, state="done", failed="")
    # Written by the resumed process: on the controller's new boot, by the boot unit's process.
    started_by_boot = lab.events(CONTROLLER, "resume_started")
    assert len(started_by_boot) == 1
    assert end["ppid"] == started_by_boot[0]["pid"] == resumed["pid"]
    assert end["boot_id"] == lab.boot_id(CONTROLLER) != boot_id_before
    outcomes = {m["name"]: m["outcome"] for m in end["stdin"]["run"]["machines"]}
    assert outcomes == dict.fromkeys(order, "healthy")

    assert lines(aborted) == []


def test_a_run_stopped_by_h2_runs_on_abort_once_naming_h2(netlab, tmp_path):
    lab, config = controller_lab(netlab, tmp_path, 3, faults={"h2": Fault(http="fail")})
    started, done, aborted = (tmp_path / f"{n}.jsonl" for n in ("start", "done", "abort"))
    write(
        lab,
        config,
        tmp_path,
        {
            "on_start": [recorder(started)],
            "on_done": [recorder(done)],
            "on_abort": [recorder(aborted)],
        },
        reboot={"timeout": FAILING_TIMEOUT},
    )

    run = spawn_in_controller(lab, config, "run")
    out, _ = run.communicate(timeout=RUN_TIMEOUT)

    assert run.returncode == 1, out
    assert reboots_requested(lab) == ["h1", "h2"]  # h3 and the controller never asked
    assert boots(lab) == {"h1": 1, "h2": 1}
    record = latest_run(tmp_path / "state")
    assert record.state == "aborted"
    assert len(lines(started)) == 1
    [abort] = lines(aborted)
    assert_hook_saw(abort, event="run_finished", run_id=record.run_id, state="aborted", failed="h2")
    assert "h2 did not pass the health gate" in abort["stdin"]["run"]["error"]
    outcomes = {m["name"]: m["outcome"] for m in abort["stdin"]["run"]["machines"]}
    assert outcomes == {"h1": "healthy", "h2": "failed", "h3": "untouched", CONTROLLER: "untouched"}
    assert lines(done) == []


def test_failing_and_hanging_hooks_are_warnings_and_the_hanging_one_is_killed(netlab, tmp_path):
    lab, config = controller_lab(netlab, tmp_path, 1)
    started, done, sleeper = (tmp_path / f"{n}.jsonl" for n in ("start", "done", "sleeper"))
    fail = hook(FAIL, "failing_hook.py", tmp_path / "unused")
    write(
        lab,
        config,
        tmp_path,
        {
            "on_start": [fail, recorder(started)],
            "on_done": [fail, hook(SLEEP, "sleeping_hook.py", sleeper), recorder(done)],
            "timeout": "2s",
        },
    )

    out, resumed = finish_through_the_controllers_reboot(lab, config)

    resume_log = Path(resumed["log"]).read_text()
    assert resumed["code"] == 0, resume_log  # the process that finished the run
    assert latest_run(tmp_path / "state").state == "done"
    assert boots(lab) == {"h1": 1, CONTROLLER: 1}
    # Each failure is a warning; the hooks after it still ran, each exactly once.
    assert "warning: hook on_start:" in out and "exit code 1" in out
    warnings = [line for line in resume_log.splitlines() if "warning: hook on_done:" in line]
    assert len(warnings) == 2, resume_log
    assert "exit code 1" in warnings[0]
    assert "within 2s" in warnings[1]
    assert len(lines(started)) == 1
    [end] = lines(done)
    assert end["env"]["ORCHESTRATOR_STATE"] == "done"
    # The hanging hook was started once, stopped long before its minute was up, and neither
    # it nor its grandchild (SIGTERM ignored) is left anywhere in the controller.
    [hanging] = lines(sleeper)
    assert resumed["t"] - hanging["t"] < 30
    left = [p for p in lab.processes_in(CONTROLLER) if str(sleeper) in p.argv or "61" in p.argv]
    assert left == [], left


def test_abort_with_no_orchestrator_running_runs_on_abort_once_and_resume_not_again(
    netlab, tmp_path
):
    # h1 takes 3 s to boot: the run is surely still verifying it when it is killed.
    lab, config = controller_lab(netlab, tmp_path, 2, faults={"h1": Fault(boot_time=3)})
    done, aborted = tmp_path / "done.jsonl", tmp_path / "abort.jsonl"
    write(lab, config, tmp_path, {"on_done": [recorder(done)], "on_abort": [recorder(aborted)]})

    run = spawn_in_controller(lab, config, "run")
    try:
        wait_for_run_state(tmp_path / "state", "verifying:h1", timeout=RUN_TIMEOUT)
    finally:
        run.kill()
        out, _ = run.communicate(timeout=60)
    assert run.returncode == -signal.SIGKILL, out
    assert lines(aborted) == []  # killed: nobody reported anything yet

    stopped = run_in_controller(lab, config, "abort")

    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "aborted (no orchestrator was running it)" in stopped.stdout + stopped.stderr
    record = latest_run(tmp_path / "state")
    assert record.state == "aborted"
    [abort] = lines(aborted)
    assert_hook_saw(abort, event="run_finished", run_id=record.run_id, state="aborted", failed="h1")

    again = run_in_controller(lab, config, "resume")

    assert again.returncode == 0, again.stdout + again.stderr
    assert len(lines(aborted)) == 1
    assert lines(done) == []
    assert latest_run(tmp_path / "state").state == "aborted"
    lab.wait_event("h1", "healthy", timeout=60)  # its reboot went on without the orchestrator
    assert reboots_requested(lab) == ["h1"]  # h2 and the controller never asked
