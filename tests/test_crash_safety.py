"""SIGKILL of a real `orchestrator run` at every state boundary, then `orchestrator resume`:
the run must end `done` with every machine rebooted exactly once — counted by the hosts
themselves (how many times each really booted), not by the orchestrator's log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.demo.simlab import SimHost
from tests.conftest import latest_run, orchestrator, spawn, wait_for_run, write_config

NAMES = ["alpha", "bravo"]
BOOT_ID = ["cat", "/proc/sys/kernel/random/boot_id"]
REBOOT = ["systemctl", "reboot"]


@dataclass
class Killer:
    """Kills the orchestrator from inside a host's SSH conversation, at an exact command."""

    process: subprocess.Popen[str] | None = None
    killed: list[str] = field(default_factory=list)

    def kill(self, where: str) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.killed.append(where)


def host_that_kills(killer: Killer, host: str, argv: list[str], nth: int, deliver: bool):
    class KillingHost(SimHost):
        seen = 0

        async def before_command(self, command: list[str]) -> bool:
            if self.name != host or command != argv or killer.killed:
                return True
            KillingHost.seen += 1
            if KillingHost.seen < nth:
                return True
            killer.kill(f"{host} {' '.join(argv)} #{nth}")
            return deliver

    return KillingHost


def _once_then_fast(tmp_path: Path) -> list[str]:
    """A command that hangs the first time (so the run can be killed in it) and then is quick."""
    marker = tmp_path / "step.started"
    script = (
        "import pathlib, sys, time\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        "first = not marker.exists()\nmarker.touch()\n"
        "time.sleep(30 if first else 0)\n"
    )
    return [sys.executable, "-c", script]


# (id, where the kill happens). Store-state kills poll the store; host kills happen inside the
# SSH conversation, so they land between two exact steps of the engine.
BOUNDARIES = [
    ("preflight", ("state", "preflight")),
    ("updating", ("state", "updating")),
    ("deploying", ("state", "deploying")),
    ("rebooting-before-intent", ("host", "bravo", BOOT_ID, 2, False)),
    ("rebooting-intent-saved-command-lost", ("host", "bravo", REBOOT, 1, False)),
    ("rebooting-command-delivered", ("host", "bravo", REBOOT, 1, True)),
    ("verifying-while-host-is-dark", ("truth", "bravo", "down")),
    ("verifying-as-ssh-returns", ("truth", "bravo", "ssh_up")),
    ("verifying-between-stable-passes", ("truth", "bravo", "healthy")),
    ("settling", ("state", "settling:alpha")),
    ("rebooting-second-machine", ("state", "rebooting:bravo")),
]


@pytest.mark.parametrize(("case", "kill"), BOUNDARIES, ids=[b[0] for b in BOUNDARIES])
def test_resume_after_sigkill_reboots_every_machine_exactly_once(tmp_path, make_lab, case, kill):
    killer = Killer()
    host_class = SimHost
    if kill[0] == "host":
        _, host, argv, nth, deliver = kill
        host_class = host_that_kills(killer, host, argv, nth, deliver)
    lab = make_lab(NAMES, host_class=host_class)
    state_dir = tmp_path / "state"
    config = write_config(
        tmp_path / "lab.yaml",
        lab.lab.config(
            state_dir,
            update={"command": _once_then_fast(tmp_path) if case == "updating" else ["true"]},
            deploy={"command": _once_then_fast(tmp_path) if case == "deploying" else ["true"]},
            reboot={"settle": "1s" if case == "settling" else "0s"},
        ),
    )
    killer.process = spawn(config, "run")
    if kill[0] == "state":
        wait_for_run(state_dir, lambda run: run.state == kill[1])
        killer.kill(kill[1])
    elif kill[0] == "truth":
        lab.wait_for_event(kill[1], kill[2])
        killer.kill(f"{kill[1]} {kill[2]}")
    else:
        killer.process.wait(60)
    assert killer.killed, "the orchestrator was never killed"
    assert killer.process.returncode == -signal.SIGKILL
    interrupted = latest_run(state_dir)
    assert interrupted is not None and interrupted.state not in ("done", "aborted")

    resumed = orchestrator(config, "resume", timeout=90)
    assert resumed.returncode == 0, resumed.stderr
    run = latest_run(state_dir)
    assert run.state == "done"
    assert [lab.reboots(name) for name in NAMES] == [1, 1], lab.lab.events
    assert lab.reboot_order()[-1] == "bravo"
    for record in run.machines:
        assert record.boot_id_after == lab.lab.hosts[record.name].boot_id


