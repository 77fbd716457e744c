"""The netlab's fake NixOS (Lab(nixos=...)): store, system profile, boot entries, bootctl,
switch-to-configuration and the deploy command, judged by what the hosts really do — read
over plain ssh and from the ground-truth log."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.fault_lab import ssh
from tests.netlab import CONTROLLER, Lab, LabError, fixtures
from tests.netlab.lab import NIXOS_KERNEL

pytestmark = pytest.mark.netlab
netlab = fixtures.netlab  # also imported by tests/conftest.py; here so this file stands alone

BOOT_TIMEOUT = 30
BOOT_TIME = 0.5
PROFILE = "/nix/var/nix/profiles/system"


def ssh_ok(lab: Lab, host: str, command: str) -> str:
    rc, out, err = ssh(lab, host, command)
    assert rc == 0, f"{command!r} on {host}: exit {rc}: {err}"
    return out


def reboot_over_ssh(lab: Lab, host: str) -> dict:
    """`systemctl reboot` on the host; returns its next `booted` event once sshd is back."""
    t0 = time.time()
    ssh_ok(lab, host, "systemctl reboot")
    booted = lab.wait_event(host, "booted", timeout=BOOT_TIMEOUT, since=t0)
    lab.wait_event(host, "ssh_up", timeout=BOOT_TIMEOUT, since=t0)
    return booted


def http_status(lab: Lab, host: str) -> int:
    try:
        with urllib.request.urlopen(lab.hosts[host].health_url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_booted_system_profile_and_kernel_resolve_over_ssh(netlab):
    lab = netlab(1, nixos=True, boot_time=BOOT_TIME)
    state = lab.nixos_state("h1")
    system = state["profile"][1]
    assert system.startswith("/nix/store/") and system.endswith("-nixos-system-h1-25.05.1")
    assert state["current_generation"] == 1
    assert state["booted_system"] == state["current_system"] == system
    assert state["entries"] == {1: "nixos-generation-1.conf"}

    out = ssh_ok(
        lab,
        "h1",
        "readlink -f /run/booted-system; readlink -f /run/current-system; "
        f"readlink {PROFILE}; readlink {PROFILE}-1-link; readlink -f {PROFILE}; "
        "for f in kernel initrd kernel-modules; do readlink -e /run/booted-system/$f; "
        f"readlink -e {PROFILE}/$f; done; cat /run/booted-system/nixos-version; echo; "
        "test -x /run/booted-system/bin/switch-to-configuration && echo stc",
    ).splitlines()
    assert out[:5] == [system, system, "system-1-link", system, system]
    kernel, initrd, modules = out[5], out[7], out[9]
    assert out[6] == kernel and out[8] == initrd and out[10] == modules
    assert kernel.endswith(f"-linux-{NIXOS_KERNEL}/bzImage") and kernel.startswith("/nix/store/")
    assert initrd.endswith(f"-initrd-linux-{NIXOS_KERNEL}/initrd")
    assert modules.endswith(f"-linux-{NIXOS_KERNEL}-modules")
    assert out[11:] == ["25.05.1", "stc"]

    listing = ssh_ok(lab, "h1", "bootctl list")
    assert "id: nixos-generation-1.conf" in listing and "(default) (selected)" in listing
    gens = ssh_ok(lab, "h1", f"nix-env -p {PROFILE} --list-generations")
    assert gens.split()[0] == "1" and "(current)" in gens
    ready = lab.events("h1", "ready")[0]
    assert (ready["nixos_generation"], ready["system"]) == (1, system)


def test_deployed_generation_boots_after_systemctl_reboot(netlab):
    lab = netlab(2, controller=True, nixos=True, boot_time=BOOT_TIME)
    old = lab.nixos_state("h1")["profile"][1]
    # The orchestrator runs deploy.machine_command on the controller: so does this test.
    argv = [a.replace("{machine}", "h1") for a in lab.deploy_command(kernel_version="6.12.9")]
    run = lab.run_in(CONTROLLER, argv, capture_output=True, text=True, timeout=60, check=True)
    deployed = json.loads(run.stdout)
    new = deployed["system"]
    assert deployed["machine"] == "h1" and deployed["nixos_generation"] == 2 and new != old

    # Deployed, not booted: the profile and the boot default moved, the running system did not.
    out = ssh_ok(lab, "h1", f"readlink -f /run/booted-system; readlink -f {PROFILE}")
    assert out.split() == [old, new]
    assert lab.nixos_state("h1")["loader_default"] == "nixos-generation-2.conf"
    stc = lab.events("h1", "switch_to_configuration")[-1]
    assert (stc["action"], stc["system"], stc["default"]) == (
        "boot",
        new,
        "nixos-generation-2.conf",
    )

    booted = reboot_over_ssh(lab, "h1")
    assert (booted["nixos_generation"], booted["system"]) == (2, new)
    out = ssh_ok(
        lab, "h1", "readlink -f /run/booted-system; readlink -f /run/current-system/kernel"
    )
    assert out.split() == [new, out.split()[1]] and "-linux-6.12.9/bzImage" in out
    lab.wait_event("h1", "healthy", timeout=BOOT_TIMEOUT, since=booted["t"])
    assert lab.booted_generations("h1") == [1, 2]
    assert lab.booted_generations("h2") == [1]  # h2 got no deploy
    # a deploy to a host that is no fake NixOS fails, naming it
    bad = subprocess.run(
        lab.deploy_command(machine=CONTROLLER),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1 and "no fake NixOS host" in bad.stderr


def test_unhealthy_generation_fails_its_health_check_when_booted(netlab):
    lab = netlab(1, nixos=True, boot_time=BOOT_TIME)
    lab.set_deploy("h1", healthy=False)  # what every later deploy to h1 builds
    run = subprocess.run(
        lab.deploy_command(machine="h1"), capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(run.stdout)["nixos_generation"] == 2
    assert http_status(lab, "h1") == 200  # not booted yet
    booted = reboot_over_ssh(lab, "h1")
    assert booted["nixos_generation"] == 2
    lab.wait_event("h1", "http_up", timeout=BOOT_TIMEOUT, since=booted["t"])
    assert http_status(lab, "h1") == 503
    assert lab.events("h1", "healthy", since=booted["t"]) == []


def test_oneshot_entry_runs_once_then_the_default_again(netlab):
    lab = netlab(1, nixos=True, boot_time=BOOT_TIME)
    old = lab.nixos_state("h1")["profile"][1]
    new = lab.deploy_generation("h1", kernel_version="6.12.9")["system"]
    # default N, one-shot N+1: the way to try a generation without committing to it
    ssh_ok(
        lab,
        "h1",
        "bootctl set-default nixos-generation-1.conf && "
        "bootctl set-oneshot nixos-generation-2.conf",
    )
    assert lab.nixos_state("h1")["oneshot"] == "nixos-generation-2.conf"
    first = reboot_over_ssh(lab, "h1")
    assert (first["nixos_generation"], first["system"], first["chosen_by"]) == (2, new, "oneshot")
    assert ssh_ok(lab, "h1", "readlink -f /run/booted-system").strip() == new
    assert lab.nixos_state("h1")["oneshot"] is None  # used up by that boot
    assert "title: NixOS (Generation 2) (selected)" in ssh_ok(lab, "h1", "bootctl list")
    second = reboot_over_ssh(lab, "h1")
    assert (second["nixos_generation"], second["system"], second["chosen_by"]) == (
        1,
        old,
        "default",
    )
    assert ssh_ok(lab, "h1", "readlink -f /run/booted-system").strip() == old
    assert lab.booted_generations("h1") == [1, 2, 1]
    verbs = [(e["verb"], e["entry"]) for e in lab.events("h1", "bootctl")]
    assert verbs == [
        ("set-default", "nixos-generation-1.conf"),
        ("set-oneshot", "nixos-generation-2.conf"),
    ]


def test_switch_to_configuration_boot_of_an_old_system_makes_it_the_default(netlab):
    lab = netlab(1, nixos=True, boot_time=BOOT_TIME)
    old = lab.nixos_state("h1")["profile"][1]
    new = lab.deploy_generation("h1")["system"]
    assert reboot_over_ssh(lab, "h1")["system"] == new
    # Rollback as the orchestrator will do it: a new profile generation pointing at the
    # known-good system, then its switch-to-configuration boot.
    ssh_ok(lab, "h1", f"nix-env -p {PROFILE} --set {old} && {old}/bin/switch-to-configuration boot")
    state = lab.nixos_state("h1")
    assert state["profile"] == {1: old, 2: new, 3: old} and state["current_generation"] == 3
    assert state["loader_default"] == "nixos-generation-3.conf"
    assert state["booted_system"] == new  # nothing changes before the reboot
    stc = lab.events("h1", "switch_to_configuration")[-1]
    assert (stc["system"], stc["default"], stc["via"]) == (
        old,
        "nixos-generation-3.conf",
        "switch-to-configuration",
    )
    booted = reboot_over_ssh(lab, "h1")
    assert (booted["nixos_generation"], booted["system"]) == (3, old)
    assert ssh_ok(lab, "h1", "readlink -f /run/booted-system").strip() == old
    # switch-to-configuration boot of a system makes its latest generation the default
    ssh_ok(lab, "h1", f"{new}/bin/switch-to-configuration boot")
    assert lab.nixos_state("h1")["loader_default"] == "nixos-generation-2.conf"
    assert reboot_over_ssh(lab, "h1")["system"] == new


def test_hanging_generation_stays_dark_until_power_cycle_then_boots_the_default(netlab):
    lab = netlab(1, nixos=True, boot_time=BOOT_TIME)
    old = lab.nixos_state("h1")["profile"][1]
    lab.deploy_generation("h1", hangs_at_boot=True)
    t0 = time.time()
    ssh_ok(
        lab,
        "h1",
        "bootctl set-default nixos-generation-1.conf && "
        "bootctl set-oneshot nixos-generation-2.conf && systemctl reboot",
    )
    hung = lab.wait_event("h1", "boot_hung", timeout=BOOT_TIMEOUT, since=t0)
    assert (hung["nixos_generation"], hung["chosen_by"]) == (2, "oneshot")
    rc, _, err = ssh(lab, "h1", "true")
    assert rc == 255 and "timed out" in err  # dark, not refusing
    assert lab.events("h1", "booted", since=t0) == []  # still dark after the ssh timeout

    t1 = time.time()
    lab.power_cycle("h1")
    booted = lab.wait_event("h1", "booted", timeout=BOOT_TIMEOUT, since=t1)
    assert (booted["nixos_generation"], booted["system"], booted["chosen_by"]) == (
        1,
        old,
        "default",
    )
    lab.wait_event("h1", "healthy", timeout=BOOT_TIMEOUT, since=t1)
    assert ssh_ok(lab, "h1", "readlink -f /run/booted-system").strip() == old
    assert lab.booted_generations("h1") == [1, 1]


def test_hosts_without_fake_nixos_are_unchanged(netlab):
    lab = netlab(2, nixos=["h1"], boot_time=BOOT_TIME)
    assert lab.is_nixos("h1") and not lab.is_nixos("h2")
    # What an orchestrator would probe: no /run/booted-system, so "not NixOS". (Mind that
    # GNU `readlink -f` of a missing last component prints it and exits 0: use -e.)
    rc, out, _ = ssh(lab, "h2", "readlink -e /run/booted-system")
    assert (rc, out) == (1, "")
    rc, _, _ = ssh(lab, "h2", "test -e /run/current-system || command -v bootctl")
    assert rc == 1
    nix_in_h2 = lab.run_in("h2", ["ls", "-A", "/nix"], capture_output=True, text=True, timeout=30)
    real_nix = sorted(os.listdir("/nix"))
    assert sorted(nix_in_h2.stdout.split()) == real_nix  # the machine's own /nix, untouched
    with pytest.raises(LabError, match="no fake NixOS"):
        lab.deploy_generation("h2")
    booted = reboot_over_ssh(lab, "h2")
    assert set(booted) == {"t", "host", "event", "boot_id", "generation"}
    assert set(lab.events("h2", "ready")[0]) == {"t", "host", "event", "boot_id", "address"}
    # and the machine's /nix and /run got nothing of h1's
    assert sorted(os.listdir("/nix")) == real_nix
    assert not os.path.lexists("/run/booted-system")
