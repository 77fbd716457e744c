"""The crash-safe run store: SQLite in WAL mode with ``synchronous=FULL``.

Every change the engine makes is one committed transaction *before* the side effect it leads
to, so a SIGKILL at any instant leaves a store that says what may already have happened. Past
runs stay in the same file: that is ``orchestrator history``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from orchestrator import files
from orchestrator.errors import StoreError
from orchestrator.generations import GenerationFacts, NotNixos
from orchestrator.states import FINAL_STATES, Phase, RunKind, StateName, Waves, is_state_of

SCHEMA_VERSION = 7
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
    end_reported_at TEXT,
    step_pgid INTEGER,
    step_leader_start INTEGER,
    step_boot_id TEXT,
    step_token TEXT,
    deploy_mode TEXT,
    paused_until TEXT
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
    nixos INTEGER,
    generation_before INTEGER,
    generation_expected INTEGER,
    generation_after INTEGER,
    system_before TEXT,
    system_expected TEXT,
    system_after TEXT,
    facts_before TEXT,
    facts_after TEXT,
    reboot_reason TEXT,
    skipped_at TEXT,
    deployed_at TEXT,
    boot_once TEXT,
    made_default_at TEXT,
    power_cycled_at TEXT,
    failure TEXT,
    rollback_started_at TEXT,
    rollback_done_at TEXT,
    rollback_generation INTEGER,
    rollback_boot_id_before TEXT,
    rollback_requested_at TEXT,
    rollback_requests INTEGER NOT NULL DEFAULT 0,
    rollback_power_cycled_at TEXT,
    rollback_boot_id_after TEXT,
    rollback_healthy_at TEXT,
    wave INTEGER,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS steps (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    state TEXT NOT NULL,
    entered_at TEXT NOT NULL
);
-- status reads the latest run's steps: without this, a scan of every run's (schema 7)
CREATE INDEX IF NOT EXISTS steps_by_run ON steps(run_id);
"""


def now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="milliseconds") if moment else None


def parse_iso(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


_T = TypeVar("_T")


# -- reading rows: every value checked, so a malformed row is one StoreError line ------------


class _RowReader:
    """Reads one column of a row of run ``run_id`` through a parser; a value the parser
    rejects (a bad kind, timestamp or JSON, a wrong type) becomes one ``StoreError`` line
    naming the store, the run and the column, never a traceback in status or a run."""

    def __init__(self, path: Path, run_id: int) -> None:
        self.path = path
        self.run_id = run_id
        # Every row of a table has the same columns: looked up once, not once per value (a
        # run of 500 machines is some 20,000 values).
        self._columns: dict[str, frozenset[str]] = {}

    def __call__(self, row: sqlite3.Row, table: str, column: str, parse: Callable[[Any], _T]) -> _T:
        columns = self._columns.get(table)
        if columns is None:
            columns = self._columns[table] = frozenset(row.keys())
        value = row[column] if column in columns else None
        try:
            return parse(value)
        except (ValueError, TypeError, KeyError) as exc:
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            reason = " ".join(str(exc).split())
            raise StoreError(
                f"state store {self.path}: run {self.run_id} has a malformed {table}.{column} "
                f"({shown}: {reason}); fix or delete that row, or move the store aside"
            ) from None


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"not text but {type(value).__name__}")
    return value


def _optional_text(value: object) -> str | None:
    return None if value is None else _text(value)


def _integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"not an integer but {type(value).__name__}")
    return value


def _timestamp(value: object) -> datetime | None:
    if value is None or value == "":
        return None
    moment = datetime.fromisoformat(_text(value))
    if moment.tzinfo is None:
        raise ValueError("a timestamp without a time zone")
    return moment


def _required_timestamp(value: object) -> datetime:
    moment = _timestamp(value)
    if moment is None:
        raise ValueError("missing")
    return moment


def _probes(value: object) -> list[dict[str, Any]]:
    probes = json.loads(_text(value)) if value is not None else []
    if not isinstance(probes, list) or not all(
        isinstance(p, dict)
        and isinstance(p.get("probe"), str)
        and isinstance(p.get("ok"), bool)
        and isinstance(p.get("detail"), str)
        for p in probes
    ):
        raise ValueError('not a list of {"probe", "ok", "detail"} objects')
    return probes


