"""`process.display`: the command line logged for update, deploy and hooks pastes back into a
shell as the very argv that ran, on one line, without shlex.join's `'"'"'` noise.

Each check pastes the line into a real shell and compares what the command received.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.process import display

BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None, reason="needs bash")
# A locale in which bash's $'\u…' writes UTF-8, and no user startup files or history.
ENV = {**os.environ, "LC_ALL": "C.UTF-8", "HISTFILE": "/dev/null", "PS1": "$ "}

# Quotes, expansions, backslashes, spaces, the empty word, unicode: everything a POSIX shell
# (dash here) gives a meaning to, short of control characters.
TRICKY = [
    "it's",
    'say "hi"',
    'it\'s a "quote" and a `cmd` and $HOME and ${x}',
    "$HOME",
    "`id`",
    "$(id)",
    "a\\b",
    "ends in a backslash\\",
    "\\$HOME",
    "\\\\",
    "it's \\",
    "it's \\\"",
    "two words",
    "",
    "'",
    "''",
    '"',
    "!",
    "it's!",
    "héllo wörld ✓ 日本",
    "*",
    "?",
    "[a]",
    "~",
    "~/x",
    "#not a comment",
    "a;b",
    "a|b&c",
    "<in >out",
    "a=b",
    "-n",
    "--flag='value'",
    "%s",
]


def pasted(line: str, shell: list[str]) -> list[str]:
    """What ``printf`` received, one word per NUL, when ``line`` is pasted into ``shell``."""
    result = subprocess.run(
        shell,
        input=(line + "\n").encode(),
        capture_output=True,
        env=ENV,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    words = result.stdout.decode("utf-8", "surrogateescape").split("\0")
    assert words[-1] == "", result.stdout
    return words[:-1]


def printf_line(words: list[str]) -> str:
    return display(["printf", "%s\\0", *words])


def test_tricky_words_paste_back_into_sh_exactly():
    assert pasted(printf_line(TRICKY), ["sh", "-s"]) == TRICKY


@needs_bash
def test_tricky_words_paste_back_into_an_interactive_bash_exactly():
    # Interactive: history expansion is on, so "…!…" inside double quotes would fail here.
    assert pasted(printf_line(TRICKY), [BASH, "--norc", "--noprofile", "-i"]) == TRICKY


def test_a_single_quote_is_written_without_shlex_joins_noise():
    assert display(["sh", "-c", "echo 'hi' it's"]) == "sh -c \"echo 'hi' it's\""
    assert display(["x", "it's!"]) == "x 'it'\\''s!'"
    for word in TRICKY:
        assert "'\"'\"'" not in display(["x", word])


def test_plain_words_stay_plain_and_the_rest_is_quoted_lightly():
    assert display(["nix", "flake", "update", "--flake", "/etc/nixos#grey-area"]) == (
        "nix flake update --flake '/etc/nixos#grey-area'"
    )
    assert display(["deploy", "", "a b", "$HOME"]) == "deploy '' 'a b' '$HOME'"
    assert display(["x", "a\\nb's"]) == 'x "a\\nb\'s"'  # a backslash before n stays single


def test_an_assignment_or_a_reserved_word_as_the_command_is_quoted():
    # Unquoted, `a=b x` would run x with a=b in its environment, and `if` would be syntax.
    assert display(["a=b", "x"]) == "'a=b' x"
    assert display(["if", "x"]) == "'if' x"
    assert display(["x", "a=b", "if"]) == "x a=b if"


CONTROL = ["import sys\nsys.exit(3)", "tab\there", "cr\r", "\x1b[2J", "del\x7f", "c1\x9b"]
CONTROL += ["bidi\u202eevil", "zw\u200bj", "tag\U000e0001", 'it\'s\n$HOME \\ "q"', "\n"]


def test_control_characters_keep_the_line_one_line():
    line = printf_line(CONTROL)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert all(ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in line)
    assert "$'import sys\\nsys.exit(3)'" in line


@needs_bash
def test_control_characters_paste_back_into_bash_exactly():
    # $'…' is POSIX.1-2024; this machine's dash (0.5.12) predates it, bash has it.
    assert pasted(printf_line(CONTROL), [BASH, "--norc", "--noprofile", "-i"]) == CONTROL


def test_a_byte_that_was_not_utf8_is_that_byte_again():
    assert display(["cat", "caf\udce9"]) == "cat $'caf\\xe9'"


words = st.lists(
    st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=12),
    min_size=1,
    max_size=4,
)


@needs_bash
@settings(max_examples=150, deadline=None)
@given(words)
def test_any_argv_pastes_back_into_an_interactive_bash(argv: list[str]):
    line = printf_line(argv)
    assert "\n" not in line
    assert pasted(line, [BASH, "--norc", "--noprofile", "-i"]) == argv


@settings(max_examples=150, deadline=None)
@given(words.map(lambda argv: [w for w in argv if w.isprintable()] or [""]))
def test_any_printable_argv_pastes_back_into_sh(argv: list[str]):
    assert pasted(printf_line(argv), ["sh", "-s"]) == argv
