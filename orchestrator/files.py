"""Private files: the state directory and every file the orchestrator writes.

What ``state_dir`` holds decides what gets rebooted, so nobody but its owner may be able to put
anything there: a run refuses a state_dir that is group- or world-writable or owned by another
user, creates it 0700 and every file in it 0600 (whatever the umask), and never follows a
symbolic link when it opens one of its files (``O_NOFOLLOW``), so a planted ``run.pid`` or
``state.db`` link cannot make it write to, or add tables to, someone else's file.

Readers (``status``, ``history``) only read. They accept a state_dir owned by themselves or by
root, or any owner when they run as root, still never group- or world-writable; since the files
are 0600, in practice ``status`` works for the state_dir's owner and for root.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
from pathlib import Path

from orchestrator.errors import OrchestratorError

DIR_MODE = 0o700
FILE_MODE = 0o600


class UnsafePath(OrchestratorError):
    """A state_dir, or a file in it, that another user could have planted or changed."""


def _trusted_owner(uid: int, *, reader: bool) -> bool:
    me = os.geteuid()
    if uid == me:
        return True
    return reader and (me == 0 or uid == 0)


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def secure_dir(path: Path, *, create: bool, reader: bool = False) -> None:
    """Check (and with ``create``, make, 0700) the state directory; one line if it is unsafe."""
    if create and not path.exists():
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        path.chmod(DIR_MODE)  # exactly 0700, whatever the umask let mkdir give
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"state_dir {path} is not a directory")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePath(
            f"state_dir {path} is group- or world-writable (mode {_mode(st)}); refusing to use "
            f"it, since another user could plant files in it (chmod 700 {path})"
        )
    if not _trusted_owner(st.st_uid, reader=reader):
        raise UnsafePath(
            f"state_dir {path} is owned by uid {st.st_uid}, not by this user (uid "
            f"{os.geteuid()}; mode {_mode(st)}); refusing to use it — run as its owner"
        )


def check_file(path: Path, *, reader: bool = False) -> None:
    """An existing file of ours: a regular file, not a symbolic link, owned by a trusted user."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{path} is a symbolic link; refusing to follow it")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(f"{path} is not a regular file")
    if not _trusted_owner(st.st_uid, reader=reader):
        raise UnsafePath(
            f"{path} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}); "
            "refusing to use it"
        )


def open_private(path: Path, flags: int, *, truncate: bool = False) -> int:
    """``os.open`` for a file of ours: created 0600, never through a symbolic link, refused
    unless it is a regular file owned by this user; an existing one with a wider mode is
    narrowed to 0600. ``truncate`` empties it only after those checks (never ``O_TRUNC``).
    Errors are ``OSError`` whose ``strerror`` says what is wrong, e.g. for ``log_file``.
    """
    flags = (flags & ~os.O_TRUNC) | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, FILE_MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(
                errno.ELOOP, "is a symbolic link; refusing to follow it", str(path)
            ) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if st.st_uid != os.geteuid():
            raise OSError(
                errno.EPERM, f"owned by uid {st.st_uid}, not by this user; refusing", str(path)
            )
        if stat.S_IMODE(st.st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
        if truncate:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def tighten(path: Path) -> None:
    """Narrow an existing file of ours to 0600 (and check it as ``open_private`` does);
    nothing if it does not exist."""
    try:
        fd = open_private(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    os.close(fd)


class PrivateFileHandler(logging.FileHandler):
    """``logging.FileHandler`` for ``log_file``: appends to a file opened by ``open_private``
    (created 0600 whatever the umask, never through a symbolic link, refused unless it is
    ours). Raises ``OSError`` like ``FileHandler`` when it cannot be opened."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, mode="a", encoding="utf-8")

    def _open(self) -> io.TextIOWrapper:
        fd = open_private(Path(self.baseFilename), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        return open(fd, "a", encoding=self.encoding, errors=self.errors)
