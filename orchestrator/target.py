"""What the orchestrator asks of a NixOS machine's root helper (``nix/target-helper.sh``,
installed by ``nix/target.nix`` as ``lab-orchestrator-target`` with an exact sudo rule).

Each call is one command: ``HELPER VERB SYSTEM``, with SYSTEM one whole argv word that the
helper checks again (a ``nixos-system-*`` store path already in the system profile's history).
The helper answers ``key=value`` lines; exit 3 means the bootloader is neither systemd-boot
nor GRUB. Every call is idempotent on the machine, so a resume may repeat one safely:

- ``boot-once SYSTEM``: the next boot only boots SYSTEM; the default is the booted generation;
- ``make-default SYSTEM``: after the gate passed, SYSTEM's generation is the default;
- ``rollback SYSTEM``: a profile generation pointing at SYSTEM (none if the profile already
  does) and its ``switch-to-configuration boot``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from health_checks.text import from_host
from orchestrator import process
from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:
    from orchestrator.remote import Host

# switch-to-configuration boot installs the bootloader's entries: seconds, rarely a minute.
TIMEOUT = 180.0
MAX_OUTPUT = 8192
UNSUPPORTED_BOOTLOADER = 3


class HelperFailed(OrchestratorError):
    """The helper could not be run or said no; the message is one line, safe to log."""


class BootloaderUnsupported(Exception):
    """Neither systemd-boot nor GRUB: the machine boots its default, as without boot-once."""


async def _call(host: Host, helper: Sequence[str], verb: str, system: str) -> dict[str, str]:
    from orchestrator.remote import ProbeFailed

    argv = host.as_root([*helper, verb, system])
    try:
        result = await host.run(argv, TIMEOUT, MAX_OUTPUT)
    except ProbeFailed as exc:
        raise HelperFailed(f"`{process.display(argv)}`: {from_host(str(exc), 300)}") from None
    if result.returncode == UNSUPPORTED_BOOTLOADER and verb != "rollback":
        raise BootloaderUnsupported(from_host(process.last_line(result.stderr) or "", 300))
    if result.returncode != 0:
        said = process.last_line(result.stderr) or process.last_line(result.stdout)
        raise HelperFailed(
            f"`{process.display(argv)}` failed with exit code {result.returncode}"
            + (f": {from_host(said, 300)}" if said else "")
        )
    answer: dict[str, str] = {}
    for line in result.stdout.splitlines():
        key, equals, value = line.partition("=")
        if equals:
            answer[key.strip()] = value.strip()
    return answer


async def boot_once(host: Host, helper: Sequence[str], system: str) -> str:
    """Make SYSTEM the next boot's one-shot entry; returns the bootloader's name."""
    answer = await _call(host, helper, "boot-once", system)
    return from_host(answer.get("bootloader", "?"), 40)


async def make_default(host: Host, helper: Sequence[str], system: str) -> None:
    await _call(host, helper, "make-default", system)


async def rollback(host: Host, helper: Sequence[str], system: str) -> int | None:
    """Make SYSTEM the boot default again; returns the profile generation that now boots."""
    answer = await _call(host, helper, "rollback", system)
    generation = answer.get("generation", "")
    return int(generation) if generation.isdigit() and len(generation) < 10 else None
