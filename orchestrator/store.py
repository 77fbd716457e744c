"""The crash-safe run store: SQLite in WAL mode with ``synchronous=FULL``.

Every change the engine makes is one committed transaction *before* the side effect it leads
to, so a SIGKILL at any instant leaves a store that says what may already have happened. Past
runs stay in the same file: that is ``orchestrator history``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from orchestrator.errors import StoreError
from orchestrator.states import FINAL_STATES, Phase, RunKind

SCHEMA_VERSION = 2
STORE_FILE = "state.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    error TEXT,
    abort_requested_at TEXT,
    config_path TEXT NOT NULL,
    end_reported_at TEXT
);
CREATE TABLE IF NOT EXISTS machines (
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
CREATE TABLE IF NOT EXISTS steps (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    state TEXT NOT NULL,
    entered_at TEXT NOT NULL
);
"""


def now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="milliseconds") if moment else None


def parse_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass(frozen=True)
class MachineRecord:
    run_id: int
    position: int
    name: str
    local: bool
    host_key: str | None
    boot_id_before: str | None
    boot_id_after: str | None
    reboot_requested_at: datetime | None
    reboot_requests: int
    healthy_at: datetime | None
    error: str | None
    last_probes: list[dict[str, Any]]


@dataclass(frozen=True)
class RunRecord:
    run_id: int
    kind: RunKind
    state: str
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    abort_requested_at: datetime | None
    config_path: str
    machines: tuple[MachineRecord, ...]
    # When the end of the run was reported to the hooks; None on a finished run means the
    # report is still owed (the process died between the final state and the hooks).
    end_reported_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def machine_names(self) -> list[str]:
        return [machine.name for machine in self.machines]

    def machine(self, name: str) -> MachineRecord:
        return next(machine for machine in self.machines if machine.name == name)


