"""Generation-aware rollouts (issue 10) against real sshd hosts that run a fake NixOS: each
behaviour is judged by ground truth — which generation each host booted, how often, what its
profile holds — never by the orchestrator's own account.

- a new generation that fails its gate is rolled back, proven healthy on the old one, and the
  hosts after it are untouched (not deployed, not rebooted);
- a generation that hangs at boot is power-cycled once and, booted once only, comes back on
  the known-good generation by itself, which the rollback then keeps;
- a bootloader that falls back to the old generation fires the wrong-generation probe at once;
- ``reboot.when: if-needed`` skips a host whose kernel, initrd and modules are unchanged;
- a per-machine deploy that fails aborts before that host's reboot;
- a SIGKILL at every new state boundary, then ``resume``: one rollback, one more reboot.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ORCHESTRATOR, REPO, latest_run
from tests.fault_lab import (
    boots,
    orchestrator,
    reboots_requested,
    spawn,
    status_machines,
    status_text,
    write_config,
)
from tests.netlab import Lab, fixtures
from tests.netlab.lab import NIXOS_KERNEL

pytestmark = pytest.mark.netlab
netlab = fixtures.netlab

HELPER = ["sh", str(REPO / "nix" / "target-helper.sh")]
NEW_KERNEL = "6.12.3"
# Long enough for a healthy fake NixOS host to pass its gate on a busy 2-core machine; a
# failing one costs this much wall time.
GATE_TIMEOUT = 20


def rollout_config(lab: Lab, directory: Path, **overrides: Any) -> Path:
    """Per-machine deploys of the lab's fake NixOS, the helper from nix/, fast polls."""
    reboot = {"timeout": GATE_TIMEOUT, **overrides.pop("reboot", {})}
    deploy = {"mode": "per-machine", "machine_command": lab.deploy_command(), "timeout": 120}
    return write_config(
        lab,
        directory,
        deploy={**deploy, **overrides.pop("deploy", {})},
        target_helper=HELPER,
        reboot=reboot,
        **overrides,
    )


def hanging_generation_config(lab: Lab, directory: Path) -> Path:
    """h1's next generation hangs at boot; it boots once, and a power cycle after 3 s of
    silence (the lab's power button) brings it back on the known-good default."""
    lab.set_deploy("h1", hangs_at_boot=True, kernel_version=NEW_KERNEL)
    power_cycle = lab.power_cycle_command("h1")
    return rollout_config(
        lab,
        directory,
        reboot={"boot_once": True, "power_cycle_after": 3},
        machines={"h1": {"power_cycle": power_cycle}},
    )


def profile_systems(lab: Lab, host: str) -> dict[int, str]:
    return dict(lab.nixos_state(host)["profile"])


def test_an_unhealthy_generation_is_rolled_back_and_later_hosts_are_untouched(netlab, tmp_path):
    lab = netlab(["h1", "h2"], nixos=True, boot_time=0.5)
    lab.set_deploy("h1", healthy=False)
    known_good = lab.nixos_state("h1")["booted_system"]
    config = rollout_config(lab, tmp_path)

    result = orchestrator(config, "run", timeout=240)

    assert result.returncode != 0, result.stderr
    # Ground truth: h1 booted the new generation, then a new one that is the old system.
    profile = profile_systems(lab, "h1")
    assert sorted(profile) == [1, 2, 3], profile
    assert profile[3] == profile[1] == known_good != profile[2]
    assert lab.booted_generations("h1") == [1, 2, 3]
    final = lab.events("h1", "booted")[-1]
    assert final["system"] == known_good
    assert lab.events("h1", "healthy", since=final["t"])  # healthy on it, per the host
    # h2: never deployed, never asked to reboot.
    assert profile_systems(lab, "h2") == {1: lab.nixos_state("h2")["booted_system"]}
    assert reboots_requested(lab, since=result.started) == ["h1", "h1"]

    run = latest_run(tmp_path / "state")
    assert run is not None and run.state == "aborted"
    assert run.error is not None
    assert run.error.startswith("h1: generation 2 failed (last probe: http "), run.error
    assert run.error.endswith("); rolled back to generation 1: healthy"), run.error
    machine = run.machine("h1")
    assert machine.rollback_generation == 3 and machine.rollback_requests == 1
    shown = status_machines(config)
    assert shown["h1"]["state"] == "rolled-back"
    assert shown["h2"]["state"] == "untouched"
    assert shown["h1"]["system_after"] == known_good
    text = status_text(config)
    assert "rolled-back" in text and "rolled back to generation 1: healthy" in text


