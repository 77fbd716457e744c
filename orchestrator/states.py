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

Machines are taken down a *wave* at a time. By default every wave is one machine, named by it
(``rebooting:grey-area``); with ``max_unavailable`` or ``waves`` a wave of several machines is
named by its number (``rebooting:wave-2``), and its machines are rebooted and gated together.
``Waves`` says which machines a wave holds; the table itself only knows wave names, so one
table serves both. Names stay flat (``phase:wave``) on purpose: transitions joins *nested*
state names with ``_``, which a host name could collide with.
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


WAVE_PREFIX = "wave-"


@dataclass(frozen=True)
class Waves:
    """The run's machines in the groups that go down together, in order. A group of one
    machine is named by that machine; a larger one ``wave-<n>`` (its 1-based number), a name
    the config loader keeps free of machine names."""

    groups: tuple[tuple[str, ...], ...]

    @classmethod
    def one_by_one(cls, machines: Sequence[str]) -> Waves:
        return cls(tuple((name,) for name in machines))

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(
            group[0] if len(group) == 1 else f"{WAVE_PREFIX}{number}"
            for number, group in enumerate(self.groups, start=1)
        )

    @functools.cached_property
    def _by_name(self) -> dict[str, tuple[str, ...]]:
        return dict(zip(self.names, self.groups, strict=True))

    @functools.cached_property
    def _of_machine(self) -> dict[str, int]:
        return {machine: index for index, group in enumerate(self.groups) for machine in group}

    @property
    def grouped(self) -> bool:
        """Whether any wave holds more than one machine."""
        return any(len(group) > 1 for group in self.groups)

    def members(self, wave: str) -> tuple[str, ...]:
        return self._by_name[wave]

    def wave_of(self, machine: str) -> str:
        return self.names[self._of_machine[machine]]

    def number_of(self, machine: str) -> int:
        """The 1-based number of the machine's wave."""
        return self._of_machine[machine] + 1

    def after(self, wave: str) -> tuple[str, ...]:
        """The machines of the wave after ``wave`` (none after the last)."""
        index = self.names.index(wave) + 1
        return self.groups[index] if index < len(self.groups) else ()


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
    kind: RunKind, waves: Sequence[str], *, per_machine_deploy: bool = False
) -> list[str]:
    """The states that do work, in order; ``done`` follows the last one."""
    return list(_work_states(kind, tuple(waves), per_machine_deploy))


def machine_phases(kind: RunKind, per_machine_deploy: bool) -> tuple[Phase, ...]:
    """The phases each machine goes through, in order, on the main road."""
    if kind is RunKind.NIGHTLY and per_machine_deploy:
        return (Phase.DEPLOYING, *MACHINE_PHASES)
    return MACHINE_PHASES


@functools.lru_cache(maxsize=8)
def _work_states(
    kind: RunKind, waves: tuple[str, ...], per_machine_deploy: bool
) -> tuple[str, ...]:
    head = [Phase.PREFLIGHT]
    if kind is RunKind.NIGHTLY:
        head += [Phase.UPDATING] if per_machine_deploy else [Phase.UPDATING, Phase.DEPLOYING]
    states = [str(StateName(phase)) for phase in head]
    for wave in waves:
        states += [
            str(StateName(phase, wave)) for phase in machine_phases(kind, per_machine_deploy)
        ]
    return tuple(states)


def transition_table(
    kind: RunKind, waves: Sequence[str], *, per_machine_deploy: bool = False
) -> list[dict[str, str]]:
    sequence = [*work_states(kind, waves, per_machine_deploy=per_machine_deploy), "done"]
    table = [
        {"trigger": ADVANCE, "source": source, "dest": dest} for source, dest in pairwise(sequence)
    ]
    for wave in waves:
        rebooting, verifying, settling = (str(StateName(p, wave)) for p in MACHINE_PHASES)
        rolling_back, verifying_rollback = (str(StateName(p, wave)) for p in ROLLBACK_PHASES)
        after = sequence[sequence.index(settling) + 1]
        first = str(StateName(machine_phases(kind, per_machine_deploy)[0], wave))
        paused = str(StateName(Phase.PAUSED, wave))
        table += [
            {"trigger": SKIP, "source": rebooting, "dest": after},
            {"trigger": ROLL_BACK, "source": verifying, "dest": rolling_back},
            {"trigger": ADVANCE, "source": rolling_back, "dest": verifying_rollback},
            {"trigger": PAUSE, "source": first, "dest": paused},
            {"trigger": ADVANCE, "source": paused, "dest": first},
        ]
    table += [
        {"trigger": ABORT, "source": source, "dest": Phase.ABORTED.value}
        for source in all_states(kind, waves, per_machine_deploy=per_machine_deploy)
        if source not in FINAL_STATES
    ]
    return table


