"""``type: command`` — a command run on the machine (over SSH) exits 0.

Its output only explains a failure: the last line, sanitised (``health_checks.text``), and
``describe()`` shows the configured argv with control characters escaped too."""

from __future__ import annotations

import shlex
from typing import Literal

from pydantic import Field

from health_checks.base import Check, Probe, ProbeContext
from health_checks.schema import Argv
from health_checks.text import from_host

# A check's verdict is its exit code; its output only explains a failure.
MAX_OUTPUT = 4096


def failure_detail(returncode: int, stdout: str, stderr: str) -> str:
    """``exit N: <last line of its output>``, the line sanitised and capped."""
    lines = [line.strip() for line in (stderr or stdout).splitlines() if line.strip()]
    return f"exit {returncode}" + (f": {from_host(lines[-1], 300)}" if lines else "")


class CommandCheck(Check):
    type: Literal["command"] = Field(
        description="Check type: a command run on the machine exits 0.", examples=["command"]
    )
    command: Argv = Field(
        description="argv run on the machine; passes on exit 0. Each word is quoted, never "
        "interpreted by a shell.",
        examples=[["systemctl", "is-active", "--quiet", "nginx"]],
    )
    sudo: bool = Field(
        False, description="Run it with `sudo -n` (for a non-root SSH user).", examples=[False]
    )

    def describe(self, address: str) -> str:
        return from_host(f"command {shlex.join(self.command)}", 300)

    async def probe(self, ctx: ProbeContext) -> Probe:
        name = self.describe(ctx.address)
        argv = ["sudo", "-n", *self.command] if self.sudo else list(self.command)
        try:
            result = await ctx.host.run(argv, self.budget(ctx.timeouts), MAX_OUTPUT)
        except ctx.transient as exc:
            return Probe(name, False, from_host(str(exc)))
        if result.returncode != 0:
            return Probe(
                name, False, failure_detail(result.returncode, result.stdout, result.stderr)
            )
        return Probe(name, True, "exit 0")