def test_a_generation_that_hangs_at_boot_is_power_cycled_once_and_comes_back_on_the_old_one(
    netlab, tmp_path
):
    lab = netlab(["h1", "h2"], nixos=True, boot_time=0.5)
    known_good = lab.nixos_state("h1")["booted_system"]
    config = hanging_generation_config(lab, tmp_path)

    result = orchestrator(config, "run", timeout=240)

    assert result.returncode != 0, result.stderr
    assert [e["host"] for e in lab.events(event="power_cycle")] == ["h1"], result.stderr
    hung = lab.events("h1", "boot_hung")
    assert len(hung) == 1 and hung[0]["nixos_generation"] == 2
    booted = lab.events("h1", "booted", since=result.started)
    # After the power cycle the firmware's one-shot entry is used up: the default (1) boots.
    assert (booted[0]["nixos_generation"], booted[0]["chosen_by"]) == (1, "default")
    assert booted[0]["system"] == known_good
    assert booted[-1]["system"] == known_good  # the rollback's reboot: still the old system
    assert reboots_requested(lab, since=result.started) == ["h1", "h1"]
    assert boots(lab, since=result.started)["h2"] == 0

    run = latest_run(tmp_path / "state")
    assert run is not None and run.state == "aborted" and run.error is not None
    assert run.error.startswith(
        "h1: generation 2 failed (last probe: generation: booted generation 1 ("
    ), run.error
    assert run.error.endswith("expected 2); rolled back to generation 1: healthy"), run.error
    machine = run.machine("h1")
    assert machine.boot_once == "systemd-boot"
    assert machine.power_cycled_at is not None and machine.made_default_at is None


def test_a_bootloader_that_falls_back_fires_the_wrong_generation_probe_at_once(netlab, tmp_path):
    lab = netlab(["h1", "h2"], nixos=True, boot_time=0.5)
    # The new generation gets a profile link but no boot entry (as when installing the
    # bootloader failed): the firmware boots the old default.
    config = rollout_config(
        lab,
        tmp_path,
        on_failure="stop",
        deploy={"machine_command": lab.deploy_command(action="none", kernel_version=NEW_KERNEL)},
        reboot={"timeout": 120},
    )

    result = orchestrator(config, "run", timeout=240)

    assert result.returncode != 0, result.stderr
    booted = lab.events("h1", "booted", since=result.started)
    assert [e["nixos_generation"] for e in booted] == [1]
    assert reboots_requested(lab, since=result.started) == ["h1"]
    run = latest_run(tmp_path / "state")
    assert run is not None and run.error is not None
    expected_start = "h1 did not pass the health gate: generation: booted generation 1 (/nix/store/"
    assert run.error.startswith(expected_start), run.error
    assert run.error.endswith("), expected 2"), run.error
    # At once: well before the 120 s gate timeout, though every other probe passed.
    waited = result.ended - booted[0]["t"]
    assert waited < 60, waited
    assert profile_systems(lab, "h1")[1] == booted[0]["system"]  # nothing rolled back (stop)
    assert len(profile_systems(lab, "h1")) == 2


def test_if_needed_skips_a_host_whose_kernel_initrd_and_modules_are_unchanged(netlab, tmp_path):
    lab = netlab(["h1", "h2"], nixos=True, boot_time=0.5)
    lab.set_deploy("h2", kernel_version=NEW_KERNEL)  # h1's deploy keeps its kernel
    config = rollout_config(lab, tmp_path, reboot={"when": "if-needed"})

    result = orchestrator(config, "run", timeout=240)

    assert result.returncode == 0, result.stderr
    assert reboots_requested(lab, since=result.started) == ["h2"]
    assert boots(lab, since=result.started) == {"h2": 1}
    assert sorted(profile_systems(lab, "h1")) == [1, 2]  # deployed, not rebooted
    run = latest_run(tmp_path / "state")
    assert run is not None and run.state == "done"
    h1, h2 = run.machine("h1"), run.machine("h2")
    assert h1.skipped and not h2.skipped
    assert h1.reboot_reason == (
        f"booted system already runs kernel {NIXOS_KERNEL}, initrd and modules of generation 2"
    )
    assert h2.reboot_reason is not None
    assert h2.reboot_reason.startswith(
        f"kernel: linux-{NIXOS_KERNEL} → linux-{NEW_KERNEL}; initrd: "
    ), h2.reboot_reason
    shown = status_machines(config)
    assert (shown["h1"]["state"], shown["h2"]["state"]) == ("skipped", "healthy")
    assert shown["h2"]["generation_after"] == 2
    text = status_text(config)
    assert f"booted system already runs kernel {NIXOS_KERNEL}" in text
    assert f"kernel: linux-{NIXOS_KERNEL} → linux-{NEW_KERNEL}" in text


