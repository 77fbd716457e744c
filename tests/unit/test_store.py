"""The SQLite run store: what each write persists, the v1 → v2 migration, read errors."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orchestrator.errors import StoreError
from orchestrator.states import RunKind
from orchestrator.store import SCHEMA_VERSION, STORE_FILE, Store

CONFIG = Path("/etc/lab-orchestrator/config.yaml")
BOOT_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
NEW_BOOT_ID = "11111111-2222-3333-4444-555555555555"
PROBES: list[dict[str, object]] = [{"probe": "ssh", "ok": False, "detail": "connection refused"}]


def raw_rows(state_dir: Path) -> dict[tuple[str, str], dict[str, object]]:
    """Every row of runs and machines, read with a connection of our own."""
    with contextlib.closing(sqlite3.connect(state_dir / STORE_FILE)) as db:
        db.row_factory = sqlite3.Row
        rows = {("runs", str(row["run_id"])): dict(row) for row in db.execute("SELECT * FROM runs")}
        rows |= {
            ("machines", f"{row['run_id']}/{row['name']}"): dict(row)
            for row in db.execute("SELECT * FROM machines")
        }
    return rows


def changed(
    before: dict[tuple[str, str], dict[str, object]],
    after: dict[tuple[str, str], dict[str, object]],
) -> dict[str, object]:
    """``{"table key.column": new value}`` for every value that differs."""
    assert before.keys() == after.keys()
    return {
        f"{table} {key}.{column}": after[(table, key)][column]
        for (table, key), row in before.items()
        for column, value in row.items()
        if after[(table, key)][column] != value
    }


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "state") as opened:
        yield opened


@pytest.fixture
def run_id(store: Store) -> int:
    return store.create_run(RunKind.NIGHTLY, [("alpha", False), ("bravo", False)], CONFIG).run_id


def test_context_manager_closes_the_connection(tmp_path):
    with Store.open(tmp_path / "state") as store:
        assert store.latest_run() is None
    with pytest.raises(StoreError, match="closed"):
        store.latest_run()


def test_context_manager_closes_the_connection_when_the_block_raises(tmp_path):
    with pytest.raises(RuntimeError), Store.open(tmp_path / "state") as store:
        raise RuntimeError("boom")
    with pytest.raises(StoreError, match="closed"):
        store.latest_run()


def test_a_new_store_has_the_current_schema(tmp_path):
    with Store.open(tmp_path / "state"):
        pass
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / STORE_FILE)) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (
            str(SCHEMA_VERSION),
        )
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_create_run_persists_the_run_and_its_machines_in_order(store):
    run = store.create_run(RunKind.REBOOT, [("bravo", False), ("self", True)], CONFIG)
    again = store.run(run.run_id)
    assert again == run
    assert (run.kind, run.state, run.config_path) == (RunKind.REBOOT, "preflight", str(CONFIG))
    assert run.machine_names == ["bravo", "self"]
    assert [m.local for m in run.machines] == [False, True]
    assert run.finished_at is None and run.end_reported_at is None
    assert [state for state, _ in store.steps(run.run_id)] == ["preflight"]


# Each record_* method with: what was there before it, the call, and exactly what must change.
RECORDS: dict[str, tuple[Callable[[Store, int], None], Callable[[Store, int], None], set[str]]] = {
    "record_probes": (
        lambda s, r: None,
        lambda s, r: s.record_probes(r, "alpha", PROBES, host_key="SHA256:new"),
        {"machines 1/alpha.last_probes"},
    ),
    "record_probes pinning the host key": (
        lambda s, r: None,
        lambda s, r: s.record_probes(r, "alpha", PROBES, host_key="SHA256:new", pin_host_key=True),
        {"machines 1/alpha.last_probes", "machines 1/alpha.host_key"},
    ),
    "record_healthy": (
        lambda s, r: s.record_machine_error(r, "alpha", "an earlier failure"),
        lambda s, r: s.record_healthy(
            r,
            "alpha",
            boot_id_after=NEW_BOOT_ID,
            healthy_at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
            probes=PROBES,
        ),
        {
            "machines 1/alpha.boot_id_after",
            "machines 1/alpha.healthy_at",
            "machines 1/alpha.last_probes",
            "machines 1/alpha.error",
        },
    ),
    "record_machine_error": (
        lambda s, r: None,
        lambda s, r: s.record_machine_error(r, "alpha", "did not pass the health gate"),
        {"machines 1/alpha.error"},
    ),
    "record_end_reported": (
        lambda s, r: None,
        lambda s, r: s.record_end_reported(r),
        {"runs 1.end_reported_at"},
    ),
    "record_reboot_intent": (
        lambda s, r: None,
        lambda s, r: s.record_reboot_intent(r, "alpha", BOOT_ID, "SHA256:key"),
        {
            "machines 1/alpha.boot_id_before",
            "machines 1/alpha.host_key",
            "machines 1/alpha.reboot_requested_at",
            "machines 1/alpha.reboot_requests",
        },
    ),
    "record_reboot_resend": (
        # Timestamps have millisecond resolution: let the resend's be a later one.
        lambda s, r: (s.record_reboot_intent(r, "alpha", BOOT_ID, "SHA256:key"), time.sleep(0.01)),
        lambda s, r: s.record_reboot_resend(r, "alpha"),
        {"machines 1/alpha.reboot_requested_at", "machines 1/alpha.reboot_requests"},
    ),
}


@pytest.mark.parametrize("case", list(RECORDS))
def test_each_record_method_persists_exactly_its_columns(store, run_id, case):
    setup, call, expected = RECORDS[case]
    setup(store, run_id)
    before = raw_rows(store.path.parent)
    call(store, run_id)
    assert set(changed(before, raw_rows(store.path.parent))) == expected


def test_record_healthy_values_read_back(store, run_id):
    healthy_at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    store.record_machine_error(run_id, "alpha", "an earlier failure")
    store.record_healthy(
        run_id, "alpha", boot_id_after=NEW_BOOT_ID, healthy_at=healthy_at, probes=PROBES
    )
    alpha = store.run(run_id).machine("alpha")
    assert (alpha.boot_id_after, alpha.healthy_at) == (NEW_BOOT_ID, healthy_at)
    assert alpha.last_probes == PROBES and alpha.error is None


def test_record_reboot_intent_counts_requests_and_keeps_a_known_key(store, run_id):
    store.record_reboot_intent(run_id, "alpha", BOOT_ID, "SHA256:key")
    store.record_reboot_resend(run_id, "alpha")
    store.record_reboot_intent(run_id, "alpha", BOOT_ID, None)  # a local machine has no key
    alpha = store.run(run_id).machine("alpha")
    assert (alpha.boot_id_before, alpha.host_key, alpha.reboot_requests) == (
        BOOT_ID,
        "SHA256:key",
        3,
    )
    assert alpha.reboot_requested_at is not None


def test_probes_without_pinning_leave_the_pinned_key_alone(store, run_id):
    store.record_probes(run_id, "alpha", PROBES, host_key="SHA256:first", pin_host_key=True)
    store.record_probes(run_id, "alpha", [], host_key="SHA256:other")
    alpha = store.run(run_id).machine("alpha")
    assert alpha.host_key == "SHA256:first" and alpha.last_probes == []


def test_unreported_end_returns_the_finished_run_until_record_end_reported(store, run_id):
    assert store.unreported_end() is None  # still running
    store.set_state(run_id, "aborted", error="stopped")
    owed = store.unreported_end()
    assert owed is not None and owed.run_id == run_id and owed.state == "aborted"
    assert owed.end_reported_at is None and owed.finished_at is not None
    store.record_end_reported(run_id)
    assert store.unreported_end() is None
    assert store.run(run_id).end_reported_at is not None


def test_end_reported_is_recorded_once(store, run_id):
    store.set_state(run_id, "done")
    store.record_end_reported(run_id)
    first = store.run(run_id).end_reported_at
    store.record_end_reported(run_id)
    assert store.run(run_id).end_reported_at == first


# -- schema v1 ---------------------------------------------------------------------------------

V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    error TEXT,
    abort_requested_at TEXT,
    config_path TEXT NOT NULL
);
CREATE TABLE machines (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    local INTEGER NOT NULL,
    host_key TEXT,
    boot_id_before TEXT,
    boot_id_after TEXT,
    reboot_requested_at TEXT,
    reboot_requests INTEGER NOT NULL DEFAULT 0,
    healthy_at TEXT,
    error TEXT,
    last_probes TEXT,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE steps (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    state TEXT NOT NULL,
    entered_at TEXT NOT NULL
);
INSERT INTO meta VALUES ('schema', '1');
INSERT INTO runs VALUES
    (1, 'nightly', 'done', '2025-01-01T03:00:00.000+00:00', '2025-01-01T03:20:00.000+00:00',
     NULL, NULL, '/etc/lab-orchestrator/config.yaml'),
    (2, 'reboot', 'aborted', '2025-01-02T03:00:00.000+00:00', '2025-01-02T03:05:00.000+00:00',
     'alpha did not pass the health gate within 900s', NULL, '/etc/lab-orchestrator/config.yaml');
INSERT INTO machines (run_id, position, name, local, boot_id_before, reboot_requests)
    VALUES (1, 0, 'alpha', 0, '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0', 1),
           (2, 0, 'alpha', 0, NULL, 0);
INSERT INTO steps VALUES (1, 'preflight', '2025-01-01T03:00:00.000+00:00');
"""


