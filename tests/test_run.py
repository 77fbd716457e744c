"""End-to-end runs of the real `orchestrator` process against the simulated lab, judged by the
hosts' ground truth (what they really did), not by the orchestrator's own log."""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.demo.simlab import SimHost
from tests.conftest import (
    changes_on_reboot,
    latest_run,
    orchestrator,
    spawn,
    wait_for_run,
    write_config,
)

NAMES = ["alpha", "bravo", "charlie"]


def _config(tmp_path: Path, lab, **overrides) -> Path:
    return write_config(tmp_path / "lab.yaml", lab.lab.config(tmp_path / "state", **overrides))


def _killed_while_deploying(tmp_path: Path, lab) -> Path:
    """A run SIGKILLed in `deploying` (nothing rebooted yet); returns its config."""
    config = _config(tmp_path, lab, deploy={"command": ["sleep", "30"]})
    first = spawn(config, "run")
    wait_for_run(tmp_path / "state", lambda run: run.state == "deploying")
    first.send_signal(signal.SIGKILL)
    first.wait()
    return config


def test_healthy_lab_reboots_every_machine_once_in_order(tmp_path, make_lab):
    lab = make_lab(NAMES)
    config = _config(tmp_path, lab)
    result = orchestrator(config, "run")
    assert result.returncode == 0, result.stderr
    assert lab.reboot_order() == NAMES
    assert [lab.reboots(name) for name in NAMES] == [1, 1, 1]
    # Each machine was healthy (ground truth) before the next one was asked to reboot.
    for previous, following in itertools.pairwise(NAMES):
        healthy = lab.lab.first(previous, "healthy")
        requested = lab.lab.first(following, "reboot_requested")
        assert healthy is not None and requested is not None and healthy < requested
    run = latest_run(tmp_path / "state")
    assert run is not None and run.state == "done"
    for record in run.machines:
        host = lab.lab.hosts[record.name]
        assert record.boot_id_after == host.boot_id != record.boot_id_before
    assert "summary: alpha: healthy: " in result.stderr


def test_status_json_documents_the_run(tmp_path, make_lab):
    lab = make_lab(["alpha"])
    config = _config(tmp_path, lab)
    assert orchestrator(config, "run").returncode == 0
    status = json.loads(orchestrator(config, "status", "--json").stdout)
    assert status["state"] == "done" and status["error"] is None
    assert {"run_id", "started_at", "finished_at"} <= status.keys()
    (machine,) = status["machines"]
    assert machine["name"] == "alpha" and machine["state"] == "healthy"
    assert machine["boot_id_after"] == lab.lab.hosts["alpha"].boot_id
    for key in ("reboot_requested_at", "healthy_at"):
        assert "T" in machine[key] and machine[key].endswith("+00:00")
    assert machine["reboot_requested_at"] < machine["healthy_at"]


def test_machine_that_never_returns_aborts_and_later_machines_are_untouched(tmp_path, make_lab):
    lab = make_lab(NAMES)
    lab.lab.hosts["bravo"].behaviour.never_returns = True
    config = _config(tmp_path, lab, reboot={"timeout": "4s"})
    started = time.monotonic()
    result = orchestrator(config, "run")
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert lab.reboot_order() == ["alpha", "bravo"]
    assert lab.reboots("charlie") == 0
    run = latest_run(tmp_path / "state")
    assert run.state == "aborted"
    assert "bravo did not pass the health gate within 4s" in run.error
    assert "ssh" in run.error  # the last failing probe is named
    assert elapsed < 4 + 8  # alpha's reboot plus bravo's deadline, not a hang
    status = json.loads(orchestrator(config, "status", "--json").stdout)
    states = {m["name"]: m["state"] for m in status["machines"]}
    assert states == {"alpha": "healthy", "bravo": "failed", "charlie": "untouched"}


def test_machine_back_with_failing_http_check_aborts_naming_the_check(tmp_path, make_lab):
    lab = make_lab(NAMES, host_class=changes_on_reboot(alpha={"http_status": 503}))
    config = _config(tmp_path, lab, reboot={"timeout": "4s"})
    result = orchestrator(config, "run", timeout=60)
    assert result.returncode == 1
    run = latest_run(tmp_path / "state")
    port = lab.lab.hosts["alpha"].http_port
    assert f"http http://127.0.0.1:{port}/health: HTTP 503 (want 200)" in run.error
    assert lab.reboots("alpha") == 1
    assert lab.reboots("bravo") == lab.reboots("charlie") == 0