def test_controller_reboots_itself_last_and_resume_after_boot_finishes(tmp_path, make_lab):
    """The local machine: the run is killed by the (simulated) shutdown its own reboot command
    starts, and the boot unit's `resume` verifies the controller on its new boot id."""
    lab = make_lab(["alpha"])
    state_dir = tmp_path / "state"
    boot_id_file = tmp_path / "boot_id"
    state_file = tmp_path / "system-state"
    requested = tmp_path / "reboot-requested"
    boot_id_file.write_text(f"{uuid.uuid4()}\n")
    state_file.write_text("running\n")
    data = lab.lab.config(
        state_dir,
        local={
            "reboot_command": ["touch", str(requested)],
            "state_command": ["cat", str(state_file)],
            "boot_id_file": str(boot_id_file),
        },
    )
    data["machines"]["self"] = {"local": True}
    config = write_config(tmp_path / "lab.yaml", data)
    run = spawn(config, "run")
    wait_for_run(state_dir, lambda _: requested.exists())
    boot_id_before = boot_id_file.read_text().strip()
    # systemd's shutdown: SIGTERM to the service, the machine goes down and comes back.
    state_file.write_text("stopping\n")
    run.send_signal(signal.SIGTERM)
    assert run.wait(10) == -signal.SIGTERM
    interrupted = latest_run(state_dir)
    assert interrupted.state in ("rebooting:self", "verifying:self")
    assert interrupted.machine("self").boot_id_before == boot_id_before
    boot_id_file.write_text(f"{uuid.uuid4()}\n")
    state_file.write_text("running\n")
    resumed = orchestrator(config, "resume")
    assert resumed.returncode == 0, resumed.stderr
    final = latest_run(state_dir)
    assert final.state == "done"
    assert final.machine("self").boot_id_after == boot_id_file.read_text().strip()
    assert lab.reboots("alpha") == 1
    assert requested.exists()


def test_controller_reboot_that_never_happened_is_requested_again_on_resume(tmp_path, make_lab):
    """Killed after saving the intent but before its reboot command ran: the boot id is the
    same and the system still `running`, so resume sends the reboot (once) instead of waiting
    for a reboot that will never come."""
    lab = make_lab(["alpha"])
    state_dir = tmp_path / "state"
    boot_id_file = tmp_path / "boot_id"
    boot_id_file.write_text(f"{uuid.uuid4()}\n")
    calls = tmp_path / "reboot-calls"
    # First call: the "crash" — the orchestrator dies before its reboot request took effect.
    # Later calls: the reboot takes effect (new boot id) and, as a real shutdown would, the
    # orchestrator is stopped.
    script = (
        "import os, pathlib, signal, uuid\n"
        f"calls = pathlib.Path({str(calls)!r})\n"
        "n = len(calls.read_text()) if calls.exists() else 0\n"
        "calls.write_text('x' * (n + 1))\n"
        f"if n: pathlib.Path({str(boot_id_file)!r}).write_text(str(uuid.uuid4()))\n"
        "os.kill(os.getppid(), signal.SIGKILL)\n"
    )
    data = lab.lab.config(
        state_dir,
        local={
            "reboot_command": [sys.executable, "-c", script],
            "state_command": ["echo", "running"],
            "boot_id_file": str(boot_id_file),
        },
    )
    data["machines"]["self"] = {"local": True}
    config = write_config(tmp_path / "lab.yaml", data)
    first = orchestrator(config, "run")
    assert first.returncode == -signal.SIGKILL
    assert latest_run(state_dir).state == "rebooting:self"
    second = orchestrator(config, "resume")
    assert second.returncode == -signal.SIGKILL
    assert calls.read_text() == "xx"
    assert "never started; requesting it again" in second.stderr
    third = orchestrator(config, "resume")
    assert third.returncode == 0, third.stderr
    assert calls.read_text() == "xx"  # the reboot was not requested a third time
    assert latest_run(state_dir).state == "done"
    assert lab.reboots("alpha") == 1


def test_sigterm_during_a_remote_verify_is_resumed_like_a_crash(tmp_path, make_lab):
    lab = make_lab(NAMES)
    state_dir = tmp_path / "state"
    config = write_config(tmp_path / "lab.yaml", lab.lab.config(state_dir))
    run = spawn(config, "run")
    lab.wait_for_event("alpha", "down")
    os.kill(run.pid, signal.SIGTERM)
    run.wait(10)
    assert orchestrator(config, "resume").returncode == 0
    assert [lab.reboots(name) for name in NAMES] == [1, 1]
