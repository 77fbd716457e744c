"""Waves (issue 11, item 3) against real sshd hosts, judged by ground truth: when each host was
asked to reboot, went down, and was really healthy again (the hosts' own log).

- ``max_unavailable: 2`` over five hosts: two waves of two, then one; the hosts of a wave are
  down together, never more than two at once, and no host of a wave is asked before every
  host of the wave before it is healthy;
- explicit ``waves``, one of whose hosts never passes its gate: the run ends after that wave,
  and the later wave is never touched;
- one that fails at once (another host key) while its wave-mate is still dark: the wave-mate
  is still gated to the end and proven healthy;
- SIGKILL while a wave's reboots are being sent, and while it is being gated, then
  ``resume``: every host rebooted exactly once.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import latest_run
from tests.fault_lab import (
    boots,
    first_event,
    orchestrator,
    reboots_requested,
    spawn,
    status_json,
    status_text,
    write_config,
)
from tests.netlab import fixtures
from tests.netlab.lab import Fault

pytestmark = pytest.mark.netlab
netlab = fixtures.netlab

FIVE = ["h1", "h2", "h3", "h4", "h5"]


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of the intervals that overlap at one moment."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = most = 0
    for _, step in edges:  # an end sorts before a start at the same moment (-1 < 1)
        current += step
        most = max(most, current)
    return most


def unavailable(lab: Any, host: str, event: str) -> tuple[float, float]:
    """From ``event`` (``reboot_requested`` or ``down``) to really healthy again."""
    start = first_event(lab, host, event)["t"]
    return start, first_event(lab, host, "healthy", since=start)["t"]


def test_max_unavailable_reboots_waves_together_and_never_more_at_once(netlab, tmp_path):
    # Boot times differ, so a wave's hosts come back at different moments and the next wave
    # must wait for the slowest.
    faults = {name: Fault(boot_time=0.5 + 0.5 * index) for index, name in enumerate(FIVE)}
    lab = netlab(FIVE, boot_time=0.5, faults=faults)
    config = write_config(lab, tmp_path, max_unavailable=2)

    result = orchestrator(config, "run", timeout=240)

    assert result.returncode == 0, result.stderr
    waves = [["h1", "h2"], ["h3", "h4"], ["h5"]]
    # Ground truth: every host rebooted once, in its wave's turn.
    assert boots(lab) == {name: 1 for name in FIVE}
    asked = reboots_requested(lab)
    assert [sorted(asked[0:2]), sorted(asked[2:4]), asked[4:]] == waves
    # Never more than two down at once, counting from each reboot request to really healthy.
    assert most_at_once([unavailable(lab, name, "reboot_requested") for name in FIVE]) == 2
    # ... and two really were down together: a wave is not one host after the other.
    for wave in waves[:2]:
        assert most_at_once([unavailable(lab, name, "down") for name in wave]) == 2, wave
    # No host of a wave was asked before every host of the wave before it was healthy.
    for before, after in itertools.pairwise(waves):
        last_healthy = max(unavailable(lab, name, "reboot_requested")[1] for name in before)
        first_asked = min(first_event(lab, name, "reboot_requested")["t"] for name in after)
        assert last_healthy < first_asked, (before, after)
    # What the owner sees: the waves, and each machine's.
    status = status_json(config)
    assert status["state"] == "done"
    assert status["waves"] == waves
    assert {m["name"]: m["wave"] for m in status["machines"]} == {
        "h1": 1,
        "h2": 1,
        "h3": 2,
        "h4": 2,
        "h5": 3,
    }
    assert all(m["state"] == "healthy" for m in status["machines"])
    header = next(line for line in status_text(config).splitlines() if line.startswith("machine"))
    assert header.split()[:3] == ["machine", "wave", "state"]


def test_a_failure_in_a_wave_stops_the_run_after_that_wave(netlab, tmp_path):
    hosts = ["h1", "h2", "h3"]
    lab = netlab(hosts, boot_time=0.5, faults={"h2": Fault(http="fail", boot_time=0.5)})
    config = write_config(lab, tmp_path, waves=[["h1", "h2"], ["h3"]], reboot={"timeout": "12s"})

    result = orchestrator(config, "run", timeout=240)

    assert result.returncode == 1, result.stderr
    # Ground truth: both hosts of the first wave rebooted once; h3 was never asked.
    assert sorted(reboots_requested(lab)) == ["h1", "h2"]
    assert boots(lab) == {"h1": 1, "h2": 1}
    first_event(lab, "h1", "healthy", since=first_event(lab, "h1", "booted")["t"])
    record = latest_run(tmp_path / "state")
    assert record is not None and record.state == "aborted"
    probe = f"http {lab.hosts['h2'].health_url}: HTTP 503 (want 200)"
    assert record.error == (
        f"h2 did not pass the health gate within 12s; last failing probe: {probe}"
    )
    assert record.machine("h1").healthy_at is not None
    assert record.machine("h2").error == record.error
    assert record.machine("h3").reboot_requested_at is None
    machines = {m["name"]: m for m in status_json(config)["machines"]}
    assert [machines[name]["state"] for name in hosts] == ["healthy", "failed", "untouched"]


def test_a_machine_that_fails_at_once_leaves_its_wave_mates_gated_to_the_end(netlab, tmp_path):
    # h2 comes back with another SSH host key: refused at its first contact, while h1 is
    # still dark for seconds. h1's reboot was sent; the run must still prove it back.
    faults = {"h1": Fault(boot_time=4.0), "h2": Fault(new_host_key=True)}
    lab = netlab(["h1", "h2", "h3"], boot_time=0.5, faults=faults)
    config = write_config(lab, tmp_path, waves=[["h1", "h2"], ["h3"]])

    result = orchestrator(config, "run", timeout=240)

    assert result.returncode == 1, result.stderr
    assert boots(lab) == {"h1": 1, "h2": 1} and sorted(reboots_requested(lab)) == ["h1", "h2"]
    record = latest_run(tmp_path / "state")
    assert record is not None and record.state == "aborted"
    assert "h2: SSH host key" in record.error and "refusing to run any command" in record.error
    # h2 was refused long before h1 came back; h1 was proven healthy all the same.
    h2_refused_by = first_event(lab, "h2", "ssh_up")["t"]
    h1_back = first_event(lab, "h1", "healthy", since=first_event(lab, "h1", "booted")["t"])["t"]
    assert h1_back > h2_refused_by + 2
    healthy_at = record.machine("h1").healthy_at
    assert healthy_at is not None and healthy_at.timestamp() >= h1_back
    assert record.machine("h3").reboot_requested_at is None


def _kill_when(state_dir: Path, ready: Any, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        run = latest_run(state_dir)
        if run is not None and ready(run):
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            return
        assert process.poll() is None, log.read_text(errors="replace")
        time.sleep(0.002)
    raise AssertionError(f"never ready to kill: {latest_run(state_dir)}")


@pytest.mark.parametrize(
    "moment",
    [
        pytest.param(
            lambda run: any(m.reboot_requested_at for m in run.machines), id="first-intent-saved"
        ),
        pytest.param(lambda run: run.state == "verifying:wave-1", id="verifying-wave-1"),
    ],
)
def test_sigkill_during_a_wave_then_resume_reboots_every_host_exactly_once(
    netlab, tmp_path, moment
):
    hosts = ["h1", "h2", "h3", "h4"]
    lab = netlab(hosts, boot_time=1.5)
    config = write_config(lab, tmp_path, max_unavailable=2)
    log = tmp_path / "first.log"
    first = spawn(config, "run", log=log)

    _kill_when(tmp_path / "state", moment, first, log)
    resumed = orchestrator(config, "resume", timeout=240)

    assert resumed.returncode == 0, resumed.stderr
    assert boots(lab) == {name: 1 for name in hosts}
    assert sorted(reboots_requested(lab)) == hosts
    record = latest_run(tmp_path / "state")
    assert record is not None and record.state == "done"
    assert all(m.healthy_at is not None for m in record.machines)
