"""The one error type for everything a user can cause.

Modelled on nixos-rebuild-ng: ``str(error)`` is the whole message, ``main()`` prints it as a
single ``error: …`` line and exits with ``exit_code``; ``--debug`` re-raises for the traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 75  # EX_TEMPFAIL: the timer may simply try again later


class OrchestratorError(Exception):
    """Something the user can fix or must know about; never shown with a traceback."""

    exit_code: int = EXIT_FAILED

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(OrchestratorError):
    exit_code = EXIT_USAGE


class LockHeldError(OrchestratorError):
    exit_code = EXIT_LOCKED


class StoreError(OrchestratorError):
    """The state store cannot be read or written; nothing may be rebooted past this point."""
