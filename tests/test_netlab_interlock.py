"""The fleet interlock (issue 11, item 2) against real sshd hosts, judged by ground truth (which
host was asked to reboot, and when):

- a machine already rebooted that turns unhealthy blocks the next reboot: the run waits
  `interlock.timeout`, then aborts naming it and its failing probe; no other host is asked;
- one that is healthy again within the timeout only delays the next reboot, which is asked
  after its recovery, and the run ends `done` with every host rebooted once, in order;
- a machine still pending (never rebooted) that turns unhealthy blocks the reboot before it.

The unhealthy turn happens while the run settles after h1 (`reboot.settle`), i.e. after h1
passed its gate and before h2's turn, through the hosts themselves (`set_http`,
`set_system_state`), never through the orchestrator.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import latest_run
from tests.fault_lab import (
    assert_each_healthy_before_the_next_was_asked,
    boots,
    first_event,
    reboots_requested,
    spawn,
    wait_for_run_state,
    write_config,
)
from tests.netlab import fixtures

pytestmark = pytest.mark.netlab
netlab = fixtures.netlab

HOSTS = ["h1", "h2", "h3"]
# Long enough that the test thread sees `settling:h1` and turns a host unhealthy before h2's
# turn, even on a busy 2-core machine.
SETTLE = 3


def start_run(
    lab: Any, tmp_path: Path, interlock_timeout: float
) -> tuple[subprocess.Popen[bytes], Path]:
    config = write_config(
        lab,
        tmp_path,
        reboot={"settle": SETTLE},
        interlock={"timeout": interlock_timeout},
    )
    log = tmp_path / "run.log"
    return spawn(config, "run", log=log), log


def finish(run: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> tuple[int, str]:
    try:
        code = run.wait(timeout=timeout)
    finally:
        if run.poll() is None:
            run.kill()
    return code, log.read_text(errors="replace")


def abort_message(output: str) -> str:
    """What the run logged when it aborted (`HH:MM:SS run N aborted: <message>`)."""
    lines = [line for line in output.splitlines() if " aborted: " in line and " run " in line]
    assert len(lines) == 1, output
    return lines[0].split(" aborted: ", 1)[1]


def test_an_unhealthy_done_machine_blocks_the_next_reboot(netlab, tmp_path):
    lab = netlab(HOSTS, boot_time=0.5)
    run, log = start_run(lab, tmp_path, interlock_timeout=8)

    wait_for_run_state(tmp_path / "state", "settling:h1", timeout=90)
    first_event(lab, "h1", "healthy", since=first_event(lab, "h1", "reboot_requested")["t"])
    lab.set_http("h1", "fail")
    broken_at = lab.wait_event("h1", "http_mode")["t"]
    code, output = finish(run, log)

    assert code == 1, output
    probe = f"http {lab.hosts['h1'].health_url}: HTTP 503 (want 200)"
    wanted = f"interlock: h1 is unhealthy ({probe}); not taking h2 down"
    assert abort_message(output) == wanted
    assert f"h2: waiting: interlock: h1: {probe}" in output
    # Ground truth: h1 alone was ever asked to reboot, and it rebooted once.
    assert reboots_requested(lab) == ["h1"]
    assert boots(lab) == {"h1": 1}
    # The run waited out the interlock before it gave up (after the settle, h2's turn).
    record = latest_run(tmp_path / "state")
    assert record is not None and record.state == "aborted"
    assert record.error == wanted
    assert record.finished_at is not None
    assert record.finished_at.timestamp() - broken_at >= 8


def test_a_machine_healthy_again_within_the_timeout_only_delays_the_next_reboot(netlab, tmp_path):
    lab = netlab(HOSTS, boot_time=0.5)
    run, log = start_run(lab, tmp_path, interlock_timeout=60)

    wait_for_run_state(tmp_path / "state", "settling:h1", timeout=90)
    lab.set_http("h1", "fail")
    # Unhealthy until well into h2's turn (the settle ends SETTLE s after h1 was healthy).
    time.sleep(SETTLE + 2)
    assert reboots_requested(lab) == ["h1"], "h2 was taken down while h1 was unhealthy"
    lab.set_http("h1", "ok")
    code, output = finish(run, log)

    assert code == 0, output
    modes = lab.events("h1", "http_mode")
    assert [e["mode"] for e in modes] == ["fail", "ok"]
    recovered = modes[-1]["t"]
    # Ground truth: all three, once each, in order; h2 only after h1 served 200 again.
    assert reboots_requested(lab) == HOSTS
    assert boots(lab) == {name: 1 for name in HOSTS}
    assert first_event(lab, "h2", "reboot_requested")["t"] > recovered
    assert_each_healthy_before_the_next_was_asked(lab, HOSTS)
    assert "h2: waiting: interlock: h1: " in output
    assert "h2: interlock: every other machine is healthy again" in output
    record = latest_run(tmp_path / "state")
    assert record is not None and record.state == "done"


def test_an_unhealthy_pending_machine_blocks_the_reboot_before_it(netlab, tmp_path):
    lab = netlab(HOSTS, boot_time=0.5)
    run, log = start_run(lab, tmp_path, interlock_timeout=8)

    wait_for_run_state(tmp_path / "state", "settling:h1", timeout=90)
    lab.set_system_state("h3", "degraded")
    code, output = finish(run, log)

    assert code == 1, output
    wanted = "interlock: h3 is unhealthy (system: degraded); not taking h2 down"
    assert abort_message(output) == wanted
    # Ground truth: neither h2 nor h3 was ever asked to reboot.
    assert reboots_requested(lab) == ["h1"]
    assert boots(lab) == {"h1": 1}
