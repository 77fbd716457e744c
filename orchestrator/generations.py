"""What a NixOS machine is booted into, and what its next boot should be: generation facts.

One bounded command reads them (``read``): the constant POSIX sh ``SCRIPT``, run as
``sh -c SCRIPT`` through ``Host.run`` like every other command on a machine (over SSH, or on
the controller for the ``local: true`` machine). Nothing from the config or from a host is
ever put into the script. It prints ``key=value`` lines:

- ``booted``: ``readlink -e /run/booted-system`` — the system this boot runs;
- ``current``: ``readlink -e /run/current-system`` — what was last activated (``switch``);
- ``profile`` and ``profile_link``: the system profile's store path and the link it points
  to, ``system-N-link``, whose N is the profile's generation — what the next boot boots;
- ``booted.kernel`` / ``booted.initrd`` / ``booted.kernel-modules`` / ``booted.systemd`` and
  the same of ``profile.``: each resolved to its store path;
- ``booted_generation``: the highest profile generation (searched from the profile's own
  downwards, at most ``SEARCH_DEPTH`` of them) whose link resolves to the booted system.
  Several generations can name one system (a rollback makes a new one pointing at an old
  system); the newest is the one a boot menu would show first, so it is the one reported.

``readlink -e`` and never ``-f``: on a machine without ``/run/booted-system`` GNU
``readlink -f`` prints the path and exits 0 (only the last component may be missing).

Parsing is strict: every value must be a store path (``/nix/store/<32 base-32 chars>-name``,
optionally a path inside it) or a generation number of ``system-N-link``; anything else makes
the facts unreadable (``FactsUnreadable``, its reason escaped by ``from_host``), never half
believed. A machine without ``/run/booted-system`` or without a system profile is not NixOS
(``NotNixos``): the run goes on for it exactly as without these facts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from health_checks.text import from_host

if TYPE_CHECKING:
    # Not at run time: the store (and so `orchestrator status`, which must start fast)
    # imports this module for the dataclasses, and remote.py imports asyncssh.
    from orchestrator.remote import Host

BOOTED_SYSTEM = "/run/booted-system"
SYSTEM_PROFILE = "/nix/var/nix/profiles/system"
# A few hundred bytes on a real machine (ten store paths); more is not an answer of ours.
MAX_OUTPUT = 8192
# How many profile generations below the profile's own are compared with the booted system:
# enough for any lab that collects garbage now and then, and a bound on the work (each one
# that exists costs one readlink).
SEARCH_DEPTH = 1000
FORMAT = "1"

SCRIPT = f"""\
p={SYSTEM_PROFILE}
echo format={FORMAT}
show() {{ v=$(readlink -e "$2") && printf '%s=%s\\n' "$1" "$v"; }}
b=$(readlink -e {BOOTED_SYSTEM}) && printf 'booted=%s\\n' "$b" || b=
show current /run/current-system
show profile "$p"
l=$(readlink "$p") && printf 'profile_link=%s\\n' "$l" || l=
for f in kernel initrd kernel-modules systemd; do
    show "booted.$f" "{BOOTED_SYSTEM}/$f"
    show "profile.$f" "$p/$f"
