"""Generation facts (issue 10, item 1): the script's answer is parsed strictly — a NixOS
machine's facts, "not NixOS" for a machine without them, and anything hostile or malformed
rejected with an escaped reason — and the script itself, run by sh against a fake root, says
what a NixOS machine and a plain Linux machine really have."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from orchestrator import generations
from orchestrator.generations import (
    FactsUnreadable,
    GenerationFacts,
    NotNixos,
    SystemParts,
    parse,
    store_name,
)
from orchestrator.remote import LocalHost

H = "0123456789abcdfghijklmnpqrsvwxyz"  # 32 characters of Nix's base-32 alphabet
OLD = f"/nix/store/{H}-nixos-system-grey-area-25.05.142"
NEW = f"/nix/store/{H[::-1]}-nixos-system-grey-area-25.05.143"
KERNEL_OLD = f"/nix/store/{H}-linux-6.12.1/bzImage"
KERNEL_NEW = f"/nix/store/{H[::-1]}-linux-6.12.3/bzImage"
INITRD = f"/nix/store/{H}-initrd-linux-6.12.1/initrd"
MODULES = f"/nix/store/{H}-linux-6.12.1-modules"


def answer(**lines: str) -> str:
    """The script's output: ``format=1``, the given keys (``_`` for ``.`` and ``-``), end."""
    body = "".join(
        f"{key.replace('__', '.').replace('_m', '-m')}={value}\n" for key, value in lines.items()
    )
    return f"format=1\n{body}end=1\n"


NIXOS = answer(
    booted=OLD,
    current=OLD,
    profile=NEW,
    profile_link="system-143-link",
    booted__kernel=KERNEL_OLD,
    profile__kernel=KERNEL_NEW,
    booted__initrd=INITRD,
    booted__kernel_modules=MODULES,
    booted_generation="142",
)


def test_a_nixos_answer_gives_every_fact():
    facts = parse(NIXOS)
    assert facts == GenerationFacts(
        booted=SystemParts(OLD, KERNEL_OLD, INITRD, MODULES),
        current=OLD,
        profile=SystemParts(NEW, KERNEL_NEW, None, None),
        profile_generation=143,
        booted_generation=142,
    )
    assert isinstance(facts, GenerationFacts) and facts.reboot_changes_system
    assert GenerationFacts.from_json(facts.as_json()) == facts


def test_an_absolute_profile_link_and_an_unknown_booted_generation_are_fine():
    text = answer(booted=OLD, profile=NEW, profile_link="/nix/var/nix/profiles/system-7-link")
    facts = parse(text)
    assert isinstance(facts, GenerationFacts)
    assert (facts.profile_generation, facts.booted_generation, facts.current) == (7, None, None)


def test_missing_paths_mean_not_nixos():
    assert parse("format=1\nend=1\n") == NotNixos("no /run/booted-system")
    assert parse(answer(booted=OLD)) == NotNixos("no /nix/var/nix/profiles/system")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "incomplete answer"),
        (NIXOS.removesuffix("end=1\n"), "incomplete answer"),  # cut short
        ("format=2\nend=1\n", "incomplete answer"),
        ("Welcome to grey-area!\n" + NIXOS, "unexpected line"),  # login-shell noise
        (NIXOS + "booted=" + OLD + "\n", "given twice"),
        (answer(booted=OLD, profile=NEW, profile_link="system-0143-link"), "not system-N-link"),
        (answer(booted=OLD, profile=NEW, profile_link="system-x-link"), "not system-N-link"),
        (answer(booted=OLD, profile=NEW, profile_link="../../etc-1-link"), "not system-N-link"),
        (answer(booted=OLD, profile=NEW, profile_link="system-1234567890-link"), "system-N"),
        (answer(booted="/etc", profile=NEW, profile_link="system-1-link"), "not a store path"),
        (
            answer(booted=f"/nix/store/{H[:31]}-short", profile=NEW, profile_link="system-1-link"),
            "not a store path",
        ),
        (
            answer(booted=f"/nix/store/{H}-x/../../etc", profile=NEW, profile_link="system-1-link"),
            "not a store path",
        ),
        (
            answer(booted=OLD, profile=NEW, profile_link="system-1-link", booted_generation="1e3"),
            "bad booted generation",
        ),
    ],
)
def test_malformed_answers_are_rejected(text: str, reason: str):
    with pytest.raises(FactsUnreadable, match=reason):
        parse(text)


def test_hostile_text_in_an_answer_is_rejected_and_escaped_in_the_reason():
    hostile = "/nix/store/\x1b[2J\x1b]0;owned\x07\u202e"
    with pytest.raises(FactsUnreadable) as raised:
        parse(answer(booted=hostile, profile=NEW, profile_link="system-1-link"))
    reason = str(raised.value)
    assert "\x1b" not in reason and "\x07" not in reason and "\u202e" not in reason
    assert "\\x1b[2J" in reason and "\\u202e" in reason
    with pytest.raises(FactsUnreadable) as raised:
        parse("format=1\n\x1b]0;title\x07=x\nend=1\n")
    assert "\x1b" not in str(raised.value) and "\\x1b" in str(raised.value)


