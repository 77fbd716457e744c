"""What reaches a remote machine is exactly the argv, whatever its user's login shell.

`remote_command` sends plain words as they are and anything else as octal-encoded words that
POSIX sh decodes from a fixed script on stdin. Here the login shell is simulated the way sshd
runs it (`SHELL -c COMMAND`, the script on stdin) with every shell installed on this machine;
tests/test_netlab_login_shells.py does the same through real sshd."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from orchestrator.remote import READ_BOOT_ID, SYSTEM_STATE, encode_word, is_plain, remote_command
from tests.prereqs import missing

SAFE = re.compile(r"[A-Za-z0-9@+=:,./_ -]*")

NASTY = [
    "x\\",
    ";touch canary;#",
    "$(touch canary)",
    "`touch canary`",
    "'",
    '"',
    "a'b\"c\\'d",
    "two\nlines",
    "",
    "grüße ✓",
    "-leading-dash",
    "--",
    "=eq",
    "~",
    "*",
    "{a,b}",
    "%self",
    "a b\tc",
    "trailing newline\n\n",
    "\x1b[2J",
    "\\x41",
    "%s %d",
]

PRINT_ARGV = [sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))"]


def test_plain_probes_go_exactly_as_before():
    # orchestrator/demo/simlab.py and every sshd log read these strings.
    assert remote_command(READ_BOOT_ID) == ("cat /proc/sys/kernel/random/boot_id", None)
    assert remote_command(SYSTEM_STATE) == ("systemctl is-system-running", None)
    assert remote_command(["sudo", "-n", "systemctl", "reboot"])[1] is None
    assert remote_command(["systemctl", "is-active", "--quiet", "nginx.service"])[1] is None


@pytest.mark.parametrize("word", NASTY)
def test_any_word_makes_a_command_of_safe_words_only(word):
    command, script = remote_command(["systemctl", word])
    if script is None:  # a plain word (`--`, a leading `-`) goes as it is
        assert is_plain(["systemctl", word]) and command == f"systemctl {word}"
        return
    assert SAFE.fullmatch(command), command
    assert command.startswith("exec /bin/sh -s -- ")
    assert all(w.startswith("x") for w in command.split()[4:])


def test_first_word_rules_and_edge_cases():
    assert not is_plain(["FOO=bar", "x"])  # an assignment to sh
    assert not is_plain(["@", "x"])  # a tcsh builtin
    assert not is_plain(["-x"])
    assert is_plain(["ls", "-la", "a=b", "@x"])
    assert encode_word("") == "x"
    assert encode_word("A\n") == "x101012"
    with pytest.raises(ValueError):
        remote_command([])
    with pytest.raises(ValueError):
        remote_command(["echo", "nul\0byte"])


SHELLS = ["/bin/sh", "/bin/bash", "/usr/bin/zsh", "/usr/bin/fish", "/bin/dash"]


def need(shell: str) -> None:
    if shutil.which(shell):
        return
    missing(f"{shell} is not installed", "tests/netlab/install-prereqs.sh installs zsh, fish")


@pytest.mark.parametrize("shell", SHELLS)
def test_decoded_argv_is_exact_under_each_login_shell(shell, tmp_path):
    need(shell)
    argv = [*PRINT_ARGV, *NASTY]
    command, script = remote_command(argv)
    (tmp_path / "home").mkdir()
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [shell, "-c", command],
        input=script,
        capture_output=True,
        cwd=work,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home")},
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == NASTY
    assert list(work.iterdir()) == [], "a word was run by a shell"


@pytest.mark.parametrize("shell", SHELLS)
def test_exit_code_and_stdin_of_the_decoded_command(shell, tmp_path):
    need(shell)
    command, script = remote_command(["sh", "-c", "cat; exit 7", "x y"])
    result = subprocess.run(
        [shell, "-c", command],
        input=script,
        capture_output=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=30,
        check=False,
    )
    # The program's stdin is at end of file (nothing of the decoder is left for it).
    assert (result.returncode, result.stdout) == (7, b"")
