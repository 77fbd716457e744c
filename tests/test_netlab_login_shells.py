"""Issue 8, item 13: what a machine executes is exactly the configured argv, whatever root's
login shell is. Real OpenSSH sshd hosts (tests/netlab) whose root logs in with bash, zsh and
fish; sshd runs every command string through that shell, as on a real machine.

With `shlex.join` quoting, fish ran `touch` from the argv ["systemctl", "x\\", ";touch
canary;#"]: its single quotes honour `\\'`. Here the words arrive intact (a program on the host
prints its argv as JSON) and no canary file appears."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from orchestrator import keys, remote
from tests.fault_lab import boots, orchestrator, reboots_requested, write_config
from tests.netlab import Lab
from tests.prereqs import missing

pytestmark = pytest.mark.netlab

SHELLS = {"h1": "/bin/bash", "h2": "/usr/bin/zsh", "h3": "/usr/bin/fish"}
PRINT_ARGV = ["/usr/bin/python3", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))"]


def nasty_words(canary: Path) -> list[str]:
    return [
        "x\\",
        f";touch {canary};#",
        f"$(touch {canary})",
        f"`touch {canary}`",
        f"'; touch {canary}; '",
        f'"; touch {canary}; "',
        f"\\'; touch {canary} #",
        f"line one\ntouch {canary}",
        "",
        "grüße ✓ 日本",
        "-leading-dash",
        "--",
        "=zsh-equals",
        "~root",
        "*",
        "{a,b}",
        "%self",
        "$HOME",
        "\x1b[2J",
    ]


def shells_available() -> None:
    for shell in SHELLS.values():
        if not shutil.which(shell):
            missing(f"{shell} is not installed", "tests/netlab/install-prereqs.sh")


def ssh_host(lab: Lab, name: str) -> remote.SshHost:
    host = lab.hosts[name]
    endpoint = remote.SshEndpoint(
        name=name,
        host=host.address,
        port=22,
        user="root",
        client_key=keys.load_identity(lab.client_key_path, None),
        known_hosts=(lab.known_hosts_path,),
        connect_timeout=5,
    )
    known = remote.load_known_hosts(endpoint.known_hosts)
    return remote.SshHost(endpoint, known, ["systemctl", "reboot"])


def test_each_login_shell_really_is_the_one_sshd_uses(netlab):
    shells_available()
    lab = netlab(list(SHELLS), login_shells=SHELLS)

    async def shell_of(name: str) -> str:
        host = ssh_host(lab, name)
        try:
            # sshd sets SHELL to the passwd shell it runs the command string with.
            result = await host.run(["printenv", "SHELL"], 10)
        finally:
            await host.close()
        return result.stdout.strip()

    for name, shell in SHELLS.items():
        assert asyncio.run(shell_of(name)) == shell


def test_argv_arrives_word_for_word_under_bash_zsh_and_fish(netlab, tmp_path):
    shells_available()
    lab = netlab(list(SHELLS), login_shells=SHELLS)
    canary = tmp_path / "canary"  # hosts share the filesystem: a run `touch` would show here
    words = nasty_words(canary)

    async def argv_on(name: str, argv: list[str]) -> tuple[int, list[str], str]:
        host = ssh_host(lab, name)
        try:
            result = await host.run(argv, 20)
        finally:
            await host.close()
        return result.returncode, json.loads(result.stdout or "null"), result.stderr

    for name, shell in SHELLS.items():
        code, seen, err = asyncio.run(argv_on(name, [*PRINT_ARGV, *words]))
        assert code == 0, (shell, err)
        assert seen == words, shell
        # Each word alone as well: the exact argv, and single nasty words.
        for word in ("x\\", f";touch {canary};#", ""):
            code, seen, err = asyncio.run(argv_on(name, [*PRINT_ARGV, word]))
            assert (code, seen) == (0, [word]), (shell, word, err)
        code, _, err = asyncio.run(argv_on(name, ["systemctl", "x\\", f";touch {canary};#"]))
        assert code != 0  # the shim refuses the verb; nothing else ran
    assert not canary.exists(), "a word of the argv was run by a login shell"


def test_command_check_with_nasty_words_passes_on_a_fish_host_and_runs_nothing_else(
    netlab, tmp_path
):
    shells_available()
    lab = netlab(["h1"], login_shells={"h1": "/usr/bin/fish"}, boot_time=0.5)
    canary = tmp_path / "canary"
    ran = tmp_path / "ran"
    word = f"x\\';touch {canary};#"
    config = write_config(
        lab,
        tmp_path,
        machines={
            "h1": {
                "host": lab.hosts["h1"].address,
                "checks": [
                    {"type": "command", "command": ["touch", str(ran)]},
                    {"type": "command", "command": ["test", word, "=", word]},
                    {"type": "command", "command": ["test", "x\\", "=", "x\\"]},
                ],
            }
        },
    )

    result = orchestrator(config, "run", timeout=120)

    assert result.returncode == 0, result.stderr
    assert ran.exists(), "the command checks never ran on the host"
    assert not canary.exists(), "fish ran a word of a command check"
    assert reboots_requested(lab) == ["h1"]
    assert boots(lab) == {"h1": 1}


def test_login_shell_noise_on_stderr_does_not_spoil_a_boot_id_or_state(netlab):
    # A dotfile that warns on every login (zsh reads ~/.zshenv for every command): the boot
    # id read stops early only on *stdout* past its 64 bytes; stderr is just explanation.
    shells_available()
    lab = netlab(["h1"], login_shells={"h1": "/usr/bin/zsh"})
    noise = "warning: setlocale: LC_ALL: cannot change locale (en_US.UTF-8) " * 3
    (lab.hosts["h1"].dir / "home" / ".zshenv").write_text(f"print -u2 -r -- '{noise}'\n")

    async def probe() -> tuple[str | None, str]:
        host = ssh_host(lab, "h1")
        try:
            return await host.read_boot_id(10), await host.system_state(10)
        finally:
            await host.close()

    assert asyncio.run(probe()) == (lab.boot_id("h1"), "running")
