"""One line per event: to the journal with the run's fields when stderr is the journal, else
to stderr (no timestamps of our own under systemd: the journal adds them); also to log_file.

Under the journal each line is sent over journald's native protocol, so it carries the run it
belongs to as fields of its own (``RUN_ID=``, ``STATE=``, ``MACHINE=``) and
``journalctl RUN_ID=12`` finds exactly that run's lines. The client is ``logging-journald``:
pure Python (datagrams, and a sealed memfd for a message too big for one), where
``systemd-python`` needs libsystemd's headers and a C compiler to build.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
from pathlib import Path
from typing import Any

# No type information shipped (no py.typed); what is used of it is typed at the use below.
import logging_journald  # type: ignore[import-untyped]

from health_checks.text import from_host
from orchestrator import files
from orchestrator.errors import ConfigError
from orchestrator.states import StateName

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


def stderr_is_journal() -> bool:
    """Whether stderr is the journal's stream (``JOURNAL_STREAM`` names its device:inode), not
    merely inherited from some unit by a process whose stderr went elsewhere."""
    try:
        return bool(logging_journald.check_journal_stream())
    except (ValueError, OSError, AttributeError):  # a malformed variable, or no stderr at all
        return False


# syslog priorities (what `journalctl -p` filters on) for our levels.
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6}


class JournalHandler(logging.Handler):
    """Each record as one journal entry over the native protocol, with the run's fields.

    ``logging_journald.JournaldLogHandler`` puts a record's extras under ``EXTRA_*`` and adds
    fields of its own (a MESSAGE_ID per text, thread names); the fields here are top-level and
    few, so this uses its transport and builds the entry itself."""

    def __init__(self, identifier: str = "orchestrator", socket_path: Path | None = None) -> None:
        super().__init__()
        # Connects at once, so a journal that is not there is an OSError now, not a lost line.
        self.transport = logging_journald.JournaldTransport(socket_path=socket_path)
        self.identifier = identifier
        # If the socket fails later (journald restarting, twice in a row), the line still goes
        # to stderr, which is the journal's stream: the entry loses its fields, not its text.
        self.fallback = logging.StreamHandler(sys.stderr)
        self.fallback.setFormatter(logging.Formatter("%(message)s"))

    def fields(self, record: logging.LogRecord) -> list[tuple[str, Any]]:
        pairs: list[tuple[str, Any]] = [
            ("MESSAGE", self.format(record)),
            ("PRIORITY", _PRIORITY.get(record.levelno, 7)),
            ("SYSLOG_IDENTIFIER", self.identifier),
            ("CODE_FILE", record.pathname),
            ("CODE_LINE", record.lineno),
            ("CODE_FUNC", record.funcName),
        ]
        context = run_context()
        if context is not None:
            run_id, state = context
            pairs += [("RUN_ID", run_id), ("STATE", state)]
            try:
                machine = StateName.parse(state).machine
            except ValueError:  # not a state of ours; the fields above still hold
                machine = None
            if machine is not None:
                pairs.append(("MACHINE", machine))
        return pairs

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.transport.send(self.fields(record))
        except OSError:
            self.fallback.emit(record)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.transport.socket.close()
        super().close()


def _console() -> logging.Handler:
    """The journal when stderr is the journal's stream and its socket answers; else stderr."""
    if stderr_is_journal():
        try:
            handler: logging.Handler = JournalHandler()
        except OSError:
            pass
        else:
            handler.setFormatter(logging.Formatter("%(message)s"))
            return handler
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    return handler


def setup(
    debug: bool = False, log_file: Path | None = None, config_path: Path | None = None
) -> logging.Logger:
    """Logging to the journal or stderr (never both: one line, one entry), and to ``log_file``
    if given; a log file that cannot be opened is a ConfigError naming ``config_path`` (the
    file that set it), the key and the reason."""
    logger = logging.getLogger("orchestrator")
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    console = _console()
    console.addFilter(OneLine())
    logger.addHandler(console)
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
