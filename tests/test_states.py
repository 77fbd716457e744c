"""The state machine definition: every move it allows, and none it does not."""

from __future__ import annotations

import itertools

import pytest
from transitions import MachineError

from orchestrator.states import (
    RunKind,
    all_states,
    build_machine,
    machine_state,
    mermaid,
    transition_table,
    work_states,
)

MACHINES = ["sleeper-service", "grey-area", "reverse-proxy", "self"]


class Model:
    state: str


def test_nightly_sequence_is_update_deploy_then_each_machine_in_order() -> None:
    assert work_states(RunKind.NIGHTLY, ["a", "b"]) == [
        "preflight", "updating", "deploying",
        "rebooting:a", "verifying:a", "settling:a",
        "rebooting:b", "verifying:b", "settling:b",
    ]  # fmt: skip


def test_single_reboot_skips_update_and_deploy() -> None:
    assert work_states(RunKind.REBOOT, ["grey-area"]) == [
        "preflight", "rebooting:grey-area", "verifying:grey-area", "settling:grey-area",
    ]  # fmt: skip


@pytest.mark.parametrize("kind", list(RunKind))
async def test_every_advance_transition_leads_to_the_next_state_and_ends_done(kind: RunKind):
    sequence = [*work_states(kind, MACHINES), "done"]
    for source, expected in itertools.pairwise(sequence):
        model = Model()
        build_machine(model, kind, MACHINES, initial=source)
        assert await model.advance()  # type: ignore[attr-defined]
        assert model.state == expected


@pytest.mark.parametrize("kind", list(RunKind))
async def test_abort_is_allowed_from_every_working_state(kind: RunKind):
    for source in work_states(kind, MACHINES):
        model = Model()
        build_machine(model, kind, MACHINES, initial=source)
        assert await model.abort()  # type: ignore[attr-defined]
        assert model.state == "aborted"


@pytest.mark.parametrize("final", ["done", "aborted"])
@pytest.mark.parametrize("trigger", ["advance", "abort"])
async def test_final_states_accept_no_trigger(final: str, trigger: str):
    model = Model()
    build_machine(model, RunKind.NIGHTLY, MACHINES, initial=final)
    with pytest.raises(MachineError):
        await getattr(model, trigger)()
    assert model.state == final


def test_table_has_exactly_one_advance_per_working_state_and_no_shortcuts():
    table = transition_table(RunKind.NIGHTLY, MACHINES)
    advances = [row for row in table if row["trigger"] == "advance"]
    main_road = [
        row["source"] for row in advances if row["source"] in work_states(RunKind.NIGHTLY, MACHINES)
    ]
    assert main_road == work_states(RunKind.NIGHTLY, MACHINES)
    side = {(row["source"], row["dest"]) for row in advances} - {
        (row["source"], row["dest"]) for row in advances if row["source"] in main_road
    }
    assert side == {(f"rolling-back:{m}", f"verifying-rollback:{m}") for m in MACHINES} | {
        (f"paused:{m}", f"rebooting:{m}") for m in MACHINES
    }
    assert {row["dest"] for row in table if row["trigger"] == "abort"} == {"aborted"}
    aborts = {row["source"] for row in table if row["trigger"] == "abort"}
    assert aborts == set(all_states(RunKind.NIGHTLY, MACHINES)) - {"done", "aborted"}
    assert set(all_states(RunKind.NIGHTLY, MACHINES)) == {r["dest"] for r in table} | {"preflight"}


def test_skip_leaves_only_rebooting_for_the_next_machine_or_done():
    table = transition_table(RunKind.NIGHTLY, ["a", "b"])
    skips = {(row["source"], row["dest"]) for row in table if row["trigger"] == "skip"}
    assert skips == {("rebooting:a", "rebooting:b"), ("rebooting:b", "done")}
    per_machine = transition_table(RunKind.NIGHTLY, ["a", "b"], per_machine_deploy=True)
    skips = {(row["source"], row["dest"]) for row in per_machine if row["trigger"] == "skip"}
    assert skips == {("rebooting:a", "deploying:b"), ("rebooting:b", "done")}


