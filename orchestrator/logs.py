"""One line per event on stderr; no timestamps of our own under journald (it adds them)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from orchestrator.errors import ConfigError


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
    logger.addHandler(stderr)
    if log_file is not None:
        try:
            handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            where = f"{config_path}: " if config_path is not None else ""
            raise ConfigError(
                f"{where}log_file: cannot open {log_file}: {exc.strerror or exc}"
            ) from None
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    # The libraries' own INFO lines (every SSH channel, every HTTP request) drown the events.
    for noisy in ("asyncssh", "httpx", "httpcore", "transitions"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    return logger
