"""Issue 8, item 11: a malformed row in the store (a bad kind, state, timestamp or JSON, a
value of the wrong type) is one clear `error:` line in status, status --json, history and run
— naming the store, the run and the column — never a traceback."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.errors import StoreError
from orchestrator.states import RunKind
from orchestrator.store import STORE_FILE, Store

CONFIG = Path("/etc/lab-orchestrator/config.yaml")

# (table, column, bad value)
MALFORMED = {
    "kind": ("runs", "kind", "weekly"),
    "state": ("runs", "state", "flying"),
    "started_at": ("runs", "started_at", "yesterday"),
    "finished_at": ("runs", "finished_at", "2025-13-45T00:00:00+00:00"),
    "naive timestamp": ("runs", "abort_requested_at", "2025-01-01T03:00:00"),
    "timestamp of the wrong type": ("machines", "healthy_at", 1735700400),
    "json": ("machines", "last_probes", '[{"probe": "ssh", "ok": fal'),
    "json of the wrong shape": ("machines", "last_probes", '{"probe": "ssh"}'),
    "probe without its detail": ("machines", "last_probes", '[{"probe": "ssh", "ok": true}]'),
    "integer column": ("machines", "reboot_requests", "many"),
}


def _store_with_a_run(state_dir: Path, case: str, state: str) -> Path:
    with Store.open(state_dir) as store:
        run = store.create_run(RunKind.NIGHTLY, [("alpha", False), ("bravo", False)], CONFIG)
        store.set_state(run.run_id, state)
    table, column, value = MALFORMED[case]
    path = state_dir / STORE_FILE
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(f"UPDATE {table} SET {column}=? WHERE run_id=1", (value,))
    return path


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "lab.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"flake: {tmp_path}\n"
        'update: {command: ["true"]}\n'
        'deploy: {command: ["true"]}\n'
        "machines: {alpha: {host: alpha.local}, bravo: {host: bravo.local}}\n"
    )
    return config


@pytest.mark.parametrize("case", list(MALFORMED))
def test_store_run_raises_one_store_error_naming_run_and_column(tmp_path, case):
    path = _store_with_a_run(tmp_path / "state", case, "done")
    table, column, _ = MALFORMED[case]
    with Store.open(tmp_path / "state", create=False) as store, pytest.raises(StoreError) as e:
        store.latest_run()
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"state store {path}: run 1 has a malformed {table}.{column} (")
    assert e.value.__cause__ is None and e.value.__suppress_context__


COMMANDS = [("status",), ("status", "--json"), ("history",), ("run",)]


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
@pytest.mark.parametrize("case", ["kind", "state", "started_at", "json", "json of the wrong shape"])
def test_every_command_gives_one_line_for_a_malformed_row(tmp_path, case, command):
    # A run in progress, so that `run` (which continues it) reads the row as well.
    path = _store_with_a_run(tmp_path / "state", case, "deploying")
    table, column, _ = MALFORMED[case]
    argv = [sys.executable, "-m", "orchestrator", "--config", str(_config(tmp_path)), *command]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if command == ("history",) and table == "machines":
        # history reads no machine rows (one line per run): it lists the run as it is.
        assert result.returncode == 0, result.stderr
        assert "deploying" in result.stdout and "Traceback" not in result.stderr
        return
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [result.stderr.strip().splitlines()[-1]], result.stderr
    assert errors[0].startswith(
        f"error: state store {path}: run 1 has a malformed {table}.{column} ("
    ), result.stderr
    assert result.stdout == ""