def make_v1_store(state_dir: Path) -> Path:
    state_dir.mkdir(parents=True)
    path = state_dir / STORE_FILE
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(V1_SCHEMA)
    return path


def schema_of(path: Path) -> tuple[str, list[str]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        version = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0]
        columns = [row[1] for row in db.execute("PRAGMA table_info(runs)")]
    return version, columns


def test_a_v1_store_is_migrated_when_a_run_opens_it(tmp_path):
    path = make_v1_store(tmp_path / "state")
    with Store.open(tmp_path / "state", create=True) as store:
        runs = {run.run_id: run for run in store.runs()}
        # Runs that ended before v2 count as reported: no old run fires a hook now.
        assert store.unreported_end() is None
    version, columns = schema_of(path)
    assert version == str(SCHEMA_VERSION) == "7"
    assert "end_reported_at" in columns
    assert runs[1].end_reported_at == runs[1].finished_at is not None
    assert runs[2].end_reported_at == runs[2].finished_at is not None
    assert runs[1].machine("alpha").boot_id_before == BOOT_ID


def test_a_migrated_v1_store_takes_new_runs(tmp_path):
    make_v1_store(tmp_path / "state")
    with Store.open(tmp_path / "state") as store:
        run = store.create_run(RunKind.NIGHTLY, [("alpha", False)], CONFIG)
        assert run.run_id == 3 and store.active_run() == run
        store.set_state(run.run_id, "done")
        assert store.unreported_end().run_id == 3


