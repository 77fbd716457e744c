"""The one sanitiser of host text (health_checks/text.py): nothing a host prints can steer a
terminal, forge a log line or grow a message without bound."""

from __future__ import annotations

import pytest

from health_checks.gate import GateRound, Probe
from health_checks.text import DEFAULT_LIMIT, from_host


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("running", "running"),
        ("\x1b[2J", "\\x1b[2J"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("running\n00:00:00 run 1: done FORGED", "running\\n00:00:00 run 1: done FORGED"),
        ("a\rb\tc\x00d\x7fe", "a\\rb\\tc\\x00d\\x7fe"),
        ("\x9b2J", "\\x9b2J"),  # C1 CSI
        ("abc\u202edcba", "abc\\u202edcba"),  # right-to-left override
        ("zero\u200bwidth\u2028line", "zero\\u200bwidth\\u2028line"),
        ("grüße ✓ 日本", "grüße ✓ 日本"),  # printable Unicode stays
        ("back\\slash", "back\\slash"),
    ],
)
def test_controls_are_escaped_visibly_and_printable_text_stays(raw, shown):
    assert from_host(raw) == shown


def test_no_control_or_format_character_survives_any_input():
    everything = "".join(chr(c) for c in range(0x3000)) + "\U000e0001\U0010fffd"
    out = from_host(everything, 10**6)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in out)
    assert "\u202e" not in out and "\u2066" not in out and "\u2028" not in out
    assert "\\x1b" in out and "\\u202e" in out


def test_long_text_is_capped_with_a_visible_count_of_what_was_left_out():
    out = from_host("x" * 10_000, 100)
    assert len(out) <= 100
    assert out.startswith("x" * 80)
    assert out.endswith(f"…[{10_000 - out.count('x')} more]")
    assert len(from_host("y" * 10**6)) <= DEFAULT_LIMIT


def test_an_escape_is_never_cut_in_half_and_the_limit_counts_escaped_text():
    out = from_host("\x1b" * 100, 50)
    assert len(out) <= 50
    body = out.split("…")[0]
    assert body == "\\x1b" * (len(body) // 4)


def test_sanitising_twice_changes_nothing():
    for raw in ("\x1b[2J" * 300, "ok", "a\nb", "\u202e" * 10):
        once = from_host(raw, 200)
        assert from_host(once, 200) == once


def test_every_probe_of_a_gate_round_is_sanitised_whatever_check_made_it():
    round_ = GateRound(
        (Probe("command \x1b]0;x\x07", False, "exit 1: \x1b[2Jgone\nforged line" + "z" * 5000),),
        None,
        None,
    )
    probe = round_.probes[0]
    assert "\x1b" not in probe.name + probe.detail and "\n" not in probe.detail
    assert probe.name == "command \\x1b]0;x\\x07"
    assert probe.detail.startswith("exit 1: \\x1b[2Jgone\\nforged line")
    assert len(probe.detail) <= 400
    assert "\x1b" not in str(round_.first_failure)