def test_plan_shows_which_host_would_be_skipped_and_why_the_other_is_rebooted(netlab, tmp_path):
    lab = netlab(["h1", "h2"], nixos=True, boot_time=0.5)
    lab.deploy_generation("h1")  # same kernel
    lab.deploy_generation("h2", kernel_version=NEW_KERNEL)
    before = {h: lab.nixos_state(h) for h in ("h1", "h2")}
    config = rollout_config(lab, tmp_path, reboot={"when": "if-needed"})

    result = orchestrator(config, "plan", timeout=120)

    assert result.returncode == 0, result.stderr
    assert {h: lab.nixos_state(h) for h in ("h1", "h2")} == before  # nothing changed
    assert not reboots_requested(lab)
    out = subprocess.run(
        [*ORCHESTRATOR, "--config", str(config), "plan"],
        capture_output=True, text=True, timeout=120, check=True, cwd=REPO,
    ).stdout  # fmt: skip
    assert f"skip: booted system already runs kernel {NIXOS_KERNEL}" in out, out
    assert f"reboot: kernel: linux-{NIXOS_KERNEL} → linux-{NEW_KERNEL}" in out, out
    assert "deploying:h1 -> rebooting:h1" in out


def test_a_per_machine_deploy_that_fails_its_build_aborts_before_that_hosts_reboot(
    netlab, tmp_path
):
    lab = netlab(["h1", "h2"], nixos=True, boot_time=0.5)
    wrapper = tmp_path / "deploy.py"
    wrapper.write_text(
        "import json, subprocess, sys\n"
        "machine = sys.argv[1]\n"
        "if machine == 'h2':\n"
        "    print(f\"error: builder for '/nix/store/x-nixos-system-{machine}.drv' failed\",\n"
        "          file=sys.stderr)\n"
        "    sys.exit(1)\n"
        f"argv = json.loads({json.dumps(json.dumps(lab.deploy_command()))})\n"
        "argv = [machine if word == '{machine}' else word for word in argv]\n"
        "sys.exit(subprocess.run(argv).returncode)\n"
    )
    config = rollout_config(
        lab, tmp_path, deploy={"machine_command": [sys.executable, str(wrapper), "{machine}"]}
    )

    result = orchestrator(config, "run", timeout=240)

    assert result.returncode != 0, result.stderr
    assert reboots_requested(lab, since=result.started) == ["h1"]
    assert lab.booted_generations("h1") == [1, 2]
    assert lab.booted_generations("h2") == [1] and sorted(profile_systems(lab, "h2")) == [1]
    run = latest_run(tmp_path / "state")
    assert run is not None and run.state == "aborted" and run.error is not None
    assert run.error.startswith("deploy h2: "), run.error
    assert "builder for" in run.error
    assert run.machine("h2").reboot_requested_at is None


# -- SIGKILL at every new state boundary, then resume -----------------------------------------


