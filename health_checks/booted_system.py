"""The generation probe: after a reboot, ``/run/booted-system`` must be the system deployed.

Not a check type of the config: the engine adds it to a NixOS machine's gate with the system
the reboot should boot (``system_expected``, or the known-good one while verifying a
rollback). A bootloader that fell back to last week's system passes every other probe; this
one names the generation it booted instead.

``/run/booted-system`` cannot change within a boot, so a wrong answer on the new boot id is
final: ``is_wrong_generation`` tells the engine so, and it stops waiting at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field

from health_checks.base import Check, Probe, ProbeContext
from health_checks.text import from_host

NAME = "generation"
ARGV = ("readlink", "-e", "/run/booted-system")
_WRONG = "booted "


class BootedSystemCheck(Check):
    type: Literal["generation"] = "generation"
    expected: str = Field(description="The store path /run/booted-system must resolve to.")
    # Known generation numbers of store paths, for a failure that says "generation 142".
    generations: Mapping[str, int] = Field(default_factory=dict)

    def describe(self, address: str) -> str:
        return NAME

    def _named(self, system: str) -> str:
        number = self.generations.get(system)
        return f"generation {number}" if number is not None else "a system of no known generation"

    async def probe(self, ctx: ProbeContext) -> Probe:
        try:
            result = await ctx.host.run(ARGV, self.budget(ctx.timeouts), 4096)
        except ctx.transient as exc:
            return Probe(NAME, False, from_host(str(exc)))
        booted = result.stdout.strip()
        if result.returncode != 0 or not booted.startswith("/nix/store/"):
            return Probe(NAME, False, f"/run/booted-system unreadable (exit {result.returncode})")
        number = self.generations.get(self.expected)
        expected = str(number) if number is not None else from_host(self.expected, 200)
        if booted != self.expected:
            shown = from_host(booted, 200)
            return Probe(
                NAME,
                False,
                f"{_WRONG}{self._named(booted)} ({shown}), expected {expected}",
            )
        return Probe(NAME, True, self._named(booted))


def is_wrong_generation(probe: Probe) -> bool:
    """A failed generation probe that read a booted system (not one that could not read)."""
    return probe.name == NAME and not probe.ok and probe.detail.startswith(_WRONG)
