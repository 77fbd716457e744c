"""`orchestrator status` and `history` read well in the morning (issue 9, item 5): every line fits
80 columns for the seed's four machines, boot ids are short (whole in --json), durations and
times human, a run in progress says what it waits for and since when, and colour appears only
on a terminal without NO_COLOR.

The runs are written to a real store the way the engine writes them.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from dataclasses import replace
from datetime import datetime, timedelta
from fcntl import ioctl
from pathlib import Path

import pytest

from orchestrator import report
from orchestrator.generations import GenerationFacts, NotNixos, SystemParts
from orchestrator.states import Phase, RunKind
from orchestrator.store import RunRecord, Store, now
from tests.conftest import REPO

SEED = [("sleeper-service", False), ("grey-area", False), ("reverse-proxy", False), ("self", True)]
BEFORE = "5b0c1f2e-3d4c-4b5a-8988-a1b2c3d4e5f6"
AFTER = "e41f0a1b-2c3d-4e5f-8071-8293a4b5c6d7"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A host's answer as an older version stored it, raw: escapes, a bidi override, a long body.
HOSTILE = (
    "grey-area did not pass the health gate within 600s; last failing probe: "
    "http http://grey-area.local:8080/health: HTTP 503: \x1b[2J\x1b]0;owned\x07"
    "<html><head><title>503 Service Unavailable</title></head><body>"
    + "maintenance window in progress, please retry later \u202e " * 12
    + "</body></html>"
)


def healthy_probes(name: str) -> list[dict[str, object]]:
    return [
        {"probe": "boot id", "ok": True, "detail": AFTER},
        {"probe": "system", "ok": True, "detail": "running"},
        {"probe": f"http http://{name}.local:8080/health", "ok": True, "detail": "HTTP 200"},
    ]


def reboot(store: Store, run_id: int, name: str, took: float) -> None:
    """One machine through rebooting, verifying and settling to healthy, ``took`` seconds."""
    store.set_state(run_id, f"rebooting:{name}")
    store.record_reboot_intent(run_id, name, BEFORE, "SHA256:key")
    store.set_state(run_id, f"verifying:{name}")
    requested = store.run(run_id).machine(name).reboot_requested_at
    assert requested is not None
    store.record_healthy(
        run_id,
        name,
        boot_id_after=AFTER,
        healthy_at=requested + timedelta(seconds=took),
        probes=healthy_probes(name),
    )
    store.set_state(run_id, f"settling:{name}")


def start(store: Store, tmp_path: Path) -> int:
    run_id = store.create_run(RunKind.NIGHTLY, SEED, tmp_path / "lab.yaml").run_id
    store.set_state(run_id, Phase.UPDATING.value)
    store.set_state(run_id, Phase.DEPLOYING.value)
    return run_id


def done_run(store: Store, tmp_path: Path) -> RunRecord:
    run_id = start(store, tmp_path)
    for (name, _), took in zip(SEED, (103.2, 4400.0, 72.5, 8.25), strict=True):
        reboot(store, run_id, name, took)
    store.set_state(run_id, Phase.DONE.value)
    return store.run(run_id)


def aborted_run(store: Store, tmp_path: Path) -> RunRecord:
    run_id = start(store, tmp_path)
    reboot(store, run_id, "sleeper-service", 103.2)
    store.set_state(run_id, "rebooting:grey-area")
    store.record_reboot_intent(run_id, "grey-area", BEFORE, "SHA256:key")
    store.set_state(run_id, "verifying:grey-area")
    store.record_machine_error(run_id, "grey-area", HOSTILE)
    store.set_state(run_id, Phase.ABORTED.value, error=HOSTILE)
    return store.run(run_id)


def in_progress_run(store: Store, tmp_path: Path) -> tuple[RunRecord, datetime]:
    run_id = start(store, tmp_path)
    reboot(store, run_id, "sleeper-service", 103.2)
    store.set_state(run_id, "rebooting:grey-area")
    store.record_reboot_intent(run_id, "grey-area", BEFORE, "SHA256:key")
    store.set_state(run_id, "verifying:grey-area")
    failing = [
        {"probe": "boot id", "ok": True, "detail": AFTER},
        {"probe": "http http://grey-area.local:8080/health", "ok": False, "detail": "HTTP 503"},
    ]
    store.record_probes(run_id, "grey-area", failing)
    run = store.run(run_id)
    since = report.current_since(run, store.steps(run_id))
    assert since is not None
    return run, since


def assert_fits(lines: list[str], width: int = 80) -> None:
    too_long = [line for line in lines if report.cells(line) > width]
    assert not too_long, "\n".join(too_long)


def test_a_done_run_fits_80_columns_with_short_ids_and_human_durations(tmp_path: Path):
    with Store.open(tmp_path / "state") as store:
        run = done_run(store, tmp_path)
    lines = report.status_lines(run, report.current_since(run, []), width=80)
    assert_fits(lines)
    assert lines[0].startswith("run 1 (nightly): done, ")
    rows = {line.split()[0]: line for line in lines[3:]}
    assert set(rows) == {"sleeper-service", "grey-area", "reverse-proxy", "self"}
    assert "5b0c1f2e → e41f0a1b  1m43s" in rows["sleeper-service"]
    assert "1h13m" in rows["grey-area"] and "1m12s" in rows["reverse-proxy"]
    assert "8.2s" in rows["self"] and "self (local)" in rows["self"]
    text = "\n".join(lines)
    assert BEFORE not in text and AFTER not in text  # whole ids only in --json
    assert "3 ok" in rows["sleeper-service"]
    data = report.status_json(run)
    assert data["machines"][0]["boot_id_before"] == BEFORE


def test_an_aborted_run_with_a_long_hostile_error_fits_and_stays_escaped(tmp_path: Path):
    with Store.open(tmp_path / "state") as store:
        run = aborted_run(store, tmp_path)
    lines = report.status_lines(run, width=80)
    assert_fits(lines)
    text = "\n".join(lines)
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\x1b[2J\\x1b]0;owned\\x07" in text and "\\u202e" in text
    assert lines[-1].startswith("(long texts are cut here; `orchestrator status --json`")
    assert lines[1].startswith("error: grey-area did not pass the health gate within 600s;")
    rows = [line for line in lines if line.startswith("grey-area ")]
    assert len(rows) == 1 and "failed" in rows[0] and rows[0].endswith("the error above")
    untouched = [line for line in lines if line.startswith(("reverse-proxy ", "self (local) "))]
    assert len(untouched) == 2 and all("untouched" in line for line in untouched)
    # --json keeps the whole text (escaped only on display, as stored).
    assert report.status_json(run)["error"] == HOSTILE


def test_a_long_machine_note_goes_under_its_row_cut_to_a_few_lines(tmp_path: Path):
    with Store.open(tmp_path / "state") as store:
        run = aborted_run(store, tmp_path)
        store.record_machine_error(run.run_id, "grey-area", "verifying: " + HOSTILE * 3)
        run = store.run(run.run_id)
    lines = report.status_lines(run, width=80)
    assert_fits(lines)
    row = next(i for i, line in enumerate(lines) if line.startswith("grey-area "))
    under = lines[row + 1 : row + 1 + report.NOTE_LINES]
    assert all(line.startswith("    ") for line in under)
    assert under[-1].endswith("…") and lines[row + 1 + report.NOTE_LINES].startswith("reverse")
    assert "status --json" in lines[-1]


def test_a_run_in_progress_says_what_it_waits_for_and_since_when(tmp_path: Path):
    with Store.open(tmp_path / "state") as store:
        run, since = in_progress_run(store, tmp_path)
    lines = report.status_lines(run, since, width=80, at=since + timedelta(seconds=72))
    assert_fits(lines)
    assert lines[0].startswith("run 1 (nightly): verifying:grey-area, started ")
    clock = since.astimezone().strftime("%H:%M:%S")
    now_line = " ".join(line.strip() for line in lines[1:3])
    assert now_line.startswith(
        f"now: verifying grey-area since {clock} (1m12s): "
        "waiting: http http://grey-area.local:8080/health: HTTP 503"
    )
    grey = next(line for line in lines if line.startswith("grey-area "))
    assert "verifying" in grey and "5b0c1f2e" in grey
    assert report.status_json(run, since)["state_since"] == since.isoformat(timespec="milliseconds")


def test_since_is_when_the_state_was_first_entered(tmp_path: Path):
    with Store.open(tmp_path / "state") as store:
        run, since = in_progress_run(store, tmp_path)
        store.set_state(run.run_id, run.state)  # a resume records the same state again
        assert report.current_since(run, store.steps(run.run_id)) == since


@pytest.mark.parametrize("width", [60, 72, 80, 100, 132])
def test_every_scenario_fits_other_widths(tmp_path: Path, width: int):
    with Store.open(tmp_path / "state") as store:
        runs = [done_run(store, tmp_path), aborted_run(store, tmp_path)]
        current, since = in_progress_run(store, tmp_path)
        for run in runs:
            assert_fits(report.status_lines(run, width=width), width)
        assert_fits(report.status_lines(current, since, width=width), width)
        assert_fits(report.history_lines(store.runs(), width), width)


def test_history_is_one_line_per_run_within_80_columns(tmp_path: Path):
    with Store.open(tmp_path / "state") as store:
        done_run(store, tmp_path)
        aborted_run(store, tmp_path)
        in_progress_run(store, tmp_path)
        lines = report.history_lines(store.runs(), 80)
    assert_fits(lines)
    assert len(lines) == 3
    assert lines[0].split()[4:] == ["-", "verifying:grey-area"]
    assert lines[1].split()[5:7] == ["aborted:", "grey-area"] and lines[1].endswith("…")
    assert "\x1b" not in lines[1]
    assert lines[2].split()[5:] == ["done"]


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "?"), (-3.0, "0.0s"), (0.04, "0.0s"), (8.25, "8.2s"), (9.96, "9s"), (45.9, "45s"),
     (60, "1m00s"), (72.5, "1m12s"), (3599, "59m59s"), (3600, "1h00m"), (7380, "2h03m"),
     (90000, "1d01h")],
)  # fmt: skip
def test_durations_are_human(seconds: float | None, shown: str):
    assert report.human_duration(seconds) == shown


def test_summary_lines_use_short_ids_and_human_durations(tmp_path: Path):
    with Store.open(tmp_path / "state") as store:
        run = done_run(store, tmp_path)
    lines = report.summary_lines(report.summarize(run))
    assert lines[0].startswith("run 1 (nightly) done after ")
    assert lines[1] == (
        "sleeper-service: healthy: 1m43s after the reboot request (boot id 5b0c1f2e -> e41f0a1b)"
    )
    assert all(len("summary: " + line) <= 100 for line in lines)


# --- the real command: 80 columns, and colour only on a terminal without NO_COLOR -------------


@pytest.fixture
def lab(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A config for the seed's four machines, a store whose latest run is in progress."""
    config = tmp_path / "lab.yaml"
    machines = "".join(f"  {name}:\n    host: {name}.local\n" for name, _ in SEED[:3])
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\nmachines:\n{machines}  self:\n    local: true\n"
    )
    with Store.open(tmp_path / "state") as store:
        aborted_run(store, tmp_path)
        in_progress_run(store, tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS", "TERM")}
    env |= {"XDG_CACHE_HOME": str(tmp_path / "cache"), "TERM": "xterm-256color"}
    return config, env


def cli(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", "--config", str(config), *args]


def on_a_terminal(argv: list[str], env: dict[str, str], columns: int = 80) -> str:
    """What ``argv`` writes to a pseudo-terminal of ``columns`` columns."""
    master, slave = pty.openpty()
    ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        child = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO)
    finally:
        os.close(slave)
    out = b""
    try:
        while select.select([master], [], [], 30)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        assert child.wait(30) == 0, out
    return out.decode().replace("\r\n", "\n")


def test_status_on_an_80_column_terminal_fits_and_is_coloured(lab):
    config, env = lab
    out = on_a_terminal(cli(config, "status"), env)
    assert "\x1b[" in out
    visible = ANSI.sub("", out)
    assert "\x1b" not in visible
    assert_fits(visible.splitlines())
    assert "now: verifying grey-area since " in visible


def test_history_on_an_80_column_terminal_fits(lab):
    config, env = lab
    assert_fits(on_a_terminal(cli(config, "history"), env).splitlines())


def test_no_colour_with_no_color(lab):
    config, env = lab
    out = on_a_terminal(cli(config, "status"), {**env, "NO_COLOR": "1"})
    assert "\x1b" not in out and "now: verifying grey-area" in out


def test_no_colour_into_a_pipe_and_80_columns_without_a_terminal(lab):
    config, env = lab
    result = subprocess.run(
        cli(config, "status"), capture_output=True, text=True, env=env, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "now: verifying grey-area" in result.stdout
    assert_fits(result.stdout.splitlines())


def test_columns_80_through_a_pipe_for_every_line_of_status(lab):
    config, env = lab
    for args in (["status"], ["history"]):
        result = subprocess.run(
            cli(config, *args),
            capture_output=True,
            text=True,
            env={**env, "COLUMNS": "80"},
            cwd=REPO,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert_fits(result.stdout.splitlines())


def test_status_json_has_the_whole_ids_and_when_the_state_began(lab):
    config, env = lab
    result = subprocess.run(
        cli(config, "status", "--json"), capture_output=True, text=True, env=env, check=False
    )
    data = json.loads(result.stdout)
    assert data["state"] == "verifying:grey-area" and data["state_since"].endswith("+00:00")
    assert data["machines"][0]["boot_id_before"] == BEFORE
    assert datetime.fromisoformat(data["state_since"]) <= now()


# --- generation facts (issue 10, item 1) --------------------------------------------------------


def nixos_facts(generation: int, booted: int | None = None) -> GenerationFacts:
    """Facts of a machine booted into ``booted`` whose profile is at ``generation``."""
    booted = generation if booted is None else booted

    def system(n: int) -> SystemParts:
        digits = f"{n:032d}"  # 32 characters of Nix's base-32 alphabet
        return SystemParts(
            f"/nix/store/{digits}-nixos-system-grey-area-25.05.{n}",
            f"/nix/store/{digits}-linux-6.12.{n % 10}/bzImage",
        )

    return GenerationFacts(
        system(booted), system(booted).system, system(generation), generation, booted
    )


def done_run_with_generations(store: Store, tmp_path: Path) -> RunRecord:
    """The seed's four machines: three NixOS, rebooted from 142 into 143; the local one not
    NixOS; ``reverse-proxy`` is booted into a system no generation names any more."""
    run_id = start(store, tmp_path)
    for (name, _), took in zip(SEED, (103.2, 4400.0, 72.5, 8.25), strict=True):
        store.set_state(run_id, f"rebooting:{name}")
        if name == "self":
            store.record_generation_before(run_id, name, NotNixos("no /run/booted-system"))
        else:
            before = nixos_facts(143, 142)
            if name == "reverse-proxy":
                before = replace(before, booted_generation=None)
            store.record_generation_before(run_id, name, before)
        reboot(store, run_id, name, took)
        if name != "self":
            store.record_generation_after(run_id, name, nixos_facts(143))
    store.set_state(run_id, Phase.DONE.value)
    return store.run(run_id)


@pytest.mark.parametrize("width", [80, 60])
def test_generations_have_a_column_and_still_fit(tmp_path: Path, width: int):
    with Store.open(tmp_path / "state") as store:
        run = done_run_with_generations(store, tmp_path)
    lines = report.status_lines(run, width=width)
    assert_fits(lines, width)
    rows = {line[:4]: line for line in lines[3:]}  # names may be cut narrower than 80
    assert lines[2].split()[:5] == ["machine", "state", "boot", "id", "gen"]
    assert "142 → 143" in rows["slee"] and "142 → 143" in rows["grey"]
    assert "? → 143" in rows["reve"]
    assert "not NixOS" in rows["self"]
    if width == 80:
        assert rows["slee"].startswith("sleeper-service ")  # no name cut at 80 columns
        assert rows["slee"].endswith("3 ok")  # and the notes stay beside the rows


def test_generations_in_status_json_and_the_summary(tmp_path: Path):
    with Store.open(tmp_path / "state") as store:
        run = done_run_with_generations(store, tmp_path)
    machines = {m["name"]: m for m in report.status_json(run)["machines"]}
    grey = machines["grey-area"]
    old, new = nixos_facts(143, 142), nixos_facts(143)
    assert grey["nixos"] is True
    assert (grey["generation_before"], grey["generation_expected"], grey["generation_after"]) == (
        142,
        143,
        143,
    )
    assert grey["system_before"] == old.booted.system
    assert grey["system_expected"] == grey["system_after"] == new.booted.system
    assert (grey["kernel_before"], grey["kernel_expected"], grey["kernel_after"]) == (
        old.booted.kernel,
        new.booted.kernel,
        new.booted.kernel,
    )
    self_ = machines["self"]
    assert self_["nixos"] is False and self_["system_before"] is self_["system_after"] is None
    lines = report.summary_lines(report.summarize(run))
    grey_line = next(line for line in lines if line.startswith("grey-area: "))
    assert grey_line.endswith(
        "; generation 142 -> 143 "
        "(nixos-system-grey-area-25.05.142 -> nixos-system-grey-area-25.05.143)"
    )
    assert next(line for line in lines if line.startswith("self: ")).endswith("; not NixOS")


def test_a_machine_in_progress_shows_the_generation_it_should_boot(tmp_path: Path):
    with Store.open(tmp_path / "state") as store:
        run_id = start(store, tmp_path)
        store.set_state(run_id, "rebooting:sleeper-service")
        store.record_generation_before(run_id, "sleeper-service", nixos_facts(143, 142))
        store.record_reboot_intent(run_id, "sleeper-service", BEFORE, "SHA256:key")
        store.set_state(run_id, "verifying:sleeper-service")
        run = store.run(run_id)
    row = next(line for line in report.status_lines(run) if line.startswith("sleeper-service"))
    assert "142 → 143?" in row  # expected, not yet seen