def _kill_when(state_dir: Path, wanted: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        run = latest_run(state_dir)
        if run is not None and run.state == wanted:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {wanted}: {run}")
        time.sleep(0.005)
    raise AssertionError(f"the run never reached {wanted}")


@pytest.mark.parametrize("boundary", ["deploying:h1", "rolling-back:h1", "verifying-rollback:h1"])
def test_sigkill_at_each_new_state_then_resume_rolls_back_once_and_reboots_once_more(
    netlab, tmp_path, boundary
):
    lab = netlab(["h1", "h2"], nixos=True, boot_time=0.5)
    lab.set_deploy("h1", healthy=False)
    known_good = lab.nixos_state("h1")["booted_system"]
    config = rollout_config(lab, tmp_path)
    started = time.time()

    first = spawn(config, "run", log=tmp_path / "first.log")
    _kill_when(tmp_path / "state", boundary, first)
    resumed = orchestrator(config, "resume", timeout=240)

    log = (tmp_path / "first.log").read_text() + resumed.stderr
    run = latest_run(tmp_path / "state")
    assert run is not None and run.state == "aborted", log
    assert run.error is not None and run.error.endswith("; rolled back to generation 1: healthy"), (
        log
    )
    profile = profile_systems(lab, "h1")
    # Exactly one rollback generation (a deploy killed half-way may have been run again:
    # that is the deploy's business, not a rollback), exactly two reboots of h1, none of h2.
    rollbacks = [e for e in lab.events("h1", "profile") if e.get("via") == "nix-env"]
    assert len(rollbacks) == 1, (rollbacks, log)
    last = max(profile)
    assert rollbacks[0]["nixos_generation"] == last and profile[last] == known_good
    assert reboots_requested(lab, since=started) == ["h1", "h1"], log
    assert boots(lab, since=started) == {"h1": 2}
    assert lab.booted_generations("h1") == [1, last - 1, last]
    assert sorted(profile_systems(lab, "h2")) == [1]


def test_sigkill_right_after_the_power_cycle_intent_never_power_cycles_twice(netlab, tmp_path):
    lab = netlab(["h1"], nixos=True, boot_time=0.5)
    known_good = lab.nixos_state("h1")["booted_system"]
    config = hanging_generation_config(lab, tmp_path)
    started = time.time()
    first = spawn(config, "run", log=tmp_path / "first.log")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        run = latest_run(tmp_path / "state")
        if run is not None and run.machine("h1").power_cycled_at is not None:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
            break
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        time.sleep(0.002)
    else:
        raise AssertionError("no power cycle intent was recorded")

    resumed = orchestrator(config, "resume", timeout=240)

    log = (tmp_path / "first.log").read_text() + resumed.stderr
    # The kill may land before or after the command ran; either way it ran at most once and
    # the resume does not run it again. If the kill beat it, h1 stays hung: the run must then
    # end with a gate failure, never a second power cycle.
    cycles = lab.events("h1", "power_cycle")
    assert len(cycles) <= 1, (cycles, log)
    run = latest_run(tmp_path / "state")
    assert run is not None and run.state == "aborted" and run.error is not None, log
    if cycles:
        assert run.error.endswith("; rolled back to generation 1: healthy"), log
        assert lab.events("h1", "booted")[-1]["system"] == known_good
    else:
        assert "did not pass the health gate" in run.error, log
    assert len(lab.events("h1", "reboot_requested", since=started)) in (1, 2)


def test_boot_once_makes_a_healthy_generation_the_default_only_after_its_gate(netlab, tmp_path):
    lab = netlab(["h1"], nixos=True, boot_time=0.5)
    lab.set_deploy("h1", kernel_version=NEW_KERNEL)
    config = rollout_config(lab, tmp_path, reboot={"boot_once": True})

    result = orchestrator(config, "run", timeout=240)

    assert result.returncode == 0, result.stderr
    booted = lab.events("h1", "booted", since=result.started)
    assert [(e["nixos_generation"], e["chosen_by"]) for e in booted] == [(2, "oneshot")]
    made_default = [e for e in lab.events("h1", "bootctl") if e["t"] > booted[0]["t"]]
    assert made_default, "nothing made generation 2 the default after its gate"
    healthy = lab.events("h1", "healthy", since=booted[0]["t"])
    assert healthy and healthy[0]["t"] < made_default[0]["t"]
    # A power cut now boots the new generation: it is the default.
    since = time.time()
    lab.power_cycle("h1")
    again = lab.wait_event("h1", "booted", timeout=60, since=since)
    assert again["nixos_generation"] == 2 and again["chosen_by"] != "oneshot"
    run = latest_run(tmp_path / "state")
    assert run is not None and run.machine("h1").made_default_at is not None


def test_a_rollback_whose_own_gate_fails_says_the_machine_needs_a_human(netlab, tmp_path):
    lab = netlab(["h1", "h2"], nixos=True, boot_time=0.5)
    lab.set_deploy("h1", kernel_version=NEW_KERNEL)
    lab.set_fault("h1", http="fail")  # from its next boot on, whatever it boots
    config = rollout_config(lab, tmp_path)

    result = orchestrator(config, "run", timeout=300)

    assert result.returncode != 0, result.stderr
    assert reboots_requested(lab, since=result.started) == ["h1", "h1"]
    run = latest_run(tmp_path / "state")
    assert run is not None and run.state == "aborted" and run.error is not None
    assert run.error.startswith("h1: generation 2 failed (last probe: http "), run.error
    assert ", but that did not pass the health gate either (" in run.error, run.error
    assert run.error.endswith("): h1 needs a human"), run.error
    assert run.machine("h1").rollback_healthy_at is None
    assert boots(lab, since=result.started)["h2"] == 0


def test_generations_false_treats_a_nixos_host_as_not_nixos_without_a_warning(netlab, tmp_path):
    lab = netlab(["h1"], nixos=True, boot_time=0.5)  # its deploy keeps the kernel
    config = rollout_config(
        lab, tmp_path, reboot={"when": "if-needed"}, machines={"h1": {"generations": False}}
    )

    result = orchestrator(config, "run", timeout=240)

    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr
    assert reboots_requested(lab, since=result.started) == ["h1"]  # not skipped: no facts
    run = latest_run(tmp_path / "state")
    assert run is not None and run.machine("h1").nixos is False
    assert run.machine("h1").facts_before is None
