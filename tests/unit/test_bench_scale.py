"""The scale bench's pure helpers (bench/scale.py): cases, config overrides, the history copy."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench import scale
from orchestrator.states import RunKind
from orchestrator.store import Store


def test_names_sort_in_reboot_order() -> None:
    assert scale.names(3) == ["m001", "m002", "m003"]
    many = scale.names(1000)
    assert many == sorted(many) and len(set(many)) == 1000


def test_cases_default_waves_and_caps() -> None:
    got = scale.cases([4, 500], None, [True, False])
    assert [(c.machines, c.wave_size, c.interlock) for c in got] == [
        (4, 1, True),
        (4, 1, False),
        (500, 25, True),
        (500, 25, False),
    ]
    # A wave larger than the fleet is the whole fleet, once.
    assert [(c.machines, c.wave_size) for c in scale.cases([4], [1, 25, 50], [True])] == [
        (4, 1),
        (4, 4),
    ]
    # Waves of 1 only up to one_by_one_max machines: 500 one at a time takes too long.
    listed = scale.cases([40, 500], [1, 25], [True], one_by_one_max=40)
    assert [(c.machines, c.wave_size) for c in listed] == [(40, 1), (40, 25), (500, 25)]


def test_overrides_leave_the_wave_key_out_for_one_at_a_time() -> None:
    one = scale.overrides(
        scale.Case(4, 1, False), poll_interval=0.25, stable_passes=2, connect_timeout=5.0
    )
    assert scale.WAVE_KEY not in one
    assert one["interlock"] == {"enabled": False} and one["preflight"] is True
    waves = scale.overrides(
        scale.Case(100, 25, True), poll_interval=0.25, stable_passes=2, connect_timeout=5.0
    )
    assert waves[scale.WAVE_KEY] == 25


def test_marginal_and_wrong_reboots() -> None:
    marginal = scale.marginal_ms({4: 1.0, 40: 1.36, 100: 1.96})
    assert sorted(marginal) == [40, 100]
    assert all(abs(ms - 10.0) < 1e-6 for ms in marginal.values())
    assert scale.marginal_ms({}) == {}
    assert scale.wrong_reboots({"a": 1, "b": 0, "c": 2}) == {"b": 0, "c": 2}
    assert scale.shifted(None, 3) is None
    assert scale.shifted("2026-01-10T00:00:00+00:00", 3) == "2026-01-07T00:00:00+00:00"


def test_add_history_keeps_the_latest_run_latest(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        made = store.create_run(RunKind.NIGHTLY, [("a", False), ("b", False)], tmp_path / "c")
        run_id = made if isinstance(made, int) else made.run_id
        store.set_state(run_id, "done")
    scale.add_history(tmp_path / "state.db", 5)
    with Store.open(tmp_path, create=False) as store:
        runs = store.runs(limit=100)
        assert len(runs) == 6
        assert runs[0].state == "done" and runs[0].run_id == 6
        assert all(r.machine_names == runs[0].machine_names for r in runs)
        assert runs[1].started_at < runs[0].started_at
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT seq FROM sqlite_sequence WHERE name='runs'").fetchone()[0] == 6


def test_tidy_profile_keeps_one_header_and_the_rows() -> None:
    header = "   ncalls  tottime  percall  cumtime  percall filename:lineno(function)"
    lines = [
        "Thu Dec  3 00:00:00 2026    run.prof",
        header,
        "      500    0.003    7.235    0.014 remote.py:242(load_known_hosts)",
        "    12096   16.824    16.824    0.001 {method 'poll' of 'select.epoll' objects}",
        "",
        "Thu Dec  3 00:00:00 2026    run.prof",
        "   List reduced from 6042 to 1 due to restriction <'_interlock'>",
        header,
        "       20    0.001    0.781    0.039 engine.py:671(_interlock)",
    ]
    assert scale.tidy_profile(lines) == [lines[0], *lines[1:4], lines[8]]
