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

from orchestrator import files
from orchestrator.errors import LockHeldError, StoreError

LOCK_FILE = "run.lock"
PID_FILE = "run.pid"


def holder_pid(state_dir: Path) -> int | None:
    try:
        fd = os.open(state_dir / PID_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return int(os.read(fd, 64).decode().strip())
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def _lock(state_dir: Path) -> FileLock:
    # The lock file is made (0600, never through a symbolic link) before filelock opens it,
    # since filelock opens it by name with O_TRUNC.
    os.close(files.open_private(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT))
    return FileLock(state_dir / LOCK_FILE, timeout=0, mode=files.FILE_MODE, preserve_lock_file=True)


@contextmanager
def exclusive(state_dir: Path) -> Iterator[None]:
    try:
        files.secure_dir(state_dir, create=True)
        lock = _lock(state_dir)
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
            fd = files.open_private(state_dir / PID_FILE, os.O_WRONLY | os.O_CREAT, truncate=True)
            try:
                os.write(fd, f"{os.getpid()}\n".encode())
            finally:
                os.close(fd)
        yield
    finally:
        lock.release()


def is_locked(state_dir: Path) -> bool:
    try:
        lock = _lock(state_dir)
        lock.acquire()
    except Timeout:
        return True
    except OSError:
        return False
    lock.release()
    return False
