"""Turns one run's artifacts into numbers: ground truth, the orchestrator's store, rusage.

Pure functions over what `bench.run` collected (and saved under bench/out/). Every time here
is wall-clock epoch seconds: the lab's hosts, the orchestrator's store and the bench all read
the same clock. bench/README.md says what each number means.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# What the seed's bash script does between two reboots (/work/shared/seed/000_*.txt).
SEED_SLEEP_S = 600.0


@dataclass(frozen=True)
class GateConfig:
    poll_interval: float
    stable_passes: int

    @property
    def stability_window(self) -> float:
        """From the first passing round to the start of the last one: the gate's own wait."""
        return (self.stable_passes - 1) * self.poll_interval


class BadRun(Exception):
    """The run did not do what a benchmark run must (done, each host once, in order)."""


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def _first(events: Iterable[dict[str, Any]], host: str, event: str, after: float) -> float | None:
    for e in events:
        if e["host"] == host and e["event"] == event and e["t"] >= after:
            return float(e["t"])
    return None


def per_host(
    hosts: Sequence[str],
    truth: Sequence[dict[str, Any]],
    status: dict[str, Any],
    first_pass: dict[str, float],
    gate: GateConfig,
    started: float,
) -> list[dict[str, Any]]:
    """One row per host, in reboot order. Raises BadRun when the run cannot be judged."""
    truth = sorted(truth, key=lambda e: e["t"])
    if status.get("state") != "done":
        raise BadRun(f"run ended {status.get('state')}: {status.get('error')}")
    order = [e["host"] for e in truth if e["event"] == "reboot_requested" and e["t"] >= started]
    if order != list(hosts):
        raise BadRun(f"reboot requests {order}, expected each of {list(hosts)} once, in order")
    machines = {m["name"]: m for m in status["machines"]}
    rows: list[dict[str, Any]] = []
    for name in hosts:
        requested = _first(truth, name, "reboot_requested", started)
        assert requested is not None
        booted = [e for e in truth if e["host"] == name and e["event"] == "booted"]
        if len(booted) != 1:
            raise BadRun(f"{name} booted {len(booted)} times")
        healthy = _first(truth, name, "healthy", requested)
        link_up = _first(truth, name, "link_up", requested)
        ssh_up = _first(truth, name, "ssh_up", requested)
        http_up = _first(truth, name, "http_up", requested)
        healthy_at = _epoch(machines[name]["healthy_at"])
        if healthy is None or healthy_at is None:
            raise BadRun(f"{name}: ground truth healthy {healthy}, store healthy_at {healthy_at}")
        gate_done = healthy_at - healthy
        passed = first_pass.get(name)
        source = "store"
        if passed is None:
            # Not seen in the store (an engine that stopped recording rounds): the estimate
            # from healthy_at, which also counts the last round's own duration.
            passed, source = healthy_at - gate.stability_window, "healthy_at"
        rows.append(
            {
                "host": name,
                "reboot_requested": requested,
                "healthy": healthy,
                "reboot_to_healthy_s": healthy - requested,
                "link_up_to_healthy_s": healthy - link_up if link_up else None,
                "ssh_up_to_http_up_s": http_up - ssh_up if http_up and ssh_up else None,
                "first_pass": passed,
                "detection_s": passed - healthy,
                "detection_source": source,
                "gate_done_s": gate_done,
                "detection_from_healthy_at_s": gate_done - gate.stability_window,
                "advance_lag_s": None,
                "advance_excess_s": None,
            }
        )
    for row, after in itertools.pairwise(rows):
        lag = after["reboot_requested"] - row["healthy"]
        row["advance_lag_s"] = lag
        # The bound: lag <= detection + stability window + 0.3 s; this is the part
        # that the bound allows 0.3 s for (the last round, the store, the next reboot request).
        row["advance_excess_s"] = lag - row["detection_s"] - gate.stability_window
    return rows


def run_summary(
    rows: Sequence[dict[str, Any]],
    *,
    started: float,
    ended: float,
    cpu_s: float,
    maxrss_kb: int,
) -> dict[str, Any]:
    hosts = len(rows)
    wall = ended - started
    reboots = sum(r["reboot_to_healthy_s"] for r in rows)
    seed = (hosts - 1) * SEED_SLEEP_S + rows[-1]["reboot_to_healthy_s"]
    lags = sum(r["advance_lag_s"] for r in rows[:-1])
    return {
        "hosts": hosts,
        "started": started,
        "ended": ended,
        "wall_s": wall,
        "sum_reboot_to_healthy_s": reboots,
        "overhead_s": wall - reboots,
        # overhead = start_to_first_reboot + sum of advance lags + last_healthy_to_exit, exactly
        "start_to_first_reboot_s": rows[0]["reboot_requested"] - started,
        "sum_advance_lag_s": lags,
        "last_healthy_to_exit_s": ended - rows[-1]["healthy"],
        "overhead_per_host_s": (wall - reboots) / hosts,
        "cpu_s": cpu_s,
        "cpu_per_host_s": cpu_s / hosts,
        "peak_rss_mb": maxrss_kb / 1024,
        "seed_schedule_s": seed,
        "seed_over_ours": seed / wall,
    }


def dist(values: Iterable[float | None]) -> dict[str, float | int | None]:
    data = sorted(v for v in values if v is not None)
    if not data:
        return {"n": 0, "median": None, "max": None, "min": None}
    return {
        "n": len(data),
        "median": statistics.median(data),
        "p90": data[min(len(data) - 1, int(0.9 * len(data)))],
        "max": data[-1],
        "min": data[0],
    }


def truth_rows(
    hosts: Sequence[str], truth: Sequence[dict[str, Any]], started: float
) -> list[dict[str, Any]]:
    """One row per host from ground truth alone, whatever tool rebooted them (the peer bench).

    `truth` holds the events since `started` (the lab is shared by several runs). Raises BadRun
    unless each host was asked to reboot once, in order, booted once and became healthy."""
    truth = sorted(truth, key=lambda e: e["t"])
    order = [e["host"] for e in truth if e["event"] == "reboot_requested" and e["t"] >= started]
    if order != list(hosts):
        raise BadRun(f"reboot requests {order}, expected each of {list(hosts)} once, in order")
    rows: list[dict[str, Any]] = []
    for name in hosts:
        requested = _first(truth, name, "reboot_requested", started)
        assert requested is not None
        booted = [e for e in truth if e["host"] == name and e["event"] == "booted"]
        if len(booted) != 1:
            raise BadRun(f"{name} booted {len(booted)} times")
        healthy = _first(truth, name, "healthy", requested)
        if healthy is None:
            raise BadRun(f"{name}: never healthy after its reboot")
        rows.append(
            {
                "host": name,
                "reboot_requested": requested,
                "healthy": healthy,
                "reboot_to_healthy_s": healthy - requested,
                "advance_lag_s": None,
            }
        )
    for row, after in itertools.pairwise(rows):
        row["advance_lag_s"] = after["reboot_requested"] - row["healthy"]
    return rows
