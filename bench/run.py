"""The benchmark of issue 3: `python -m bench.run [--hosts 4 40] [--repeat N]` (root).

For each scenario it starts a netlab (tests/netlab: network namespaces, real OpenSSH sshd),
runs the unmodified orchestrator (`orchestrator --config C run`, a separate process in the
root namespace) against it, and judges the run by the lab's ground truth (truth.jsonl), the
orchestrator's own store and the rusage of the orchestrator process. It writes
bench/results.json and bench/results.md; raw artifacts of every run go to bench/out/.
See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import metrics, report
from bench.common import describe_commit, tool_beside_python
from tests.netlab import Fault, Lab
from tests.netlab.lab import missing_prerequisites

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
STATUS_SAMPLES = 20
# How often the bench reads the orchestrator's store to see its first passing gate round.
STORE_POLL_S = 0.01


@dataclass(frozen=True)
class Scenario:
    hosts: int
    # Each host's boot (link down -> new boot id, link up) is drawn from this range with a
    # fixed seed: the moment a host comes back then falls at every phase of the gate's polling
    # cycle, instead of one phase for all (the lab itself is deterministic).
    boot_time: tuple[float, float]
    http_delay: float  # on even-numbered hosts HTTP comes up this long after sshd
    repeat: int
    poll_interval: float
    stable_passes: int

    @property
    def name(self) -> str:
        return f"{self.hosts} hosts"

    def faults(self) -> dict[str, Fault]:
        # Odd hosts: HTTP is up as soon as sshd is, so noticing the host is bound by the SSH
        # reconnect to a machine that was dark. Even hosts: HTTP lags, so it is bound by the
        # polling of HTTP with SSH already back. Both happen on real machines.
        rng = random.Random(f"bench-{self.hosts}")
        return {
            f"h{i}": Fault(
                boot_time=round(rng.uniform(*self.boot_time), 3),
                http_delay=self.http_delay if i % 2 == 0 else 0.0,
            )
            for i in range(1, self.hosts + 1)
        }

    def config_overrides(self, lab: Lab) -> dict[str, Any]:
        return {
            # Each HTTP check must fit in probe_timeout (the config refuses it otherwise).
            "machines": {
                h.name: {"checks": [{"url": h.health_url, "status": 200, "timeout": 1}]}
                for h in lab.hosts.values()
            },
            "reboot": {
                "timeout": 60,
                "poll_interval": self.poll_interval,
                "stable_passes": self.stable_passes,
                "probe_timeout": 1,
            },
            "ssh": {"connect_timeout": 1},
        }


def default_scenario(hosts: int, args: argparse.Namespace) -> Scenario:
    short = hosts > 10  # 40 sequential hosts: short boots keep the bench under a few minutes
    return Scenario(
        hosts=hosts,
        boot_time=(0.5, 2.0) if short else (1.0, 2.5),
        http_delay=0.2 if short else 0.3,
        repeat=args.repeat or (2 if short else 3),
        poll_interval=args.poll_interval,
        stable_passes=args.stable_passes,
    )


class FirstPassWatcher(threading.Thread):
    """Notes when the orchestrator's store first holds a passing gate round on a new boot id.

    The engine writes each round's probes to the store when the outcome changes (the first
    passing round after failing ones always does), right after the round and before the
    poll wait; a passing round carries the new boot id in its "boot id" probe, which tells it
    from preflight's round on the old boot id. Read-only, so the orchestrator is unchanged.
    """

    def __init__(self, db: Path) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.first_pass: dict[str, float] = {}
        self.polls = 0
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stop_event.is_set():
                if conn is None and self.db.exists():
                    conn = sqlite3.connect(
                        f"file:{self.db}?mode=ro", uri=True, timeout=0.05, isolation_level=None
                    )
                if conn is not None:
                    self._poll(conn)
                time.sleep(STORE_POLL_S)
        finally:
            if conn is not None:
                conn.close()

    def _poll(self, conn: sqlite3.Connection) -> None:
        seen = time.time()  # the rows read below were committed before this instant
        try:
            rows = conn.execute(
                "SELECT name, boot_id_before, last_probes FROM machines "
                "WHERE run_id = (SELECT max(run_id) FROM runs) AND boot_id_before IS NOT NULL"
            ).fetchall()
        except sqlite3.Error:
            return  # schema not there yet, or a writer in the way: next poll
        self.polls += 1
        for name, before, probes_json in rows:
            if name in self.first_pass or not probes_json:
                continue
            probes = json.loads(probes_json)
            boot = next((p for p in probes if p["probe"] == "boot id"), None)
            if probes and all(p["ok"] for p in probes) and boot and boot["detail"] != before:
                self.first_pass[name] = seen


def orchestrator_bin() -> str:
    return tool_beside_python("orchestrator", "make venv")


def time_status(orch: str, config: Path, extra: list[str]) -> list[float]:
    samples = []
    for _ in range(STATUS_SAMPLES):
        t0 = time.perf_counter()
        subprocess.run(
            [orch, "--config", str(config), "status", *extra],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=True,
        )
        samples.append(time.perf_counter() - t0)
    return samples


def run_once(scenario: Scenario, workdir: Path, orch: str) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    lab = Lab(workdir / "lab", scenario.hosts, faults=scenario.faults())
    with lab:
        state_dir = workdir / "state"
        config = lab.write_config(
            workdir / "config.yaml", state_dir, **scenario.config_overrides(lab)
        )
        watcher = FirstPassWatcher(state_dir / "state.db")
        watcher.start()
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        load_before = os.getloadavg()
        bench_cpu = resource.getrusage(resource.RUSAGE_SELF)
        with open(workdir / "orchestrator.log", "wb") as log:
            started = time.time()
            proc = subprocess.Popen(
                [orch, "--config", str(config), "run"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                env=env,
            )
            killer = threading.Timer(60 * scenario.hosts + 120, proc.kill)
            killer.start()
            # wait4: CPU time and peak RSS of the orchestrator and every child it waited for.
            _, wait_status, usage = os.wait4(proc.pid, 0)
            ended = time.time()
            killer.cancel()
            proc.returncode = os.waitstatus_to_exitcode(wait_status)
        load_after = os.getloadavg()
        watcher.stop()
        bench_usage = resource.getrusage(resource.RUSAGE_SELF)
        bench_cpu_s = (bench_usage.ru_utime - bench_cpu.ru_utime) + (
            bench_usage.ru_stime - bench_cpu.ru_stime
        )
        status_out = subprocess.run(
            [orch, "--config", str(config), "status", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (workdir / "status.json").write_text(status_out)
        status_text = time_status(orch, config, [])
        status_json = time_status(orch, config, ["--json"])
        truth = lab.events()
    shutil.copy(lab.truth_path, workdir / "truth.jsonl")
    status = json.loads(status_out)
    gate = metrics.GateConfig(scenario.poll_interval, scenario.stable_passes)
    hosts = [f"h{i}" for i in range(1, scenario.hosts + 1)]
    result: dict[str, Any] = {
        "dir": str(workdir),
        "exit_code": proc.returncode,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "store_polls": watcher.polls,
        # The bench's own CPU while the orchestrator ran (mostly the store polling), which
        # competes with the orchestrator for this machine's cores.
        "bench_cpu_s": bench_cpu_s,
        "status_text_s": status_text,
        "status_json_s": status_json,
    }
    try:
        if proc.returncode != 0:
            raise metrics.BadRun(f"orchestrator exited {proc.returncode}, see orchestrator.log")
        rows = metrics.per_host(hosts, truth, status, watcher.first_pass, gate, started)
    except metrics.BadRun as exc:
        result["error"] = str(exc)
        return result
    result["hosts"] = rows
    result["summary"] = metrics.run_summary(
        rows,
        started=started,
        ended=ended,
        cpu_s=usage.ru_utime + usage.ru_stime,
        maxrss_kb=usage.ru_maxrss,
    )
    return result


def aggregate(scenario: Scenario, runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "error" not in r]
    rows = [row for r in good for row in r["hosts"]]
    summaries = [r["summary"] for r in good]

    def over_runs(key: str) -> dict[str, float | None]:
        values = [s[key] for s in summaries]
        if not values:
            return {"median": None, "max": None, "min": None}
        return {"median": statistics.median(values), "max": max(values), "min": min(values)}

    status_text = [statistics.median(r["status_text_s"]) for r in runs]
    status_json = [statistics.median(r["status_json_s"]) for r in runs]
    return {
        "scenario": asdict(scenario),
        "stability_window_s": metrics.GateConfig(
            scenario.poll_interval, scenario.stable_passes
        ).stability_window,
        "runs_ok": len(good),
        "runs_failed": [r["error"] for r in runs if "error" in r],
        "detections_estimated_from_healthy_at": sum(r["detection_source"] != "store" for r in rows),
        "detection_s": metrics.dist(r["detection_s"] for r in rows),
        "detection_from_healthy_at_s": metrics.dist(r["detection_from_healthy_at_s"] for r in rows),
        "gate_done_s": metrics.dist(r["gate_done_s"] for r in rows),
        "advance_lag_s": metrics.dist(r["advance_lag_s"] for r in rows),
        "advance_excess_s": metrics.dist(r["advance_excess_s"] for r in rows),
        "reboot_to_healthy_s": metrics.dist(r["reboot_to_healthy_s"] for r in rows),
        "wall_s": over_runs("wall_s"),
        "overhead_per_host_s": over_runs("overhead_per_host_s"),
        "start_to_first_reboot_s": over_runs("start_to_first_reboot_s"),
        "last_healthy_to_exit_s": over_runs("last_healthy_to_exit_s"),
        "cpu_per_host_s": over_runs("cpu_per_host_s"),
        "peak_rss_mb": over_runs("peak_rss_mb"),
        "seed_schedule_s": over_runs("seed_schedule_s"),
        "seed_over_ours": over_runs("seed_over_ours"),
        "status_text_median_s": statistics.median(status_text) if status_text else None,
        "status_json_median_s": statistics.median(status_json) if status_json else None,
    }


def product_info(orch: str) -> dict[str, str]:
    """Which orchestrator code ran (PYTHONPATH can point the bench at another checkout)."""
    where = subprocess.run(
        [
            str(Path(orch).with_name("python")),
            "-c",
            "import orchestrator.cli; print(orchestrator.cli.__file__)",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    ).stdout.strip()
    tree = Path(where).parent.parent if where else REPO
    return {"orchestrator": orch, "source": str(tree), "commit": describe_commit(tree)}


def machine_info() -> dict[str, Any]:
    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "openssh": ssh_version.stderr.strip(),
        "uptime": subprocess.run(
            ["uptime"], capture_output=True, text=True, check=False
        ).stdout.strip(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--hosts", type=int, nargs="+", default=[4, 40])
    parser.add_argument("--repeat", type=int, default=0, help="runs per scenario")
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument("--stable-passes", type=int, default=2)
    parser.add_argument(
        "--results", type=Path, default=BENCH_DIR, help="where results.{json,md} go"
    )
    args = parser.parse_args(argv)
    reason = missing_prerequisites()
    if reason:
        print(f"bench: {reason}", file=sys.stderr)
        return 2
    orch = orchestrator_bin()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = BENCH_DIR / "out" / stamp
    info_before = machine_info()
    scenarios: dict[str, Any] = {}
    raw: dict[str, list[dict[str, Any]]] = {}
    for hosts in args.hosts:
        scenario = default_scenario(hosts, args)
        runs = []
        for i in range(1, scenario.repeat + 1):
            print(f"bench: {scenario.name}, run {i}/{scenario.repeat} ...", file=sys.stderr)
            result = run_once(scenario, out / f"{hosts}-hosts-{i}", orch)
            print(f"bench:   {report.one_line(result)}", file=sys.stderr)
            runs.append(result)
        raw[scenario.name] = runs
        scenarios[scenario.name] = aggregate(scenario, runs)
    results = {
        "command": " ".join(["python -m bench.run", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {**info_before, "uptime_after": machine_info()["uptime"]},
        "product": product_info(orch),
        "targets": report.TARGETS,
        "scenarios": scenarios,
        "runs": raw,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.results / "results.md").write_text(report.markdown(results))
    print(report.markdown(results))
    failed = sum(len(s["runs_failed"]) for s in scenarios.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