def test_reboot_that_does_nothing_is_never_counted_as_a_reboot(tmp_path, make_lab):
    lab = make_lab(["alpha", "bravo"])
    lab.lab.hosts["alpha"].behaviour.ignore_reboot = True
    config = _config(tmp_path, lab, reboot={"timeout": "3s"})
    assert orchestrator(config, "run").returncode == 1
    run = latest_run(tmp_path / "state")
    assert "boot id: unchanged: not rebooted yet" in run.error
    assert lab.reboot_order() == ["alpha"]


def test_degraded_system_aborts_by_default(tmp_path, make_lab):
    lab = make_lab(
        ["alpha", "bravo"], host_class=changes_on_reboot(alpha={"system_state": "degraded"})
    )
    config = _config(tmp_path, lab, reboot={"timeout": "3s"})
    assert orchestrator(config, "run").returncode == 1
    error = latest_run(tmp_path / "state").error
    assert error.startswith("alpha did not pass the health gate") and "system: degraded" in error
    assert lab.reboots("bravo") == 0


def test_degraded_system_passes_when_allowed(tmp_path, make_lab):
    lab = make_lab(
        ["alpha", "bravo"], host_class=changes_on_reboot(alpha={"system_state": "degraded"})
    )
    config = _config(tmp_path, lab, reboot={"allow_degraded": True})
    assert orchestrator(config, "run").returncode == 0
    assert [lab.reboots("alpha"), lab.reboots("bravo")] == [1, 1]


def test_changed_host_key_is_refused_and_aborts_at_once(tmp_path, make_lab):
    lab = make_lab(["alpha", "bravo"])
    lab.lab.hosts["alpha"].behaviour.new_host_key = True
    config = _config(tmp_path, lab, reboot={"timeout": "20s"})
    started = time.monotonic()
    assert orchestrator(config, "run").returncode == 1
    assert time.monotonic() - started < 10  # not retried until the deadline
    run = latest_run(tmp_path / "state")
    assert "host key" in run.error and "refusing to run any command" in run.error
    assert lab.reboots("bravo") == 0


def test_refused_reboot_command_aborts(tmp_path, make_lab):
    lab = make_lab(["alpha", "bravo"])
    lab.lab.hosts["alpha"].behaviour.reboot_exit_status = 1
    config = _config(tmp_path, lab)
    assert orchestrator(config, "run").returncode == 1
    run = latest_run(tmp_path / "state")
    assert "`systemctl reboot` failed with exit code 1: Call to Reboot failed" in run.error
    assert lab.reboots("alpha") == lab.reboots("bravo") == 0


def test_failing_update_reboots_nothing(tmp_path, make_lab):
    lab = make_lab(NAMES)
    config = _config(tmp_path, lab, update={"command": ["false"]})
    result = orchestrator(config, "run")
    assert result.returncode == 1
    assert "update: `false` failed with exit code 1" in latest_run(tmp_path / "state").error
    assert lab.reboot_order() == []


def test_deploy_timeout_stops_the_command_and_reboots_nothing(tmp_path, make_lab):
    lab = make_lab(["alpha"])
    config = _config(tmp_path, lab, deploy={"command": ["sleep", "30"], "timeout": "1s"})
    started = time.monotonic()
    assert orchestrator(config, "run").returncode == 1
    assert time.monotonic() - started < 10
    assert "did not finish within 1s" in latest_run(tmp_path / "state").error
    assert lab.reboot_order() == []


def test_unreachable_machine_fails_preflight_before_anything_is_touched(tmp_path, make_lab):
    lab = make_lab(NAMES)
    config_data = lab.lab.config(tmp_path / "state")
    config_data["machines"]["charlie"]["port"] = 1  # nothing listens there
    marker = tmp_path / "updated"
    config_data["update"] = {"command": ["touch", str(marker)], "timeout": "10s"}
    config = write_config(tmp_path / "lab.yaml", config_data)
    assert orchestrator(config, "run").returncode == 1
    run = latest_run(tmp_path / "state")
    assert run.error.startswith("preflight failed, nothing was touched: charlie: ssh:")
    assert not marker.exists()
    assert lab.reboot_order() == []


def test_wrong_client_key_fails_preflight(tmp_path, make_lab):
    import asyncssh

    lab = make_lab(["alpha"])
    other = tmp_path / "other_key"
    other.write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
    config = _config(tmp_path, lab, ssh={"identity_file": str(other)})
    assert orchestrator(config, "run").returncode == 1
    assert "authentication failed" in latest_run(tmp_path / "state").error
    assert lab.reboot_order() == []