def all_states(
    kind: RunKind, waves: Sequence[str], *, per_machine_deploy: bool = False
) -> list[str]:
    return list(_all_states(kind, tuple(waves), per_machine_deploy))


def is_state_of(
    state: str, kind: RunKind, waves: Sequence[str], *, per_machine_deploy: bool = False
) -> bool:
    return state in _state_set(kind, tuple(waves), per_machine_deploy)


@functools.lru_cache(maxsize=8)
def _all_states(kind: RunKind, waves: tuple[str, ...], per_machine_deploy: bool) -> tuple[str, ...]:
    side_roads = [
        str(StateName(phase, w)) for w in waves for phase in (*ROLLBACK_PHASES, Phase.PAUSED)
    ]
    return (
        *_work_states(kind, waves, per_machine_deploy),
        *side_roads,
        Phase.DONE.value,
        Phase.ABORTED.value,
    )


@functools.lru_cache(maxsize=8)
def _state_set(kind: RunKind, waves: tuple[str, ...], per_machine_deploy: bool) -> frozenset[str]:
    return frozenset(_all_states(kind, waves, per_machine_deploy))


def build_machine(
    model: Any,
    kind: RunKind,
    waves: Sequence[str],
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
        states=all_states(kind, waves, per_machine_deploy=per_machine_deploy),
        transitions=transition_table(kind, waves, per_machine_deploy=per_machine_deploy),
        initial=initial,
        auto_transitions=False,
        ignore_invalid_triggers=False,
        send_event=True,
    )


def machine_state(
    run_state: str,
    kind: RunKind,
    waves: Sequence[str],
    wave: str,
    *,
    per_machine_deploy: bool = False,
) -> str:
    """Where the machines of ``wave`` stand, derived from the run's single state (never stored
    twice): the phase of the wave's own state, else ``healthy`` once the run is past it, else
    ``pending``. (Skipped and rolled-back machines are told apart by their record.)"""
    if run_state == Phase.DONE.value:
        return "healthy"
    state = StateName.parse(run_state)
    if state.machine == wave:
        return state.phase.value
    positions = _positions(kind, tuple(waves), per_machine_deploy)
    anchor = positions.get(_on_the_main_road(run_state, kind, per_machine_deploy))
    if anchor is None:
        return "pending"  # aborted: the caller knows from the record whether it was reached
    last = positions[str(StateName(Phase.SETTLING, wave))]
    return "healthy" if anchor > last else "pending"


@functools.lru_cache(maxsize=8)
def _positions(kind: RunKind, waves: tuple[str, ...], per_machine_deploy: bool) -> dict[str, int]:
    """Each work state's place in the sequence: ``status`` of 500 machines asks 500 times."""
    return {
        state: index for index, state in enumerate(_work_states(kind, waves, per_machine_deploy))
    }


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


def mermaid(kind: RunKind, waves: Sequence[str], *, per_machine_deploy: bool = False) -> str:
    """A Mermaid state diagram of the same table, for the README and ``orchestrator plan``."""
    lines = ["stateDiagram-v2", f"    [*] --> {Phase.PREFLIGHT.value}"]
    table = transition_table(kind, waves, per_machine_deploy=per_machine_deploy)
    for row in table:
        source, dest = (row["source"].replace(":", "_"), row["dest"].replace(":", "_"))
        if row["trigger"] == ABORT:
            continue
        label = "" if row["trigger"] == ADVANCE else f": {row['trigger']}"
        lines.append(f"    {source} --> {dest}{label}")
    for wave in waves:
        source = str(StateName(Phase.VERIFYING_ROLLBACK, wave)).replace(":", "_")
        lines.append(f"    {source} --> {Phase.ABORTED.value}")
    lines.append(f"    {Phase.DONE.value} --> [*]")
    lines.append("    note right of aborted: any state --> aborted")
    lines.append(f"    {Phase.ABORTED.value} --> [*]")
    return "\n".join(lines)
