"""The one account of a run: each machine's outcome, the summary lines, and what ``status``,
``status --json`` and ``history`` show. The engine's end-of-run ``summary:`` lines and the
hooks' JSON come from ``summarize`` too, so a machine's outcome is worded in exactly one place.

Imports nothing heavy on purpose: ``orchestrator status`` reads the store and prints.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TextIO

from health_checks.text import from_host
from orchestrator.generations import GenerationFacts, store_name
from orchestrator.states import Phase, StateName, machine_state
from orchestrator.store import MachineRecord, RunHead, RunRecord, iso, now

STATUS_NOTE_MAX = 2048  # one machine's notes or one error, as shown by status and history


class Outcome(StrEnum):
    PENDING = "pending"  # the run has not reached it yet
    DEPLOYING = "deploying"  # deploy.mode: per-machine
    REBOOTING = "rebooting"
    VERIFYING = "verifying"
    SETTLING = "settling"
    ROLLING_BACK = "rolling-back"
    VERIFYING_ROLLBACK = "verifying-rollback"
    PAUSED = "paused"  # its turn waits for the maintenance window
    HEALTHY = "healthy"  # rebooted and proven back
    SKIPPED = "skipped"  # reboot.when: if-needed, nothing new to boot
    ROLLED_BACK = "rolled-back"  # failed, then proven back on the known-good generation
    FAILED = "failed"  # stopped the rollout
    UNVERIFIED = "unverified"  # reboot requested, run ended before it was proven back
    UNTOUCHED = "untouched"  # the run ended before reaching it


def machine_outcome(run: RunRecord, machine: MachineRecord) -> Outcome:
    if run.state == Phase.ABORTED.value:
        if machine.healthy_at is not None:
            return Outcome.HEALTHY
        if machine.rollback_healthy_at is not None:
            return Outcome.ROLLED_BACK
        if machine.error:
            return Outcome.FAILED
        if machine.skipped:
            return Outcome.SKIPPED
        if machine.reboot_requested_at is not None:
            return Outcome.UNVERIFIED
        return Outcome.UNTOUCHED
    state = machine_state(
        run.state,
        run.kind,
        run.waves.names,
        run.waves.wave_of(machine.name),
        per_machine_deploy=run.per_machine_deploy,
    )
    if machine.skipped and state in (Outcome.HEALTHY, Outcome.REBOOTING, Outcome.VERIFYING):
        return Outcome.SKIPPED
    if state == Outcome.VERIFYING and machine.healthy_at is not None:
        return Outcome.HEALTHY  # proven; the rest of its wave is still being gated
    return Outcome(state)


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


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
    # Generation facts (see generations.py): None where unknown; nixos False: not NixOS.
    nixos: bool | None = None
    generation_before: int | None = None
    generation_expected: int | None = None
    generation_after: int | None = None
    system_before: str | None = None
    system_expected: str | None = None
    system_after: str | None = None
    # Why it was rebooted or skipped, and its side roads (schema 5).
    reboot_reason: str | None = None
    boot_once: str | None = None
    power_cycled: bool = False
    failure: str | None = None  # the gate failure that led to a rollback
    rollback_generation: int | None = None
    rolled_back_healthy_at: str | None = None
    # The 1-based number of the wave it went down with, when some wave holds several.
    wave: int | None = None


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
            nixos=machine.nixos,
            generation_before=machine.generation_before,
            generation_expected=machine.generation_expected,
            generation_after=machine.generation_after,
            system_before=machine.system_before,
            system_expected=machine.system_expected,
            system_after=machine.system_after,
            reboot_reason=machine.reboot_reason,
            boot_once=machine.boot_once,
            power_cycled=machine.power_cycled_at is not None
            or machine.rollback_power_cycled_at is not None,
            failure=machine.failure,
            rollback_generation=machine.rollback_generation,
            rolled_back_healthy_at=iso(machine.rollback_healthy_at),
            wave=run.waves.number_of(machine.name) if run.waves.grouped else None,
        )
        for machine in run.machines
    )
    stopped_by = (Outcome.FAILED.value, Outcome.UNVERIFIED.value, Outcome.ROLLED_BACK.value)
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


def generation_change(machine: Mapping[str, Any]) -> str:
    """A machine's generations in a few columns, from its ``status_json`` entry (or a
    ``MachineSummary`` as a dict): ``142 → 143`` once it is back on one, ``142 → 143?``
    while the profile's is only expected, ``not NixOS``, or empty when nothing was read.
    ``?`` stands for a number not known (a booted system that no generation names)."""
    if machine["nixos"] is None:
        return ""
    if not machine["nixos"]:
        return "not NixOS"

    def number(value: int | None) -> str:
        return "?" if value is None else str(value)

    before = number(machine["generation_before"])
    if machine.get("skipped"):
        return before
    if machine["system_after"] is not None:
        return f"{before} → {number(machine['generation_after'])}"
    return f"{before} → {number(machine['generation_expected'])}?"


def summary_lines(summary: RunSummary) -> list[str]:
    """The ``summary:`` lines the engine logs when a run stops: short boot ids and human
    durations, so a line fits a terminal (the hooks' JSON has the full ids)."""
    took = human_duration(summary.duration_s)
    lines = [f"run {summary.run_id} ({summary.kind}) {summary.state} after {took}"]
    for machine in summary.machines:
        detail = ""
        if machine.outcome == Outcome.HEALTHY:
            detail = (
                f": {human_duration(machine.reboot_to_healthy_s)} after the reboot request "
                f"(boot id {short_id(machine.boot_id_before)} -> "
                f"{short_id(machine.boot_id_after)})"
            )
            if machine.nixos and machine.system_after is not None:
                change = generation_change(asdict(machine)).replace("→", "->")
                names = f"{store_name(machine.system_before)} -> {store_name(machine.system_after)}"
                detail += f"; generation {change} ({names})"
            elif machine.nixos is False:
                detail += "; not NixOS"
            if machine.reboot_reason:
                detail += f"; {machine.reboot_reason}"
        elif machine.outcome == Outcome.SKIPPED:
            detail = f": {machine.reboot_reason}" if machine.reboot_reason else ""
        elif machine.outcome in (Outcome.FAILED, Outcome.ROLLED_BACK):
            # The engine's errors begin with the machine's name; once is enough.
            detail = f": {(machine.error or '').removeprefix(machine.name + ': ')}"
        elif machine.outcome == Outcome.UNVERIFIED:
            detail = ": reboot requested, not proven back"
        lines.append(f"{machine.name}: {machine.outcome}{detail}")
    # The error of the machine that stopped the run is already on its line above.
    if summary.error and all(m.error != summary.error for m in summary.machines):
        lines.append(f"error: {summary.error}")
    return lines


def current_since(run: RunRecord, steps: list[tuple[str, datetime]]) -> datetime | None:
    """When ``run`` entered the state it is in: the first of the latest steps in that state (a
    resume may record the same state again; the wait began at the first). A finished run
    needs no steps: it is in its final state since it finished."""
    if run.finished:
        return run.finished_at
    since = None
    for state, entered_at in reversed(steps):
        if state != run.state:
            break
        since = entered_at
    return since


def status_json(run: RunRecord | None, since: datetime | None = None) -> dict[str, Any]:
    if run is None:
        return {"run_id": None, "state": None, "machines": []}
    summary = summarize(run)
    return {
        "run_id": run.run_id,
        "kind": run.kind.value,
        "state": run.state,
        "state_since": iso(since),
        "started_at": summary.started_at,
        "finished_at": summary.finished_at,
        "duration_s": summary.duration_s,
        "error": run.error,
        "abort_requested_at": iso(run.abort_requested_at),
        "paused_until": iso(run.paused_until),
        "waves": [list(group) for group in run.waves.groups],
        "machines": [
            {
                "name": machine.name,
                "local": machine.local,
                "wave": run.waves.number_of(machine.name),
                "state": brief.outcome,
                "boot_id_before": machine.boot_id_before,
                "boot_id_after": machine.boot_id_after,
                "reboot_requested_at": brief.reboot_requested_at,
                "healthy_at": brief.healthy_at,
                "reboot_to_healthy_s": brief.reboot_to_healthy_s,
                "host_key": machine.host_key,
                "error": machine.error,
                "last_probes": machine.last_probes,
                "nixos": machine.nixos,
                "generation_before": machine.generation_before,
                "generation_expected": machine.generation_expected,
                "generation_after": machine.generation_after,
                "system_before": machine.system_before,
                "system_expected": machine.system_expected,
                "system_after": machine.system_after,
                "kernel_before": _kernel(machine.facts_before, "booted"),
                "kernel_expected": _kernel(machine.facts_before, "profile"),
                "kernel_after": _kernel(machine.facts_after, "booted"),
                "reboot_reason": machine.reboot_reason,
                "skipped": machine.skipped,
                "deployed_at": iso(machine.deployed_at),
                "boot_once": machine.boot_once,
                "made_default_at": iso(machine.made_default_at),
                "power_cycled_at": iso(machine.power_cycled_at),
                "failure": machine.failure,
                "rollback_generation": machine.rollback_generation,
                "rollback_requested_at": iso(machine.rollback_requested_at),
                "rollback_power_cycled_at": iso(machine.rollback_power_cycled_at),
                "rollback_boot_id_after": machine.rollback_boot_id_after,
                "rollback_healthy_at": iso(machine.rollback_healthy_at),
            }
            for machine, brief in zip(run.machines, summary.machines, strict=True)
        ],
    }


def _kernel(facts: GenerationFacts | None, side: str) -> str | None:
    if facts is None:
        return None
    return (facts.booted if side == "booted" else facts.profile).kernel


# --- the text of `status` and `history`: plain lines that fit the terminal ---------------------
#
# No rich here: the layout is a few fixed columns, and importing rich's console and table cost
# about a quarter of status's 150 ms budget. Colour is a handful of SGR codes (``paint``).

NOTE_LINES = 4  # of one machine's probes or error under its row; --json has the whole text
ERROR_LINES = 8  # of the run's error: the sentence that matters, not a whole HTML error page
MIN_NOTE_ROOM = 16  # narrower than this beside the row, a note goes under it
_STATE_COLOURS = {
    Outcome.HEALTHY: "32",
    Outcome.FAILED: "31",
    Outcome.UNVERIFIED: "33",
    Outcome.REBOOTING: "33",
    Outcome.VERIFYING: "33",
    Outcome.SETTLING: "33",
    Outcome.DEPLOYING: "33",
    Outcome.PAUSED: "36",
    Outcome.ROLLING_BACK: "31",
    Outcome.VERIFYING_ROLLBACK: "31",
    Outcome.ROLLED_BACK: "31",
    Outcome.SKIPPED: "32",
    Outcome.PENDING: "2",
    Outcome.UNTOUCHED: "2",
}


def terminal_width(environ: Mapping[str, str], stream: TextIO) -> int:
    """``$COLUMNS``, else the terminal's width, else 80 (a pipe, a cron mail)."""
    with contextlib.suppress(ValueError):
        if int(environ.get("COLUMNS", "")) > 0:
            return int(environ["COLUMNS"])
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        columns = 0
    return columns if columns > 0 else 80


def use_colour(environ: Mapping[str, str], stream: TextIO) -> bool:
    """Colour only on a terminal, and never with ``NO_COLOR`` set (no-color.org: to anything
    but the empty string) or on a ``dumb`` one."""
    if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def paint(text: str, sgr: str, colour: bool) -> str:
    return f"\x1b[{sgr}m{text}\x1b[0m" if colour and text else text


def short_id(boot_id: str | None) -> str:
    """A boot id's first 8 hex digits: enough to tell boots apart; ``--json`` has it whole."""
    return from_host(boot_id[:8], limit=64) if boot_id else ""


def human_duration(seconds: float | None) -> str:
    """``4.2s``, ``45s``, ``1m12s``, ``2h03m``, ``3d04h``."""
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)  # a clock stepped back must not print "-1s"
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def exact_duration(seconds: float) -> str:
    """A configured duration as written in the config: 900.0 -> ``15m``, 5400.0 -> ``1h30m``,
    0.0 -> ``0s``, 1.5 -> ``1.5s``. (``human_duration`` rounds a measured one.)"""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    if rest or not parts:
        parts.append(f"{rest}s")
    return "".join(parts)


