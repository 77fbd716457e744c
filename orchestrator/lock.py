"""One run at a time: an exclusive lock in ``state_dir``.

filelock takes an ``flock`` on the file (``preserve_lock_file`` also rules out its "soft",
existence-based fallback), which the kernel drops when the holder dies however it
dies, so a stale lock of a killed process never blocks the next run. The holder's PID goes to a
separate file because a contender opening the lock file truncates it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from orchestrator.errors import LockHeldError, StoreError

LOCK_FILE = "run.lock"
PID_FILE = "run.pid"


def holder_pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


@contextmanager
def exclusive(state_dir: Path) -> Iterator[None]:
    try:
        state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        lock = FileLock(state_dir / LOCK_FILE, timeout=0, preserve_lock_file=True)
        lock.acquire()
    except Timeout:
        pid = holder_pid(state_dir)
        who = f"PID {pid}" if pid else "another process"
        raise LockHeldError(
            f"another orchestrator ({who}) holds {state_dir / LOCK_FILE}; "
            "only one run at a time — see `orchestrator status`"
        ) from None
    except OSError as exc:
        raise StoreError(f"cannot take the run lock in {state_dir}: {exc}") from None
    try:
        with contextlib.suppress(OSError):  # the PID is only a hint for the error message
            (state_dir / PID_FILE).write_text(f"{os.getpid()}\n")
        yield
    finally:
        lock.release()


def is_locked(state_dir: Path) -> bool:
    lock = FileLock(state_dir / LOCK_FILE, timeout=0, preserve_lock_file=True)
    try:
        lock.acquire()
    except Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False
