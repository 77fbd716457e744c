"""The Prometheus textfile (issue 9, item 3): the hook run on events built from a real store,
the file judged by the real `promtool check metrics` and by prometheus_client's own parser.

The store is driven through the same calls, in the same order, as the engine makes them, and
each event is built from ``report.summarize`` of what the store then holds, as the engine does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import metrics, report
from orchestrator.config import MetricsSettings
from orchestrator.hooks import EventKind, EventPoint, RunEvent
from orchestrator.states import RunKind
from orchestrator.store import STORE_FILE, Store, iso, now
from tests.conftest import orchestrator, write_config
from tests.prereqs import missing

CONFIG = Path("/etc/lab-orchestrator/config.yaml")
BOOT_ID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
NEW_BOOT_ID = "11111111-2222-3333-4444-555555555555"
P = "lab_orchestrator_"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- judging a file ---------------------------------------------------------------------------


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        missing("promtool is not installed", "Debian package prometheus")
    return found


def check_metrics(text: str) -> None:
    """`promtool check metrics`: parse errors and lint problems (help, names, counters) fail."""
    result = subprocess.run(
        [promtool(), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout + result.stderr, (
        f"promtool: {result.returncode}\n{result.stdout}{result.stderr}\n--- file ---\n{text}"
    )


def samples(text: str) -> Samples:
    parsed: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            parsed[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return parsed


def value(parsed: Samples, name: str, **labels: str) -> float:
    return parsed[(P + name, frozenset(labels.items()))]


def series(parsed: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (sample, labels) in parsed if sample == P + name]


def read_checked(path: Path) -> Samples:
    text = path.read_text()
    check_metrics(text)
    return samples(text)


# -- a run driven through the store, the engine's way -----------------------------------------


class Driver:
    """One run, moved through the store as the engine moves it, telling the metrics hook
    (through a real ``EventPoint``) after each step as the engine tells its hooks."""

    def __init__(self, store: Store, textfile: Path) -> None:
        self.store = store
        self.textfile = textfile
        [hook] = metrics.hooks(MetricsSettings(textfile=textfile), store)
        self.events = EventPoint([hook])
        self.run_id = 0

    async def emit(self, kind: EventKind, machine: str | None = None) -> Samples:
        summary = report.summarize(self.store.run(self.run_id))
        await self.events.emit(RunEvent(kind, summary, machine))
        return read_checked(self.textfile)

    async def start(self, kind: RunKind, machines: list[str]) -> Samples:
        run = self.store.create_run(kind, [(name, False) for name in machines], CONFIG)
        self.run_id = run.run_id
        return await self.emit(EventKind.RUN_STARTED)

    async def move(self, state: str, error: str | None = None) -> Samples:
        self.store.set_state(self.run_id, state, error=error)
        return await self.emit(EventKind.STATE_CHANGED)

    async def reboot(self, name: str, *, healthy: bool = True) -> Samples:
        await self.move(f"rebooting:{name}")
        self.store.record_reboot_intent(self.run_id, name, BOOT_ID, None)
        await self.emit(EventKind.MACHINE_REBOOTING, name)
        await self.move(f"verifying:{name}")
        if not healthy:
            return read_checked(self.textfile)
        self.store.record_healthy(
            self.run_id, name, boot_id_after=NEW_BOOT_ID, healthy_at=now(), probes=[]
        )
        await self.emit(EventKind.MACHINE_HEALTHY, name)
        return await self.move(f"settling:{name}")

    async def finish(self, state: str = "done", error: str | None = None) -> Samples:
        await self.move(state, error)
        return await self.emit(EventKind.RUN_FINISHED)

    async def nightly(self, machines: list[str]) -> Samples:
        await self.start(RunKind.NIGHTLY, machines)
        await self.move("updating")
        await self.move("deploying")
        for name in machines:
            await self.reboot(name)
        return await self.finish()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "state") as opened:
        yield opened


@pytest.fixture
def driver(store: Store, tmp_path: Path) -> Driver:
    textfile = tmp_path / "textfile" / "lab_orchestrator.prom"
    textfile.parent.mkdir()
    return Driver(store, textfile)


# -- values at each point of a run ------------------------------------------------------------


async def test_a_run_in_progress_says_so_and_has_no_outcome_yet(driver: Driver):
    started = await driver.start(RunKind.NIGHTLY, ["h1", "h2"])

    assert value(started, "run_in_progress") == 1
    assert series(started, "run_state_info") == [
        {"state": "preflight", "machine": "", "kind": "nightly"}
    ]
    run = driver.store.run(driver.run_id)
    assert value(started, "last_run_id") == run.run_id
    assert value(started, "last_run_start_timestamp_seconds") == pytest.approx(
        run.started_at.timestamp(), abs=0.001
    )
    for absent in (
        "last_run_success",
        "last_run_end_timestamp_seconds",
        "last_run_duration_seconds",
    ):
        assert series(started, absent) == [], absent
    # Every counter series exists from the first write on, at 0, so increase() sees the first.
    assert {(s["kind"], s["outcome"]) for s in series(started, "runs_total")} == {
        ("nightly", "done"),
        ("nightly", "aborted"),
        ("reboot", "done"),
        ("reboot", "aborted"),
    }
    assert sum(v for (name, _), v in started.items() if name == P + "runs_total") == 0
    assert value(started, "last_success_timestamp_seconds") == 0  # never: an age alert fires
    assert value(started, "machine_last_outcome", machine="h1", outcome="pending") == 1
    assert series(started, "machine_reboot_duration_seconds") == []

    await driver.move("updating")
    await driver.move("deploying")
    await driver.move("rebooting:h1")
    driver.store.record_reboot_intent(driver.run_id, "h1", BOOT_ID, None)
    verifying = await driver.move("verifying:h1")
    assert series(verifying, "run_state_info") == [
        {"state": "verifying", "machine": "h1", "kind": "nightly"}
    ]
    # one series per machine: the state moved on, the old outcome series is gone
    assert series(verifying, "machine_last_outcome") == [
        {"machine": "h1", "outcome": "verifying"},
        {"machine": "h2", "outcome": "pending"},
    ]


async def test_a_finished_run_has_its_outcome_and_each_reboot_its_duration(driver: Driver):
    done = await driver.nightly(["h1", "h2"])

    run = driver.store.run(driver.run_id)
    assert run.state == "done" and run.finished_at is not None
    assert value(done, "run_in_progress") == 0
    assert value(done, "last_run_success") == 1
    assert series(done, "run_state_info") == [{"state": "done", "machine": "", "kind": "nightly"}]
    assert value(done, "runs_total", kind="nightly", outcome="done") == 1
    assert value(done, "runs_total", kind="nightly", outcome="aborted") == 0
    end = run.finished_at.timestamp()
    assert value(done, "last_run_end_timestamp_seconds") == pytest.approx(end, abs=0.001)
    assert value(done, "last_success_timestamp_seconds") == pytest.approx(end, abs=0.001)
    assert value(done, "last_run_duration_seconds") == pytest.approx(
        (run.finished_at - run.started_at).total_seconds(), abs=0.001
    )
    for machine in run.machines:
        assert machine.reboot_requested_at is not None and machine.healthy_at is not None
        took = (machine.healthy_at - machine.reboot_requested_at).total_seconds()
        assert value(
            done, "machine_reboot_duration_seconds", machine=machine.name
        ) == pytest.approx(took, abs=0.001)
        assert value(
            done, "machine_last_healthy_timestamp_seconds", machine=machine.name
        ) == pytest.approx(machine.healthy_at.timestamp(), abs=0.001)
        assert value(done, "machine_last_outcome", machine=machine.name, outcome="healthy") == 1


async def test_an_aborted_run_names_the_failed_machine_and_keeps_the_last_success(
    driver: Driver,
):
    first = await driver.nightly(["h1", "h2"])
    earlier_success = value(first, "last_success_timestamp_seconds")
    h2_healthy = value(first, "machine_last_healthy_timestamp_seconds", machine="h2")

    await driver.start(RunKind.NIGHTLY, ["h1", "h2", "h3"])
    await driver.reboot("h1")
    await driver.reboot("h2", healthy=False)
    error = "h2 did not pass the health gate within 5s"
    driver.store.record_machine_error(driver.run_id, "h2", error)
    aborted = await driver.finish("aborted", error)

    assert value(aborted, "run_in_progress") == 0
    assert value(aborted, "last_run_success") == 0
    assert series(aborted, "run_state_info") == [
        {"state": "aborted", "machine": "", "kind": "nightly"}
    ]
    assert value(aborted, "runs_total", kind="nightly", outcome="done") == 1
    assert value(aborted, "runs_total", kind="nightly", outcome="aborted") == 1
    assert value(aborted, "last_success_timestamp_seconds") == earlier_success
    assert series(aborted, "machine_last_outcome") == [
        {"machine": "h1", "outcome": "healthy"},
        {"machine": "h2", "outcome": "failed"},
        {"machine": "h3", "outcome": "untouched"},
    ]
    # h2's last healthy reboot is still the first run's; h1's is this run's
    assert value(aborted, "machine_last_healthy_timestamp_seconds", machine="h2") == h2_healthy
    assert value(aborted, "machine_last_healthy_timestamp_seconds", machine="h1") > value(
        first, "machine_last_healthy_timestamp_seconds", machine="h1"
    )


async def test_machines_outside_the_latest_run_keep_their_outcome_from_the_run_they_were_in(
    driver: Driver,
):
    await driver.nightly(["h1", "h2"])
    await driver.start(RunKind.NIGHTLY, ["h1", "h2"])
    driver.store.record_machine_error(driver.run_id, "h1", "preflight failed")
    await driver.finish("aborted", "preflight failed")
    # `orchestrator reboot h2`: a run of h2 alone
    await driver.start(RunKind.REBOOT, ["h2"])
    rebooting = await driver.reboot("h2")

    assert series(rebooting, "run_state_info") == [
        {"state": "settling", "machine": "h2", "kind": "reboot"}
    ]
    assert series(rebooting, "machine_last_outcome") == [
        {"machine": "h1", "outcome": "failed"},  # from the aborted nightly run
        {"machine": "h2", "outcome": "settling"},
    ]
    done = await driver.finish()
    assert value(done, "runs_total", kind="reboot", outcome="done") == 1
    assert value(done, "runs_total", kind="nightly", outcome="aborted") == 1
    # A reboot of one machine is not a nightly run: the last success stays the first run's.
    first = driver.store.run(1).finished_at
    assert first is not None
    assert value(done, "last_success_timestamp_seconds") == pytest.approx(
        first.timestamp(), abs=0.001
    )


# -- the file itself ---------------------------------------------------------------------------


async def test_the_file_is_replaced_whole_with_mode_0644_under_umask_0077(driver: Driver):
    # The systemd units run with UMask=0077 and node_exporter as another user: a file made
    # with the umask's mode (0600) would be unreadable to it.
    driver.textfile.write_text("old\n")
    driver.textfile.chmod(0o600)
    before = os.stat(driver.textfile)
    old = os.open(driver.textfile, os.O_RDONLY)  # a reader in the middle of the old file
    try:
        previous = os.umask(0o077)
        try:
            await driver.start(RunKind.NIGHTLY, ["h1"])
        finally:
            os.umask(previous)
        assert os.read(old, 100) == b"old\n"  # untouched: a new file was renamed over it
    finally:
        os.close(old)
    after = os.stat(driver.textfile)
    assert stat.S_IMODE(after.st_mode) == 0o644
    assert after.st_ino != before.st_ino
    # No temporary file left beside it, and none the collector (*.prom) would read.
    assert os.listdir(driver.textfile.parent) == [driver.textfile.name]
    read_checked(driver.textfile)


async def test_a_file_that_cannot_be_written_is_a_warning_and_the_run_goes_on(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    missing = tmp_path / "no such directory" / "lab_orchestrator.prom"
    driver = Driver(store, missing)

    with caplog.at_level(logging.WARNING, logger="orchestrator"):
        run = store.create_run(RunKind.NIGHTLY, [("h1", False)], CONFIG)
        summary = report.summarize(run)
        await driver.events.emit(RunEvent(EventKind.RUN_STARTED, summary))

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("warning: hook metrics: "), warnings
    assert "No such file or directory" in warnings[0] and warnings[0].endswith("; ignored")
    assert not missing.parent.exists()


def test_no_textfile_configured_means_no_hook(store: Store):
    assert metrics.hooks(MetricsSettings(), store) == []


def test_only_the_waiting_event_leaves_the_file_alone(store: Store, tmp_path: Path):
    [hook] = metrics.hooks(MetricsSettings(textfile=tmp_path / "m.prom"), store)
    run = report.summarize(store.create_run(RunKind.NIGHTLY, [("h1", False)], CONFIG))
    wanted = {kind for kind in EventKind if hook.wants(RunEvent(kind, run))}
    assert wanted == set(EventKind) - {EventKind.MACHINE_WAITING}


# -- cost: history-wide values without a walk through the history ----------------------------


def test_a_write_costs_the_same_few_queries_with_a_thousand_runs_in_the_store(
    store: Store, tmp_path: Path
):
    statements: list[str] = []

    def queries(run: report.RunSummary) -> list[str]:
        statements.clear()
        store._db.set_trace_callback(statements.append)
        try:
            metrics.render(run, store)
        finally:
            store._db.set_trace_callback(None)
        return list(statements)

    first = store.create_run(RunKind.NIGHTLY, [("h1", False), ("h2", False)], CONFIG)
    few = queries(report.summarize(store.run(first.run_id)))

    _add_finished_runs(store.path, 1000)
    latest = store.create_run(RunKind.NIGHTLY, [("h1", False), ("h2", False)], CONFIG)
    many = queries(report.summarize(store.run(latest.run_id)))

    assert len(many) == len(few) <= 8, many
    rendered = metrics.render(report.summarize(store.run(latest.run_id)), store).decode()
    check_metrics(rendered)
    parsed = samples(rendered)
    assert value(parsed, "runs_total", kind="nightly", outcome="done") == 500
    assert value(parsed, "runs_total", kind="nightly", outcome="aborted") == 500


def _add_finished_runs(db: Path, count: int) -> None:
    """``count`` finished runs of h1 and h2 written straight into the store (one transaction,
    instead of thousands of fsynced ones), alternately done and aborted."""
    start = now() - timedelta(days=count)
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        for index in range(count):
            began = start + timedelta(days=index)
            state = "done" if index % 2 else "aborted"
            cursor = connection.execute(
                "INSERT INTO runs (kind, state, started_at, finished_at, config_path,"
                " end_reported_at) VALUES ('nightly', ?, ?, ?, ?, ?)",
                (state, iso(began), iso(began + timedelta(hours=1)), str(CONFIG), iso(began)),
            )
            for position, name in enumerate(("h1", "h2")):
                healthy = iso(began + timedelta(minutes=10 + position)) if state == "done" else None
                connection.execute(
                    "INSERT INTO machines (run_id, position, name, local, reboot_requested_at,"
                    " healthy_at) VALUES (?, ?, ?, 0, ?, ?)",
                    (cursor.lastrowid, position, name, iso(began), healthy),
                )


# -- the real program ---------------------------------------------------------------------------


def test_a_real_run_writes_the_configured_file(tmp_path: Path, make_lab):
    """`orchestrator run` against the simulated lab with `metrics.textfile` set: the wiring
    from the config to the file (engine.configured_hooks), in a real process."""
    lab = make_lab(["alpha", "bravo"])
    textfile = tmp_path / "lab_orchestrator.prom"
    config = write_config(
        tmp_path / "lab.yaml",
        lab.lab.config(tmp_path / "state", metrics={"textfile": str(textfile)}),
    )

    result = orchestrator(config, "run")

    assert result.returncode == 0, result.stderr
    # (The simulated hosts are not NixOS: that one warning each is not the metrics' doing.)
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert all("not NixOS" in line for line in warnings), result.stderr
    parsed = read_checked(textfile)
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o644
    assert value(parsed, "run_in_progress") == 0
    assert value(parsed, "last_run_success") == 1
    assert value(parsed, "runs_total", kind="nightly", outcome="done") == 1
    with Store.open(tmp_path / "state", create=False) as store:
        run = store.latest_run()
    assert run is not None
    for machine in run.machines:
        took = report.seconds_between(machine.reboot_requested_at, machine.healthy_at)
        assert took is not None
        assert value(
            parsed, "machine_reboot_duration_seconds", machine=machine.name
        ) == pytest.approx(took, abs=0.001)
    assert (tmp_path / "state" / STORE_FILE).exists()
