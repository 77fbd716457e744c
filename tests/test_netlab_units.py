"""Unit states in the netlab: `systemctl is-active` on a fake host answers like systemd's,
from the units the host booted with (Fault.units) and `Lab.set_unit`, proven over plain ssh."""

from __future__ import annotations

import shlex
import subprocess
import time

import pytest

from tests.netlab import Fault, Lab, LabError, fixtures
from tests.netlab.lab import DEFAULT_UNITS

pytestmark = pytest.mark.netlab
netlab = fixtures.netlab  # also imported by tests/conftest.py; here so this file stands alone

SSH_TIMEOUT = 30  # a busy 2-core machine: ssh, sshd and the shim all have to get a turn
BOOT_TIMEOUT = 30


def is_active(
    lab: Lab, host: str, *units: str, options: tuple[str, ...] = ()
) -> tuple[int, str, str]:
    # The remote side runs the command through root's shell, so quote every argument as the
    # orchestrator does (shlex.join): the shim must get each unit name verbatim.
    argv = lab.ssh_argv(host, "systemctl", "is-active", *options, *(shlex.quote(u) for u in units))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=SSH_TIMEOUT, check=False)
    assert result.returncode != 255, f"ssh failed: {result.stderr}"
    return result.returncode, result.stdout, result.stderr


def unit_events(lab: Lab, host: str, since: float | None = None) -> list[dict]:
    return [
        {k: v for k, v in e.items() if k not in ("t", "host", "event")}
        for e in lab.events(host, "unit", since=since)
    ]


def test_hosts_boot_with_the_default_units_active_and_unknown_units_inactive(netlab):
    lab = netlab(2)
    assert DEFAULT_UNITS == ("sshd.service", "netlab-health.service")
    for host in ("h1", "h2"):
        assert is_active(lab, host, *DEFAULT_UNITS)[:2] == (0, "active\nactive\n")

    assert is_active(lab, "h1", "nginx.service")[:2] == (3, "inactive\n")
    # Like systemctl: `sshd` means sshd.service; the answer keeps the order asked; exit 0
    # when at least one unit is active (systemd's check_unit_generic), 3 when none is.
    assert is_active(lab, "h1", "nginx.service", "sshd")[:2] == (0, "inactive\nactive\n")
    assert is_active(lab, "h1", "nginx.service", "postgresql")[:2] == (3, "inactive\ninactive\n")
    rc, out, err = is_active(lab, "h1")
    assert (rc, out) == (1, "") and "Too few arguments" in err
    assert lab.events(event="unit") == []  # a clean first boot logs no unit event


def test_quiet_prints_nothing_and_keeps_the_exit_code(netlab):
    lab = netlab(1)
    lab.set_unit("h1", "nginx.service", "failed")
    for quiet in ("--quiet", "-q"):
        assert is_active(lab, "h1", *DEFAULT_UNITS, options=(quiet,)) == (0, "", "")
        assert is_active(lab, "h1", "nginx.service", options=(quiet,)) == (3, "", "")
        assert is_active(lab, "h1", "unknown.service", options=(quiet,)) == (3, "", "")
    # options may come after the verb or before it, as with systemctl
    argv = lab.ssh_argv("h1", "systemctl", "-q", "is-active", "nginx.service")
    quiet_first = subprocess.run(
        argv, capture_output=True, text=True, timeout=SSH_TIMEOUT, check=False
    )
    assert (quiet_first.returncode, quiet_first.stdout) == (3, "")
    # is-system-running is unchanged
    state = subprocess.run(
        lab.ssh_argv("h1", "systemctl", "is-system-running"),
        capture_output=True,
        text=True,
        timeout=SSH_TIMEOUT,
        check=False,
    )
    assert (state.returncode, state.stdout) == (0, "running\n")