def _optional_integer(value: object) -> int | None:
    return None if value is None else _integer(value)


def _optional_flag(value: object) -> bool | None:
    if value is None:
        return None
    if value not in (0, 1) or isinstance(value, bool):
        raise ValueError("not 0 or 1")
    return bool(value)


def _facts(value: object) -> GenerationFacts | None:
    return None if value is None else GenerationFacts.from_json(json.loads(_text(value)))


def _quick_check(*, whole: bool) -> str:
    """The check a store gets on opening. A run (which may reboot machines on what it reads)
    checks the whole file; a reader (status, history) only the runs table, so that a history
    of 1,000 runs of 500 machines (some 270 MB) does not cost ``status`` a second: damage
    elsewhere is found, and reported as corruption, when it is read (``Store._read``)."""
    if whole or sqlite3.sqlite_version_info < (3, 33, 0):  # a table argument since 3.33
        return "PRAGMA quick_check"
    return "PRAGMA quick_check(runs)"


def _owner(path: Path) -> str:
    try:
        return f" (uid {path.stat().st_uid})"
    except OSError:
        return ""


def _step_process(row: sqlite3.Row) -> StepProcess:
    start = row["step_leader_start"]
    return StepProcess(
        pgid=_integer(row["step_pgid"]),
        leader_start=None if start is None else _integer(start),
        boot_id=_text(row["step_boot_id"]),
        token=_text(row["step_token"]),
    )


def _state(value: object, kind: RunKind, waves: Waves, per_machine_deploy: bool) -> str:
    state = _text(value)
    if not is_state_of(state, kind, waves.names, per_machine_deploy=per_machine_deploy):
        raise ValueError("not a state of this run")
    return state


def _state_name(value: object) -> str:
    """A state as ``history`` shows it: one of ours in form (``phase`` or ``phase:wave``);
    whether its wave belongs to the run is checked where the run's machines are read."""
    state = _text(value)
    StateName.parse(state)  # ValueError: not a phase of ours
    return state


def _waves(machines: Sequence[MachineRecord]) -> Waves:
    """The run's waves from its machines' wave numbers (none before schema 7, or for a run
    that takes one machine at a time: each machine is its own wave)."""
    if all(machine.wave is None for machine in machines):
        return Waves.one_by_one([machine.name for machine in machines])
    groups: dict[int, list[str]] = {}
    for machine in machines:
        if machine.wave is None:
            raise ValueError(f"machine {machine.name} has no wave")
        groups.setdefault(machine.wave, []).append(machine.name)
    return Waves(tuple(tuple(groups[number]) for number in sorted(groups)))


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
    # Generation facts (schema 4; see generations.py). ``nixos``: None until read (or when
    # they could not be read), False for a machine that is not NixOS, True otherwise.
    nixos: bool | None = None
    generation_before: int | None = None  # the profile generation it was booted into
    generation_expected: int | None = None  # the profile's generation: what it should boot
    generation_after: int | None = None  # the profile generation it came back on
    system_before: str | None = None  # /run/booted-system before the reboot
    system_expected: str | None = None  # the profile's system before the reboot
    system_after: str | None = None  # /run/booted-system once healthy again
    facts_before: GenerationFacts | None = None  # everything read, kernels included
    facts_after: GenerationFacts | None = None
    # Schema 5: why it was rebooted or skipped, and its side roads (see states.py).
    reboot_reason: str | None = None  # `kernel: linux-6.12.1 → linux-6.12.3`, or why skipped
    skipped_at: datetime | None = None  # reboot.when: if-needed found nothing to boot
    deployed_at: datetime | None = None  # deploy.mode: per-machine, its deploy succeeded
    boot_once: str | None = None  # the bootloader that boots the new generation once
    made_default_at: datetime | None = None  # boot_once: the new generation made the default
    power_cycled_at: datetime | None = None  # intent: the power_cycle command may have run
    failure: str | None = None  # why its gate failed, when that led to a rollback
    rollback_started_at: datetime | None = None  # intent: the helper may have run
    rollback_done_at: datetime | None = None
    rollback_generation: int | None = None  # the profile generation the rollback made
    rollback_boot_id_before: str | None = None
    rollback_requested_at: datetime | None = None  # intent: the second reboot may be sent
    rollback_requests: int = 0
    rollback_power_cycled_at: datetime | None = None
    rollback_boot_id_after: str | None = None
    rollback_healthy_at: datetime | None = None
    # Schema 7: the 1-based number of the wave it goes down with; None: one at a time.
    wave: int | None = None

    @property
    def skipped(self) -> bool:
        return self.skipped_at is not None


