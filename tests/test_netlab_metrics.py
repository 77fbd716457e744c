"""The Prometheus textfile (issue 9, item 3) against the real-host lab (tests/netlab): a real
`orchestrator run` on two hosts that really reboot, its metrics file watched from outside the
whole time, the way node_exporter's textfile collector reads it.

A watcher thread polls the file (inode, mtime, size) every few milliseconds and keeps every
version it sees, read whole and checked to be mode 0644 through the descriptor it read; each
version must pass the real `promtool check metrics`. The values are compared with the store
and with the hosts' ground truth. The orchestrator runs with umask 0077, as its systemd units
do, so a file made with the umask's mode would show up as 0600 here."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator import report
from orchestrator.store import RunRecord
from tests import fault_lab
from tests.conftest import latest_run
from tests.fault_lab import boots, reboots_requested, visited_states, write_config
from tests.netlab import Fault, Lab
from tests.unit.test_metrics import P, Samples, check_metrics, samples, series, value

pytestmark = pytest.mark.netlab

HOSTS = ["h1", "h2"]
RUN_TIMEOUT = 180  # one whole run on a busy 2-core machine
FAILING_TIMEOUT = 6  # reboot.timeout where the gate never passes
UMASK = 0o077  # the systemd units' UMask


class Watcher:
    """Every version of the metrics file, as a reader polling it would have seen it."""

    def __init__(self, path: Path, interval: float = 0.002) -> None:
        self.path = path
        self.interval = interval
        self.versions: list[str] = []
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        time.sleep(0.1)  # the last rename, if it happened just now
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        seen: tuple[int, int, int] | None = None
        while not self._stop.is_set():
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                if seen is not None:
                    self.problems.append("the file disappeared")
                time.sleep(self.interval)
                continue
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if key != seen:
                seen = key
                self._read()
            time.sleep(self.interval)

    def _read(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            self.problems.append(f"cannot open: {exc}")
            return
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode != 0o644:
                self.problems.append(f"mode {mode:04o}")
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        text = b"".join(chunks).decode()
        if not self.versions or self.versions[-1] != text:
            self.versions.append(text)

    def states(self) -> list[str]:
        """The run states the versions showed, in order, repeats folded."""
        shown: list[str] = []
        for text in self.versions:
            [info] = series(samples(text), "run_state_info")
            state = info["state"] + (f":{info['machine']}" if info["machine"] else "")
            if not shown or shown[-1] != state:
                shown.append(state)
        return shown

    def assert_every_version_valid(self) -> None:
        assert self.problems == [], self.problems
        assert self.versions, "the file was never written"
        for text in self.versions:
            check_metrics(text)
            assert P + "run_in_progress" in text, text  # a whole file, never an empty one


def spawn(config: Path, *args: str, log: Path) -> subprocess.Popen[bytes]:
    return fault_lab.spawn(config, *args, log=log, umask=UMASK)


def finish(process: subprocess.Popen[bytes], log: Path) -> str:
    process.wait(timeout=RUN_TIMEOUT)
    return log.read_text()


def lab_with_metrics(
    netlab, tmp_path: Path, **lab_args: Any
) -> tuple[Lab, Path, Path, Path]:  # lab, config, textfile, state_dir
    reboot_timeout = lab_args.pop("reboot_timeout", 60)
    lab = netlab(HOSTS, **lab_args)
    textfile = tmp_path / "node-exporter" / "lab_orchestrator.prom"
    textfile.parent.mkdir()
    config = write_config(
        lab,
        tmp_path,
        metrics={"textfile": str(textfile)},
        reboot={"timeout": reboot_timeout},
    )
    return lab, config, textfile, tmp_path / "state"


def final(textfile: Path) -> Samples:
    text = textfile.read_text()
    check_metrics(text)
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o644
    # nothing but the file itself in the collector's directory (no temporary left behind)
    assert os.listdir(textfile.parent) == [textfile.name]
    return samples(text)


def assert_durations_match_the_store(parsed: Samples, run: RunRecord) -> None:
    for machine in run.machines:
        took = report.seconds_between(machine.reboot_requested_at, machine.healthy_at)
        assert took is not None, machine
        shown = value(parsed, "machine_reboot_duration_seconds", machine=machine.name)
        assert shown == pytest.approx(took, abs=0.002), machine.name
        assert value(
            parsed, "machine_last_healthy_timestamp_seconds", machine=machine.name
        ) == pytest.approx(machine.healthy_at.timestamp(), abs=0.002)


def test_every_version_of_the_file_during_a_run_is_valid_and_the_end_matches_the_store(
    netlab, tmp_path
):
    lab, config, textfile, state_dir = lab_with_metrics(netlab, tmp_path, boot_time=1.0)
    log = tmp_path / "run.log"

    with Watcher(textfile) as watcher:
        out = finish(spawn(config, "run", log=log), log)

    run = latest_run(state_dir)
    assert run is not None and run.state == "done", out
    # (The lab's hosts are not NixOS: that one warning each is not the metrics' doing.)
    assert all("not NixOS" in line for line in out.splitlines() if "warning" in line), out
    assert reboots_requested(lab) == HOSTS and boots(lab) == dict.fromkeys(HOSTS, 1)
    watcher.assert_every_version_valid()
    # The versions seen follow the run's own path through its states (a poll may miss a
    # state that lasted a moment, never one of those that wait on a rebooting host).
    visited = visited_states(state_dir, run.run_id)
    shown = watcher.states()
    assert shown == [state for state in visited if state in shown], (shown, visited)
    assert {"verifying:h1", "verifying:h2", "done"} <= set(shown), shown
    assert len(watcher.versions) >= 6, len(watcher.versions)

    parsed = final(textfile)
    assert value(parsed, "run_in_progress") == 0
    assert value(parsed, "last_run_success") == 1
    assert value(parsed, "runs_total", kind="nightly", outcome="done") == 1
    assert value(parsed, "runs_total", kind="nightly", outcome="aborted") == 0
    assert run.finished_at is not None
    assert value(parsed, "last_success_timestamp_seconds") == pytest.approx(
        run.finished_at.timestamp(), abs=0.002
    )
    assert series(parsed, "machine_last_outcome") == [
        {"machine": "h1", "outcome": "healthy"},
        {"machine": "h2", "outcome": "healthy"},
    ]
    assert_durations_match_the_store(parsed, run)
    # ... and with the hosts' own account: the orchestrator records its request before the
    # host gets it, and sees the host healthy only after the host says it is
    for name in HOSTS:
        [asked] = lab.events(name, "reboot_requested")
        [healthy] = lab.events(name, "healthy")
        assert value(parsed, "machine_last_healthy_timestamp_seconds", machine=name) > healthy["t"]
        took = value(parsed, "machine_reboot_duration_seconds", machine=name)
        assert took > healthy["t"] - asked["t"], (name, took)


def test_a_killed_run_leaves_a_valid_file_in_its_state_and_resume_finishes_it(netlab, tmp_path):
    # h1 takes long to come back: time to kill the run while it verifies h1
    lab, config, textfile, state_dir = lab_with_metrics(
        netlab, tmp_path, boot_time=1.0, faults={"h1": Fault(boot_time=6.0)}
    )
    log = tmp_path / "run.log"

    with Watcher(textfile) as watcher:
        first = spawn(config, "run", log=log)
        deadline = time.monotonic() + RUN_TIMEOUT
        while not textfile.exists() or 'state="verifying"' not in textfile.read_text():
            assert first.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait()
    killed = latest_run(state_dir)
    assert killed is not None and killed.state == "verifying:h1", killed

    watcher.assert_every_version_valid()
    parsed = final(textfile)
    assert value(parsed, "run_in_progress") == 1
    assert series(parsed, "run_state_info") == [
        {"state": "verifying", "machine": "h1", "kind": "nightly"}
    ]
    assert series(parsed, "last_run_success") == []
    assert value(parsed, "runs_total", kind="nightly", outcome="done") == 0
    assert series(parsed, "machine_last_outcome") == [
        {"machine": "h1", "outcome": "verifying"},
        {"machine": "h2", "outcome": "pending"},
    ]

    resume_log = tmp_path / "resume.log"
    with Watcher(textfile) as watcher:
        out = finish(spawn(config, "resume", log=resume_log), resume_log)

    run = latest_run(state_dir)
    assert run is not None and run.run_id == killed.run_id and run.state == "done", out
    assert boots(lab) == dict.fromkeys(HOSTS, 1)  # h1 not rebooted a second time
    watcher.assert_every_version_valid()
    assert watcher.states()[-1] == "done"
    parsed = final(textfile)
    assert value(parsed, "run_in_progress") == 0
    assert value(parsed, "last_run_success") == 1
    assert value(parsed, "runs_total", kind="nightly", outcome="done") == 1
    assert series(parsed, "run_state_info") == [{"state": "done", "machine": "", "kind": "nightly"}]
    assert_durations_match_the_store(parsed, run)


def test_an_aborted_run_says_which_machine_failed(netlab, tmp_path):
    lab, config, textfile, state_dir = lab_with_metrics(
        netlab,
        tmp_path,
        boot_time=1.0,
        faults={"h2": Fault(http="fail")},
        reboot_timeout=FAILING_TIMEOUT,
    )
    log = tmp_path / "run.log"

    with Watcher(textfile) as watcher:
        process = spawn(config, "run", log=log)
        out = finish(process, log)

    assert process.returncode == 1, out
    run = latest_run(state_dir)
    assert run is not None and run.state == "aborted", out
    assert lab.events("h2", "healthy") == [] and boots(lab) == {"h1": 1, "h2": 1}
    watcher.assert_every_version_valid()
    assert watcher.states()[-1] == "aborted"
    parsed = final(textfile)
    assert value(parsed, "run_in_progress") == 0
    assert value(parsed, "last_run_success") == 0
    assert value(parsed, "runs_total", kind="nightly", outcome="aborted") == 1
    assert value(parsed, "runs_total", kind="nightly", outcome="done") == 0
    assert value(parsed, "last_success_timestamp_seconds") == 0  # never succeeded
    assert series(parsed, "run_state_info") == [
        {"state": "aborted", "machine": "", "kind": "nightly"}
    ]
    assert series(parsed, "machine_last_outcome") == [
        {"machine": "h1", "outcome": "healthy"},
        {"machine": "h2", "outcome": "failed"},
    ]
    # h1's reboot has its duration; h2 never passed the gate, so it has none
    assert series(parsed, "machine_reboot_duration_seconds") == [{"machine": "h1"}]
    assert run.finished_at is not None
    assert value(parsed, "last_run_duration_seconds") == pytest.approx(
        (run.finished_at - run.started_at).total_seconds(), abs=0.002
    )
