"""One line per event on stderr; no timestamps of our own under journald (it adds them)."""

from __future__ import annotations

import contextvars
import logging
import os
import sys
from pathlib import Path

from health_checks.text import from_host
from orchestrator import files
from orchestrator.errors import ConfigError

# One event is one line: long enough for any message of ours, which are already escaped where
# they carry host text; this is the last guard for whatever else reaches a handler.
LINE_MAX = 64 * 1024


# The run and state a log line belongs to (the journal's RUN_ID=, STATE=, MACHINE= fields);
# set by the engine as the run moves, read by the journal handler.
_run_context: contextvars.ContextVar[tuple[int, str] | None] = contextvars.ContextVar(
    "run_context", default=None
)


def set_run_context(run_id: int | None, state: str | None = None) -> None:
    """Every log line from here on belongs to run ``run_id`` in ``state`` (None: no run)."""
    _run_context.set(None if run_id is None or state is None else (run_id, state))


def run_context() -> tuple[int, str] | None:
    return _run_context.get()


class OneLine(logging.Filter):
    """Escapes control characters in every message, so nothing (a library's debug line quoting
    a host, a message we did not foresee) can forge a log line or drive a terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = from_host(record.getMessage(), limit=LINE_MAX)
        record.args = None
        return True


def setup(
    debug: bool = False, log_file: Path | None = None, config_path: Path | None = None
) -> logging.Logger:
    """Logging to stderr, and to ``log_file`` if given; a log file that cannot be opened is a
    ConfigError naming ``config_path`` (the file that set it), the key and the reason."""
    logger = logging.getLogger("orchestrator")
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    stderr = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        stderr.setFormatter(logging.Formatter("%(message)s"))
    else:
        stderr.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    stderr.addFilter(OneLine())
    logger.addHandler(stderr)
    if log_file is not None:
        try:
            # Created 0600 whatever the umask, never through a symlink (see files.py).
            handler = files.PrivateFileHandler(log_file)
        except OSError as exc:
            where = f"{config_path}: " if config_path is not None else ""
            raise ConfigError(
                f"{where}log_file: cannot open {log_file}: {exc.strerror or exc}"
            ) from None
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        handler.addFilter(OneLine())
        logger.addHandler(handler)
    # The libraries' own INFO lines (every SSH channel, every HTTP request) drown the events.
    for noisy in ("asyncssh", "httpx", "httpcore", "transitions"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    return logger
