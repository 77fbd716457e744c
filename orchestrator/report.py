"""The one account of a run: each machine's outcome, the summary lines, and what ``status``,
``status --json`` and ``history`` show. The engine's end-of-run ``summary:`` lines and the
hooks' JSON come from ``summarize`` too, so a machine's outcome is worded in exactly one place.

Imports nothing heavy on purpose: ``orchestrator status`` reads the store and prints.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from health_checks.text import from_host
from orchestrator.states import Phase, machine_state
from orchestrator.store import MachineRecord, RunRecord, iso, now

STATUS_NOTE_MAX = 2048  # one machine's notes or one error, as shown by status and history


class Outcome(StrEnum):
    PENDING = "pending"  # the run has not reached it yet
    REBOOTING = "rebooting"
    VERIFYING = "verifying"
    SETTLING = "settling"
    HEALTHY = "healthy"  # rebooted and proven back
    FAILED = "failed"  # stopped the rollout
    UNVERIFIED = "unverified"  # reboot requested, run ended before it was proven back
    UNTOUCHED = "untouched"  # the run ended before reaching it


def machine_outcome(run: RunRecord, machine: MachineRecord) -> Outcome:
    if run.state == Phase.ABORTED.value:
        if machine.healthy_at is not None:
            return Outcome.HEALTHY
        if machine.error:
            return Outcome.FAILED
        if machine.reboot_requested_at is not None:
            return Outcome.UNVERIFIED
        return Outcome.UNTOUCHED
    return Outcome(machine_state(run.state, run.kind, run.machine_names, machine.name))


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def _took(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds:.1f}s"


@dataclass(frozen=True)
class MachineSummary:
    name: str
    local: bool
    outcome: str
    boot_id_before: str | None
    boot_id_after: str | None
    reboot_requested_at: str | None
    healthy_at: str | None
    reboot_to_healthy_s: float | None
    error: str | None
    last_failing_probe: str | None


@dataclass(frozen=True)
class RunSummary:
    """What a run did, as plain JSON-ready data: logged at the end, given to every hook."""

    run_id: int
    kind: str
    state: str
    started_at: str | None
    finished_at: str | None
    duration_s: float | None
    error: str | None
    failed_machine: str | None
    machines: tuple[MachineSummary, ...]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _failing_probe(machine: MachineRecord) -> str | None:
    failing = [f"{p['probe']}: {p['detail']}" for p in machine.last_probes if not p["ok"]]
    return failing[0] if failing else None


def summarize(run: RunRecord) -> RunSummary:
    machines = tuple(
        MachineSummary(
            name=machine.name,
            local=machine.local,
            outcome=machine_outcome(run, machine).value,
            boot_id_before=machine.boot_id_before,
            boot_id_after=machine.boot_id_after,
            reboot_requested_at=iso(machine.reboot_requested_at),
            healthy_at=iso(machine.healthy_at),
            reboot_to_healthy_s=seconds_between(machine.reboot_requested_at, machine.healthy_at),
            error=machine.error,
            last_failing_probe=_failing_probe(machine),
        )
        for machine in run.machines
    )
    stopped_by = (Outcome.FAILED.value, Outcome.UNVERIFIED.value)
    failed = next((m.name for m in machines if m.outcome in stopped_by), None)
    return RunSummary(
        run_id=run.run_id,
        kind=run.kind.value,
        state=run.state,
        started_at=iso(run.started_at),
        finished_at=iso(run.finished_at),
        duration_s=seconds_between(run.started_at, run.finished_at or now()),
        error=run.error,
        failed_machine=failed if run.state == Phase.ABORTED.value else None,
        machines=machines,
    )


def summary_lines(summary: RunSummary) -> list[str]:
    """The ``summary:`` lines the engine logs when a run stops."""
    lines = [
        f"run {summary.run_id} ({summary.kind}) {summary.state} after {_took(summary.duration_s)}"
    ]
    for machine in summary.machines:
        detail = ""
        if machine.outcome == Outcome.HEALTHY:
            detail = (
                f": {_took(machine.reboot_to_healthy_s)} after the reboot request "
                f"(boot id {machine.boot_id_before} -> {machine.boot_id_after})"
            )
        elif machine.outcome == Outcome.FAILED:
            detail = f": {machine.error}"
        elif machine.outcome == Outcome.UNVERIFIED:
            detail = ": reboot requested, not proven back"
        lines.append(f"{machine.name}: {machine.outcome}{detail}")
    if summary.error:
        lines.append(f"error: {summary.error}")
    return lines


def status_json(run: RunRecord | None) -> dict[str, Any]:
    if run is None:
        return {"run_id": None, "state": None, "machines": []}
    summary = summarize(run)
    return {
        "run_id": run.run_id,
        "kind": run.kind.value,
        "state": run.state,
        "started_at": summary.started_at,
        "finished_at": summary.finished_at,
        "duration_s": summary.duration_s,
        "error": run.error,
        "abort_requested_at": iso(run.abort_requested_at),
        "machines": [
            {
                "name": machine.name,
                "local": machine.local,
                "state": brief.outcome,
                "boot_id_before": machine.boot_id_before,
                "boot_id_after": machine.boot_id_after,
                "reboot_requested_at": brief.reboot_requested_at,
                "healthy_at": brief.healthy_at,
                "reboot_to_healthy_s": brief.reboot_to_healthy_s,
                "host_key": machine.host_key,
                "error": machine.error,
                "last_probes": machine.last_probes,
            }
            for machine, brief in zip(run.machines, summary.machines, strict=True)
        ],
    }


def status_text(run: RunRecord | None) -> None:
    from rich.console import Console
    from rich.table import Table

    # Plain text in, plain text out: no markup parsing, emoji codes or repr highlighting of
    # values that come from hosts (a probe detail with "[" must print as it is), and faster.
    console = Console(markup=False, emoji=False, highlight=False)
    if run is None:
        console.print("no runs yet")
        return
    data = status_json(run)
    title = f"run {run.run_id} ({run.kind.value}): {run.state}"
    table = Table(title=title, title_justify="left")
    for column in ("machine", "state", "boot id before → after", "reboot took", "probes / error"):
        table.add_column(column)
    for machine in data["machines"]:
        probes = machine["last_probes"]
        failing = [f"{p['probe']}: {p['detail']}" for p in probes if not p["ok"]]
        notes = machine["error"] or "; ".join(failing) or (f"{len(probes)} ok" if probes else "")
        # Escaped again on display: a run stored by an older version may hold raw host text.
        notes = from_host(notes, limit=STATUS_NOTE_MAX)
        took = machine["reboot_to_healthy_s"]
        boot_ids = (machine["boot_id_before"] or "")[:8]
        if machine["boot_id_after"]:
            boot_ids += f" → {machine['boot_id_after'][:8]}"
        table.add_row(
            machine["name"] + (" (local)" if machine["local"] else ""),
            machine["state"],
            boot_ids,
            f"{took:.1f}s" if took is not None else "",
            notes,
        )
    console.print(table)
    console.print(f"started {data['started_at']}, finished {data['finished_at'] or '-'}")
    if run.error:
        console.print(f"error: {from_host(run.error, limit=STATUS_NOTE_MAX)}")


def history_lines(runs: list[RunRecord]) -> list[str]:
    lines = []
    for run in runs:
        took = seconds_between(run.started_at, run.finished_at)
        lines.append(
            f"{run.run_id:>5}  {iso(run.started_at)}  {run.kind.value:<7}  {run.state:<28}  "
            + (f"{took:>8.1f}s" if took is not None else "         -")
            + (f"  {from_host(run.error, limit=STATUS_NOTE_MAX)}" if run.error else "")
        )
    return lines


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2)