def test_second_run_while_one_runs_exits_75_and_leaves_the_first_alone(tmp_path, make_lab):
    lab = make_lab(["alpha", "bravo"])
    config = _config(tmp_path, lab, deploy={"command": ["sleep", "2"]})
    first = spawn(config, "run")
    wait_for_run(tmp_path / "state", lambda run: run.state == "deploying")
    second = orchestrator(config, "run")
    assert second.returncode == 75
    assert f"PID {first.pid}" in second.stderr
    assert second.stderr.count("\n") == 1
    assert first.wait(60) == 0
    assert [lab.reboots("alpha"), lab.reboots("bravo")] == [1, 1]


def test_lock_of_a_killed_run_does_not_block_the_next(tmp_path, make_lab):
    lab = make_lab(["alpha"])
    config = _killed_while_deploying(tmp_path, lab)
    write_config(config, lab.lab.config(tmp_path / "state"))  # a fast deploy this time
    result = orchestrator(config, "run")
    assert result.returncode == 0, result.stderr
    assert "continuing from deploying" in result.stderr
    assert lab.reboots("alpha") == 1


def test_abort_stops_before_the_next_reboot(tmp_path, make_lab):
    lab = make_lab(NAMES)
    config = _config(tmp_path, lab, reboot={"settle": "3s"})
    first = spawn(config, "run")
    wait_for_run(tmp_path / "state", lambda run: run.state == "settling:alpha")
    aborted = orchestrator(config, "abort")
    assert aborted.returncode == 0 and "abort requested" in aborted.stdout
    assert first.wait(30) == 1
    run = latest_run(tmp_path / "state")
    assert run.state == "aborted" and "aborted on request" in run.error
    assert lab.reboot_order() == ["alpha"]


def test_abort_of_an_interrupted_run_ends_it_and_resume_does_nothing(tmp_path, make_lab):
    lab = make_lab(["alpha"])
    config = _killed_while_deploying(tmp_path, lab)
    assert "aborted (no orchestrator was running it)" in orchestrator(config, "abort").stdout
    resumed = orchestrator(config, "resume")
    assert resumed.returncode == 0 and "nothing to resume" in resumed.stderr
    assert lab.reboot_order() == []


def test_resume_without_an_interrupted_run_is_a_no_op(tmp_path, make_lab):
    lab = make_lab(["alpha"])
    config = _config(tmp_path, lab)
    result = orchestrator(config, "resume")
    assert result.returncode == 0
    assert lab.reboot_order() == []


def test_single_machine_reboot_touches_only_that_machine(tmp_path, make_lab):
    lab = make_lab(NAMES)
    marker = tmp_path / "updated"
    config = _config(tmp_path, lab, update={"command": ["touch", str(marker)]})
    result = orchestrator(config, "reboot", "bravo")
    assert result.returncode == 0, result.stderr
    assert lab.reboot_order() == ["bravo"] and lab.reboots("bravo") == 1
    assert not marker.exists()
    assert orchestrator(config, "reboot", "nope").returncode == 2


def test_plan_probes_every_machine_and_changes_nothing(tmp_path, make_lab):
    lab = make_lab(["alpha", "bravo"])
    data = lab.lab.config(tmp_path / "state")
    data["machines"]["bravo"]["checks"][0]["status"] = 204
    config = write_config(tmp_path / "lab.yaml", data)
    result = orchestrator(config, "plan")
    assert result.returncode == 1
    assert "alpha: ready" in result.stdout
    assert "bravo: NOT READY: http" in result.stdout and "HTTP 200 (want 204)" in result.stdout
    assert lab.reboot_order() == []
    assert latest_run(tmp_path / "state") is None


