"""The run's state machine, defined once.

A run walks a fixed sequence decided when it starts::

    preflight → updating → deploying → (rebooting:<m> → verifying:<m> → settling:<m>)… → done

and can go to ``aborted`` from any non-final state. The sequence is plain data so that
``status`` can read it without importing ``transitions``; ``build_machine`` turns the very same
lists into a ``transitions`` AsyncMachine, which is what the engine drives and what enforces that
only these moves ever happen.

Machine names live in flat state names (``rebooting:grey-area``) on purpose: transitions joins
*nested* state names with ``_``, which a host name could collide with.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import pairwise
from typing import Any


class RunKind(StrEnum):
    NIGHTLY = "nightly"  # update, deploy, reboot every machine (`orchestrator run`)
    REBOOT = "reboot"  # one machine, health-gated (`orchestrator reboot MACHINE`)


class Phase(StrEnum):
    PREFLIGHT = "preflight"
    UPDATING = "updating"
    DEPLOYING = "deploying"
    REBOOTING = "rebooting"
    VERIFYING = "verifying"
    SETTLING = "settling"
    DONE = "done"
    ABORTED = "aborted"


MACHINE_PHASES = (Phase.REBOOTING, Phase.VERIFYING, Phase.SETTLING)
FINAL_STATES = frozenset({Phase.DONE.value, Phase.ABORTED.value})
ADVANCE = "advance"
ABORT = "abort"


@dataclass(frozen=True)
class StateName:
    phase: Phase
    machine: str | None = None

    def __str__(self) -> str:
        return f"{self.phase}:{self.machine}" if self.machine else str(self.phase)

    @classmethod
    def parse(cls, state: str) -> StateName:
        phase, _, machine = state.partition(":")
        return cls(Phase(phase), machine or None)


def work_states(kind: RunKind, machines: Sequence[str]) -> list[str]:
    """The states that do work, in order; ``done`` follows the last one."""
    return list(_work_states(kind, tuple(machines)))


@functools.lru_cache(maxsize=8)
def _work_states(kind: RunKind, machines: tuple[str, ...]) -> tuple[str, ...]:
    head = [Phase.PREFLIGHT]
    if kind is RunKind.NIGHTLY:
        head += [Phase.UPDATING, Phase.DEPLOYING]
    states = [str(StateName(phase)) for phase in head]
    for machine in machines:
        states += [str(StateName(phase, machine)) for phase in MACHINE_PHASES]
    return tuple(states)


def transition_table(kind: RunKind, machines: Sequence[str]) -> list[dict[str, str]]:
    sequence = [*work_states(kind, machines), Phase.DONE.value]
    table = [
        {"trigger": ADVANCE, "source": source, "dest": dest} for source, dest in pairwise(sequence)
    ]
    table += [
        {"trigger": ABORT, "source": source, "dest": Phase.ABORTED.value}
        for source in sequence[:-1]
    ]
    return table


def all_states(kind: RunKind, machines: Sequence[str]) -> list[str]:
    return [*work_states(kind, machines), Phase.DONE.value, Phase.ABORTED.value]


def build_machine(model: Any, kind: RunKind, machines: Sequence[str], initial: str) -> Any:
    """The transitions machine for one run, restored at ``initial`` (no callbacks fire).

    Work never happens in callbacks: transitions keeps a state change even when an ``on_enter``
    callback raises, so the engine does the work first and then fires the trigger.
    """
    from transitions.extensions.asyncio import AsyncMachine

    return AsyncMachine(
        model=model,
        states=all_states(kind, machines),
        transitions=transition_table(kind, machines),
        initial=initial,
        auto_transitions=False,
        ignore_invalid_triggers=False,
        send_event=True,
    )


def machine_state(run_state: str, kind: RunKind, machines: Sequence[str], name: str) -> str:
    """Where one machine stands, derived from the run's single state (never stored twice)."""
    sequence = work_states(kind, machines)
    own = [str(StateName(phase, name)) for phase in MACHINE_PHASES]
    if run_state == Phase.DONE.value:
        return "healthy"
    if run_state in own:
        return StateName.parse(run_state).phase.value
    if run_state not in sequence:
        return "pending"  # aborted: the caller knows from the record whether it was reached
    position = sequence.index(run_state)
    return "healthy" if position > sequence.index(own[-1]) else "pending"


def mermaid(kind: RunKind, machines: Sequence[str]) -> str:
    """A Mermaid state diagram of the same table, for the README and ``orchestrator plan``."""
    lines = ["stateDiagram-v2", f"    [*] --> {Phase.PREFLIGHT.value}"]
    for row in transition_table(kind, machines):
        source, dest = (row["source"].replace(":", "_"), row["dest"].replace(":", "_"))
        if row["trigger"] == ABORT:
            continue
        lines.append(f"    {source} --> {dest}")
    lines.append(f"    {Phase.DONE.value} --> [*]")
    lines.append("    note right of aborted: any state --> aborted")
    lines.append(f"    {Phase.ABORTED.value} --> [*]")
    return "\n".join(lines)
