"""The maintenance window's arithmetic: inside or not, when it opens next (across midnight
and a DST change), what a paused run says, and the config's one-line errors."""

from __future__ import annotations

import os
import time
from datetime import datetime
from datetime import time as clock
from pathlib import Path

import pytest

from orchestrator.config import parse_config
from orchestrator.errors import ConfigError
from orchestrator.window import Window, paused_line

NIGHT = Window(clock(1, 0), clock(5, 0))
ACROSS = Window(clock(22, 0), clock(2, 0))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone()


@pytest.fixture
def zone():
    """Run a test in a named zone (with DST), and restore ours afterwards."""
    before = os.environ.get("TZ")

    def use(name: str) -> None:
        os.environ["TZ"] = name
        time.tzset()

    yield use
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.mark.parametrize(
    ("moment", "inside"),
    [("00:59:59", False), ("01:00:00", True), ("04:59:59", True), ("05:00:00", False)],
)
def test_the_start_is_inside_and_the_end_is_not(zone, moment, inside):
    zone("UTC")
    assert NIGHT.contains(at(f"2026-12-02T{moment}")) is inside


@pytest.mark.parametrize(
    ("moment", "inside"),
    [("21:59", False), ("22:00", True), ("23:59", True), ("00:30", True), ("02:00", False)],
)
def test_a_window_whose_end_is_not_after_its_start_crosses_midnight(zone, moment, inside):
    zone("UTC")
    assert ACROSS.contains(at(f"2026-12-02T{moment}")) is inside


def test_the_next_start_is_today_while_ahead_else_tomorrow(zone):
    zone("UTC")
    assert NIGHT.next_start(at("2026-12-02T00:30")) == at("2026-12-02T01:00")
    assert NIGHT.next_start(at("2026-12-02T12:00")) == at("2026-12-03T01:00")
    assert paused_line(NIGHT, at("2026-12-02T12:00")) == "paused until 01:00 (next window)"


def test_the_next_start_is_on_the_wall_clock_across_a_dst_change(zone):
    zone("Europe/Oslo")  # summer time ends on 2026-10-25 at 03:00 (CEST → CET)
    start = NIGHT.next_start(at("2026-10-24T12:00"))
    assert start.strftime("%Y-%m-%d %H:%M") == "2026-10-25 01:00"
    assert start.utcoffset().total_seconds() == 2 * 3600  # still CEST at 01:00
    later = NIGHT.next_start(at("2026-10-25T12:00"))
    assert later.utcoffset().total_seconds() == 3600  # CET from then on


def test_a_clock_step_moves_the_answer_with_the_wall_clock_only(zone):
    """The decision is made from the wall clock when asked, never from a duration measured
    since: a step forward into the window opens it, a step back out of it closes it."""
    zone("UTC")
    before = at("2026-12-02T00:59:30")
    assert not NIGHT.contains(before)
    assert NIGHT.contains(at("2026-12-02T01:30:00"))  # NTP stepped the clock 30 min on
    assert not NIGHT.contains(at("2026-12-02T00:30:00"))  # ... or 30 min back


def load(text: str):
    return parse_config(Path("lab.yaml"), text + "\nmachines: {a: {host: a}}\n")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "window: {start: 22:30, end: '05:00'}",
            'lab.yaml: window.start: write the time in quotes, e.g. "22:30" (YAML reads 22:30 '
            "as a number)",
        ),
        ("window: {start: '1am', end: '05:00'}", "lab.yaml: window.start: '1am' is not a time"),
        (
            "window: {start: '01:00', end: '01:00'}",
            "lab.yaml: window: start and end are the same time: the window would be empty",
        ),
        (
            "window: {start: '01:00'}",
            "lab.yaml: window: end is missing: a window needs both start and end",
        ),
        ("window: {start: '01:00', end: '05:00', tz: UTC}", "lab.yaml: window.tz: unknown key"),
    ],
)
def test_a_bad_window_is_one_line_naming_the_key(text, message):
    with pytest.raises(ConfigError) as caught:
        load(text)
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_window_in_quotes_loads_with_seconds_if_given():
    window = load("window: {start: '22:00', end: '02:00:30'}").settings.window
    assert window.window == Window(clock(22, 0), clock(2, 0, 30))
    assert load("").settings.window.window is None