@dataclass(frozen=True)
class StepProcess:
    """The process group of the update or deploy step in progress, and how to be sure it is
    that group: the leader's start time (``/proc/<pid>/stat`` field 22, clock ticks after
    boot) on this boot, and a random token in the environment of every process of the step."""

    pgid: int
    leader_start: int | None
    boot_id: str
    token: str


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
    # The update/deploy step's process group while it runs (schema 3); None otherwise.
    step_process: StepProcess | None = None
    # Schema 5: `deploy.mode: per-machine` when the run began (its state table depends on it).
    per_machine_deploy: bool = False
    # Schema 6: while paused by the maintenance window, when the window opens next.
    paused_until: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    # Schema 7: the machines in the waves they go down in (one by one unless configured).
    waves: Waves = field(default_factory=lambda: Waves(()))

    @property
    def machine_names(self) -> list[str]:
        return [machine.name for machine in self.machines]

    @functools.cached_property
    def _by_name(self) -> dict[str, MachineRecord]:
        return {machine.name: machine for machine in self.machines}

    def machine(self, name: str) -> MachineRecord:
        return self._by_name[name]


def _machine_record(field: _RowReader, run_id: int, machine: sqlite3.Row) -> MachineRecord:
    return MachineRecord(
        run_id=run_id,
        position=field(machine, "machines", "position", _integer),
        name=field(machine, "machines", "name", _text),
        local=bool(field(machine, "machines", "local", _integer)),
        host_key=field(machine, "machines", "host_key", _optional_text),
        boot_id_before=field(machine, "machines", "boot_id_before", _optional_text),
        boot_id_after=field(machine, "machines", "boot_id_after", _optional_text),
        reboot_requested_at=field(machine, "machines", "reboot_requested_at", _timestamp),
        reboot_requests=field(machine, "machines", "reboot_requests", _integer),
        healthy_at=field(machine, "machines", "healthy_at", _timestamp),
        error=field(machine, "machines", "error", _optional_text),
        last_probes=field(machine, "machines", "last_probes", _probes),
        nixos=field(machine, "machines", "nixos", _optional_flag),
        generation_before=field(machine, "machines", "generation_before", _optional_integer),
        generation_expected=field(machine, "machines", "generation_expected", _optional_integer),
        generation_after=field(machine, "machines", "generation_after", _optional_integer),
        system_before=field(machine, "machines", "system_before", _optional_text),
        system_expected=field(machine, "machines", "system_expected", _optional_text),
        system_after=field(machine, "machines", "system_after", _optional_text),
        facts_before=field(machine, "machines", "facts_before", _facts),
        facts_after=field(machine, "machines", "facts_after", _facts),
        **{
            column: field(machine, "machines", column, parse)
            for column, parse in _SIDE_ROAD_FIELDS.items()
        },
        wave=field(machine, "machines", "wave", _optional_integer),
    )