def test_a_reader_reads_a_v1_store_without_migrating_it(tmp_path):
    path = make_v1_store(tmp_path / "state")
    before = path.read_bytes()
    with Store.open(tmp_path / "state", create=False) as store:
        latest = store.latest_run()
        assert [run.run_id for run in store.runs()] == [2, 1]
        assert store.active_run() is None
        assert [state for state, _ in store.steps(1)] == ["preflight"]
    assert latest is not None and latest.run_id == 2 and latest.state == "aborted"
    assert latest.end_reported_at == latest.finished_at is not None
    version, columns = schema_of(path)
    assert version == "1" and "end_reported_at" not in columns
    assert path.read_bytes() == before


def test_a_reader_refuses_an_unknown_schema_version(tmp_path):
    path = make_v1_store(tmp_path / "state")
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema'")
        db.commit()
    with pytest.raises(StoreError, match="unknown schema version 99"):
        Store.open(tmp_path / "state", create=False)


# -- damage ------------------------------------------------------------------------------------


def _damaged(state_dir: Path, damage: str) -> None:
    with Store.open(state_dir) as store:
        for _ in range(20):
            run = store.create_run(RunKind.NIGHTLY, [("alpha", False), ("bravo", False)], CONFIG)
            store.record_probes(run.run_id, "alpha", PROBES * 20)
    path = state_dir / STORE_FILE
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for leftover in ("-wal", "-shm"):
        path.with_name(STORE_FILE + leftover).unlink(missing_ok=True)
    data = path.read_bytes()
    assert len(data) > 4 * 4096
    if damage == "garbage":
        path.write_bytes(b"this is not a database" * 500)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("create", [False, True], ids=["reader", "run"])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_corrupt_store_raises_one_store_error_line(tmp_path, damage, create):
    _damaged(tmp_path / "state", damage)
    # A run finds the damage on opening; a reader (which checks only the runs table then, for
    # speed) at the latest when it reads the damaged part.
    with (
        pytest.raises(StoreError) as caught,
        Store.open(tmp_path / "state", create=create) as store,
    ):
        store.runs()
    error = caught.value
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"state store {tmp_path / 'state' / STORE_FILE} is corrupt")
    assert "nothing was rebooted" in message
    assert not isinstance(error, sqlite3.Error)
    assert error.__cause__ is None and error.__suppress_context__


def test_a_failing_read_raises_store_error_not_sqlite3_error(store, run_id):
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        db.execute("DROP TABLE machines")
        db.commit()
    with pytest.raises(StoreError) as caught:
        store.run(run_id)
    assert str(caught.value) == f"cannot read state store {store.path}: no such table: machines"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_reader_finds_no_store_where_there_is_none(tmp_path):
    with pytest.raises(FileNotFoundError):
        Store.open(tmp_path / "state", create=False)
    assert not (tmp_path / "state").exists()


def test_abort_of_an_idle_run_in_a_v1_store_migrates_it_and_runs_on_abort_once(tmp_path):
    # A store written before end_reported_at existed, with a run left in `deploying`.
    path = make_v1_store(tmp_path / "state")
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "INSERT INTO runs VALUES (3, 'nightly', 'deploying', "
            "'2025-01-03T03:00:00.000+00:00', NULL, NULL, NULL, '/etc/x.yaml')"
        )
        db.execute(
            "INSERT INTO machines (run_id, position, name, local, reboot_requests) "
            "VALUES (3, 0, 'alpha', 0, 0)"
        )
    marker = tmp_path / "on_abort_ran"
    config = tmp_path / "lab.yaml"
    config.write_text(
        f"state_dir: {tmp_path / 'state'}\n"
        f"hooks: {{on_abort: [[sh, -c, 'echo x >> {marker}']]}}\n"
        "machines: {alpha: {host: alpha.local}}\n"
    )
    argv = [sys.executable, "-m", "orchestrator", "--config", str(config), "abort"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "run 3 aborted" in result.stdout
    assert marker.read_text() == "x\n"
    assert schema_of(path)[0] == str(SCHEMA_VERSION)
    with Store.open(tmp_path / "state", create=False) as store:
        assert store.run(3).state == "aborted"
        assert store.run(3).end_reported_at is not None
