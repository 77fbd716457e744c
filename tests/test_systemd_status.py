"""`systemctl status`'s line, end to end: the real `orchestrator` process, run against the
simulated lab with NOTIFY_SOCKET pointing at a real datagram socket, the way systemd listens
for sd_notify. What it received is what `systemctl status` would show, message by message."""

from __future__ import annotations

import itertools
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import changes_on_reboot, orchestrator, spawn, write_config


class NotifyListener:
    """systemd's side of NOTIFY_SOCKET: reads every datagram as it comes (systemd does, and
    an unread socket's queue holds only a few), on a thread of its own."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except TimeoutError:
                continue

    def statuses(self) -> list[str]:
        return [m.removeprefix("STATUS=") for m in list(self.messages) if m.startswith("STATUS=")]

    def wait_for(self, pattern: str, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for status in self.statuses():
                if re.fullmatch(pattern, status):
                    return status
            time.sleep(0.02)
        raise AssertionError(f"no status like {pattern!r}; got {self.statuses()}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def listener(tmp_path):
    listening = NotifyListener(tmp_path / "notify")
    yield listening
    listening.close()


def _config(tmp_path: Path, lab, **overrides) -> Path:
    return write_config(tmp_path / "lab.yaml", lab.lab.config(tmp_path / "state", **overrides))


def _skeleton(statuses: list[str]) -> list[str]:
    """The state lines, without the waits in between; `updating (true)` and `updating` alike
    (whether the line names the command depends on what the engine hands the hook)."""
    return [
        re.sub(r"^(updating|deploying) \(true\)$", r"\1", status)
        for status in statuses
        if ": waiting: " not in status
    ]


def test_the_status_line_follows_a_run_and_shows_what_it_waits_for(
    tmp_path, make_lab, listener, env_without_journal
):
    # alpha answers 503 after its reboot until the test has seen the status line say so.
    lab = make_lab(["alpha", "bravo"], host_class=changes_on_reboot(alpha={"http_status": 503}))
    config = _config(tmp_path, lab, reboot={"timeout": "3m"})
    run = spawn(config, "run", env={**env_without_journal, "NOTIFY_SOCKET": str(listener.path)})
    try:
        seen = listener.wait_for(
            r"verifying alpha: waiting: http \S+/health: .*503.*\(\d+s of 3m\)"
        )
        lab.lab.hosts["alpha"].behaviour.http_status = 200
        assert run.wait(timeout=120) == 0
    finally:
        run.kill()
        run.wait()
    statuses = listener.statuses()
    assert all(len(s) <= 120 and "\n" not in s for s in statuses), statuses
    assert _skeleton(statuses)[:-1] == [
        "preflight: probing 2 machines",
        "updating",
        "deploying",
        "rebooting alpha (1 of 2)",
        "verifying alpha",
        "settling alpha",
        "rebooting bravo (2 of 2)",
        "verifying bravo",
        "settling bravo",
    ], statuses
    assert re.fullmatch(r"done: 2 machines in \d+s", statuses[-1]), statuses
    # Every wait is shown while its machine is verified, and only then.
    verifying = statuses.index("verifying alpha")
    assert verifying < statuses.index(seen) < statuses.index("settling alpha")
    for status in statuses:
        if status.startswith("verifying bravo: waiting: "):
            assert statuses.index("verifying bravo") < statuses.index(status)
    # A line is sent when it changes, not once per event.
    assert all(a != b for a, b in itertools.pairwise(statuses))
    print("\n".join(statuses))


def test_an_aborted_run_ends_on_where_and_why(tmp_path, make_lab, listener, env_without_journal):
    lab = make_lab(["alpha", "bravo"], host_class=changes_on_reboot(alpha={"http_status": 503}))
    config = _config(tmp_path, lab, reboot={"timeout": "5s"})
    env = {**env_without_journal, "NOTIFY_SOCKET": str(listener.path)}
    result = orchestrator(config, "run", env=env)
    assert result.returncode == 1, result.stderr
    time.sleep(0.3)  # the listener thread reads what is already queued
    statuses = listener.statuses()
    assert statuses[-1].startswith(
        "aborted at alpha: alpha did not pass the health gate within 5s; last failing probe: "
    ), statuses
    assert len(statuses[-1]) <= 120
    assert "rebooting bravo (2 of 2)" not in statuses
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert all("not NixOS" in line for line in warnings), result.stderr  # the lab's hosts


def test_a_notify_socket_nobody_listens_on_changes_nothing(tmp_path, make_lab, env_without_journal):
    lab = make_lab(["alpha"])
    config = _config(tmp_path, lab)
    env = {**env_without_journal, "NOTIFY_SOCKET": str(tmp_path / "gone")}
    result = orchestrator(config, "run", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("warning: systemd status: cannot use NOTIFY_SOCKET") == 1
    assert lab.reboots("alpha") == 1


def test_a_notify_socket_that_goes_away_mid_run_changes_nothing(
    tmp_path, make_lab, env_without_journal
):
    listening = NotifyListener(tmp_path / "notify")
    lab = make_lab(["alpha", "bravo"])
    config = _config(tmp_path, lab, deploy={"command": ["sleep", "1"]})
    env = {**env_without_journal, "NOTIFY_SOCKET": str(listening.path)}
    run = spawn(config, "run", env=env)
    try:
        listening.wait_for(r"deploying( \(.*\))?")
        listening.close()  # systemd gone: every later send fails
        assert run.wait(timeout=120) == 0
    finally:
        run.kill()
        run.wait()
    assert [lab.reboots(name) for name in ("alpha", "bravo")] == [1, 1]
    output = "".join(p.read_text() for p in tmp_path.glob("orchestrator-*.log"))
    assert output.count("warning: systemd status not sent: ") == 1, output
    assert "summary: run 1 (nightly) done" in output