class Store:
    """The run store. Use it as a context manager (``with Store.open(...) as store``) so the
    connection is closed on every path; every SQLite error becomes one ``StoreError`` line."""

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._db = connection

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @classmethod
    def open(cls, state_dir: Path, *, create: bool = True) -> Store:
        """``create=True`` for the commands that drive a run; ``create=False`` for readers
        (status, history, abort), which never write the schema and raise FileNotFoundError
        when there is no store yet — they must not race a starting run for its creation."""
        path = state_dir / STORE_FILE
        if not create and not path.exists():
            raise FileNotFoundError(path)
        try:
            if create:
                state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
                if not path.exists():
                    cls._create(path)
            if path.stat().st_size == 0:
                # _create never leaves an empty store behind, so this one lost its contents;
                # sqlite would take it for a new database (and discard its WAL): a run in
                # progress would be forgotten and its machines rebooted a second time.
                raise sqlite3.DatabaseError("the file is empty: truncated")
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, so a transaction never
            # starts implicitly and every write is explicit about where it commits.
            connection = sqlite3.connect(path, isolation_level=None, timeout=10.0)
            connection.row_factory = sqlite3.Row
            if create:
                connection.execute("PRAGMA journal_mode=WAL")  # persistent, stored in the file
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("PRAGMA foreign_keys=ON")
            check = connection.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            store = cls(path, connection)
            if create:
                store._migrate()
            elif not store._has_schema():
                connection.close()
                raise FileNotFoundError(path)  # created this instant by a starting run
        except sqlite3.OperationalError as exc:
            # A full or read-only filesystem, an I/O error: the store itself may be intact, so
            # no advice to move it aside (that would lose the run in progress).
            raise StoreError(
                f"cannot open state store {path}: {exc}; nothing was rebooted"
            ) from None
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"state store {path} is corrupt or unreadable ({exc}); nothing was rebooted. "
                "Move it aside to start afresh (the run history in it is lost)."
            ) from None
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and not create:
                raise
            raise StoreError(
                f"cannot open state store {path}: {exc}; nothing was rebooted"
            ) from None
        return store

    @staticmethod
    def _create(path: Path) -> None:
        """Build a new store beside ``path`` and rename it into place, so ``path`` never
        exists half-made: an empty store file always means a damaged one (see ``open``)."""
        fresh = path.with_name(f"{path.name}.new")
        leftovers = [fresh.with_name(fresh.name + suffix) for suffix in ("", "-wal", "-shm")]
        try:
            for leftover in leftovers:
                leftover.unlink(missing_ok=True)
            # A rollback journal here (``open`` switches to WAL): every commit is in the file
            # itself by the time it is renamed, none left behind in a WAL beside it.
            with contextlib.closing(sqlite3.connect(fresh, isolation_level=None)) as db:
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            os.replace(fresh, path)
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except BaseException:
            for leftover in leftovers:
                with contextlib.suppress(OSError):
                    leftover.unlink(missing_ok=True)
            raise

    def _has_schema(self) -> bool:
        row = self._db.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE type='table' AND name IN ('meta', 'runs')"
        ).fetchone()
        if row[0] < 2:
            return False
        version = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if version is not None and int(version[0]) not in _READABLE_VERSIONS:
            raise sqlite3.DatabaseError(f"unknown schema version {version[0]}")
        return version is not None

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self._db
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read state store {self.path}: {exc}") from None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise StoreError(
                f"cannot write state store {self.path}: {exc}; stopping before anything else "
                "is done (no reboot is sent whose intent is not saved)"
            ) from None

    def _migrate(self) -> None:
        with self._write() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) == 1:
                # Version 2 remembers whether a run's end was reported to the hooks; runs that
                # ended before it existed count as reported, so no old run fires a hook now.
                db.execute("ALTER TABLE runs ADD COLUMN end_reported_at TEXT")
                db.execute("UPDATE runs SET end_reported_at = finished_at")
                db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"unknown schema version {row[0]}")

    # -- runs ---------------------------------------------------------------------------------

    def create_run(
        self, kind: RunKind, machines: Sequence[tuple[str, bool]], config_path: Path
    ) -> RunRecord:
        started = iso(now())
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO runs (kind, state, started_at, config_path) VALUES (?, ?, ?, ?)",
                (kind.value, Phase.PREFLIGHT.value, started, str(config_path)),
            )
            run_id = cursor.lastrowid
            assert run_id is not None
            db.executemany(
                "INSERT INTO machines (run_id, position, name, local) VALUES (?, ?, ?, ?)",
                [(run_id, index, name, int(local)) for index, (name, local) in enumerate(machines)],
            )
            db.execute(
                "INSERT INTO steps VALUES (?, ?, ?)", (run_id, Phase.PREFLIGHT.value, started)
            )
        return self.run(run_id)

    def set_state(self, run_id: int, state: str, *, error: str | None = None) -> None:
        moment = iso(now())
        finished = moment if state in FINAL_STATES else None
        with self._write() as db:
            db.execute(
                "UPDATE runs SET state=?, finished_at=COALESCE(?, finished_at),"
                " error=COALESCE(?, error) WHERE run_id=?",
                (state, finished, error, run_id),
            )
            db.execute("INSERT INTO steps VALUES (?, ?, ?)", (run_id, state, moment))

    def request_abort(self, run_id: int) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE runs SET abort_requested_at=COALESCE(abort_requested_at, ?) WHERE run_id=?",
                (iso(now()), run_id),
            )

    def abort_requested(self, run_id: int) -> bool:
        with self._read() as db:
            row = db.execute(
                "SELECT abort_requested_at FROM runs WHERE run_id=?", (run_id,)
            ).fetchone()
        return row is not None and row[0] is not None

    # -- machines -----------------------------------------------------------------------------

    def record_probes(
        self,
        run_id: int,
        name: str,
        probes: list[dict[str, object]],
        *,
        host_key: str | None = None,
        pin_host_key: bool = False,
    ) -> None:
        """The last gate round of a machine; with ``pin_host_key`` (preflight) also the SSH
        host key it presented, the only one accepted from then on."""
        with self._write() as db:
            db.execute(
                "UPDATE machines SET last_probes=?,"
                " host_key=CASE WHEN ? THEN ? ELSE host_key END"
                " WHERE run_id=? AND name=?",
                (json.dumps(probes), int(pin_host_key), host_key, run_id, name),
            )

    def record_healthy(
        self,
        run_id: int,
        name: str,
        *,
        boot_id_after: str | None,
        healthy_at: datetime,
        probes: list[dict[str, object]],
    ) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE machines SET boot_id_after=?, healthy_at=?, last_probes=?, error=NULL"
                " WHERE run_id=? AND name=?",
                (boot_id_after, iso(healthy_at), json.dumps(probes), run_id, name),
            )

    def record_machine_error(self, run_id: int, name: str, error: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE machines SET error=? WHERE run_id=? AND name=?", (error, run_id, name)
            )

    def record_end_reported(self, run_id: int) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE runs SET end_reported_at=COALESCE(end_reported_at, ?) WHERE run_id=?",
                (iso(now()), run_id),
            )

    def record_reboot_intent(
        self, run_id: int, name: str, boot_id_before: str, host_key: str | None
    ) -> None:
        """The promise kept by resume: once this commits, the reboot may have been sent."""
        with self._write() as db:
            db.execute(
                "UPDATE machines SET boot_id_before=?, host_key=COALESCE(?, host_key),"
                " reboot_requested_at=?, reboot_requests=reboot_requests+1"
                " WHERE run_id=? AND name=?",
                (boot_id_before, host_key, iso(now()), run_id, name),
            )

    def record_reboot_resend(self, run_id: int, name: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE machines SET reboot_requested_at=?, reboot_requests=reboot_requests+1"
                " WHERE run_id=? AND name=?",
                (iso(now()), run_id, name),
            )

    # -- reading ------------------------------------------------------------------------------

    def run(self, run_id: int) -> RunRecord:
        with self._read() as db:
            row = db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                raise StoreError(f"state store {self.path}: no run {run_id}")
            machines = db.execute(
                "SELECT * FROM machines WHERE run_id=? ORDER BY position", (run_id,)
            ).fetchall()
            # A reader may meet a version-1 store that no run has migrated yet: its finished
            # runs count as reported, as the migration would make them.
            columns = row.keys()
            reported = row["end_reported_at" if "end_reported_at" in columns else "finished_at"]
            return RunRecord(
                run_id=row["run_id"],
                kind=RunKind(row["kind"]),
                state=row["state"],
                started_at=datetime.fromisoformat(row["started_at"]),
                finished_at=parse_iso(row["finished_at"]),
                error=row["error"],
                abort_requested_at=parse_iso(row["abort_requested_at"]),
                config_path=row["config_path"],
                end_reported_at=parse_iso(reported),
                machines=tuple(
                    MachineRecord(
                        run_id=machine["run_id"],
                        position=machine["position"],
                        name=machine["name"],
                        local=bool(machine["local"]),
                        host_key=machine["host_key"],
                        boot_id_before=machine["boot_id_before"],
                        boot_id_after=machine["boot_id_after"],
                        reboot_requested_at=parse_iso(machine["reboot_requested_at"]),
                        reboot_requests=machine["reboot_requests"],
                        healthy_at=parse_iso(machine["healthy_at"]),
                        error=machine["error"],
                        last_probes=json.loads(machine["last_probes"] or "[]"),
                    )
                    for machine in machines
                ),
            )

    def latest_run(self) -> RunRecord | None:
        with self._read() as db:
            row = db.execute("SELECT MAX(run_id) FROM runs").fetchone()
        return self.run(row[0]) if row and row[0] is not None else None

    def active_run(self) -> RunRecord | None:
        placeholders = ", ".join("?" for _ in FINAL_STATES)
        with self._read() as db:
            row = db.execute(
                f"SELECT MAX(run_id) FROM runs WHERE state NOT IN ({placeholders})",
                tuple(FINAL_STATES),
            ).fetchone()
        return self.run(row[0]) if row and row[0] is not None else None

    def unreported_end(self) -> RunRecord | None:
        """The latest finished run whose end the hooks have not been told of, if any (for the
        writers, which have migrated the store: a version-1 store has no such column)."""
        placeholders = ", ".join("?" for _ in FINAL_STATES)
        with self._read() as db:
            row = db.execute(
                f"SELECT MAX(run_id) FROM runs WHERE state IN ({placeholders})"
                " AND end_reported_at IS NULL",
                tuple(FINAL_STATES),
            ).fetchone()
        return self.run(row[0]) if row and row[0] is not None else None

    def runs(self, limit: int = 50) -> list[RunRecord]:
        with self._read() as db:
            rows = db.execute(
                "SELECT run_id FROM runs ORDER BY run_id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [self.run(row[0]) for row in rows]

    def steps(self, run_id: int) -> list[tuple[str, datetime]]:
        with self._read() as db:
            rows = db.execute(
                "SELECT state, entered_at FROM steps WHERE run_id=? ORDER BY rowid", (run_id,)
            ).fetchall()
        return [(row[0], datetime.fromisoformat(row[1])) for row in rows]


_READABLE_VERSIONS = (1, SCHEMA_VERSION)  # readers never migrate; a run does on its next start