@dataclass(frozen=True)
class RunHead:
    """A run without its machines: one line of ``history``."""

    run_id: int
    kind: RunKind
    state: str
    started_at: datetime
    finished_at: datetime | None
    error: str | None


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
        if not create:
            try:
                os.lstat(path)
            except PermissionError:
                owner = _owner(state_dir)
                raise StoreError(
                    f"cannot read state store {path}: permission denied; run this as the user "
                    f"that owns {state_dir}{owner} or as root"
                ) from None
        try:
            # Nobody else may be able to plant or swap a file here (see ``files``): a forged
            # row would be obeyed, a linked file would get our tables added to it.
            files.secure_dir(state_dir, create=create, reader=not create)
            if create and not os.path.lexists(path):
                cls._create(path)
            files.check_file(path, reader=not create)
            if create:
                for suffix in ("", "-wal", "-shm"):  # 0600, also when made by an older version
                    files.tighten(path.with_name(path.name + suffix))
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
            check = connection.execute(_quick_check(whole=create)).fetchone()[0]
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
            # Made 0600 before sqlite opens it; its journal (and later the WAL and shm files)
            # get the same mode from sqlite.
            os.close(files.open_private(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
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
            if type(exc) is not sqlite3.DatabaseError:  # not "malformed", "not a database"
                raise StoreError(f"cannot read state store {self.path}: {exc}") from None
            # A reader checked only the runs table on opening (see ``_quick_check``): damage
            # elsewhere is found here, and said the same way.
            raise StoreError(
                f"state store {self.path} is corrupt or unreadable ({exc}); nothing was "
                "rebooted. Move it aside to start afresh (the run history in it is lost)."
            ) from None

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
                return
            version = int(row[0])
            if version == SCHEMA_VERSION:
                return
            if version not in _READABLE_VERSIONS:
                raise sqlite3.DatabaseError(f"unknown schema version {row[0]}")
            if version < 2:
                # Version 2 remembers whether a run's end was reported to the hooks; runs that
                # ended before it existed count as reported, so no old run fires a hook now.
                db.execute("ALTER TABLE runs ADD COLUMN end_reported_at TEXT")
                db.execute("UPDATE runs SET end_reported_at = finished_at")
            if version < 3:
                # Version 3 remembers the process group of a running update/deploy step, so a
                # resume can end the one a killed orchestrator left behind.
                for column in _STEP_COLUMNS:
                    db.execute(f"ALTER TABLE runs ADD COLUMN {column}")
            if version < 4:
                # Version 4 remembers each machine's NixOS generation before and after its
                # reboot; machines of older runs have none (NULL: never read).
                for column in _GENERATION_COLUMNS:
                    db.execute(f"ALTER TABLE machines ADD COLUMN {column}")
            if version < 5:
                # Version 5: the deploy mode a run began with (its states depend on it; older
                # runs deployed all at once) and each machine's reboot reason and side roads
                # (skip, boot once, power cycle, rollback): none for older runs.
                db.execute("ALTER TABLE runs ADD COLUMN deploy_mode TEXT")
                for column in _SIDE_ROAD_COLUMNS:
                    db.execute(f"ALTER TABLE machines ADD COLUMN {column}")
            if version < 6:
                # Version 6: when a run paused by the maintenance window goes on.
                db.execute("ALTER TABLE runs ADD COLUMN paused_until TEXT")
            if version < 7:
                # Version 7: the wave each machine goes down with; older runs went one by one.
                db.execute("ALTER TABLE machines ADD COLUMN wave INTEGER")
            db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))

    # -- runs ---------------------------------------------------------------------------------

    def create_run(
        self,
        kind: RunKind,
        machines: Sequence[tuple[str, bool]],
        config_path: Path,
        *,
        per_machine_deploy: bool = False,
        waves: Waves | None = None,
    ) -> RunRecord:
        """A new run of ``machines`` (name, local) in order; ``waves``, when given, groups
        them (in the same order) into the waves they go down in."""
        started = iso(now())
        number = {} if waves is None else {m: waves.number_of(m) for m, _ in machines}
        deploy_mode = "per-machine" if per_machine_deploy else None
        with self._write() as db:
            cursor = db.execute(
                "INSERT INTO runs (kind, state, started_at, config_path, deploy_mode)"
                " VALUES (?, ?, ?, ?, ?)",
                (kind.value, Phase.PREFLIGHT.value, started, str(config_path), deploy_mode),
            )
            run_id = cursor.lastrowid
            assert run_id is not None
            db.executemany(
                "INSERT INTO machines (run_id, position, name, local, wave) VALUES (?, ?, ?, ?, ?)",
                [
                    (run_id, index, name, int(local), number.get(name))
                    for index, (name, local) in enumerate(machines)
                ],
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

    def record_generation_before(
        self, run_id: int, name: str, facts: GenerationFacts | NotNixos
    ) -> None:
        """What the machine was booted into and what its reboot should boot, read just
        before its reboot intent is saved; or that it is not NixOS."""
        if isinstance(facts, NotNixos):
            values: tuple[object, ...] = (0, None, None, None, None)
        else:
            values = (
                1,
                facts.booted_generation,
                facts.profile_generation,
                facts.booted.system,
                facts.profile.system,
            )
        facts_json = None if isinstance(facts, NotNixos) else json.dumps(facts.as_json())
        with self._write() as db:
            db.execute(
                "UPDATE machines SET nixos=?, generation_before=?, generation_expected=?,"
                " system_before=?, system_expected=?, facts_before=?"
                " WHERE run_id=? AND name=?",
                (*values, facts_json, run_id, name),
            )

    def record_generation_after(self, run_id: int, name: str, facts: GenerationFacts) -> None:
        """What the machine came back on, read once it passed the health gate."""
        with self._write() as db:
            db.execute(
                "UPDATE machines SET generation_after=?, system_after=?, facts_after=?"
                " WHERE run_id=? AND name=?",
                (
                    facts.booted_generation,
                    facts.booted.system,
                    json.dumps(facts.as_json()),
                    run_id,
                    name,
                ),
            )

    def _update_machine(self, run_id: int, name: str, **values: object) -> None:
        """One committed update of a machine's row; the column names are this module's own
        (``_SIDE_ROAD_FIELDS``), never from input."""
        assert set(values) <= set(_SIDE_ROAD_FIELDS), set(values) - set(_SIDE_ROAD_FIELDS)
        assignments = ", ".join(f"{column}=?" for column in values)
        stored = [iso(v) if isinstance(v, datetime) else v for v in values.values()]
        with self._write() as db:
            db.execute(
                f"UPDATE machines SET {assignments} WHERE run_id=? AND name=?",
                (*stored, run_id, name),
            )

    def record_reboot_reason(
        self, run_id: int, name: str, reason: str | None, *, skipped: bool
    ) -> None:
        """Why the machine is rebooted, or why not (then it is skipped)."""
        self._update_machine(
            run_id, name, reboot_reason=reason, skipped_at=now() if skipped else None
        )

    def record_deployed(self, run_id: int, name: str) -> None:
        self._update_machine(run_id, name, deployed_at=now())

    def record_boot_once(self, run_id: int, name: str, bootloader: str) -> None:
        self._update_machine(run_id, name, boot_once=bootloader)

    def record_made_default(self, run_id: int, name: str) -> None:
        self._update_machine(run_id, name, made_default_at=now())

    def record_power_cycle(self, run_id: int, name: str, *, rollback: bool) -> None:
        """The intent, committed before the command runs: it runs at most once per reboot."""
        column = "rollback_power_cycled_at" if rollback else "power_cycled_at"
        self._update_machine(run_id, name, **{column: now()})

    def record_rollback_start(self, run_id: int, name: str, failure: str) -> None:
        """The intent, committed before the helper runs (which may then have run)."""
        self._update_machine(run_id, name, failure=failure, rollback_started_at=now())

    def record_rollback_done(self, run_id: int, name: str, generation: int | None) -> None:
        self._update_machine(run_id, name, rollback_done_at=now(), rollback_generation=generation)

    def record_rollback_reboot_intent(self, run_id: int, name: str, boot_id_before: str) -> None:
        """Like ``record_reboot_intent``, for the reboot onto the rolled-back generation."""
        with self._write() as db:
            db.execute(
                "UPDATE machines SET rollback_boot_id_before=?, rollback_requested_at=?,"
                " rollback_requests=rollback_requests+1 WHERE run_id=? AND name=?",
                (boot_id_before, iso(now()), run_id, name),
            )

    def record_rollback_reboot_resend(self, run_id: int, name: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE machines SET rollback_requested_at=?,"
                " rollback_requests=rollback_requests+1 WHERE run_id=? AND name=?",
                (iso(now()), run_id, name),
            )

    def record_rollback_healthy(
        self, run_id: int, name: str, *, boot_id_after: str | None, probes: list[dict[str, object]]
    ) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE machines SET rollback_boot_id_after=?, rollback_healthy_at=?,"
                " last_probes=? WHERE run_id=? AND name=?",
                (boot_id_after, iso(now()), json.dumps(probes), run_id, name),
            )

    def record_paused_until(self, run_id: int, until: datetime | None) -> None:
        """When the window opens next, while the run is paused (None: not paused)."""
        with self._write() as db:
            db.execute("UPDATE runs SET paused_until=? WHERE run_id=?", (iso(until), run_id))

    def record_step_process(self, run_id: int, step: StepProcess) -> None:
        """Committed right after the update/deploy command starts, before it does anything
        that matters: a resume after a kill finds the group and ends it first."""
        with self._write() as db:
            db.execute(
                "UPDATE runs SET step_pgid=?, step_leader_start=?, step_boot_id=?, step_token=?"
                " WHERE run_id=?",
                (step.pgid, step.leader_start, step.boot_id, step.token, run_id),
            )

    def clear_step_process(self, run_id: int) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE runs SET step_pgid=NULL, step_leader_start=NULL, step_boot_id=NULL,"
                " step_token=NULL WHERE run_id=?",
                (run_id,),
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
            reported = "end_reported_at" if "end_reported_at" in columns else "finished_at"
            field = _RowReader(self.path, run_id)
            kind = field(row, "runs", "kind", RunKind)
            machine_records = tuple(_machine_record(field, run_id, m) for m in machines)
            try:
                waves = _waves(machine_records)
            except ValueError as exc:
                raise StoreError(
                    f"state store {self.path}: run {run_id} has a malformed machines.wave ({exc}); "
                    "fix or delete that row, or move the store aside"
                ) from None
            step_pgid = row["step_pgid"] if "step_pgid" in columns else None
            per_machine = field(row, "runs", "deploy_mode", _deploy_mode)
            return RunRecord(
                run_id=run_id,
                kind=kind,
                state=field(row, "runs", "state", lambda v: _state(v, kind, waves, per_machine)),
                started_at=field(row, "runs", "started_at", _required_timestamp),
                finished_at=field(row, "runs", "finished_at", _timestamp),
                error=field(row, "runs", "error", _optional_text),
                abort_requested_at=field(row, "runs", "abort_requested_at", _timestamp),
                config_path=field(row, "runs", "config_path", _text),
                end_reported_at=field(row, "runs", reported, _timestamp),
                machines=machine_records,
                step_process=None
                if step_pgid is None
                else field(row, "runs", "step_pgid", lambda _: _step_process(row)),
                per_machine_deploy=per_machine,
                paused_until=field(row, "runs", "paused_until", _timestamp),
                waves=waves,
            )

    def machine(self, run_id: int, name: str) -> MachineRecord:
        """One machine's record: what the engine asks many times per machine, without
        reading the whole run (500 rows at 500 machines)."""
        with self._read() as db:
            row = db.execute(
                "SELECT * FROM machines WHERE run_id=? AND name=?", (run_id, name)
            ).fetchone()
        if row is None:
            raise StoreError(f"state store {self.path}: run {run_id} has no machine {name!r}")
        return _machine_record(_RowReader(self.path, run_id), run_id, row)

    def step_process(self, run_id: int) -> StepProcess | None:
        """The run's update/deploy step in progress, read alone (see ``machine``)."""
        with self._read() as db:
            row = db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        if row is None or row["step_pgid"] is None:
            return None
        return _RowReader(self.path, run_id)(row, "runs", "step_pgid", lambda _: _step_process(row))

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

    def run_heads(self, limit: int = 50) -> list[RunHead]:
        """The latest runs, newest first, without their machines: ``history`` of 20 runs of
        500 machines would otherwise read 10,000 machine rows to print 20 lines."""
        with self._read() as db:
            rows = db.execute(
                "SELECT run_id, kind, state, started_at, finished_at, error FROM runs"
                " ORDER BY run_id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        heads = []
        for row in rows:
            field = _RowReader(self.path, row["run_id"])
            heads.append(
                RunHead(
                    run_id=row["run_id"],
                    kind=field(row, "runs", "kind", RunKind),
                    state=field(row, "runs", "state", _state_name),
                    started_at=field(row, "runs", "started_at", _required_timestamp),
                    finished_at=field(row, "runs", "finished_at", _timestamp),
                    error=field(row, "runs", "error", _optional_text),
                )
            )
        return heads

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
        field = _RowReader(self.path, run_id)
        return [
            (
                field(row, "steps", "state", _text),
                field(row, "steps", "entered_at", _required_timestamp),
            )
            for row in rows
        ]

    # -- history for the metrics file (metrics.py): aggregated by SQLite, so each write of the
    # file is a few indexed or single-pass queries however many runs the store holds ----------

    def run_counts(self) -> dict[tuple[str, str], int]:
        """How many runs ended in each final state, by kind: ``{(kind, state): count}``."""
        placeholders = ", ".join("?" for _ in FINAL_STATES)
        with self._read() as db:
            rows = db.execute(
                f"SELECT kind, state, COUNT(*) FROM runs WHERE state IN ({placeholders})"
                " GROUP BY kind, state",
                tuple(FINAL_STATES),
            ).fetchall()
        return {(_text(kind), _text(state)): _integer(count) for kind, state, count in rows}

    def last_finished_at(self, kind: RunKind, state: str) -> datetime | None:
        """When the latest run of ``kind`` that ended in ``state`` finished; None if none did."""
        with self._read() as db:
            row = db.execute(
                "SELECT run_id, finished_at FROM runs WHERE kind=? AND state=?"
                " ORDER BY run_id DESC LIMIT 1",
                (kind.value, state),
            ).fetchone()
        if row is None:
            return None
        return _RowReader(self.path, row["run_id"])(row, "runs", "finished_at", _timestamp)

    def last_healthy_reboots(self) -> dict[str, tuple[datetime | None, datetime]]:
        """Each machine's latest reboot that ended healthy, whatever run it was in:
        ``{name: (reboot_requested_at, healthy_at)}``."""
        with self._read() as db:
            rows = db.execute(
                "SELECT m.run_id, m.name, m.reboot_requested_at, m.healthy_at FROM machines m"
                " JOIN (SELECT name, MAX(run_id) AS run_id FROM machines"
                " WHERE healthy_at IS NOT NULL GROUP BY name) latest"
                " ON m.run_id = latest.run_id AND m.name = latest.name"
            ).fetchall()
        reboots = {}
        for row in rows:
            field = _RowReader(self.path, row["run_id"])
            reboots[field(row, "machines", "name", _text)] = (
                field(row, "machines", "reboot_requested_at", _timestamp),
                field(row, "machines", "healthy_at", _required_timestamp),
            )
        return reboots

    def latest_run_of_machines(self) -> dict[str, int]:
        """The latest run each machine ever was in: ``{name: run_id}``."""
        with self._read() as db:
            rows = db.execute("SELECT name, MAX(run_id) FROM machines GROUP BY name").fetchall()
        return {_text(name): _integer(run_id) for name, run_id in rows}


_READABLE_VERSIONS = (
    1,
    2,
    3,
    4,
    5,
    6,
    SCHEMA_VERSION,
)  # readers never migrate; a run does on its next start
_STEP_COLUMNS = (
    "step_pgid INTEGER",
    "step_leader_start INTEGER",
    "step_boot_id TEXT",
    "step_token TEXT",
)
_GENERATION_COLUMNS = (
    "nixos INTEGER",
    "generation_before INTEGER",
    "generation_expected INTEGER",
    "generation_after INTEGER",
    "system_before TEXT",
    "system_expected TEXT",
    "system_after TEXT",
    "facts_before TEXT",
    "facts_after TEXT",
)
_SIDE_ROAD_COLUMNS = (
    "reboot_reason TEXT",
    "skipped_at TEXT",
    "deployed_at TEXT",
    "boot_once TEXT",
    "made_default_at TEXT",
    "power_cycled_at TEXT",
    "failure TEXT",
    "rollback_started_at TEXT",
    "rollback_done_at TEXT",
    "rollback_generation INTEGER",
    "rollback_boot_id_before TEXT",
    "rollback_requested_at TEXT",
    "rollback_requests INTEGER NOT NULL DEFAULT 0",
    "rollback_power_cycled_at TEXT",
    "rollback_boot_id_after TEXT",
    "rollback_healthy_at TEXT",
)


def _deploy_mode(value: object) -> bool:
    if value is None:
        return False
    if value != "per-machine":
        raise ValueError("not per-machine")
    return True


def _requests(value: object) -> int:
    return 0 if value is None else _integer(value)


_SIDE_ROAD_FIELDS: dict[str, Callable[[Any], Any]] = {
    "reboot_reason": _optional_text,
    "skipped_at": _timestamp,
    "deployed_at": _timestamp,
    "boot_once": _optional_text,
    "made_default_at": _timestamp,
    "power_cycled_at": _timestamp,
    "failure": _optional_text,
    "rollback_started_at": _timestamp,
    "rollback_done_at": _timestamp,
    "rollback_generation": _optional_integer,
    "rollback_boot_id_before": _optional_text,
    "rollback_requested_at": _timestamp,
    "rollback_requests": _requests,
    "rollback_power_cycled_at": _timestamp,
    "rollback_boot_id_after": _optional_text,
    "rollback_healthy_at": _timestamp,
}