done
n=${{l##*/}}
n=${{n#system-}}
n=${{n%-link}}
case $n in ''|0*|*[!0-9]*|??????????*) n= ;; esac
if [ -n "$b" ] && [ -n "$n" ]; then
    i=$n
    stop=$((n > {SEARCH_DEPTH} ? n - {SEARCH_DEPTH} : 0))
    while [ "$i" -gt "$stop" ]; do
        if [ -L "$p-$i-link" ] && [ "$(readlink -e "$p-$i-link")" = "$b" ]; then
            printf 'booted_generation=%s\\n' "$i"
            break
        fi
        i=$((i - 1))
    done
fi
echo end=1
"""
ARGV = ("sh", "-c", SCRIPT)

_PARTS = ("kernel", "initrd", "kernel-modules", "systemd")
_KEYS = frozenset(
    {"format", "booted", "current", "profile", "profile_link", "booted_generation", "end"}
    | {f"{side}.{part}" for side in ("booted", "profile") for part in _PARTS}
)
# Nix's base-32 alphabet (no e, o, t, u) and its store path name characters; a path inside a
# store object is a few more names, never `.` or `..`.
_STORE_NAME = r"[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]*"
_STORE_PATH = re.compile(
    rf"/nix/store/[0-9a-df-np-sv-z]{{32}}-(?P<name>{_STORE_NAME})(?:/[A-Za-z0-9+._?=-]+)*"
)
_PROFILE_LINK = re.compile(r"(?:/nix/var/nix/profiles/)?system-(?P<n>[1-9][0-9]{0,8})-link")
_GENERATION = re.compile(r"[1-9][0-9]{0,8}")
_MAX_PATH = 1024


class FactsUnreadable(Exception):
    """The facts could not be read or made no sense; the message is safe to log."""


@dataclass(frozen=True)
class NotNixos:
    """The machine has no NixOS system to speak of; ``reason`` says what is missing."""

    reason: str


@dataclass(frozen=True)
class SystemParts:
    """A NixOS system (a store path) and the boot parts it names (None: it names none)."""

    system: str
    kernel: str | None = None
    initrd: str | None = None
    kernel_modules: str | None = None
    systemd: str | None = None

    def part(self, name: str) -> str | None:
        """A part by its name in the system (``kernel-modules``) and in ``reboot.if_changed``."""
        value: str | None = getattr(self, name.replace("-", "_"))
        return value


@dataclass(frozen=True)
class GenerationFacts:
    booted: SystemParts  # what this boot runs
    current: str | None  # what was last activated (differs from booted after a `switch`)
    profile: SystemParts  # what the next boot boots, unless told otherwise
    profile_generation: int
    booted_generation: int | None  # None: no profile generation names the booted system

    @property
    def reboot_changes_system(self) -> bool:
        return self.booted.system != self.profile.system

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: object) -> GenerationFacts:
        """The stored form back, checked as strictly as the host's answer (ValueError)."""
        if not isinstance(data, dict):
            raise ValueError("not an object")
        current = data.get("current")
        booted_generation = data.get("booted_generation")
        return cls(
            booted=_parts_from_json(data.get("booted")),
            current=None if current is None else store_path(current),
            profile=_parts_from_json(data.get("profile")),
            profile_generation=_generation_from_json(data.get("profile_generation")),
            booted_generation=None
            if booted_generation is None
            else _generation_from_json(booted_generation),
        )


def _parts_from_json(data: object) -> SystemParts:
    # `systemd` was added later: a stored fact without it is read as not known.
    if not isinstance(data, dict) or not (
        {"system", "kernel", "initrd", "kernel_modules"} <= set(data) <= set(_PART_FIELDS)
    ):
        raise ValueError("not a system with its kernel, initrd and kernel_modules")
    parts = {
        key: None if data.get(key) is None else store_path(data[key])
        for key in _PART_FIELDS
        if key != "system"
    }
    return SystemParts(store_path(data["system"]), **parts)


_PART_FIELDS = ("system", "kernel", "initrd", "kernel_modules", "systemd")


def _generation_from_json(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"not a generation number: {value!r}")
    return value


def store_path(value: object) -> str:
    """``value`` if it is a Nix store path (or a path inside one), else ValueError."""
    if not isinstance(value, str) or len(value) > _MAX_PATH:
        raise ValueError("not a store path")
    match = _STORE_PATH.fullmatch(value)
    if match is None or any(part in (".", "..") for part in value.split("/")):
        raise ValueError(f"not a store path: {from_host(value, 100)}")
    return value


def store_name(path: str | None) -> str | None:
    """The name of the store object a path is in, without its hash: ``linux-6.12.3`` for
    ``/nix/store/<hash>-linux-6.12.3/bzImage``. None for None or a path outside the store."""
    if path is None:
        return None
    match = _STORE_PATH.fullmatch(path)
    return match.group("name") if match else None


def parse(stdout: str) -> GenerationFacts | NotNixos:
    """The script's output, judged strictly (``FactsUnreadable`` for anything off)."""
    values: dict[str, str] = {}
    for line in stdout.splitlines():
        key, equals, value = line.partition("=")
        if not equals or key not in _KEYS:
            raise FactsUnreadable(f"unexpected line in the answer: {from_host(line, 120)}")
        if key in values:
            raise FactsUnreadable(f"{from_host(key, 40)} given twice")
        values[key] = value
    if values.get("format") != FORMAT or values.get("end") != "1":
        # No header: not our script's answer; no trailer: cut short. Neither is believed.
        raise FactsUnreadable("incomplete answer (no format or end line)")
    if "booted" not in values:
        return NotNixos(f"no {BOOTED_SYSTEM}")
    if "profile" not in values or "profile_link" not in values:
        return NotNixos(f"no {SYSTEM_PROFILE}")
    link = _PROFILE_LINK.fullmatch(values["profile_link"])
    if link is None:
        shown = from_host(values["profile_link"], 120)
        raise FactsUnreadable(f"{SYSTEM_PROFILE} points to {shown}, not system-N-link")
    booted_generation = values.get("booted_generation")
    if booted_generation is not None and not _GENERATION.fullmatch(booted_generation):
        raise FactsUnreadable(f"bad booted generation {from_host(booted_generation, 40)}")
    try:
        current = values.get("current")
        return GenerationFacts(
            booted=_parts(values, "booted"),
            current=None if current is None else store_path(current),
            profile=_parts(values, "profile"),
            profile_generation=int(link.group("n")),
            booted_generation=None if booted_generation is None else int(booted_generation),
        )
    except ValueError as exc:
        raise FactsUnreadable(str(exc)) from None


def _parts(values: dict[str, str], side: str) -> SystemParts:
    def part(name: str) -> str | None:
        value = values.get(f"{side}.{name}")
        return None if value is None else store_path(value)

    return SystemParts(
        system=store_path(values[side]),
        kernel=part("kernel"),
        initrd=part("initrd"),
        kernel_modules=part("kernel-modules"),
        systemd=part("systemd"),
    )


async def read(host: Host, timeout: float) -> GenerationFacts | NotNixos:
    """The machine's generation facts, in one command bounded by ``timeout``.

    Raises ``FactsUnreadable`` (one line, safe to log) when the command fails, cannot be
    sent, or answers anything but the script's well-formed output; ``HostKeyChanged`` passes
    through, as from every command."""
    from orchestrator import process
    from orchestrator.remote import ProbeFailed

    try:
        result = await host.run(ARGV, timeout, MAX_OUTPUT, stop_at_cap=True)
    except ProbeFailed as exc:
        # The error names the command as remote.py shows it: the whole script, which says
        # nothing the reader needs. Named by what it is instead.
        shown = from_host(process.display(ARGV), 200)
        raise FactsUnreadable(from_host(str(exc).replace(shown, "the facts script"), 300)) from None
    if result.returncode != 0:
        said = result.stderr.strip().splitlines()[-1:] or [""]
        raise FactsUnreadable(
            f"exit {result.returncode}" + (f": {from_host(said[0], 200)}" if said[0] else "")
        )
    return parse(result.stdout)


# -- does the machine need its reboot? --------------------------------------------------------

_PART_WORDS = {
    "kernel": "kernel",
    "initrd": "initrd",
    "kernel-modules": "modules",
    "systemd": "systemd",
}
_PACKAGE_PREFIXES = {"kernel": "linux-", "systemd": "systemd-"}


@dataclass(frozen=True)
class RebootNeed:
    """Whether a reboot boots anything new, and the reason in words for ``status``."""

    needed: bool
    reason: str


def _version(part: str, path: str | None) -> str:
    name = store_name(path) or "?"
    return name.removeprefix(_PACKAGE_PREFIXES.get(part, "\0"))


def reboot_need(facts: GenerationFacts, parts: Sequence[str]) -> RebootNeed:
    """NixOS autoUpgrade's rule over ``parts`` (``reboot.if_changed``): a reboot is needed
    when one of them differs between the booted system and the profile.

    The reason names each change as old → new store names (``kernel: linux-6.12.1 →
    linux-6.12.3``), or what the booted system already runs (``booted system already runs
    kernel 6.12.3, initrd and modules of generation 143``)."""
    changes = [
        f"{part}: {store_name(before) or 'none'} → {store_name(after) or 'none'}"
        for part in parts
        if (before := facts.booted.part(part)) != (after := facts.profile.part(part))
    ]
    if changes:
        return RebootNeed(True, "; ".join(changes))
    words = [
        f"{_PART_WORDS[part]} {_version(part, facts.booted.part(part))}"
        if part in _PACKAGE_PREFIXES
        else _PART_WORDS[part]
        for part in parts
    ]
    listed = words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"
    return RebootNeed(
        False, f"booted system already runs {listed} of generation {facts.profile_generation}"
    )
