"""Fault matrix (issue 3), state store rows: a damaged store, and a state_dir whose
filesystem is full — against the real-host lab, judged by the hosts' ground truth.

The promise under test: a reboot is only ever sent after its intent is committed to the
store, and a store that cannot be trusted stops everything with one clear `error:` line."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator.store import STORE_FILE
from tests.fault_lab import (
    Finished,
    boots,
    latest_run,
    orchestrator,
    reboots_requested,
    spawn,
    wait_for_run_state,
    write_config,
)

pytestmark = pytest.mark.netlab

HOSTS = ["h1", "h2"]


# -- a damaged store ----------------------------------------------------------------------------


def _truncate_to_zero(db: Path) -> None:
    os.truncate(db, 0)


def _truncate_mid_page(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2 + 100)


def _overwrite_tables(db: Path) -> None:
    """Everything after the first page (the schema) replaced by a pattern."""
    with db.open("r+b") as f:
        f.seek(4096)
        f.write(b"\x5a" * (db.stat().st_size - 4096))


def _overwrite_header(db: Path) -> None:
    with db.open("r+b") as f:
        f.write(b"this is not an SQLite database\n".ljust(100, b"."))


DAMAGE: dict[str, tuple[Callable[[Path], None], bool]] = {
    # name: (damage, checkpointed first). Uncheckpointed: the killed run's WAL is still there,
    # as after a power cut; sqlite ignores a WAL next to an empty database file.
    "truncated-to-zero-next-to-its-wal": (_truncate_to_zero, False),
    "truncated-to-zero": (_truncate_to_zero, True),
    "truncated-mid-page": (_truncate_mid_page, True),
    "tables-overwritten": (_overwrite_tables, True),
    "not-a-database": (_overwrite_header, True),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_state_store_is_a_clear_error_and_nothing_is_rebooted(netlab, tmp_path, damage):
    lab = netlab(HOSTS, boot_time=0.5)
    deployed = tmp_path / "deployed"
    # A run in progress when the store gets damaged: killed while deploying.
    config = write_config(
        lab,
        tmp_path,
        deploy={"command": ["sh", "-c", f'echo $$ > "{deployed}"; exec sleep 30'], "timeout": 60},
    )
    state_dir = tmp_path / "state"
    first = spawn(config, "run", log=tmp_path / "first.log")
    wait_for_run_state(state_dir, "deploying")
    deadline = time.monotonic() + 10
    while not deployed.exists() or not deployed.read_text().strip():
        assert time.monotonic() < deadline, "the deploy command never started"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    os.kill(int(deployed.read_text()), signal.SIGKILL)  # its deploy command, orphaned
    db = state_dir / STORE_FILE
    damage_fn, checkpointed = DAMAGE[damage]
    if checkpointed:  # the store at rest, all in one file (what any clean close leaves)
        with contextlib.closing(sqlite3.connect(db)) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert db.stat().st_size >= 4 * 4096
    damage_fn(db)
    damaged = db.read_bytes()
    deployed.unlink()
    since = time.time()

    for command in ("resume", "run"):
        result = orchestrator(config, command)

        assert result.returncode == 1, result.stderr
        assert len(result.error_lines) == 1, result.stderr
        assert result.error_lines[0].startswith(f"error: state store {db}"), result.stderr
        assert "nothing was rebooted" in result.error_lines[0]
        assert "Traceback" not in result.stderr

    assert reboots_requested(lab, since=since) == []
    assert boots(lab) == {}
    assert not deployed.exists()  # it stopped before doing anything at all
    assert db.read_bytes() == damaged  # the evidence is left as it was


# -- a full filesystem under state_dir ----------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "1m") -> Iterator[Path]:
    """A tiny tmpfs at ``path`` in this (the root) mount namespace, where the orchestrator
    under test runs; the lab's hosts never see it and need not. Mode 0700: a tmpfs root is
    world-writable (1777) by default, which the orchestrator refuses as a state_dir."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0700"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no byte left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
        with pytest.raises(OSError) as full:
            os.write(fd, b"\0")
        assert full.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


# Where the filesystem fills up: before the very first run (no store yet), before a run on an
# existing store, while the run deploys (its next commit is the first reboot's intent), and
# while the first machine is being verified (the next intent is the second machine's).
FILL_POINTS = ["before-the-first-run", "before-a-run", "deploying", "verifying:h1"]


@pytest.mark.parametrize("point", FILL_POINTS)
def test_full_state_filesystem_is_a_clear_error_and_no_reboot_is_sent_without_its_intent(
    netlab, tmp_path, point
):
    lab = netlab(HOSTS, boot_time=0.5)
    with small_tmpfs(tmp_path / "state") as state_dir:
        config = write_config(lab, tmp_path, deploy={"command": ["sleep", "1"]})
        if point == "before-a-run":
            previous = orchestrator(config, "run")
            assert previous.returncode == 0, previous.stderr
        since = time.time()
        if point.startswith("before"):
            filler = fill(state_dir)
            result = orchestrator(config, "run")
        else:
            log = tmp_path / "run.log"
            run = spawn(config, "run", log=log)
            try:
                wait_for_run_state(state_dir, point)
                filler = fill(state_dir)
                run.wait(timeout=60)
            finally:
                if run.poll() is None:
                    run.kill()
                    run.wait()
            result = Finished(run.returncode, log.read_text(), since, time.time())

        assert result.returncode == 1, result.stderr
        assert len(result.error_lines) == 1, result.stderr
        error = result.error_lines[0]
        assert error == result.stderr.strip().splitlines()[-1]
        assert f"state store {state_dir / STORE_FILE}" in error, error
        assert "corrupt" not in error, error  # the disk is full; the store is fine
        assert "Traceback" not in result.stderr

        # Ground truth against the store: every reboot a host received had its intent
        # committed first. (Space is freed to read it; the orchestrator has exited.)
        filler.unlink()
        requested = reboots_requested(lab, since=since)
        run_record = latest_run(state_dir)
        for host in set(requested):
            assert run_record is not None, f"{host} was asked to reboot with no run stored"
            machine = run_record.machine(host)
            asked_at = min(e["t"] for e in lab.events(host, "reboot_requested", since=since))
            assert machine.reboot_requested_at is not None, f"{host}: reboot without intent"
            assert machine.reboot_requested_at.timestamp() <= asked_at
            assert machine.reboot_requests >= requested.count(host)
        if point == "deploying":
            assert requested == []
        if point == "verifying:h1":
            assert requested == ["h1"]

        # With space again, the interrupted run (or a new one) finishes: once per host.
        resumed = orchestrator(config, "resume")
        assert resumed.returncode == 0, resumed.stderr
        if point.startswith("before"):
            again = orchestrator(config, "run")
            assert again.returncode == 0, again.stderr
        assert latest_run(state_dir).state == "done"
        assert boots(lab, since=since) == dict.fromkeys(HOSTS, 1)
