"""Check types (`tcp`, `command`, `systemd`, `http`) against the real-host lab (tests/netlab):
real OpenSSH sshd in network namespaces, whose `systemctl is-active` answers from the units
each host booted with (`Fault.units`).

The orchestrator is the real program with an ordinary config, run in the root namespace
against hosts without a controller. Verdicts come from the hosts' ground truth (which host
was asked to reboot, which really booted) and from files the hosts' commands could have
written; the orchestrator's own words are read only for the reason it gives."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import latest_run
from tests.fault_lab import (
    assert_each_healthy_before_the_next_was_asked,
    boots,
    orchestrator,
    reboots_requested,
    status_json,
    write_config,
)
from tests.netlab import Fault, Lab

pytestmark = pytest.mark.netlab

FAILING_TIMEOUT = 8  # reboot.timeout where the gate never passes (h2 must be back well within it)
RUN_TIMEOUT = 120  # one whole orchestrator run on a busy 2-core machine


def every_check_type(lab: Lab, name: str) -> list[dict[str, Any]]:
    """One check of each type for a lab host, all green on a healthy host."""
    return [
        {"url": lab.hosts[name].health_url},  # type defaults to http
        {"type": "tcp", "port": 8080},  # host defaults to the machine's host
        {"type": "tcp", "port": 22, "host": lab.hosts[name].address},
        {"type": "command", "command": ["systemctl", "is-active", "--quiet", "sshd.service"]},
        {"type": "systemd", "units": ["sshd.service", "netlab-health.service"]},
    ]


def machines_with(lab: Lab, checks: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The lab's machines, with `checks` replacing the default HTTP check where given."""
    return {
        name: {"host": host.address, "checks": checks.get(name, [{"url": host.health_url}])}
        for name, host in lab.hosts.items()
    }


def test_every_check_type_green_runs_to_done_rebooting_each_host_once_in_order(netlab, tmp_path):
    lab = netlab(3, boot_time=0.5)
    order = ["h1", "h2", "h3"]
    config = write_config(
        lab,
        tmp_path,
        machines=machines_with(lab, {name: every_check_type(lab, name) for name in order}),
    )

    result = orchestrator(config, "run", timeout=RUN_TIMEOUT)

    assert result.returncode == 0, result.stderr
    assert reboots_requested(lab) == order
    assert lab.reboot_order() == order
    for name in order:
        assert lab.reboot_count(name) == 1
    assert boots(lab) == dict.fromkeys(order, 1)
    assert_each_healthy_before_the_next_was_asked(lab, order)
    run = latest_run(tmp_path / "state")
    assert run.state == "done", run.error
    for name in order:
        record = run.machine(name)
        assert record.boot_id_after == lab.boot_id(name) != record.boot_id_before
        # The gate really asked every check, and each passed, on this boot.
        probes = {p["probe"]: p for p in record.last_probes}
        address = lab.hosts[name].address
        for probe in (
            f"http {lab.hosts[name].health_url}",
            f"tcp {address}:8080",
            f"tcp {address}:22",
            "command systemctl is-active --quiet sshd.service",
            "systemd sshd.service netlab-health.service",
        ):
            assert probe in probes, (probe, list(probes))
            assert probes[probe]["ok"], probes[probe]