def test_history_lists_past_runs(tmp_path, make_lab):
    lab = make_lab(["alpha"])
    config = _config(tmp_path, lab)
    assert orchestrator(config, "run").returncode == 0
    lab.lab.hosts["alpha"].behaviour.system_state = "degraded"
    write_config(config, lab.lab.config(tmp_path / "state", reboot={"timeout": "2s"}))
    assert orchestrator(config, "run").returncode == 1
    lines = orchestrator(config, "history").stdout.splitlines()
    assert len(lines) == 2
    assert "aborted" in lines[0] and "done" in lines[1]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_store_is_a_clear_error_and_reboots_nothing(tmp_path, make_lab, damage):
    lab = make_lab(["alpha"])
    config = _killed_while_deploying(tmp_path, lab)
    store = tmp_path / "state" / "state.db"
    db = sqlite3.connect(store)  # move everything out of the WAL into the main file
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    for leftover in ("state.db-wal", "state.db-shm"):  # so only the damage below is seen
        (tmp_path / "state" / leftover).unlink(missing_ok=True)
    size = store.stat().st_size
    assert size > 3 * 4096
    if damage == "garbage":
        store.write_bytes(b"this is not a database" * 100)
    else:
        store.write_bytes(store.read_bytes()[: size // 2])
    for command in ("resume", "run"):
        result = orchestrator(config, command)
        assert result.returncode == 1
        assert result.stderr.startswith("error: state store ")
        assert "corrupt or unreadable" in result.stderr and "nothing was rebooted" in result.stderr
        assert "Traceback" not in result.stderr
    assert lab.reboot_order() == []


def test_journald_lines_carry_no_timestamp_of_their_own(tmp_path, make_lab, env_without_journal):
    lab = make_lab(["alpha"])
    config = _config(tmp_path, lab)
    result = orchestrator(config, "run", env={**env_without_journal, "JOURNAL_STREAM": "8:1"})
    assert result.returncode == 0
    assert any(line.startswith("run 1: verifying:alpha") for line in result.stderr.splitlines())
    plain = orchestrator(config, "run", env=env_without_journal)
    assert all(line[:2].isdigit() and line[2] == ":" for line in plain.stderr.splitlines())


def test_non_root_user_reboots_through_sudo_n(tmp_path, make_lab):
    seen: list[list[str]] = []

    class Recording(SimHost):
        async def before_command(self, argv):
            seen.append(argv)
            return True

    lab = make_lab(["alpha"], host_class=Recording)
    config = _config(tmp_path, lab, ssh={"user": "deploy"})
    assert orchestrator(config, "run").returncode == 0
    assert ["sudo", "-n", "systemctl", "reboot"] in seen
    assert ["systemctl", "reboot"] not in seen
    assert lab.reboots("alpha") == 1


def test_status_is_fast_and_imports_no_network_library(tmp_path, make_lab):
    lab = make_lab(["alpha"])
    config = _config(tmp_path, lab)
    assert orchestrator(config, "run").returncode == 0
    probe = subprocess.run(
        [
            os.sys.executable,
            "-X",
            "importtime",
            "-m",
            "orchestrator",
            "--config",
            str(config),
            "status",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = probe.stderr
    for heavy in ("asyncssh", "httpx", "pydantic", "transitions"):
        assert f" {heavy}\n" not in imported and f" {heavy}." not in imported, heavy


def test_key_seen_in_preflight_is_the_only_one_accepted_even_if_known_hosts_lists_more(
    tmp_path, make_lab
):
    import asyncssh

    other_key = asyncssh.generate_private_key("ssh-ed25519")

    class ComesBackWithOtherKnownKey(SimHost):
        async def boot(self):
            self.host_key = other_key
            await super().boot()

    lab = make_lab(["alpha", "bravo"], host_class=ComesBackWithOtherKnownKey)
    alpha = lab.lab.hosts["alpha"]
    with lab.lab.known_hosts.open("a") as known_hosts:  # both keys are "known" for alpha
        known_hosts.write(
            f"[127.0.0.1]:{alpha.ssh_port} {other_key.export_public_key().decode().strip()}\n"
        )
    config = _config(tmp_path, lab, reboot={"timeout": "20s"})
    assert orchestrator(config, "run").returncode == 1
    run = latest_run(tmp_path / "state")
    assert "alpha: came back with a different SSH host key" in run.error
    assert lab.reboots("bravo") == 0


def test_an_unusable_identity_file_aborts_the_run_in_one_line_and_touches_nothing(
    tmp_path, make_lab
):
    lab = make_lab(["alpha"])
    public_key = tmp_path / "id_ed25519.pub"
    public_key.write_bytes(lab.lab.client_key.export_public_key())
    config = _config(tmp_path, lab, ssh={"identity_file": str(public_key)})
    result = orchestrator(config, "run")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    run = latest_run(tmp_path / "state")
    assert run.state == "aborted"
    assert f"ssh.identity_file: {public_key}: " in run.error
    assert lab.reboots("alpha") == 0
    plan = orchestrator(config, "plan")
    assert plan.returncode == 1 and "Traceback" not in plan.stderr
    assert (
        plan.stderr.strip().splitlines()[-1].startswith(f"error: ssh.identity_file: {public_key}")
    )


def test_an_encrypted_identity_with_its_passphrase_file_runs_to_done(tmp_path, make_lab):
    lab = make_lab(["alpha"])
    encrypted = tmp_path / "id_encrypted"
    encrypted.write_bytes(
        lab.lab.client_key.export_private_key("pkcs8-pem", passphrase="correct horse")
    )
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("correct horse\n")
    config = _config(
        tmp_path,
        lab,
        ssh={"identity_file": str(encrypted), "passphrase_file": str(passphrase)},
    )
    result = orchestrator(config, "run")
    assert result.returncode == 0, result.stderr
    assert lab.reboots("alpha") == 1
