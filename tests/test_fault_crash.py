"""Fault matrix (issue 3), crash row: SIGKILL of the real orchestrator at random moments of a
run against the real-host lab, then `orchestrator resume` — judged by how often each host
really booted, not by what the orchestrator believes.

Unlike test_crash_safety.py (an exact kill at every state boundary, simulated hosts), the
kill instants here are drawn at random, so they also land inside SSH handshakes, half-sent
reboot commands, a host going dark and TCP connects in flight."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.fault_lab import (
    boots,
    first_event,
    latest_run,
    orchestrator,
    reboots_requested,
    spawn,
    write_config,
)

pytestmark = pytest.mark.netlab

HOSTS = ["h1", "h2"]
# Kill instants drawn uniformly over a whole run (process start to exit) ...
UNIFORM_TRIALS = 20
# ... and over the moments right after the deploy step, when the first machine's boot id is
# read, its intent saved and its reboot sent: that lasts a few tens of milliseconds, which
# uniform draws over a whole run almost never hit. The deploy command (config, like any
# other) marks when it ran; the kill follows it by a random delay in [0, NEAR_REBOOT_WINDOW].
NEAR_REBOOT_TRIALS = 8
NEAR_REBOOT_WINDOW = 0.06


def wait_for_file(path: Path, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared (orchestrator exit {process.poll()})")
        time.sleep(0.0005)


def test_sigkill_at_random_moments_then_resume_reboots_each_host_exactly_once(netlab, tmp_path):
    lab = netlab(HOSTS, boot_time=0.5, shutdown_delay=0.1)

    # How long an undisturbed run takes here: the uniform kill instants are drawn over it.
    (tmp_path / "calibration").mkdir()
    calibration = write_config(lab, tmp_path / "calibration", name="run")
    undisturbed = orchestrator(calibration, "run")
    assert undisturbed.returncode == 0, undisturbed.stderr
    duration = undisturbed.ended - undisturbed.started

    killed_in: Counter[str] = Counter()
    for seed in range(UNIFORM_TRIALS + NEAR_REBOOT_TRIALS):
        rng = random.Random(seed)
        near_reboot = seed >= UNIFORM_TRIALS
        delay = rng.uniform(0, NEAR_REBOOT_WINDOW if near_reboot else duration)
        trial_dir = tmp_path / f"trial-{seed}"
        trial_dir.mkdir()
        deployed = trial_dir / "deployed"
        config = write_config(
            lab, trial_dir, name="run", deploy={"command": ["touch", str(deployed)]}
        )
        state_dir = trial_dir / "state"
        log = trial_dir / "orchestrator.log"
        since = time.time()

        run = spawn(config, "run", log=log)
        try:
            if near_reboot:
                wait_for_file(deployed, run)
            run.wait(delay)
        except subprocess.TimeoutExpired:  # still running: the moment has come
            run.send_signal(signal.SIGKILL)
            run.wait()
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
        interrupted = latest_run(state_dir)
        where = "finished" if run.returncode == 0 else (interrupted.state if interrupted else None)
        if where is not None and where.startswith("rebooting:"):
            host = where.partition(":")[2]
            intent = interrupted.machine(host).reboot_requested_at is not None
            sent = host in reboots_requested(lab, since=since)
            where += " (reboot sent)" if sent else " (intent saved)" if intent else ""
        killed_in[str(where)] += 1

        resumed = orchestrator(config, "resume")
        with log.open("a") as f:
            f.write(f"--- resume (exit {resumed.returncode})\n{resumed.stderr}")
        if interrupted is None:
            # Killed before the run was recorded: nothing to resume, nothing may have been
            # touched; the next `run` (the timer, tomorrow) does the work.
            assert reboots_requested(lab, since=since) == [], log.read_text()
            again = orchestrator(config, "run")
            with log.open("a") as f:
                f.write(f"--- run again (exit {again.returncode})\n{again.stderr}")
        anchor = "the deploy step + " if near_reboot else ""
        # What the hosts themselves did and reported going wrong (e.g. an sshd that did not
        # start), so a failure under load says whether the lab or the orchestrator was at fault.
        story = "\n".join(
            f"  {e['t'] - since:7.3f} {e['host']} {e['event']}"
            + (f" {e['error']}" if "error" in e else "")
            for e in lab.events(since=since)
        )
        context = (
            f"seed {seed}: killed {anchor}{delay:.3f}s in, at {where}\n{log.read_text()}"
            f"lab events (s after the trial began):\n{story}"
        )

        assert resumed.returncode == 0, context
        final = latest_run(state_dir)
        assert final is not None and final.state == "done", context
        assert boots(lab, since=since) == dict.fromkeys(HOSTS, 1), context
        # (A reboot request repeated while the host is already going down would be harmless;
        # the boot count above is what must be exact.)
        assert list(dict.fromkeys(reboots_requested(lab, since=since))) == HOSTS, context
        healthy = first_event(lab, "h1", "healthy", since=since)["t"]
        assert healthy < first_event(lab, "h2", "reboot_requested", since=since)["t"], context
        for record in final.machines:
            assert record.boot_id_after == lab.boot_id(record.name), context

    print(killed_in)
    # The draws must really have interrupted runs mid-rollout, not only before or after them,
    # and some must have hit the reboot request itself.
    mid_rollout = sum(n for where, n in killed_in.items() if ":" in where)
    assert mid_rollout >= UNIFORM_TRIALS // 2, killed_in
    assert sum(n for where, n in killed_in.items() if "rebooting:" in where) >= 1, killed_in