def local_time(moment: datetime | None, at: datetime) -> str:
    """``02:14:03`` today, ``2026-11-28 02:14`` on another day, in local time."""
    if moment is None:
        return "-"
    local = moment.astimezone()
    if local.date() == at.astimezone().date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M")


def _cell_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def cells(text: str) -> int:
    """Terminal columns of ``text`` (no control characters: it went through ``from_host``).
    Only the non-ASCII characters are looked up: a row's one ``→`` should not cost a lookup
    of each of its characters (500 machines' rows are 30,000 of them)."""
    if text.isascii():
        return len(text)
    return len(text) + sum(_cell_width(c) - 1 for c in text if not c.isascii())


def _fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` columns, a cut one ending in ``…``."""
    if cells(text) <= width:
        return text
    used, kept = 1, []
    for char in text:
        used += _cell_width(char)
        if used > width:
            break
        kept.append(char)
    return "".join(kept) + "…"


def _take(text: str, width: int) -> tuple[str, str]:
    """The longest head of ``text`` within ``width`` columns (one character at least), and
    the rest: how a word wider than a line (a URL, an escaped blob) is broken."""
    used = 0
    for index, char in enumerate(text):
        used += _cell_width(char)
        if used > width and index > 0:
            return text[:index], text[index:]
    return text, ""


def wrap(text: str, width: int, indent: str = "  ", first: str = "") -> list[str]:
    """``first + text`` in lines of at most ``width`` columns, broken at spaces (or inside a
    word too long for a line), the later lines starting with ``indent``."""
    lines: list[str] = []
    line, start = first, cells(first)  # start: the columns of this line's prefix
    used = start
    for word in text.split(" "):
        gap = 1 if used > start else 0
        if used + gap + cells(word) <= width:
            line += " " * gap + word
            used += gap + cells(word)
            continue
        if used > start:  # the word begins the next line
            lines.append(line)
            line, start = indent, cells(indent)
            used = start
        rest = word
        while cells(rest) > width - used:
            piece, rest = _take(rest, width - used)
            lines.append(line + piece)
            line, start = indent, cells(indent)
            used = start
        line += rest
        used += cells(rest)
    lines.append(line)
    return [line.rstrip() for line in lines]


def _notes(machine: dict[str, Any], run_error: str | None) -> str:
    probes = machine["last_probes"]
    failing = [f"{p['probe']}: {p['detail']}" for p in probes if not p["ok"]]
    if machine["error"] is not None and machine["error"] == run_error:
        return "the error above"  # the engine records a machine's abort for both
    notes = machine["error"] or "; ".join(failing) or (f"{len(probes)} ok" if probes else "")
    if machine["reboot_reason"] and not machine["error"] and not failing:
        # Why it was rebooted (or skipped): what a finished run's reader asks first.
        notes = machine["reboot_reason"] + (f"; {notes}" if notes else "")
    # Escaped again on display: a run stored by an older version may hold raw host text.
    return from_host(notes, limit=STATUS_NOTE_MAX)


def _now(run: RunRecord, since: datetime | None, at: datetime) -> str:
    """What a run in progress does now and since when, with what it waits for."""
    state = StateName.parse(run.state)
    members = run.waves.members(state.machine) if state.machine is not None else ()
    line = f"now: {state.phase.value}" + (f" {state.machine}" if state.machine else "")
    if len(members) > 1:
        line += f" ({_names(members)})"
    if since is not None:
        line += f" since {local_time(since, at)} ({human_duration((at - since).total_seconds())})"
    detail = {
        Phase.PREFLIGHT: "probing every machine",
        Phase.UPDATING: "running the update command",
        Phase.DEPLOYING: "running the deploy command",
        Phase.ROLLING_BACK: "making the known-good generation the boot default again",
    }.get(state.phase, "")
    if state.phase is Phase.PAUSED and run.paused_until is not None:
        # The next `orchestrator run` or `resume` from then on goes on with this machine.
        detail = f"waiting for the maintenance window, until {local_time(run.paused_until, at)}"
    if len(members) > 1:
        detail = _wave_detail(run, state.phase, members, at) or detail
    elif state.machine is not None:
        machine = run.machine(state.machine)
        if state.phase is Phase.REBOOTING:
            sent = machine.reboot_requested_at
            detail = f"reboot sent at {local_time(sent, at)}" if sent else "sending the reboot"
        elif state.phase in (Phase.VERIFYING, Phase.VERIFYING_ROLLBACK):
            failing = _failing_probe(machine)
            probes = machine.last_probes
            detail = (
                f"waiting: {failing}"
                if failing
                else (f"last round passed ({len(probes)} ok)" if probes else "probing")
            )
        elif state.phase is Phase.SETTLING:
            detail = f"healthy at {local_time(machine.healthy_at, at)}, settling"
    return line + (f": {from_host(detail, limit=STATUS_NOTE_MAX)}" if detail else "")


def _names(names: Sequence[str], shown: int = 4) -> str:
    """A few names, then how many more: a wave of 25 in one line."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _wave_detail(run: RunRecord, phase: Phase, members: Sequence[str], at: datetime) -> str:
    """What a wave of several machines does now: how many are through, and the first one
    that is not, with its failing probe."""
    records = [run.machine(name) for name in members]
    rebooted = [r for r in records if not r.skipped]
    if phase is Phase.REBOOTING:
        sent = [r for r in rebooted if r.reboot_requested_at is not None]
        return f"reboot sent to {len(sent)} of {len(members)}" if sent else "sending the reboots"
    if phase is Phase.VERIFYING:
        healthy = [r for r in rebooted if r.healthy_at is not None]
        text = f"{len(healthy)} of {len(rebooted)} healthy"
        waiting = [(r.name, _failing_probe(r)) for r in rebooted if r.healthy_at is None]
        failing = next(((name, probe) for name, probe in waiting if probe), None)
        if failing is not None:
            text += f"; waiting: {failing[0]}: {failing[1]}"
        return text
    if phase is Phase.SETTLING:
        times = [r.healthy_at for r in rebooted if r.healthy_at is not None]
        return f"all healthy at {local_time(max(times), at)}, settling" if times else ""
    if phase in (Phase.ROLLING_BACK, Phase.VERIFYING_ROLLBACK):
        rolling = [r.name for r in records if r.rollback_started_at is not None]
        return f"rolling back {_names(rolling)}"
    return ""


def status_lines(
    run: RunRecord | None,
    since: datetime | None = None,
    *,
    width: int = 80,
    colour: bool = False,
    at: datetime | None = None,
) -> list[str]:
    """``status`` as lines of at most ``width`` columns (from about 60 up; narrower, only the
    machine names and notes give way). ``since``: when the run entered its current state."""
    if run is None:
        return ["no runs yet"]
    at = at or now()
    data = status_json(run, since)
    state_colour = {Phase.DONE.value: "1;32", Phase.ABORTED.value: "1;31"}.get(run.state, "1;33")
    head = f"run {run.run_id} ({run.kind.value}): "
    if run.finished:
        took = human_duration(data["duration_s"])
        when = f"{local_time(run.started_at, at)} → {local_time(run.finished_at, at)} ({took})"
    else:
        ago = human_duration((at - run.started_at).total_seconds())
        when = f"started {local_time(run.started_at, at)} ({ago} ago)"
    lines = wrap(f"{run.state}, {when}", width, first=head)
    lines[0] = lines[0].replace(run.state, paint(run.state, state_colour, colour), 1)
    if not run.finished:
        if run.abort_requested_at is not None:
            requested = local_time(run.abort_requested_at, at)
            lines += wrap(f"abort requested at {requested}: it stops at the next safe point", width)
        now_lines = wrap(_now(run, since, at), width)
        now_lines[0] = paint("now:", "1;36", colour) + now_lines[0].removeprefix("now:")
        lines += now_lines
    cut = False
    if run.error:
        error_lines = wrap(from_host(run.error, limit=STATUS_NOTE_MAX), width, first="error: ")
        error_lines[0] = paint("error:", "1;31", colour) + error_lines[0].removeprefix("error:")
        if len(error_lines) > ERROR_LINES:
            last = _fit(error_lines[ERROR_LINES - 1] + " …", width)
            error_lines, cut = [*error_lines[: ERROR_LINES - 1], last], True
        lines += error_lines
    lines.append("")
    table, cut_notes = _table(data, width, colour)
    lines += table
    if cut or cut_notes:
        lines += wrap(
            "(long texts are cut here; `orchestrator status --json` has them whole)", width
        )
    return lines


def _table(data: dict[str, Any], width: int, colour: bool) -> tuple[list[str], bool]:
    """The machine table, and whether a note was cut."""
    rows = []
    # The generation column only when some machine's facts were read: a run of machines
    # that are not NixOS says so; a run from before schema 4 looks as it always did.
    generations = any(machine["nixos"] is not None for machine in data["machines"])
    # The wave column only when a wave holds several machines (`max_unavailable`, `waves`).
    waves = any(len(group) > 1 for group in data.get("waves") or ())
    for machine in data["machines"]:
        ids = short_id(machine["boot_id_before"])
        after = machine["boot_id_after"] or machine["rollback_boot_id_after"]
        if after:
            ids += f" → {short_id(after)}"
        took = machine["reboot_to_healthy_s"]
        row = [
            machine["name"] + (" (local)" if machine["local"] else ""),
            *([str(machine["wave"])] if waves else []),
            machine["state"],
            ids,
            *([generation_change(machine)] if generations else []),
            human_duration(took) if took is not None else "",
            _notes(machine, data["error"]),
        ]
        rows.append(row)
    header = ["machine", *(["wave"] if waves else []), "state", "boot id"]
    header += [*(["gen"] if generations else []), "reboot"]
    header.append("probes / error")
    columns = len(header) - 1  # the notes, last, are not a column but the rest of the line
    widths = [max(cells(row[column]) for row in [header, *rows]) for column in range(columns)]
    # The machine column gives way first (names are cut with …), so a row always fits; it
    # leaves room beside the rows for the short notes ("3 ok") only: a long note goes under
    # its row anyway, and cutting every name to make room for it would gain nothing.
    fixed = sum(widths[1:]) + 2 * columns
    short_notes = [cells(row[columns]) for row in rows if cells(row[columns]) <= MIN_NOTE_ROOM]
    reserve = max(short_notes, default=0)
    widths[0] = min(widths[0], max(8, width - fixed - reserve))
    room = width - sum(widths) - 2 * columns
    lines: list[str] = []
    cut = False
    for index, row in enumerate([header, *rows]):
        cols = [_fit(text, widths[column]) for column, text in enumerate(row[:columns])]
        padded = [text + " " * (widths[column] - cells(text)) for column, text in enumerate(cols)]
        if index == 0:
            padded = [paint(text, "1", colour) for text in padded]
        elif colour:
            state = header.index("state")
            padded[state] = paint(padded[state], _STATE_COLOURS.get(Outcome(row[state]), "0"), True)
        note = row[columns]
        line = "  ".join(padded)
        if index == 0 and cells(note) > room:
            note = ""  # a terminal too narrow for notes beside the rows: they go under them
        if index > 0 and note and cells(note) > room:
            lines.append(line.rstrip())
            under = wrap(note, width, indent="    ", first="    ")
            if len(under) > NOTE_LINES:
                under = [*under[: NOTE_LINES - 1], _fit(under[NOTE_LINES - 1] + " …", width)]
                cut = True
            lines += under
            continue
        lines.append((line + "  " + (paint(note, "1", colour) if index == 0 else note)).rstrip())
    return lines, cut


def status_text(
    run: RunRecord | None,
    since: datetime | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> None:
    """Print ``status_lines`` sized and coloured for ``stream`` (stdout)."""
    environ = os.environ if environ is None else environ
    stream = sys.stdout if stream is None else stream
    width, colour = terminal_width(environ, stream), use_colour(environ, stream)
    stream.write("\n".join(status_lines(run, since, width=width, colour=colour)) + "\n")
    stream.flush()


def history_lines(runs: Sequence[RunHead | RunRecord], width: int = 80) -> list[str]:
    """One line per run, at most ``width`` columns: the state (with the error of an aborted
    run) comes last, so a long one is what gets cut (``…``)."""
    lines = []
    for run in runs:
        took = seconds_between(run.started_at, run.finished_at)
        started = run.started_at.astimezone().strftime("%Y-%m-%d %H:%M")
        shown = human_duration(took) if took is not None else "-"
        line = f"{run.run_id:>5}  {started}  {run.kind.value:<7}  {shown:>6}  "
        outcome = run.state + (
            f": {from_host(run.error, limit=STATUS_NOTE_MAX)}" if run.error else ""
        )
        lines.append(line + _fit(outcome, max(8, width - cells(line))))
    return lines


def dumps(data: dict[str, Any]) -> str:
    """``status --json``: the run's keys one per line, each machine one line. ``indent``
    would make json use its pure-Python encoder, some 40 ms for 500 machines, a third of
    the time status may take; this way every value goes through the C one."""
    keys = [
        f"  {json.dumps(key)}: "
        + (
            "[\n" + ",\n".join(f"    {json.dumps(item)}" for item in value) + "\n  ]"
            if key == "machines" and value
            else json.dumps(value)
        )
        for key, value in data.items()
    ]
    return "{\n" + ",\n".join(keys) + "\n}"
