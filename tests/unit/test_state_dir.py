"""Issue 8, item 14: a state_dir another local user can write is refused; the orchestrator's
own files are never opened through a symbolic link; the directory is made 0700 and every file
in it 0600, whatever the umask.

The attacks of the issue, each with the real CLI: a ``run.pid`` (or ``run.lock``) symlink to a
root-owned file, a ``state.db`` symlink to another application's SQLite database, and a state_dir
where another user could have forged a ``rebooting:b`` row."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import files
from orchestrator.lock import LOCK_FILE, PID_FILE
from orchestrator.states import RunKind
from orchestrator.store import STORE_FILE, Store
from tests.conftest import REPO, write_config

NOBODY = 65534


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def cli(config: Path, *args: str, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=REPO,
        env=env,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


@pytest.fixture
def lab_config(tmp_path: Path, make_lab) -> tuple[object, Path]:
    lab = make_lab(["alpha"])
    return lab, write_config(tmp_path / "lab.yaml", lab.lab.config(tmp_path / "state"))


# -- the directory ------------------------------------------------------------------------------


@pytest.mark.parametrize("dir_mode", [0o777, 0o770, 0o1777, 0o720, 0o702])
@pytest.mark.parametrize("command", ["run", "status"])
def test_a_group_or_world_writable_state_dir_is_refused_in_one_line(
    tmp_path, lab_config, dir_mode, command
):
    lab, config = lab_config
    state_dir = tmp_path / "state"
    if command == "status":  # a store made while the directory was still private
        assert cli(config, "run").returncode == 0
    else:
        state_dir.mkdir()
    state_dir.chmod(dir_mode)
    before = sorted(p.name for p in state_dir.iterdir())

    result = cli(config, command)

    assert result.returncode == 1, result.stderr
    assert error_line(result) == (
        f"error: state_dir {state_dir} is group- or world-writable (mode {dir_mode:04o}); "
        f"refusing to use it, since another user could plant files in it (chmod 700 {state_dir})"
    )
    assert sorted(p.name for p in state_dir.iterdir()) == before  # nothing created
    assert lab.reboots("alpha") == (1 if command == "status" else 0)


def test_a_state_dir_owned_by_another_user_is_refused_for_a_run(tmp_path, lab_config):
    """The forged-row attack: whoever owns the directory could have written `rebooting:alpha`
    into its store. A run (which would act on it) refuses; nothing is rebooted."""
    lab, config = lab_config
    state_dir = tmp_path / "state"
    with Store.open(state_dir) as store:
        run = store.create_run(RunKind.NIGHTLY, [("alpha", False)], Path(config))
        store.set_state(run.run_id, "rebooting:alpha")
    for path in [state_dir, *state_dir.iterdir()]:
        os.chown(path, NOBODY, NOBODY)

    for command in ("run", "resume"):
        result = cli(config, command)
        assert result.returncode == 1, result.stderr
        assert error_line(result) == (
            f"error: state_dir {state_dir} is owned by uid {NOBODY}, not by this user (uid "
            f"{os.geteuid()}; mode 0700); refusing to use it — run as its owner"
        )
    assert lab.reboots("alpha") == 0
    # root may still read it: `sudo orchestrator status` shows what is there
    status = cli(config, "status")
    assert status.returncode == 0, status.stderr
    assert "rebooting:alpha" in status.stdout


# -- symbolic links planted in the directory ----------------------------------------------------


@pytest.mark.parametrize("name", [PID_FILE, LOCK_FILE])
def test_a_run_file_symlink_is_never_followed(tmp_path, lab_config, name):
    _, config = lab_config
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    victim = tmp_path / "root-owned-file"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    (state_dir / name).symlink_to(victim)

    result = cli(config, "run")

    assert victim.read_text() == "precious\n" and mode(victim) == 0o644
    if name == LOCK_FILE:  # the lock cannot be taken safely: stop before anything
        assert result.returncode == 1
        assert error_line(result).startswith(f"error: cannot take the run lock in {state_dir}")
        assert "symbolic link" in result.stderr
    else:  # the PID file is only a hint for the error message of a second run
        assert result.returncode == 0, result.stderr
        assert (state_dir / name).is_symlink()


def test_a_state_db_symlink_to_another_database_is_refused_and_that_database_untouched(
    tmp_path, lab_config
):
    lab, config = lab_config
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    other = tmp_path / "other-app.sqlite"
    with contextlib.closing(sqlite3.connect(other)) as db, db:
        db.execute("CREATE TABLE photos (id INTEGER)")
    before = other.read_bytes()
    (state_dir / STORE_FILE).symlink_to(other)

    for command in ("run", "status", "history"):
        result = cli(config, command)
        assert result.returncode == 1, result.stderr
        assert error_line(result) == (
            f"error: {state_dir / STORE_FILE} is a symbolic link; refusing to follow it"
        )
    assert other.read_bytes() == before
    assert lab.reboots("alpha") == 0


def test_a_store_owned_by_another_user_is_refused_for_a_run(tmp_path, lab_config):
    _, config = lab_config
    state_dir = tmp_path / "state"
    with Store.open(state_dir):
        pass
    os.chown(state_dir / STORE_FILE, NOBODY, NOBODY)
    result = cli(config, "run")
    assert result.returncode == 1
    assert error_line(result) == (
        f"error: {state_dir / STORE_FILE} is owned by uid {NOBODY}, not by this user "
        f"(uid {os.geteuid()}); refusing to use it"
    )


# -- modes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o777])
def test_every_file_is_0600_and_the_directory_0700_whatever_the_umask(tmp_path, lab_config, umask):
    _, config = lab_config
    state_dir = tmp_path / "state"
    result = cli(config, "run", umask=umask)
    assert result.returncode == 0, result.stderr
    # A reader keeps the store open a moment, so that the WAL and shm files exist to look at.
    with Store.open(state_dir, create=False) as store:
        store.latest_run()
        names = sorted(p.name for p in state_dir.iterdir())
        modes = {p.name: mode(p) for p in state_dir.iterdir()}
    assert {STORE_FILE, LOCK_FILE, PID_FILE} <= set(names)
    assert modes == dict.fromkeys(names, 0o600), modes
    assert mode(state_dir) == 0o700


def test_files_left_0644_by_an_older_version_are_narrowed_by_the_next_run(tmp_path, lab_config):
    _, config = lab_config
    state_dir = tmp_path / "state"
    assert cli(config, "run").returncode == 0
    for path in state_dir.iterdir():
        path.chmod(0o644)
    state_dir.chmod(0o750)  # what older versions made: not writable by others, so accepted
    result = cli(config, "run")
    assert result.returncode == 0, result.stderr
    assert {p.name: mode(p) for p in state_dir.iterdir() if not p.name.endswith("-shm")} == {
        p.name: 0o600 for p in state_dir.iterdir() if not p.name.endswith("-shm")
    }


def test_the_store_is_created_0600_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        with Store.open(tmp_path / "state") as store:
            store.create_run(RunKind.NIGHTLY, [("alpha", False)], Path("/x.yaml"))
            present = [p for p in (tmp_path / "state").iterdir()]
            assert {p.name for p in present} >= {STORE_FILE, f"{STORE_FILE}-wal"}
            assert {p.name: mode(p) for p in present} == {p.name: 0o600 for p in present}
    finally:
        os.umask(old)
    assert mode(tmp_path / "state") == 0o700


def test_another_user_reading_the_store_gets_one_line(tmp_path):
    """status as a user other than the owner (or root): one line saying whose it is."""
    state_dir = tmp_path / "state"
    with Store.open(state_dir):
        pass
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the same code, as user nobody
        os.close(read)
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                Store.open(state_dir, create=False)
                message = "opened"
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
            os.write(write, message.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    os.waitpid(pid, 0)
    # (nobody cannot even stat the directory here, so the owner's uid is not in the line)
    assert message == (
        f"StoreError: cannot read state store {state_dir / STORE_FILE}: permission denied; "
        f"run this as the user that owns {state_dir} or as root"
    )


# -- open_private, for log_file and the like --------------------------------------------------


def test_open_private_creates_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        fd = files.open_private(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.close(fd)
    finally:
        os.umask(old)
    assert mode(tmp_path / "log") == 0o600


def test_open_private_narrows_an_existing_file_and_never_follows_a_symlink(tmp_path):
    existing = tmp_path / "log"
    existing.write_text("old line\n")
    existing.chmod(0o644)
    os.close(files.open_private(existing, os.O_WRONLY | os.O_APPEND))
    assert mode(existing) == 0o600 and existing.read_text() == "old line\n"

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "link"
    link.symlink_to(victim)
    with pytest.raises(OSError, match="is a symbolic link; refusing to follow it") as caught:
        files.open_private(link, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    assert caught.value.strerror == "is a symbolic link; refusing to follow it"
    assert victim.read_text() == "precious\n"


def test_open_private_refuses_a_file_of_another_user(tmp_path):
    path = tmp_path / "log"
    path.write_text("theirs\n")
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(OSError, match=f"owned by uid {NOBODY}"):
        files.open_private(path, os.O_WRONLY | os.O_APPEND, truncate=True)
    assert path.read_text() == "theirs\n"


def test_the_log_file_handler_is_private(tmp_path):
    """What logs.py uses for ``log_file`` (``files.PrivateFileHandler``)."""
    old = os.umask(0)
    try:
        handler = files.PrivateFileHandler(tmp_path / "orchestrator.log")
    finally:
        os.umask(old)
    handler.emit(logging.makeLogRecord({"msg": "one event"}))
    handler.close()
    assert (tmp_path / "orchestrator.log").read_text() == "one event\n"
    assert mode(tmp_path / "orchestrator.log") == 0o600

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "link.log").symlink_to(victim)
    with pytest.raises(OSError) as caught:
        files.PrivateFileHandler(tmp_path / "link.log")
    assert caught.value.strerror == "is a symbolic link; refusing to follow it"
    assert victim.read_text() == "precious\n"
