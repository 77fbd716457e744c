"""Waves (issue 11, item 3), the parts that need no hosts: how `max_unavailable` and `waves`
group the machines (the local one alone and last, a dependency never in its dependant's
wave), each broken rule one line naming the file and key, the state table over wave names,
and what `status` and systemd's status line say about a wave."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import timedelta

import pytest

from orchestrator import report, sdstatus
from orchestrator.errors import StoreError
from orchestrator.states import RunKind, Waves, machine_state, transition_table, work_states
from orchestrator.store import STORE_FILE, Store, now
from tests.unit.test_interlock_config import PATH, error, load


def machines(*names: str, local: str | None = None, **depends: list[str]) -> dict[str, object]:
    table: dict[str, object] = {
        name: {"host": f"{name}.local", "depends_on": depends.get(name.replace("-", "_"), [])}
        for name in names
    }
    if local:
        table[local] = {"local": True}
    return table


def test_one_machine_at_a_time_by_default_each_wave_named_by_its_machine():
    config = load({"machines": machines("a", "b", local="self")})
    assert config.waves.groups == (("a",), ("b",), ("self",))
    assert config.waves.names == ("a", "b", "self")
    assert not config.waves.grouped


def test_max_unavailable_groups_in_order_with_the_local_machine_alone_and_last():
    config = load({"max_unavailable": 2, "machines": machines("a", "b", "c", local="self")})
    assert config.waves.groups == (("a", "b"), ("c",), ("self",))
    assert config.waves.names == ("wave-1", "c", "self")
    assert config.waves.members("wave-1") == ("a", "b")
    assert config.waves.wave_of("b") == "wave-1" and config.waves.number_of("c") == 2


def test_a_machine_that_depends_on_one_of_the_wave_starts_the_next():
    raw = {"max_unavailable": 3, "machines": machines("a", "b", "c", "d", c=["a"])}
    assert load(raw).waves.groups == (("a", "b"), ("c", "d"))


def test_explicit_waves_set_the_order():
    raw = {"waves": [["c", "a"], ["b"]], "machines": machines("a", "b", "c")}
    config = load(raw)
    assert config.machine_order == ("c", "a", "b")
    assert config.waves.names == ("wave-1", "b")
    # `orchestrator reboot MACHINE` is a run of one, whatever the waves.
    assert config.run_waves(("a",)).groups == (("a",),)
    assert config.run_waves(config.machine_order) == config.waves


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"max_unavailable": 0}, "max_unavailable: input should be greater than or equal to 1"),
        ({"max_unavailable": True}, "max_unavailable: must be a whole number"),
        ({"max_unavailable": 2.5}, "max_unavailable: must be a whole number"),
        ({"waves": [["a"], []]}, "waves[1]: must not be empty"),
        ({"waves": [["a", "x"], ["b", "c"]]}, "waves[0]: 'x' is not a machine"),
        ({"waves": [["a", "b"], ["b", "c"]]}, "waves[1]: b is already in waves[0]"),
        ({"waves": [["a", "b"]]}, "waves: c is in no wave; list every machine once"),
        ({"waves": [["a"], ["b", "c"]], "max_unavailable": 2}, "max_unavailable: not with"),
        ({"waves": [["a"], ["b", "c"]], "order": ["a", "b", "c"]}, "order: not with `waves`"),
    ],
)
def test_bad_waves_are_one_line_naming_the_key(extra, problem):
    message = error({**extra, "machines": machines("a", "b", "c")})
    assert message.startswith(f"{PATH}: {problem}"), message


def test_a_dependency_in_the_same_explicit_wave_is_refused():
    raw = {"waves": [["a", "b"], ["c"]], "machines": machines("a", "b", "c", b=["a"])}
    assert error(raw) == (
        f"{PATH}: machines.b.depends_on: a is in the same wave (waves[0]); "
        "a dependency must be in an earlier wave"
    )


def test_the_local_machine_must_be_alone_in_the_last_wave():
    raw = {"waves": [["a"], ["b", "self"]], "machines": machines("a", "b", local="self")}
    assert error(raw) == (
        f"{PATH}: waves[1]: the local machine self reboots the orchestrator itself and must be "
        "alone in the last wave"
    )


def test_a_machine_named_like_a_wave_is_refused_only_when_waves_are_in_use():
    assert load({"machines": machines("wave-2", "b")}).waves.names == ("wave-2", "b")
    message = error({"max_unavailable": 2, "machines": machines("wave-2", "b")})
    assert message == (
        f"{PATH}: machines.wave-2: with waves of several machines, `wave-<number>` names a "
        "wave; rename the machine"
    )


def test_the_state_table_is_flat_over_wave_names():
    waves = Waves((("a", "b"), ("c",)))
    assert work_states(RunKind.NIGHTLY, waves.names) == [
        "preflight",
        "updating",
        "deploying",
        "rebooting:wave-1",
        "verifying:wave-1",
        "settling:wave-1",
        "rebooting:c",
        "verifying:c",
        "settling:c",
    ]
    rows = transition_table(RunKind.NIGHTLY, waves.names)
    assert {"trigger": "skip", "source": "rebooting:wave-1", "dest": "rebooting:c"} in rows
    # Every machine of a wave stands where its wave does.
    for state, a_and_b, c in [
        ("verifying:wave-1", "verifying", "pending"),
        ("rolling-back:wave-1", "rolling-back", "pending"),
        ("rebooting:c", "healthy", "rebooting"),
    ]:
        assert machine_state(state, RunKind.NIGHTLY, waves.names, waves.wave_of("a")) == a_and_b
        assert machine_state(state, RunKind.NIGHTLY, waves.names, waves.wave_of("b")) == a_and_b
        assert machine_state(state, RunKind.NIGHTLY, waves.names, waves.wave_of("c")) == c


def test_status_shows_the_wave_and_each_machine_in_it(tmp_path):
    waves = Waves((("a", "b", "c"), ("d",)))
    with Store.open(tmp_path) as store:
        run = store.create_run(
            RunKind.NIGHTLY, [(name, False) for name in "abcd"], PATH, waves=waves
        )
        assert run.waves == waves  # persisted, read back
        for name in "abc":
            store.record_reboot_intent(run.run_id, name, f"boot-{name}", None)
        store.set_state(run.run_id, "verifying:wave-1")
        store.record_healthy(run.run_id, "a", boot_id_after="new-a", healthy_at=now(), probes=[])
        probe = {"probe": "http http://b/health", "ok": False, "detail": "HTTP 503 (want 200)"}
        store.record_probes(run.run_id, "b", [probe])
        run = store.run(run.run_id)
    text = "\n".join(report.status_lines(run, now() - timedelta(seconds=5), width=200))
    assert "now: verifying wave-1 (a, b, c) since" in text
    assert "1 of 3 healthy; waiting: b: http http://b/health: HTTP 503 (want 200)" in text
    rows = {line.split()[0]: line.split()[1:3] for line in text.splitlines()[4:]}
    assert rows["a"] == ["1", "healthy"] and rows["b"] == ["1", "verifying"]
    assert rows["d"] == ["2", "pending"]
    data = report.status_json(run)
    assert data["waves"] == [["a", "b", "c"], ["d"]]
    assert [m["wave"] for m in data["machines"]] == [1, 1, 1, 2]


def test_the_status_line_names_the_wave_being_rebooted(tmp_path):
    waves = Waves((("a", "b"), ("c", "d"), ("e",)))
    with Store.open(tmp_path) as store:
        run = store.create_run(
            RunKind.NIGHTLY, [(name, False) for name in "abcde"], PATH, waves=waves
        )
        store.set_state(run.run_id, "rebooting:wave-2")
        summary = report.summarize(store.run(run.run_id))
    assert sdstatus.state_text(summary) == "rebooting wave-2 (2 of 3 waves, 2 machines)"


def test_a_machine_left_out_of_the_waves_of_its_run_is_one_store_error_line(tmp_path):
    with Store.open(tmp_path) as store:
        run = store.create_run(
            RunKind.NIGHTLY,
            [(name, False) for name in "abc"],
            PATH,
            waves=Waves((("a", "b"), ("c",))),
        )
    with contextlib.closing(sqlite3.connect(tmp_path / STORE_FILE)) as db, db:
        db.execute("UPDATE machines SET wave=NULL WHERE name='c'")
    with Store.open(tmp_path) as store, pytest.raises(StoreError) as caught:
        store.run(run.run_id)
    assert str(caught.value) == (
        f"state store {tmp_path / STORE_FILE}: run 1 has a malformed machines.wave (machine c "
        "has no wave); fix or delete that row, or move the store aside"
    )
