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
    sources = [row["source"] for row in advances]
    assert sources == work_states(RunKind.NIGHTLY, MACHINES)
    assert {row["dest"] for row in table if row["trigger"] == "abort"} == {"aborted"}
    assert len(table) == 2 * len(sources)
    assert set(all_states(RunKind.NIGHTLY, MACHINES)) == {r["dest"] for r in table} | {"preflight"}


def test_machine_state_is_derived_from_the_run_state():
    kind = RunKind.NIGHTLY
    assert machine_state("deploying", kind, MACHINES, "grey-area") == "pending"
    assert machine_state("verifying:grey-area", kind, MACHINES, "grey-area") == "verifying"
    assert machine_state("verifying:grey-area", kind, MACHINES, "sleeper-service") == "healthy"
    assert machine_state("verifying:grey-area", kind, MACHINES, "reverse-proxy") == "pending"
    assert machine_state("done", kind, MACHINES, "self") == "healthy"


def test_mermaid_diagram_names_every_state():
    diagram = mermaid(RunKind.NIGHTLY, ["a"])
    for state in work_states(RunKind.NIGHTLY, ["a"]):
        assert state.replace(":", "_") in diagram
