"""Telling the owner (issue 9): apprise notifications and the dead-man heartbeat, against the
real-host lab and real HTTP receivers.

The orchestrator runs inside the controller's namespaces, so the receivers listen on the lab
bridge's root address, which the controller reaches like any LAN service. apprise's `json://`
target posts the notification as JSON; the heartbeat follows healthchecks.io's protocol. The
verdicts come from what the receivers got and from the lab's ground truth."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from orchestrator.demo.receiver import Receiver, closed_port, receiver
from tests.conftest import ORCHESTRATOR, REPO, latest_run
from tests.fault_lab import (
    FAST_REBOOT,
    boots,
    orchestrator,
    reboots_requested,
    spawn,
    wait_for_run_state,
    write_config,
)
from tests.netlab import CONTROLLER, Fault, Lab
from tests.test_netlab_hooks import (
    controller_lab,
    finish_through_the_controllers_reboot,
    run_in_controller,
    spawn_in_controller,
)

pytestmark = pytest.mark.netlab

RUN_TIMEOUT = 120
FAILING_TIMEOUT = 4
NOTIFY_PATH = "/notify/"
PING_PATH = "/ping/"


class Secrets:
    """A notification and a heartbeat URL, each with its own token, on one receiver."""

    def __init__(self, got: Receiver) -> None:
        self.notify_token = f"ntfy-token-{uuid.uuid4().hex[:12]}"
        self.ping_token = str(uuid.uuid4())
        self.notify_url = got.url(f"{NOTIFY_PATH}{self.notify_token}", scheme="json")
        self.ping_url = got.url(f"{PING_PATH}{self.ping_token}")

    def tokens(self) -> list[str]:
        return [self.notify_token, self.ping_token, self.notify_url, self.ping_url]

    def assert_absent(self, where: str, text: str) -> None:
        for token in self.tokens():
            assert token not in text, f"a secret URL part appears in {where}:\n{text}"


def telling(secrets: Secrets, on: list[str] | None = None, **notify: Any) -> dict[str, Any]:
    return {
        "notify": {"urls": [secrets.notify_url], "on": on or ["aborted"], **notify},
        "heartbeat": {"url": secrets.ping_url},
    }


def pings(got: Receiver, secrets: Secrets) -> list[str]:
    """The heartbeat requests as healthchecks.io reads them: start, success, fail."""
    base = f"{PING_PATH}{secrets.ping_token}"
    names = {base + "/start": "start", base: "success", base + "/fail": "fail"}
    return [names.get(r.path, r.path) for r in got.received(PING_PATH)]


def write(lab: Lab, config: Path, tmp_path: Path, **overrides: Any) -> Path:
    reboot = {**FAST_REBOOT, **overrides.pop("reboot", {})}
    log_file = tmp_path / "orchestrator.log"
    return lab.write_config(
        config, tmp_path / "state", reboot=reboot, log_file=str(log_file), **overrides
    )


def everything_shown(lab: Lab, config: Path, tmp_path: Path, *outputs: str) -> dict[str, str]:
    """Every place a URL could leak to: the run's own output, the log file, and what
    `status`, `status --json`, `history` and `plan` print."""
    shown = {f"output {n}": text for n, text in enumerate(outputs)}
    log_file = tmp_path / "orchestrator.log"
    shown["log_file"] = log_file.read_text() if log_file.exists() else ""
    for args in (["status"], ["status", "--json"], ["history"], ["plan"]):
        result = run_in_controller(lab, config, *args)
        shown[" ".join(args)] = result.stdout + result.stderr
    return shown


def test_an_aborted_run_notifies_once_naming_the_machine_and_pings_start_then_fail(
    netlab, tmp_path
):
    lab, config = controller_lab(netlab, tmp_path, 3, faults={"h2": Fault(http="fail")})
    with receiver(lab.root_address) as got:
        secrets = Secrets(got)
        write(lab, config, tmp_path, reboot={"timeout": FAILING_TIMEOUT}, **telling(secrets))

        run = spawn_in_controller(lab, config, "run")
        out, _ = run.communicate(timeout=RUN_TIMEOUT)

        assert run.returncode == 1, out
        assert reboots_requested(lab) == ["h1", "h2"]
        assert boots(lab) == {"h1": 1, "h2": 1}
        record = latest_run(tmp_path / "state")
        assert record.state == "aborted"

        [note] = got.received(NOTIFY_PATH)
        message = note.json()
        assert message["title"] == "lab-orchestrator: ABORTED at h2"
        assert "h2: failed" in message["message"]
        assert "h2 did not pass the health gate" in message["message"]
        assert message["type"] == "info"
        assert pings(got, secrets) == ["start", "fail"]
        [fail] = got.received(f"{PING_PATH}{secrets.ping_token}/fail")
        assert b"h2: failed" in fail.body  # the summary, as healthchecks.io shows it

        for where, text in everything_shown(lab, config, tmp_path, out).items():
            secrets.assert_absent(where, text)
        assert len(got.received(NOTIFY_PATH)) == 1  # status, history, plan sent nothing


def test_a_run_finished_by_the_boot_time_resume_pings_start_start_success_and_notifies_once(
    netlab, tmp_path
):
    lab, config = controller_lab(netlab, tmp_path, 2)
    with receiver(lab.root_address) as got:
        secrets = Secrets(got)
        write(lab, config, tmp_path, **telling(secrets, on=["aborted", "done"]))
        boot_id_before = lab.boot_id(CONTROLLER)

        out, resumed = finish_through_the_controllers_reboot(lab, config)

        resume_log = Path(resumed["log"]).read_text()
        assert resumed["code"] == 0, resume_log
        assert boots(lab) == {"h1": 1, "h2": 1, CONTROLLER: 1}
        assert lab.boot_id(CONTROLLER) != boot_id_before
        assert latest_run(tmp_path / "state").state == "done"

        # The first process pinged /start and died in the controller's reboot; the boot unit's
        # resume pinged /start again and then success, once.
        assert pings(got, secrets) == ["start", "start", "success"]
        [note] = got.received(NOTIFY_PATH)
        assert note.t > resumed["t"] - 60  # sent by the resumed process, after the reboot
        assert note.json()["title"].startswith("lab-orchestrator: done, 3 machines in ")
        for name in ("h1", "h2", CONTROLLER):
            assert f"{name}: healthy" in note.json()["message"]
        for where, text in everything_shown(lab, config, tmp_path, out, resume_log).items():
            secrets.assert_absent(where, text)


def test_a_sigkilled_run_with_no_resume_pinged_start_and_nothing_after(netlab, tmp_path):
    lab = netlab(["h1", "h2"], boot_time=3)
    with receiver("127.0.0.1") as got:
        secrets = Secrets(got)
        config = write_config(lab, tmp_path, **telling(secrets, on=["aborted", "done"]))
        run = spawn(config, "run", log=tmp_path / "run.log")
        wait_for_run_state(tmp_path / "state", "verifying:h1")
        run.send_signal(signal.SIGKILL)
        run.wait()
        time.sleep(3)  # anything still in flight would have arrived by now

        # What makes the external service alert: a start with no end.
        assert pings(got, secrets) == ["start"]
        assert got.received(NOTIFY_PATH) == []
        assert latest_run(tmp_path / "state").state == "verifying:h1"


@pytest.mark.parametrize("mode", ["down", "hang", "error"])
def test_a_receiver_that_is_down_hangs_or_fails_changes_neither_outcome_nor_exit_code(
    netlab, tmp_path, mode
):
    lab = netlab(["h1"], boot_time=0.5)
    with receiver("127.0.0.1", mode="hang" if mode == "hang" else "error") as bad:
        if mode == "down":
            dead = f"127.0.0.1:{closed_port()}"
            notify_url = f"json://{dead}{NOTIFY_PATH}ntfy-token-{uuid.uuid4().hex[:12]}"
            ping_url = f"http://{dead}{PING_PATH}{uuid.uuid4()}"
        else:
            notify_url = bad.url(f"{NOTIFY_PATH}ntfy-token-{uuid.uuid4().hex[:12]}", "json")
            ping_url = bad.url(f"{PING_PATH}{uuid.uuid4()}")
        config = write_config(
            lab,
            tmp_path,
            notify={"urls": [notify_url], "on": ["done"], "timeout": "3s"},
            heartbeat={"url": ping_url, "timeout": "2s"},
        )

        result = orchestrator(config, "run", timeout=RUN_TIMEOUT)

        assert result.returncode == 0, result.stderr
        assert latest_run(tmp_path / "state").state == "done"
        assert boots(lab) == {"h1": 1}
        warnings = [line for line in result.stderr.splitlines() if "warning:" in line]
        assert any("notify" in line for line in warnings), result.stderr
        assert sum("heartbeat" in line for line in warnings) == 2, result.stderr  # start, end
        if mode == "hang":
            # Bounded: two pings of 2 s and one notification of 3 s (+ start-up), not minutes.
            assert result.ended - result.started < 60
            assert any("no answer within" in line for line in warnings), result.stderr
        for token in (notify_url, ping_url, notify_url.rsplit("/", 1)[1]):
            assert token not in result.stderr


def test_notify_test_reports_each_url_on_one_line_and_sends_only_there(tmp_path):
    with receiver() as got:
        good = got.url(f"{NOTIFY_PATH}ntfy-token-{uuid.uuid4().hex[:12]}", "json")
        down = f"json://127.0.0.1:{closed_port()}{NOTIFY_PATH}other-token-{uuid.uuid4().hex[:8]}"
        urls_file = tmp_path / "notify-urls"
        urls_file.write_text(f"# the owner's phone\n{down}\n\n")
        config = tmp_path / "orchestrator.yaml"
        config.write_text(
            f"state_dir: {tmp_path / 'state'}\n"
            f"notify:\n  urls: ['{good}']\n  urls_file: {urls_file}\n"
            "machines:\n  a:\n    host: 127.0.0.1\n"
        )
        result = subprocess.run(
            [*ORCHESTRATOR, "--config", str(config), "notify-test"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=REPO,
        )
        lines = result.stdout.splitlines()
        assert result.returncode == 1, (result.stdout, result.stderr)  # one URL failed
        assert lines[0] == "json://127.0.0.1/***: sent", lines
        assert lines[1].startswith("json://127.0.0.1/***: failed: "), lines
        assert len(lines) == 2, lines
        [note] = got.received(NOTIFY_PATH)
        assert note.json()["title"] == "lab-orchestrator: test notification"
        for secret in (good, down, good.rsplit("/", 1)[1], down.rsplit("/", 1)[1]):
            assert secret not in result.stdout + result.stderr