def test_fault_units_are_active_at_lab_start_and_take_their_state_from_the_next_boot(netlab):
    lab = netlab(
        2,
        boot_time=0.3,
        faults={"h1": Fault(units={"nginx.service": "failed", "backup.timer": "activating"})},
    )
    units = ("nginx.service", "backup.timer", *DEFAULT_UNITS)
    assert is_active(lab, "h1", *units)[:2] == (0, "active\n" * 4)
    assert lab.events(event="unit") == []

    t0 = time.time()
    lab.reboot("h1")
    up = lab.wait_event("h1", "ssh_up", since=t0, timeout=BOOT_TIMEOUT)

    assert is_active(lab, "h1", "nginx.service")[:2] == (3, "failed\n")
    assert is_active(lab, "h1", "backup.timer", "nginx.service")[:2] == (3, "activating\nfailed\n")
    assert is_active(lab, "h1", *DEFAULT_UNITS)[:2] == (0, "active\nactive\n")
    booted = lab.events("h1", "booted", since=t0)[0]
    assert unit_events(lab, "h1", since=t0) == [
        {"unit": "backup.timer", "state": "activating", "generation": booted["generation"]},
        {"unit": "nginx.service", "state": "failed", "generation": booted["generation"]},
    ]
    assert all(booted["t"] <= e["t"] <= up["t"] for e in lab.events("h1", "unit", since=t0))
    # a fault is per host: h2 (no unit fault) has no nginx.service
    assert is_active(lab, "h2", "nginx.service")[:2] == (3, "inactive\n")

    # a changed fault applies from the next reboot; `nginx` is nginx.service
    assert lab.set_fault("h1", units={"nginx": "active"}).units == {"nginx.service": "active"}
    assert is_active(lab, "h1", "nginx.service")[:2] == (3, "failed\n")
    t1 = time.time()
    lab.reboot("h1")
    lab.wait_event("h1", "ssh_up", since=t1, timeout=BOOT_TIMEOUT)
    assert is_active(lab, "h1", "nginx.service", "backup.timer")[:2] == (0, "active\ninactive\n")
    assert unit_events(lab, "h1", since=t1) == []


def test_set_unit_applies_now_until_the_next_boot(netlab):
    lab = netlab(1, boot_time=0.3)
    t0 = time.time()

    lab.set_unit("h1", "netlab-health.service", "failed")
    assert is_active(lab, "h1", "netlab-health.service")[:2] == (3, "failed\n")
    lab.set_unit("h1", "nginx", "active")  # systemctl's short name: nginx.service
    assert is_active(lab, "h1", "nginx.service")[:2] == (0, "active\n")
    lab.set_unit("h1", "nginx.service", "deactivating")
    assert is_active(lab, "h1", "nginx.service")[:2] == (3, "deactivating\n")

    assert unit_events(lab, "h1", since=t0) == [
        {"unit": "netlab-health.service", "state": "failed", "via": "lab"},
        {"unit": "nginx.service", "state": "active", "via": "lab"},
        {"unit": "nginx.service", "state": "deactivating", "via": "lab"},
    ]
    for unit, state in (("../state", "failed"), ("a b", "failed"), ("nginx", "Failed\nx")):
        with pytest.raises(LabError):
            lab.set_unit("h1", unit, state)
    with pytest.raises(LabError):
        Fault(units={"../state": "failed"})

    t1 = time.time()
    lab.reboot("h1")  # what set_unit did does not survive a boot
    lab.wait_event("h1", "ssh_up", since=t1, timeout=BOOT_TIMEOUT)
    assert is_active(lab, "h1", "netlab-health.service", "nginx.service")[:2] == (
        0,
        "active\ninactive\n",
    )


def test_unit_names_are_data_never_paths_or_code(netlab, tmp_path):
    lab = netlab(1)
    home = lab.hosts["h1"].dir / "home"  # the ssh session's working directory
    marker = tmp_path / "pwned"
    names = [
        "../state",  # the file holding `running`: must not be read
        "a/../../state",
        "..",
        ".hidden",
        "/etc/passwd",
        f"$(touch {marker})",
        "$(touch pwned)",  # no slash: gets as far as the file name
        "`touch pwned`",
        "x;touch pwned",
        "*",
    ]
    (lab.hosts["h1"].dir / "units" / ".hidden.service").write_text("active\n")

    over_ssh = is_active(lab, "h1", *names)
    inside = lab.run_in(  # no shell at all between the test and the shim
        "h1",
        ["systemctl", "is-active", *names],
        capture_output=True,
        text=True,
        timeout=SSH_TIMEOUT,
        cwd=str(home),
    )

    assert over_ssh[:2] == (3, "inactive\n" * len(names))
    assert (inside.returncode, inside.stdout) == (3, "inactive\n" * len(names))
    assert not marker.exists()
    assert not (home / "pwned").exists()
    assert sorted(p.name for p in (lab.hosts["h1"].dir / "units").iterdir()) == sorted(
        [*DEFAULT_UNITS, ".hidden.service"]
    )
