"""The run's state machine, defined once.

A run walks a fixed sequence decided when it starts::

    preflight → updating → deploying → (rebooting:<m> → verifying:<m> → settling:<m>)… → done

With ``deploy.mode: per-machine`` the head ``deploying`` is replaced by a ``deploying:<m>``
before each machine's reboot, so a generation that breaks one machine never reaches the next.
Two side roads leave the sequence, each only from one state:

- ``skip``: ``rebooting:<m>`` → the next machine's first state (or ``done``), for a machine whose
  booted system already runs what a reboot would boot (``reboot.when: if-needed``);
- ``roll_back``: ``verifying:<m>`` → ``rolling-back:<m>`` → ``verifying-rollback:<m>``, which
  ends ``aborted`` whatever the rollback's own gate says: the run stops at that machine;
- ``pause``: a machine's first state → ``paused:<m>`` when the maintenance window is closed;
  ``advance`` leads back to that first state once it is open (the run process exits between).

Any non-final state can go to ``aborted``. The table is plain data so that ``status`` can read
it without importing ``transitions``; ``build_machine`` turns the very same lists into a
``transitions`` AsyncMachine, which is what the engine drives and what enforces that only these
moves ever happen.

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
    ROLLING_BACK = "rolling-back"
    VERIFYING_ROLLBACK = "verifying-rollback"
    PAUSED = "paused"
    DONE = "done"
    ABORTED = "aborted"


MACHINE_PHASES = (Phase.REBOOTING, Phase.VERIFYING, Phase.SETTLING)
ROLLBACK_PHASES = (Phase.ROLLING_BACK, Phase.VERIFYING_ROLLBACK)
FINAL_STATES = frozenset({Phase.DONE.value, Phase.ABORTED.value})
ADVANCE = "advance"
ABORT = "abort"
SKIP = "skip"
ROLL_BACK = "roll_back"
PAUSE = "pause"


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


def work_states(
    kind: RunKind, machines: Sequence[str], *, per_machine_deploy: bool = False
) -> list[str]:
    """The states that do work, in order; ``done`` follows the last one."""
    return list(_work_states(kind, tuple(machines), per_machine_deploy))


def machine_phases(kind: RunKind, per_machine_deploy: bool) -> tuple[Phase, ...]:
    """The phases each machine goes through, in order, on the main road."""
    if kind is RunKind.NIGHTLY and per_machine_deploy:
        return (Phase.DEPLOYING, *MACHINE_PHASES)
    return MACHINE_PHASES


@functools.lru_cache(maxsize=8)
def _work_states(
    kind: RunKind, machines: tuple[str, ...], per_machine_deploy: bool
) -> tuple[str, ...]:
    head = [Phase.PREFLIGHT]
    if kind is RunKind.NIGHTLY:
        head += [Phase.UPDATING] if per_machine_deploy else [Phase.UPDATING, Phase.DEPLOYING]
    states = [str(StateName(phase)) for phase in head]
    for machine in machines:
        states += [
            str(StateName(phase, machine)) for phase in machine_phases(kind, per_machine_deploy)
        ]
    return tuple(states)


def transition_table(
    kind: RunKind, machines: Sequence[str], *, per_machine_deploy: bool = False
) -> list[dict[str, str]]:
    sequence = [*work_states(kind, machines, per_machine_deploy=per_machine_deploy), "done"]
    table = [
        {"trigger": ADVANCE, "source": source, "dest": dest} for source, dest in pairwise(sequence)
    ]
    for machine in machines:
        rebooting, verifying, settling = (str(StateName(p, machine)) for p in MACHINE_PHASES)
        rolling_back, verifying_rollback = (str(StateName(p, machine)) for p in ROLLBACK_PHASES)
        after = sequence[sequence.index(settling) + 1]
        first = str(StateName(machine_phases(kind, per_machine_deploy)[0], machine))
        paused = str(StateName(Phase.PAUSED, machine))
        table += [
            {"trigger": SKIP, "source": rebooting, "dest": after},
            {"trigger": ROLL_BACK, "source": verifying, "dest": rolling_back},
            {"trigger": ADVANCE, "source": rolling_back, "dest": verifying_rollback},
            {"trigger": PAUSE, "source": first, "dest": paused},
            {"trigger": ADVANCE, "source": paused, "dest": first},
        ]
    table += [
        {"trigger": ABORT, "source": source, "dest": Phase.ABORTED.value}
        for source in all_states(kind, machines, per_machine_deploy=per_machine_deploy)
        if source not in FINAL_STATES
    ]
    return table


def all_states(
    kind: RunKind, machines: Sequence[str], *, per_machine_deploy: bool = False
) -> list[str]:
    rollback = [
        str(StateName(phase, m)) for m in machines for phase in (*ROLLBACK_PHASES, Phase.PAUSED)
    ]
    return [
        *work_states(kind, machines, per_machine_deploy=per_machine_deploy),
        *rollback,
        Phase.DONE.value,
        Phase.ABORTED.value,
    ]


def build_machine(
    model: Any,
    kind: RunKind,
    machines: Sequence[str],
    initial: str,
    *,
    per_machine_deploy: bool = False,
) -> Any:
    """The transitions machine for one run, restored at ``initial`` (no callbacks fire).

    Work never happens in callbacks: transitions keeps a state change even when an ``on_enter``
    callback raises, so the engine does the work first and then fires the trigger.
    """
    from transitions.extensions.asyncio import AsyncMachine

    return AsyncMachine(
        model=model,
        states=all_states(kind, machines, per_machine_deploy=per_machine_deploy),
        transitions=transition_table(kind, machines, per_machine_deploy=per_machine_deploy),
        initial=initial,
        auto_transitions=False,
        ignore_invalid_triggers=False,
        send_event=True,
    )


def machine_state(
    run_state: str,
    kind: RunKind,
    machines: Sequence[str],
    name: str,
    *,
    per_machine_deploy: bool = False,
) -> str:
    """Where one machine stands, derived from the run's single state (never stored twice):
    the phase of its own state, else ``healthy`` once the run is past it, else ``pending``.
    (Skipped and rolled-back machines are told apart by their record, not by the state.)"""
    sequence = work_states(kind, machines, per_machine_deploy=per_machine_deploy)
    phases = (*machine_phases(kind, per_machine_deploy), *ROLLBACK_PHASES, Phase.PAUSED)
    own = [str(StateName(phase, name)) for phase in phases]
    if run_state == Phase.DONE.value:
        return "healthy"
    if run_state in own:
        return StateName.parse(run_state).phase.value
    anchor = _on_the_main_road(run_state, kind, per_machine_deploy)
    if anchor not in sequence:
        return "pending"  # aborted: the caller knows from the record whether it was reached
    position = sequence.index(anchor)
    last = str(StateName(Phase.SETTLING, name))
    return "healthy" if position > sequence.index(last) else "pending"


def _on_the_main_road(run_state: str, kind: RunKind, per_machine_deploy: bool) -> str:
    """The state of the main road a side road left from: where the run stands for every
    other machine (a pause before a machine's first state, a rollback after verifying it)."""
    if run_state in FINAL_STATES:
        return run_state
    state = StateName.parse(run_state)
    if state.phase is Phase.PAUSED:
        return str(StateName(machine_phases(kind, per_machine_deploy)[0], state.machine))
    if state.phase in ROLLBACK_PHASES:
        return str(StateName(Phase.VERIFYING, state.machine))
    return run_state


def mermaid(kind: RunKind, machines: Sequence[str], *, per_machine_deploy: bool = False) -> str:
    """A Mermaid state diagram of the same table, for the README and ``orchestrator plan``."""
    lines = ["stateDiagram-v2", f"    [*] --> {Phase.PREFLIGHT.value}"]
    table = transition_table(kind, machines, per_machine_deploy=per_machine_deploy)
    for row in table:
        source, dest = (row["source"].replace(":", "_"), row["dest"].replace(":", "_"))
        if row["trigger"] == ABORT:
            continue
        label = "" if row["trigger"] == ADVANCE else f": {row['trigger']}"
        lines.append(f"    {source} --> {dest}{label}")
    for machine in machines:
        source = str(StateName(Phase.VERIFYING_ROLLBACK, machine)).replace(":", "_")
        lines.append(f"    {source} --> {Phase.ABORTED.value}")
    lines.append(f"    {Phase.DONE.value} --> [*]")
    lines.append("    note right of aborted: any state --> aborted")
    lines.append(f"    {Phase.ABORTED.value} --> [*]")
    return "\n".join(lines)
