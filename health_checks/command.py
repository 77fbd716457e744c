"""``type: command`` — a command run on the machine (over SSH) exits 0."""

from __future__ import annotations

import shlex
from typing import Literal

from pydantic import Field

from health_checks.base import Check, Probe, ProbeContext
from health_checks.schema import Argv

# A check's verdict is its exit code; its output only explains a failure.
MAX_OUTPUT = 4096


def failure_detail(returncode: int, stdout: str, stderr: str) -> str:
    lines = [line.strip() for line in (stderr or stdout).splitlines() if line.strip()]
    return f"exit {returncode}" + (f": {lines[-1]}" if lines else "")


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
        return f"command {shlex.join(self.command)}"

    async def probe(self, ctx: ProbeContext) -> Probe:
        name = self.describe(ctx.address)
        argv = ["sudo", "-n", *self.command] if self.sudo else list(self.command)
        try:
            result = await ctx.host.run(argv, self.budget(ctx.timeouts), MAX_OUTPUT)
        except ctx.transient as exc:
            return Probe(name, False, str(exc))
        if result.returncode != 0:
            return Probe(
                name, False, failure_detail(result.returncode, result.stdout, result.stderr)
            )
        return Probe(name, True, "exit 0")