@pytest.mark.parametrize(
    ("check", "names"),
    [
        pytest.param(
            {"type": "systemd", "units": ["sshd.service", "nginx.service"]},
            ["systemd sshd.service nginx.service", "nginx.service is failed"],
            id="systemd",
        ),
        pytest.param(
            {"type": "command", "command": ["systemctl", "is-active", "--quiet", "nginx.service"]},
            ["command systemctl is-active --quiet nginx.service", "exit 3"],
            id="command",
        ),
    ],
)
def test_unit_failed_after_the_reboot_aborts_naming_it_and_later_hosts_are_untouched(
    netlab, tmp_path, check, names
):
    # nginx.service is active at lab start (preflight passes) and `failed` after h2's reboot.
    lab = netlab(4, boot_time=0.5, faults={"h2": Fault(units={"nginx.service": "failed"})})
    config = write_config(
        lab,
        tmp_path,
        machines=machines_with(lab, {"h2": [{"url": lab.hosts["h2"].health_url}, check]}),
        reboot={"timeout": FAILING_TIMEOUT},
    )

    result = orchestrator(config, "run", timeout=RUN_TIMEOUT)

    assert result.returncode == 1, result.stderr
    # Ground truth: h2 did come back, healthy as far as the lab's HTTP goes, with nginx failed;
    # h3 and h4 were never asked to reboot.
    assert reboots_requested(lab) == ["h1", "h2"]
    assert boots(lab) == {"h1": 1, "h2": 1}
    assert [(e["unit"], e["state"]) for e in lab.events("h2", "unit")] == [
        ("nginx.service", "failed")
    ]
    assert lab.events("h2", "healthy"), "h2 came back healthy apart from nginx"
    run = latest_run(tmp_path / "state")
    assert run.state == "aborted"
    assert run.error.startswith(f"h2 did not pass the health gate within {FAILING_TIMEOUT}s")
    for text in names:
        assert text in run.error, run.error
        assert text in result.stderr
    assert run.machine("h2").healthy_at is None
    assert run.machine("h3").reboot_requested_at is None
    assert run.machine("h4").reboot_requested_at is None

    status = status_json(config)
    assert status["state"] == "aborted"
    for text in names:
        assert text in status["error"]
    outcome = {m["name"]: m["state"] for m in status["machines"]}
    assert outcome == {"h1": "healthy", "h2": "failed", "h3": "untouched", "h4": "untouched"}
    h2 = next(m for m in status["machines"] if m["name"] == "h2")
    failing = [p for p in h2["last_probes"] if not p["ok"]]
    assert [p["probe"] for p in failing] == [names[0]]
    assert names[1] in failing[0]["detail"]


def test_tcp_check_on_a_closed_port_fails_preflight_naming_the_port(netlab, tmp_path):
    lab = netlab(2, boot_time=0.5)
    updated = tmp_path / "updated"
    address = lab.hosts["h2"].address
    config = write_config(
        lab,
        tmp_path,
        machines=machines_with(lab, {"h2": [{"type": "tcp", "port": 9}]}),  # nothing listens
        update={"command": ["touch", str(updated)]},
    )

    result = orchestrator(config, "run", timeout=RUN_TIMEOUT)

    assert result.returncode == 1, result.stderr
    assert reboots_requested(lab) == []
    assert boots(lab) == {}
    assert not updated.exists()
    run = latest_run(tmp_path / "state")
    assert run.state == "aborted"
    assert run.error.startswith(f"preflight failed, nothing was touched: h2: tcp {address}:9")
    assert f"tcp {address}:9" in result.stderr


def test_command_check_argv_reaches_the_host_word_for_word(netlab, tmp_path):
    """Each word of a command check is one literal argument on the host: spaces, `;`,
    `$(...)` and backticks are data, never run by the remote user's shell."""
    lab = netlab(1, boot_time=0.5)
    # The host is a namespace over the same filesystem: its commands can write under tmp_path.
    ran = tmp_path / "ran-on-h1"
    pwned = tmp_path / "pwned"
    word = f"a b;$(touch {pwned}) `touch {pwned}`; touch {pwned} #"
    config = write_config(
        lab,
        tmp_path,
        machines=machines_with(
            lab,
            {
                "h1": [
                    {"type": "command", "command": ["touch", str(ran)]},
                    {"type": "command", "command": ["test", word, "=", word]},
                ]
            },
        ),
    )

    result = orchestrator(config, "run", timeout=RUN_TIMEOUT)

    assert result.returncode == 0, result.stderr
    assert ran.exists(), "the command checks never ran on the host"
    assert not pwned.exists(), "a word of the command was run by a shell"
    assert reboots_requested(lab) == ["h1"]
    assert boots(lab) == {"h1": 1}
    run = latest_run(tmp_path / "state")
    assert run.state == "done", run.error
    probes = {p["probe"]: p["ok"] for p in run.machine("h1").last_probes}
    assert all(probes.values()), probes
    assert len(probes) == 4, probes  # boot id, system, and both commands
