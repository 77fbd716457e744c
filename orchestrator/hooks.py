"""The run's one event point, and the hooks that subscribe to it.

The engine emits six events: a run started (or was resumed), the run moved to a new state
(committed to the store first), a machine is rebooting, a rebooted machine is still waited for
(its first failing probe changed), a machine is healthy, and a run finished (``done`` or
``aborted``). Each carries the run's ``RunSummary``, the same data the ``summary:`` lines and
``status`` are made of. A hook is any
async callable with a name and a timeout; one that fails or hangs is a warning in the log and
never changes the run's outcome or exit code — the run, not its messenger, is what matters.

The built-in hooks are the config's ``hooks.on_start/on_done/on_abort`` commands, run like
borgmatic's: through the process runner, with the summary as JSON on stdin.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from orchestrator import process
from orchestrator.report import RunSummary
from orchestrator.states import Phase

log = logging.getLogger("orchestrator")


class EventKind(StrEnum):
    RUN_STARTED = "run_started"
    STATE_CHANGED = "state_changed"
    MACHINE_REBOOTING = "machine_rebooting"
    MACHINE_WAITING = "machine_waiting"
    MACHINE_HEALTHY = "machine_healthy"
    RUN_FINISHED = "run_finished"


@dataclass(frozen=True)
class Waiting:
    """What a rebooted machine is waited for (MACHINE_WAITING): its first failing probe, as
    sanitised host text, and how far into ``reboot.timeout`` the wait is."""

    failure: str
    elapsed: float
    limit: float


@dataclass(frozen=True)
class RunEvent:
    kind: EventKind
    # The run's summary, or how to make it: made once, and only if a hook reads it (a summary
    # of 500 machines costs tens of ms, and most events reach no hook that needs one).
    source: RunSummary | Callable[[], RunSummary] = field(repr=False)
    machine: str | None = None
    resumed: bool = False  # RUN_STARTED only: an interrupted run continues
    waiting: Waiting | None = None  # MACHINE_WAITING only

    @functools.cached_property
    def summary(self) -> RunSummary:
        return self.source if isinstance(self.source, RunSummary) else self.source()

    def as_json(self) -> dict[str, Any]:
        return {
            "event": self.kind.value,
            "machine": self.machine,
            "resumed": self.resumed,
            "waiting": None if self.waiting is None else vars(self.waiting),
            "run": self.summary.as_json(),
        }


class Hook(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def timeout(self) -> float: ...

    def wants(self, event: RunEvent) -> bool: ...
    async def __call__(self, event: RunEvent) -> None: ...


class EventPoint:
    """Delivers each event to every hook that wants it, one after another, each bounded."""

    def __init__(self, hooks: Sequence[Hook] = ()) -> None:
        self.hooks = list(hooks)

    def subscribe(self, hook: Hook) -> None:
        self.hooks.append(hook)

    async def emit(self, event: RunEvent) -> None:
        wanting = [hook for hook in self.hooks if hook.wants(event)]
        if wanting:
            _ = event.summary  # made now, as the run stands at the event, for every hook alike
        for hook in wanting:
            await self._deliver(hook, event)

    @staticmethod
    async def _deliver(hook: Hook, event: RunEvent) -> None:
        # The hook's own timeout, plus what the process runner needs to stop a child that
        # ignores SIGTERM: this outer bound only catches a hook that does not bound itself.
        limit = hook.timeout + 2 * process.KILL_GRACE + 1.0
        try:
            async with asyncio.timeout(limit):
                await hook(event)
        except TimeoutError:
            log.warning("warning: hook %s: no result within %gs; ignored", hook.name, limit)
        except Exception as exc:  # a hook never changes the run's outcome
            log.warning("warning: hook %s: %s; ignored", hook.name, exc)


class CommandHook:
    """One ``hooks.on_*`` command: argv, summary JSON on stdin, run facts in the environment."""

    def __init__(self, name: str, argv: Sequence[str], ends_in: str | None, timeout: float) -> None:
        self.name = name
        self.argv = list(argv)
        self._ends_in = ends_in  # None: on_start
        self.timeout = timeout

    def wants(self, event: RunEvent) -> bool:
        if self._ends_in is None:
            return event.kind is EventKind.RUN_STARTED and not event.resumed
        return event.kind is EventKind.RUN_FINISHED and event.summary.state == self._ends_in

    async def __call__(self, event: RunEvent) -> None:
        summary = event.summary
        env = {
            **os.environ,
            "ORCHESTRATOR_RUN_ID": str(summary.run_id),
            "ORCHESTRATOR_STATE": summary.state,
            "ORCHESTRATOR_FAILED_MACHINE": summary.failed_machine or "",
        }
        result = await process.run(
            self.argv,
            timeout=self.timeout,
            input=json.dumps(event.as_json()).encode(),
            env=env,
            label=f"hook {self.name}",
            log_output=True,
        )
        result.check()


def command_hooks(
    on_start: Sequence[Sequence[str]],
    on_done: Sequence[Sequence[str]],
    on_abort: Sequence[Sequence[str]],
    timeout: float,
) -> list[Hook]:
    hooks: list[Hook] = []
    for name, commands, ends_in in (
        ("on_start", on_start, None),
        ("on_done", on_done, Phase.DONE.value),
        ("on_abort", on_abort, Phase.ABORTED.value),
    ):
        hooks += [CommandHook(name, argv, ends_in, timeout) for argv in commands]
    return hooks