def test_stored_facts_are_checked_like_the_hosts_answer():
    good = parse(NIXOS)
    assert isinstance(good, GenerationFacts)
    data = good.as_json()
    for broken in (
        {**data, "profile_generation": 0},
        {**data, "booted_generation": "142"},
        {**data, "current": "/etc/passwd"},
        {**data, "booted": {**data["booted"], "kernel": "/boot/vmlinuz"}},
        {**data, "profile": {"system": NEW}},
        [data],
    ):
        with pytest.raises(ValueError):
            GenerationFacts.from_json(broken)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        (KERNEL_NEW, "linux-6.12.3"),
        (KERNEL_OLD, "linux-6.12.1"),
        (MODULES, "linux-6.12.1-modules"),
        (INITRD, "initrd-linux-6.12.1"),
        (NEW, "nixos-system-grey-area-25.05.143"),
        ("/boot/vmlinuz", None),
        (f"/nix/store/{H[:31]}-linux-6.12.3", None),
        (None, None),
    ],
)
def test_store_name_is_the_name_without_the_hash(path: str | None, name: str | None):
    assert store_name(path) == name


# -- the script itself, by sh, against a fake root ---------------------------------------------


def fake_nixos(root: Path, booted_generation: int, profile_generation: int) -> dict[int, str]:
    """Under ``root``: a store with one system per generation, the profile at
    ``profile_generation`` and /run/booted-system at ``booted_generation``."""
    systems = {}
    profiles = root / "nix/var/nix/profiles"
    profiles.mkdir(parents=True)
    (root / "run").mkdir()
    for n in range(1, profile_generation + 1):
        kernel = root / f"nix/store/{H[n:] + H[:n]}-linux-6.12.{n}"
        kernel.mkdir(parents=True)
        (kernel / "bzImage").write_text("")
        system = root / f"nix/store/{H[:n] + H[n:][::-1]}-nixos-system-h-25.05.{n}"
        system.mkdir(parents=True)
        (system / "kernel").symlink_to(kernel / "bzImage")
        (profiles / f"system-{n}-link").symlink_to(system)
        systems[n] = str(system)
    (profiles / "system").symlink_to(f"system-{profile_generation}-link")
    (root / "run/booted-system").symlink_to(systems[booted_generation])
    return systems


def run_script(root: Path) -> subprocess.CompletedProcess[str]:
    """The script with its absolute paths moved under ``root`` (the only change made)."""
    script = generations.SCRIPT
    for path in (generations.SYSTEM_PROFILE, generations.BOOTED_SYSTEM, "/run/current-system"):
        script = script.replace(path, f"{root}{path}")
    return subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )


def test_the_script_reads_a_nixos_machine(tmp_path: Path):
    systems = fake_nixos(tmp_path, booted_generation=2, profile_generation=4)
    result = run_script(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert lines["booted"] == systems[2] and lines["profile"] == systems[4]
    assert lines["profile_link"] == "system-4-link" and lines["booted_generation"] == "2"
    assert lines["booted.kernel"].endswith("-linux-6.12.2/bzImage")
    assert lines["profile.kernel"].endswith("-linux-6.12.4/bzImage")
    assert "current" not in lines and "booted.initrd" not in lines  # absent, not guessed
    assert result.stdout.startswith("format=1\n") and result.stdout.endswith("end=1\n")


def test_the_script_finds_the_newest_generation_of_the_booted_system(tmp_path: Path):
    systems = fake_nixos(tmp_path, booted_generation=1, profile_generation=3)
    profiles = tmp_path / "nix/var/nix/profiles"
    # A rollback: generation 4 names generation 1's system again.
    (profiles / "system-4-link").symlink_to(systems[1])
    (profiles / "system").unlink()
    (profiles / "system").symlink_to("system-4-link")
    result = run_script(tmp_path)
    assert "booted_generation=4\n" in result.stdout


def test_the_script_on_a_machine_without_nixos(tmp_path: Path):
    result = run_script(tmp_path)  # nothing under the root: no booted system, no profile
    assert (result.returncode, result.stdout) == (0, "format=1\nend=1\n")
    assert parse(result.stdout) == NotNixos("no /run/booted-system")


def test_read_through_a_local_host_on_this_machine():
    host = LocalHost("self", Path("/proc/sys/kernel/random/boot_id"), ["true"], ["true"])
    facts = asyncio.run(generations.read(host, 10.0))
    if os.path.lexists("/run/booted-system"):  # a NixOS machine: its own booted system
        assert isinstance(facts, GenerationFacts)
        assert facts.booted.system == os.path.realpath("/run/booted-system")
    else:
        assert facts == NotNixos("no /run/booted-system")
