"""Schema 3 (issue 8, item 12): the step's process group is persisted, the migration from
versions 1 and 2 adds it, and readers still read older stores without migrating them."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from orchestrator.states import RunKind
from orchestrator.store import SCHEMA_VERSION, STORE_FILE, StepProcess, Store
from tests.unit.test_store import make_v1_store, schema_of

CONFIG = Path("/etc/lab-orchestrator/config.yaml")
STEP = StepProcess(pgid=4242, leader_start=123456, boot_id="b" * 8, token="t0ken")
STEP_COLUMNS = ["step_pgid", "step_leader_start", "step_boot_id", "step_token"]


def make_v2_store(state_dir: Path) -> Path:
    """A version-2 store, as the previous release left it: v1 plus end_reported_at."""
    path = make_v1_store(state_dir)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("ALTER TABLE runs ADD COLUMN end_reported_at TEXT")
        db.execute("UPDATE runs SET end_reported_at = finished_at")
        db.execute(
            "INSERT INTO runs VALUES (3, 'nightly', 'deploying', "
            "'2025-01-03T03:00:00.000+00:00', NULL, NULL, NULL, '/etc/x.yaml', NULL)"
        )
        db.execute(
            "INSERT INTO machines (run_id, position, name, local, reboot_requests) "
            "VALUES (3, 0, 'alpha', 0, 0)"
        )
        db.execute("UPDATE meta SET value='2' WHERE key='schema'")
    return path


def test_the_current_schema_is_3_or_later():
    assert SCHEMA_VERSION >= 3  # 4: generation facts (test_store_schema_v4.py)


def test_the_step_process_is_recorded_and_cleared(tmp_path):
    with Store.open(tmp_path / "state") as store:
        run = store.create_run(RunKind.NIGHTLY, [("alpha", False)], CONFIG)
        assert run.step_process is None
        store.record_step_process(run.run_id, STEP)
        assert store.run(run.run_id).step_process == STEP
        store.record_step_process(run.run_id, StepProcess(7, None, "b", "x"))
        assert store.run(run.run_id).step_process == StepProcess(7, None, "b", "x")
        store.clear_step_process(run.run_id)
        assert store.run(run.run_id).step_process is None


@pytest.mark.parametrize("make", [make_v1_store, make_v2_store], ids=["v1", "v2"])
def test_an_older_store_is_migrated_past_3_when_a_run_opens_it(tmp_path, make):
    path = make(tmp_path / "state")
    with Store.open(tmp_path / "state") as store:
        before = {run.run_id: run for run in store.runs()}
        assert all(run.step_process is None for run in before.values())
        assert store.unreported_end() is None  # old finished runs count as reported
        store.record_step_process(max(before), STEP)
        assert store.run(max(before)).step_process == STEP
    version, columns = schema_of(path)
    assert version == str(SCHEMA_VERSION)
    assert set(STEP_COLUMNS) <= set(columns) and "end_reported_at" in columns


def test_a_reader_reads_a_v2_store_without_migrating_it(tmp_path):
    path = make_v2_store(tmp_path / "state")
    before = path.read_bytes()
    with Store.open(tmp_path / "state", create=False) as store:
        assert [run.run_id for run in store.runs()] == [3, 2, 1]
        active = store.active_run()
        assert active is not None and active.state == "deploying"
        assert active.step_process is None
    assert schema_of(path)[0] == "2"
    assert path.read_bytes() == before


def test_a_v3_store_keeps_working_for_a_reader(tmp_path):
    with Store.open(tmp_path / "state") as store:
        run = store.create_run(RunKind.NIGHTLY, [("alpha", False)], CONFIG)
        store.record_step_process(run.run_id, STEP)
    with Store.open(tmp_path / "state", create=False) as reader:
        assert reader.run(run.run_id).step_process == STEP
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / STORE_FILE)) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (
            str(SCHEMA_VERSION),
        )
