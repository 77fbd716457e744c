"""Schema 4 (issue 10, item 1): each machine's generation facts before and after its reboot
are persisted; the migration from versions 1 to 3 adds them; readers still read older stores
without migrating them; a malformed stored fact is one StoreError line."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from orchestrator.errors import StoreError
from orchestrator.generations import GenerationFacts, NotNixos, SystemParts
from orchestrator.states import RunKind
from orchestrator.store import SCHEMA_VERSION, STORE_FILE, StepProcess, Store
from tests.unit.test_store import make_v1_store
from tests.unit.test_store_schema_v3 import make_v2_store

CONFIG = Path("/etc/lab-orchestrator/config.yaml")
H = "0123456789abcdfghijklmnpqrsvwxyz"
OLD = f"/nix/store/{H}-nixos-system-alpha-25.05.142"
NEW = f"/nix/store/{H[::-1]}-nixos-system-alpha-25.05.143"
BEFORE = GenerationFacts(
    booted=SystemParts(OLD, f"/nix/store/{H}-linux-6.12.1/bzImage"),
    current=OLD,
    profile=SystemParts(NEW, f"/nix/store/{H[::-1]}-linux-6.12.3/bzImage"),
    profile_generation=143,
    booted_generation=142,
)
AFTER = GenerationFacts(
    booted=BEFORE.profile, current=NEW, profile=BEFORE.profile, profile_generation=143,
    booted_generation=143,
)  # fmt: skip
GENERATION_COLUMNS = [
    "nixos",
    "generation_before",
    "generation_expected",
    "generation_after",
    "system_before",
    "system_expected",
    "system_after",
    "facts_before",
    "facts_after",
]


def machine_columns(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [row[1] for row in db.execute("PRAGMA table_info(machines)")]


def make_v3_store(state_dir: Path) -> Path:
    """A version-3 store, as the previous release left it: v2 plus the step columns."""
    path = make_v2_store(state_dir)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for column in ("step_pgid INTEGER", "step_leader_start INTEGER", "step_boot_id TEXT"):
            db.execute(f"ALTER TABLE runs ADD COLUMN {column}")
        db.execute("ALTER TABLE runs ADD COLUMN step_token TEXT")
        db.execute("UPDATE meta SET value='3' WHERE key='schema'")
    return path


def test_schema_4_is_kept_by_the_current_schema():
    assert SCHEMA_VERSION >= 4


def test_generation_facts_are_recorded_before_and_after(tmp_path):
    with Store.open(tmp_path / "state") as store:
        run = store.create_run(RunKind.NIGHTLY, [("alpha", False), ("bravo", False)], CONFIG)
        alpha = run.machine("alpha")
        assert (alpha.nixos, alpha.system_before, alpha.facts_before) == (None, None, None)
        store.record_generation_before(run.run_id, "alpha", BEFORE)
        store.record_generation_before(run.run_id, "bravo", NotNixos("no /run/booted-system"))
        alpha = store.run(run.run_id).machine("alpha")
        assert alpha.nixos is True
        assert (alpha.generation_before, alpha.generation_expected) == (142, 143)
        assert (alpha.system_before, alpha.system_expected) == (OLD, NEW)
        assert alpha.facts_before == BEFORE and alpha.system_after is None
        store.record_generation_after(run.run_id, "alpha", AFTER)
        alpha = store.run(run.run_id).machine("alpha")
        assert (alpha.system_after, alpha.generation_after, alpha.facts_after) == (NEW, 143, AFTER)
        assert alpha.system_before == OLD  # the facts before are not touched after
        bravo = store.run(run.run_id).machine("bravo")
        assert bravo.nixos is False
        assert (bravo.system_before, bravo.system_expected, bravo.facts_before) == (None,) * 3


@pytest.mark.parametrize(
    "make", [make_v1_store, make_v2_store, make_v3_store], ids=["v1", "v2", "v3"]
)
def test_an_older_store_is_migrated_past_4_when_a_run_opens_it(tmp_path, make):
    path = make(tmp_path / "state")
    with Store.open(tmp_path / "state") as store:
        runs = store.runs()
        assert all(m.nixos is None and m.facts_before is None for r in runs for m in r.machines)
        latest = max(r.run_id for r in runs)
        store.record_generation_before(latest, "alpha", BEFORE)
        assert store.run(latest).machine("alpha").facts_before == BEFORE
        store.record_step_process(latest, StepProcess(7, None, "b", "t"))  # v3 still works
    with contextlib.closing(sqlite3.connect(path)) as db:
        version = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    assert version == (str(SCHEMA_VERSION),)
    assert set(GENERATION_COLUMNS) <= set(machine_columns(path))


def test_a_reader_reads_a_v3_store_without_migrating_it(tmp_path):
    path = make_v3_store(tmp_path / "state")
    before = path.read_bytes()
    with Store.open(tmp_path / "state", create=False) as store:
        assert [run.run_id for run in store.runs()] == [3, 2, 1]
        active = store.active_run()
        assert active is not None and active.machine("alpha").nixos is None
        assert active.machine("alpha").system_before is None
    assert path.read_bytes() == before
    assert not set(GENERATION_COLUMNS) & set(machine_columns(path))


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("facts_before", "{not json"),
        ("facts_before", '{"booted": {"system": "/etc"}}'),
        ("facts_after", "[]"),
        ("nixos", 2),
        ("generation_before", "a lot"),  # INTEGER affinity keeps a non-number text
    ],
)
def test_a_malformed_generation_fact_is_one_store_error_line(tmp_path, column, value):
    with Store.open(tmp_path / "state") as store:
        run = store.create_run(RunKind.NIGHTLY, [("alpha", False)], CONFIG)
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / STORE_FILE)) as db, db:
        db.execute(f"UPDATE machines SET {column}=?", (value,))
    with (
        Store.open(tmp_path / "state", create=False) as store,
        pytest.raises(StoreError, match=f"malformed machines.{column}"),
    ):
        store.run(run.run_id)
