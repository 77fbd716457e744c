"""Prometheus textfile metrics (issue 9): one file for node_exporter's textfile collector.

The file is rewritten whole at the start of a run (or resume), at every state change and
machine event, and at the end, so it always describes the run as the store last saw it, also
after the process was killed. The latest run's facts come from the event's summary; the
history-wide ones (runs by outcome, each machine's last healthy reboot and last outcome) from
a few aggregate queries on the store. Writing it never affects the run: an exception here is
one warning in the log (``EventPoint``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator import report
from orchestrator.config import MetricsSettings
from orchestrator.hooks import EventKind, Hook, RunEvent
from orchestrator.report import RunSummary
from orchestrator.states import FINAL_STATES, Phase, RunKind, StateName
from orchestrator.store import Store, parse_iso

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

PREFIX = "lab_orchestrator"
FILE_MODE = 0o644  # node_exporter runs as its own user
WRITE_TIMEOUT = 10.0


def _seconds(moment: datetime | None) -> float:
    """A Unix timestamp; 0 for "never", so ``time() - metric`` is huge and an alert on age
    fires without needing ``absent()``."""
    return moment.timestamp() if moment is not None else 0.0


def _families(summary: RunSummary, store: Store) -> Iterator[Metric]:
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

    def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))

    finished = summary.state in FINAL_STATES

    # -- the latest run: the one this event is about ---------------------------------------
    family = gauge("last_run_id", "Id of the latest run (orchestrator history).")
    family.add_metric([], summary.run_id)
    yield family
    family = gauge("last_run_start_timestamp_seconds", "When the latest run started.")
    family.add_metric([], _seconds(parse_iso(summary.started_at)))
    yield family
    # End, duration and success exist only once the run has ended: a run in progress has no
    # outcome yet, and a 0 there would fire a "last run failed" alert during every run.
    if finished:
        family = gauge("last_run_end_timestamp_seconds", "When the latest run ended.")
        family.add_metric([], _seconds(parse_iso(summary.finished_at)))
        yield family
        family = gauge("last_run_duration_seconds", "How long the latest run took, start to end.")
        family.add_metric([], summary.duration_s or 0.0)
        yield family
        family = gauge("last_run_success", "1 if the latest run ended done, 0 if aborted.")
        family.add_metric([], 1.0 if summary.state == Phase.DONE.value else 0.0)
        yield family
    family = gauge("run_in_progress", "1 while a run is under way or interrupted (resumable).")
    family.add_metric([], 0.0 if finished else 1.0)
    yield family
    # The phase, not the full state name ("verifying:h1"): a fixed set of values that alerts
    # and dashboards can match literally whatever the machines are called, with the machine
    # in a label of its own instead of having to be split out with a regex.
    state = StateName.parse(summary.state)
    family = gauge(
        "run_state_info",
        "1 for the latest run's current state: phase, the machine it concerns (or empty) "
        "and the kind of run.",
        ["state", "machine", "kind"],
    )
    family.add_metric([state.phase.value, state.machine or "", summary.kind], 1.0)
    yield family

    # -- the whole history, from the store --------------------------------------------------
    counts = store.run_counts()
    counter = CounterMetricFamily(
        f"{PREFIX}_runs",
        "Runs that ended, by kind (nightly: orchestrator run; reboot: orchestrator reboot) "
        "and outcome.",
        labels=["kind", "outcome"],
    )
    # Every combination from the start, at 0: increase() only sees a first run or a first
    # abort if the series existed before it.
    for kind in RunKind:
        for end in (Phase.DONE.value, Phase.ABORTED.value):
            counter.add_metric([kind.value, end], counts.get((kind.value, end), 0))
    yield counter
    family = gauge(
        "last_success_timestamp_seconds",
        "When the latest nightly run (orchestrator run) ended done; 0 if none ever did.",
    )
    family.add_metric([], _seconds(store.last_finished_at(RunKind.NIGHTLY, Phase.DONE.value)))
    yield family

    reboots = store.last_healthy_reboots()
    durations = gauge(
        "machine_reboot_duration_seconds",
        "The machine's latest reboot that ended healthy: seconds from the reboot request to "
        "passing the health gate.",
        ["machine"],
    )
    healthy = gauge(
        "machine_last_healthy_timestamp_seconds",
        "When the machine last passed the health gate after a reboot.",
        ["machine"],
    )
    for machine, (requested_at, healthy_at) in sorted(reboots.items()):
        took = report.seconds_between(requested_at, healthy_at)
        if took is not None:
            durations.add_metric([machine], took)
        healthy.add_metric([machine], healthy_at.timestamp())
    yield durations
    yield healthy

    family = gauge(
        "machine_last_outcome",
        "1 for the machine's outcome in the latest run it was part of ("
        + ", ".join(outcome.value for outcome in report.Outcome)
        + ").",
        ["machine", "outcome"],
    )
    for machine, outcome in sorted(_machine_outcomes(summary, store).items()):
        family.add_metric([machine, outcome], 1.0)
    yield family


def _machine_outcomes(summary: RunSummary, store: Store) -> dict[str, str]:
    outcomes = {machine.name: machine.outcome for machine in summary.machines}
    # Machines the latest run did not include (an `orchestrator reboot` of one machine, or an
    # older report) keep the outcome of the last run they were in; runs are loaded once each,
    # and there are at most as many as there are machines.
    others: dict[int, list[str]] = {}
    for name, run_id in store.latest_run_of_machines().items():
        if run_id != summary.run_id:
            others.setdefault(run_id, []).append(name)
    for run_id, names in others.items():
        run = store.run(run_id)
        for name in names:
            outcomes[name] = report.machine_outcome(run, run.machine(name)).value
    return outcomes


def render(summary: RunSummary, store: Store) -> bytes:
    """The file's contents, in the Prometheus text format."""
    from prometheus_client import CollectorRegistry, generate_latest

    class Snapshot:
        def __init__(self, families: list[Metric]) -> None:
            self._families = families

        def collect(self) -> Iterable[Metric]:
            return self._families

    # A registry of its own for each write: nothing process-wide (no default collectors for
    # this process's CPU or GC, nothing left over from an earlier write).
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot(list(_families(summary, store))))
    return generate_latest(registry)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old file or the new one, whole,
    and always mode 0644.

    Not prometheus_client's ``write_to_textfile``: its temporary file gets the mode the umask
    leaves (0600 under the units' UMask=0077, unreadable by node_exporter once renamed) and is
    never fsynced (after a power cut the rename can be on disk before the data: an empty
    file). Its temporary name is predictable and opened without O_EXCL, so a link planted
    there would be followed; ``mkstemp`` always makes a new file of its own.
    """
    # Not ``*.prom``: the collector reads only those, so it never sees the file half-written;
    # one left behind by a kill at this instant is ignored by it, and is small.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), FILE_MODE)
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class TextfileHook:
    """Rewrites the metrics file on every event but ``machine_waiting`` (which changes none of
    the values). Synchronous on purpose: a few kB on a local disk, and the store connection it
    reads through belongs to the event loop's thread."""

    name = "metrics"
    timeout = WRITE_TIMEOUT

    def __init__(self, path: Path, store: Store) -> None:
        self.path = path
        self._store = store

    def wants(self, event: RunEvent) -> bool:
        return event.kind is not EventKind.MACHINE_WAITING

    async def __call__(self, event: RunEvent) -> None:
        write_atomically(self.path, render(event.summary, self._store))


def hooks(settings: MetricsSettings, store: Store) -> list[Hook]:
    if settings.textfile is None:
        return []
    return [TextfileHook(Path(settings.textfile), store)]
