"""What ``status``, ``history`` and ``status --json`` show. Imports nothing heavy on purpose:
``orchestrator status`` reads the store and prints, nothing more."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from orchestrator.states import Phase, machine_state
from orchestrator.store import MachineRecord, RunRecord, iso, now


def _machine_status(run: RunRecord, machine: MachineRecord) -> str:
    if run.state == Phase.ABORTED.value:
        if machine.healthy_at is not None:
            return "healthy"
        if machine.error:
            return "failed"
        if machine.reboot_requested_at is not None:
            return "unverified"
        return "untouched"
    return machine_state(run.state, run.kind, run.machine_names, machine.name)


def _duration(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def status_json(run: RunRecord | None) -> dict[str, Any]:
    if run is None:
        return {"run_id": None, "state": None, "machines": []}
    return {
        "run_id": run.run_id,
        "kind": run.kind.value,
        "state": run.state,
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "duration_s": _duration(run.started_at, run.finished_at or now()),
        "error": run.error,
        "abort_requested_at": iso(run.abort_requested_at),
        "machines": [
            {
                "name": machine.name,
                "local": machine.local,
                "state": _machine_status(run, machine),
                "boot_id_before": machine.boot_id_before,
                "boot_id_after": machine.boot_id_after,
                "reboot_requested_at": iso(machine.reboot_requested_at),
                "healthy_at": iso(machine.healthy_at),
                "reboot_to_healthy_s": _duration(machine.reboot_requested_at, machine.healthy_at),
                "host_key": machine.host_key,
                "error": machine.error,
                "last_probes": machine.last_probes,
            }
            for machine in run.machines
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
        console.print(f"error: {run.error}")


def history_lines(runs: list[RunRecord]) -> list[str]:
    lines = []
    for run in runs:
        took = _duration(run.started_at, run.finished_at)
        lines.append(
            f"{run.run_id:>5}  {iso(run.started_at)}  {run.kind.value:<7}  {run.state:<28}  "
            + (f"{took:>8.1f}s" if took is not None else "         -")
            + (f"  {run.error}" if run.error else "")
        )
    return lines


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2)
