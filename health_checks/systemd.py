"""``type: systemd`` — every listed unit is ``active``, asked in one ``systemctl`` call."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from health_checks.base import Check, Probe, ProbeContext
from health_checks.command import failure_detail
from health_checks.text import from_host

MAX_OUTPUT = 4096


def _units(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("must list at least one unit")
    for unit in value:
        if not unit or unit.startswith("-") or any(c.isspace() for c in unit):
            raise ValueError(f"not a unit name: {unit!r}")
    return value


class SystemdCheck(Check):
    type: Literal["systemd"] = Field(
        description="Check type: systemd units on the machine are active.", examples=["systemd"]
    )
    units: Annotated[list[str], AfterValidator(_units)] = Field(
        description="Units that must all be `active` (`systemctl is-active`).",
        examples=[["nginx.service", "postgresql.service"]],
    )

    def describe(self, address: str) -> str:
        return from_host(f"systemd {' '.join(self.units)}", 300)

    async def probe(self, ctx: ProbeContext) -> Probe:
        name = self.describe(ctx.address)
        argv = ["systemctl", "is-active", *self.units]
        try:
            result = await ctx.host.run(argv, self.budget(ctx.timeouts), MAX_OUTPUT)
        except ctx.transient as exc:
            return Probe(name, False, from_host(str(exc)))
        # One state per line, in the order asked. The exit code is no verdict: systemctl exits 0
        # when *any* listed unit is active, so each unit's own line decides.
        states = result.stdout.split()
        if len(states) != len(self.units):
            if result.returncode == 0:
                answer = from_host(result.stdout.strip(), 200)
                return Probe(name, False, f"unexpected answer: '{answer}'")
            return Probe(
                name, False, failure_detail(result.returncode, result.stdout, result.stderr)
            )
        inactive = [
            (unit, state)
            for unit, state in zip(self.units, states, strict=True)
            if state != "active"
        ]
        if inactive:
            unit, state = inactive[0]
            more = f" (and {len(inactive) - 1} more)" if len(inactive) > 1 else ""
            return Probe(name, False, from_host(f"{unit} is {state}{more}", 300))
        if result.returncode != 0:
            return Probe(
                name, False, failure_detail(result.returncode, result.stdout, result.stderr)
            )
        return Probe(name, True, f"{len(self.units)} active")