async def test_a_rollback_leaves_only_verifying_and_can_only_end_aborted():
    table = transition_table(RunKind.NIGHTLY, ["a"])
    rollbacks = {(row["source"], row["dest"]) for row in table if row["trigger"] == "roll_back"}
    assert rollbacks == {("verifying:a", "rolling-back:a")}
    model = Model()
    build_machine(model, RunKind.NIGHTLY, ["a"], initial="verifying:a")
    assert await model.roll_back()  # type: ignore[attr-defined]
    assert await model.advance()  # type: ignore[attr-defined]
    assert model.state == "verifying-rollback:a"
    with pytest.raises(MachineError):
        await model.advance()  # type: ignore[attr-defined]
    assert await model.abort()  # type: ignore[attr-defined]
    assert model.state == "aborted"
    for source in ("rebooting:a", "settling:a", "deploying", "preflight"):
        model = Model()
        build_machine(model, RunKind.NIGHTLY, ["a"], initial=source)
        with pytest.raises(MachineError):
            await model.roll_back()  # type: ignore[attr-defined]


def test_per_machine_deploy_replaces_the_head_deploy_with_one_before_each_reboot():
    assert work_states(RunKind.NIGHTLY, ["a", "b"], per_machine_deploy=True) == [
        "preflight", "updating",
        "deploying:a", "rebooting:a", "verifying:a", "settling:a",
        "deploying:b", "rebooting:b", "verifying:b", "settling:b",
    ]  # fmt: skip
    # `orchestrator reboot MACHINE` never deploys, whatever the mode.
    assert work_states(RunKind.REBOOT, ["a"], per_machine_deploy=True) == [
        "preflight", "rebooting:a", "verifying:a", "settling:a",
    ]  # fmt: skip


def test_machine_state_is_derived_from_the_run_state():
    kind = RunKind.NIGHTLY
    assert machine_state("deploying", kind, MACHINES, "grey-area") == "pending"
    assert machine_state("verifying:grey-area", kind, MACHINES, "grey-area") == "verifying"
    assert machine_state("verifying:grey-area", kind, MACHINES, "sleeper-service") == "healthy"
    assert machine_state("verifying:grey-area", kind, MACHINES, "reverse-proxy") == "pending"
    assert machine_state("done", kind, MACHINES, "self") == "healthy"
    assert machine_state("rolling-back:grey-area", kind, MACHINES, "grey-area") == "rolling-back"
    assert machine_state("rolling-back:grey-area", kind, MACHINES, "self") == "pending"
    per_machine = {"per_machine_deploy": True}
    assert machine_state("deploying:self", kind, MACHINES, "self", **per_machine) == "deploying"
    assert machine_state("deploying:self", kind, MACHINES, "grey-area", **per_machine) == "healthy"


def test_mermaid_diagram_names_every_state():
    diagram = mermaid(RunKind.NIGHTLY, ["a"])
    for state in work_states(RunKind.NIGHTLY, ["a"]):
        assert state.replace(":", "_") in diagram


async def test_a_pause_leaves_only_a_machines_first_state_and_comes_back_to_it():
    for per_machine, first in ((False, "rebooting:b"), (True, "deploying:b")):
        table = transition_table(RunKind.NIGHTLY, ["a", "b"], per_machine_deploy=per_machine)
        pauses = {(row["source"], row["dest"]) for row in table if row["trigger"] == "pause"}
        assert pauses == {(first.replace(":b", ":a"), "paused:a"), (first, "paused:b")}
        model = Model()
        build_machine(
            model, RunKind.NIGHTLY, ["a", "b"], initial="paused:b", per_machine_deploy=per_machine
        )
        assert await model.advance()  # type: ignore[attr-defined]
        assert model.state == first
    model = Model()
    build_machine(model, RunKind.NIGHTLY, ["a"], initial="verifying:a")
    with pytest.raises(MachineError):
        await model.pause()  # type: ignore[attr-defined]


def test_every_machine_stands_where_a_side_road_left_the_main_one():
    for state in ("paused:b", "rolling-back:b", "verifying-rollback:b"):
        shown = [machine_state(state, RunKind.NIGHTLY, ["a", "b", "c"], m) for m in "abc"]
        assert shown == ["healthy", state.split(":")[0], "pending"], state
