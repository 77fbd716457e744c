"""The update and deploy steps: run the configured argv in the flake directory.

Output is streamed line by line to the log as it comes, so a slow ``lab deploy-all`` shows its
progress in the journal. The child runs in its own process group so a timeout stops all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
from pathlib import Path

from orchestrator.config import CommandStep
from orchestrator.errors import OrchestratorError

log = logging.getLogger("orchestrator")
KILL_GRACE = 10.0


class StepFailed(OrchestratorError):
    pass


async def _stop(process: asyncio.subprocess.Process) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            async with asyncio.timeout(KILL_GRACE):
                await process.wait()
            return
        except TimeoutError:
            continue


async def run_step(label: str, step: CommandStep, cwd: Path) -> None:
    argv = step.command
    log.info("%s: running `%s` in %s", label, shlex.join(argv), cwd)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        missing = argv[0] if exc.filename in (None, argv[0]) else f"directory {cwd}"
        raise StepFailed(f"{label}: not found: {missing}") from None
    except OSError as exc:
        raise StepFailed(f"{label}: cannot start `{shlex.join(argv)}`: {exc.strerror}") from None
    assert process.stdout is not None
    try:
        async with asyncio.timeout(step.timeout):
            async for line in process.stdout:
                log.info("%s: %s", label, line.decode(errors="replace").rstrip())
            await process.wait()
    except TimeoutError:
        await _stop(process)
        raise StepFailed(
            f"{label}: `{shlex.join(argv)}` did not finish within {step.timeout:g}s; stopped it"
        ) from None
    finally:
        if process.returncode is None:
            await _stop(process)
    if process.returncode != 0:
        raise StepFailed(
            f"{label}: `{shlex.join(argv)}` failed with exit code {process.returncode}"
        )
    log.info("%s: done", label)
