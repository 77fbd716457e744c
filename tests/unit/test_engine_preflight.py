"""Issue 8, item 3: two machines that report the same boot id (a cloned VM, a name that leads
to the wrong host) fail preflight and `plan`, naming each other — the gate could never prove
that the machine it rebooted came back. Real `orchestrator` processes against the simulated
lab; the hosts are told to share a boot id, nothing else differs."""

from __future__ import annotations

from pathlib import Path

from health_checks.base import Probe
from health_checks.gate import GateRound
from orchestrator.engine import flag_shared_boot_ids
from tests.conftest import latest_run, orchestrator, write_config

NAMES = ["alpha", "bravo", "charlie"]
HINT = "(cloned machine or wrong host?)"


def _cloned_lab(tmp_path: Path, make_lab):
    lab = make_lab(NAMES)
    hosts = lab.lab.hosts
    hosts["charlie"].boot_id = hosts["alpha"].boot_id  # charlie is a clone of alpha
    config = write_config(tmp_path / "lab.yaml", lab.lab.config(tmp_path / "state"))
    return lab, config


def test_plan_says_not_ready_for_both_machines_that_share_a_boot_id(tmp_path, make_lab):
    lab, config = _cloned_lab(tmp_path, make_lab)
    result = orchestrator(config, "plan")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"  alpha: NOT READY: boot id: same as charlie {HINT}" in lines
    assert f"  charlie: NOT READY: boot id: same as alpha {HINT}" in lines
    assert "  bravo: ready" in lines
    assert lab.reboot_order() == []


def test_preflight_fails_naming_both_machines_and_nothing_is_touched(tmp_path, make_lab):
    lab, config = _cloned_lab(tmp_path, make_lab)
    result = orchestrator(config, "run")
    assert result.returncode == 1, result.stderr
    run = latest_run(tmp_path / "state")
    assert run is not None and run.state == "aborted"
    assert run.error == (
        "preflight failed, nothing was touched: "
        f"alpha: boot id: same as charlie {HINT}; charlie: boot id: same as alpha {HINT}"
    )
    assert lab.reboot_order() == []
    assert [lab.reboots(name) for name in NAMES] == [0, 0, 0]
    # status shows the failing probe on each of the two machines
    probes = {m.name: m.last_probes[0] for m in run.machines}
    assert probes["alpha"] == {
        "probe": "boot id",
        "ok": False,
        "detail": f"same as charlie {HINT}",
    }
    assert probes["bravo"]["ok"] is True


def _round(boot_id: str | None, *probes: Probe) -> GateRound:
    first = (Probe("boot id", True, boot_id),) if boot_id else ()
    return GateRound((*first, *probes), boot_id, None)


def test_three_machines_on_one_boot_id_each_name_the_other_two():
    shared = "5b0c0000-0000-4000-8000-000000000001"
    ok = Probe("system", True, "running")
    rounds = {
        "a": _round(shared, ok),
        "b": _round(shared, Probe("system", False, "starting")),
        "c": _round("5b0c0000-0000-4000-8000-000000000002", ok),
        "d": _round(shared, ok),
        "e": _round(None, Probe("ssh", False, "timed out")),
    }
    flagged = flag_shared_boot_ids(rounds)
    assert {name: str(r.first_failure) for name, r in flagged.items() if not r.passed} == {
        "a": f"boot id: same as b, d {HINT}",
        "b": f"boot id: same as a, d {HINT}",
        "d": f"boot id: same as a, b {HINT}",
        "e": "ssh: timed out",
    }
    assert flagged["c"] is rounds["c"]
    # the other probes of a flagged round are kept, after the failing boot id
    assert flagged["b"].probes[1:] == rounds["b"].probes[1:]
