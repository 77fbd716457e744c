"""The scale bench of issue 11 (item 5): the orchestrator against 4 to 500 simulated machines.

    .venv/bin/python -m bench.scale [--sizes 4 40 100 500] [--wave-size N ...]
        [--interlock on off] [--profile no|also|only]

Each case starts the in-process simulated lab (``orchestrator.demo.simlab.SimLab``: asyncssh
servers and HTTP health endpoints on loopback, one pair per machine) in this process's asyncio
loop, and runs the unmodified orchestrator, ``python -m orchestrator --config C run``, as a child
process against it: no update or deploy (``true``), ``preflight: true``, a quick gate
(``reboot.poll_interval`` 0.25 s, ``stable_passes`` 2), waves of ``--wave-size`` machines (the
top-level config key ``max_unavailable``, left out when the wave size is 1) and the fleet
interlock on or off (``interlock.enabled``). A case passes only when the run ends ``done`` and
every simulated machine really booted exactly once (the lab's ground truth); anything else
fails the bench loudly.

What it measures, per case:

- wall time of the run, and the orchestrator child's CPU (user + sys, from ``os.wait4``, which
  also counts the children it reaped: the ``true`` steps) per machine, and its peak RSS;
- this process's own CPU over the run (the lab: every SSH handshake and command the
  orchestrator makes is answered here), to show whether the lab starved the orchestrator;
- ``orchestrator status``, ``status --json`` and ``history`` wall time, each a subprocess,
  median of ``--status-samples`` runs, after the run finished;
- the store's size (``state.db`` plus its WAL), then the same three commands again on a copy of
  the store that holds 1,000 earlier copies of the run (made with SQL), and its size then.

Why the lab shares the bench's process: the orchestrator is a separate process either way,
and each side gets one of the machine's cores; the lab's CPU is reported beside the
orchestrator's so a starved lab (its CPU close to the wall time) would show. ``--profile also``
runs the largest size's interlock-off case once more with the child under ``cProfile`` (not
counted in the table) and lists the functions with the most cumulative time, e.g. the
engine's re-reads of the run from SQLite. The soft limit of open files is raised to its
hard limit (500 machines hold about 1,000 listening sockets plus the connections to them).

Results go to bench/scale-results.json and bench/scale-results.md; each case's config, store
and orchestrator log stay in a directory under /tmp (printed) with ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import pstats
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from bench.common import describe_commit
from orchestrator.demo.simlab import Behaviour, SimLab
from orchestrator.store import Store

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
HISTORY_RUNS = 1000
STATUS_LIMIT_S = 0.150
RSS_LIMIT_MB = 150.0
WAVE_KEY = "max_unavailable"
# Functions of the product whose cumulative time the profile summary always shows.
WATCHED = ("store.py:.*\\(run\\)", "engine.py:.*\\(record\\)", "_interlock", "probe_once")


@dataclass(frozen=True)
class Case:
    machines: int
    wave_size: int
    interlock: bool

    @property
    def name(self) -> str:
        lock = "on" if self.interlock else "off"
        return f"{self.machines} machines, waves of {self.wave_size}, interlock {lock}"

    @property
    def slug(self) -> str:
        return f"{self.machines}m-w{self.wave_size}-il{'on' if self.interlock else 'off'}"


@dataclass
class Result:
    case: Case
    ok: bool = False
    error: str | None = None
    exit_code: int | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    cpu_ms_per_machine: float = 0.0
    peak_rss_mb: float = 0.0
    lab_cpu_s: float = 0.0
    run_state: str | None = None
    reboots_wrong: dict[str, int] = field(default_factory=dict)
    status_ms: float | None = None
    status_json_ms: float | None = None
    history_ms: float | None = None
    store_bytes: int = 0
    history_store_bytes: int = 0
    bytes_per_run: float = 0.0
    history_status_ms: float | None = None
    history_status_json_ms: float | None = None
    history_history_ms: float | None = None
    loadavg_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    loadavg_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    profiled: bool = False
    profile_top: list[str] = field(default_factory=list)
    dir: str = ""


# -- pure helpers (tests/unit/test_bench_scale.py) ------------------------------------------------


def names(count: int) -> list[str]:
    """Machine names that sort in reboot order: m001, m002, ..."""
    width = max(3, len(str(count)))
    return [f"m{i:0{width}d}" for i in range(1, count + 1)]


def default_wave_size(machines: int) -> int:
    """The issue's plan: one machine at a time below 100 machines, waves of 25 from there."""
    return 1 if machines < 100 else 25


def cases(
    sizes: list[int],
    wave_sizes: list[int] | None,
    interlock: list[bool],
    one_by_one_max: int = 40,
) -> list[Case]:
    """Every size with every given wave size (capped at the size; waves of 1 only up to
    ``one_by_one_max`` machines, beyond that they take too long) and interlock setting."""
    out: list[Case] = []
    for size in sizes:
        waves = [
            w for w in wave_sizes or [default_wave_size(size)] if w > 1 or size <= one_by_one_max
        ] or [default_wave_size(size)]
        for wave in dict.fromkeys(min(w, size) for w in waves):
            out.extend(Case(size, wave, lock) for lock in interlock)
    return out


def overrides(
    case: Case, *, poll_interval: float, stable_passes: int, connect_timeout: float
) -> dict[str, Any]:
    """The config keys the bench sets over ``SimLab.config``'s (addresses, keys, timings)."""
    config: dict[str, Any] = {
        "preflight": True,
        "reboot": {
            "poll_interval": poll_interval,
            "stable_passes": stable_passes,
            "timeout": "60s",
        },
        "ssh": {"connect_timeout": connect_timeout},
        "interlock": {"enabled": case.interlock},
    }
    if case.wave_size > 1:
        config[WAVE_KEY] = case.wave_size
    return config


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


def marginal_ms(cpu_s: dict[int, float]) -> dict[int, float]:
    """CPU per machine beyond the smallest size's run (its start-up and fixed costs):
    ``(cpu(N) - cpu(N0)) / (N - N0)`` in ms, for every N above the smallest N0."""
    if not cpu_s:
        return {}
    base = min(cpu_s)
    return {
        n: (cpu - cpu_s[base]) / (n - base) * 1000.0 for n, cpu in sorted(cpu_s.items()) if n > base
    }


def wrong_reboots(counts: dict[str, int]) -> dict[str, int]:
    """The machines that did not boot exactly once."""
    return {name: count for name, count in counts.items() if count != 1}


def shifted(text: str | None, days: int) -> str | None:
    """An ISO timestamp of the store moved ``days`` earlier (None stays None)."""
    if text is None:
        return None
    return (datetime.fromisoformat(text) - timedelta(days=days)).isoformat()


# -- the store ------------------------------------------------------------------------------------


def store_bytes(state_dir: Path) -> int:
    return sum(p.stat().st_size for p in state_dir.glob("state.db*") if p.is_file())


def add_history(db_path: Path, copies: int) -> None:
    """Give the store ``copies`` earlier runs: copies of its latest run (rows of ``runs``,
    ``machines`` and ``steps``), one day apart, numbered before it; the latest run stays the
    latest. Plain SQL on the file, as a store that has run every night for years looks."""
    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        db.row_factory = sqlite3.Row
        latest = db.execute("SELECT MAX(run_id) FROM runs").fetchone()[0]
        run = db.execute("SELECT * FROM runs WHERE run_id=?", (latest,)).fetchone()
        machines = db.execute("SELECT * FROM machines WHERE run_id=?", (latest,)).fetchall()
        steps = db.execute("SELECT * FROM steps WHERE run_id=?", (latest,)).fetchall()
        run_cols, machine_cols = run.keys(), machines[0].keys()
        step_cols = steps[0].keys() if steps else []
        times = {"started_at", "finished_at", "end_reported_at", "abort_requested_at"}
        db.execute("BEGIN")
        final = latest + copies
        for table in ("machines", "steps", "runs"):
            db.execute(f"UPDATE {table} SET run_id=? WHERE run_id=?", (final, latest))
        for k in range(copies):
            run_id, days = latest + k, copies - k
            values = [
                run_id if c == "run_id" else shifted(run[c], days) if c in times else run[c]
                for c in run_cols
            ]
            db.execute(_insert("runs", run_cols), values)
            db.executemany(
                _insert("machines", machine_cols),
                [
                    [
                        run_id
                        if c == "run_id"
                        else shifted(m[c], days)
                        if c.endswith("_at")
                        else m[c]
                        for c in machine_cols
                    ]
                    for m in machines
                ],
            )
            if steps:
                db.executemany(
                    _insert("steps", step_cols),
                    [
                        [
                            run_id
                            if c == "run_id"
                            else shifted(s[c], days)
                            if c == "entered_at"
                            else s[c]
                            for c in step_cols
                        ]
                        for s in steps
                    ],
                )
        db.execute("UPDATE sqlite_sequence SET seq=? WHERE name='runs'", (final,))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def _insert(table: str, columns: list[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def checkpoint(db_path: Path) -> None:
    """Fold the WAL into the file, so that its size is the store's (the run's last writer may
    have left it to the next one)."""
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


# -- the orchestrator child -----------------------------------------------------------------------


def orchestrator_argv(config: Path, *command: str, profile: Path | None = None) -> list[str]:
    python = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else [])]
    return [*python, "-m", "orchestrator", "--config", str(config), *command]


def child_env() -> dict[str, str]:
    # No JOURNAL_STREAM: the logs go to the log file as text, as they would to a terminal.
    return {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}


def time_command(config: Path, command: list[str], samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        subprocess.run(
            orchestrator_argv(config, *command),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=True,
            env=child_env(),
        )
        times.append(time.perf_counter() - t0)
    return times


def start_child(argv: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=child_env(),
        )


async def run_child(argv: list[str], log: Path, cwd: Path, limit_s: float) -> tuple[int, Any]:
    """Start the orchestrator and reap it with ``os.wait4`` (in a thread, so the lab's loop
    keeps answering it): its exit code and its rusage."""
    proc = start_child(argv, log, cwd)
    loop = asyncio.get_running_loop()
    killer = loop.call_later(limit_s, proc.kill)
    try:
        _, wait_status, usage = await loop.run_in_executor(None, os.wait4, proc.pid, 0)
    finally:
        killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(wait_status)
    return proc.returncode, usage


def profile_lines(path: Path, top: int) -> list[str]:
    """The profile's functions with the most cumulative time, then the watched ones."""
    stream = io.StringIO()
    stats = pstats.Stats(str(path), stream=stream)
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    for pattern in WATCHED:
        stats.print_stats(pattern, 3)
    return tidy_profile(stream.getvalue().splitlines())


def tidy_profile(lines: list[str]) -> list[str]:
    """pstats' output without the header it repeats before each listing: the first header,
    then only the function rows (a row ends with ``(function)`` or ``{built-in}``)."""
    out: list[str] = []
    seen_header = False
    for line in (line.rstrip() for line in lines if line.strip()):
        if line.lstrip().startswith("ncalls"):
            if not seen_header:
                out.append(line)
            seen_header = True
        elif not seen_header or line.endswith((")", "}")):
            out.append(line)
    return out


# -- one case -------------------------------------------------------------------------------------


async def run_case(case: Case, args: argparse.Namespace, root: Path, profile: bool) -> Result:
    work = root / (case.slug + ("-profile" if profile else ""))
    work.mkdir(parents=True)
    result = Result(case, profiled=profile, dir=str(work))
    behaviour = Behaviour(boot_time=args.boot_time, http_delay=args.http_delay)
    lab = SimLab(work / "lab", names(case.machines), behaviour)
    await lab.start()
    try:
        state_dir = work / "state"
        config = lab.config(
            state_dir,
            **overrides(
                case,
                poll_interval=args.poll_interval,
                stable_passes=args.stable_passes,
                connect_timeout=args.connect_timeout,
            ),
        )
        config_file = work / "config.yaml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        prof = work / "run.prof" if profile else None
        result.loadavg_before = os.getloadavg()
        lab_cpu = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        code, usage = await run_child(
            orchestrator_argv(config_file, "run", profile=prof),
            work / "orchestrator.log",
            work,
            limit_s=args.timeout,
        )
        result.wall_s = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        result.loadavg_after = os.getloadavg()
        result.lab_cpu_s = (after.ru_utime - lab_cpu.ru_utime) + (after.ru_stime - lab_cpu.ru_stime)
        result.exit_code = code
        result.cpu_s = usage.ru_utime + usage.ru_stime
        result.cpu_ms_per_machine = result.cpu_s / case.machines * 1000.0
        result.peak_rss_mb = usage.ru_maxrss / 1024.0
        await asyncio.sleep(0.1)  # a reboot the run did not wait for would show by now
        result.reboots_wrong = wrong_reboots({n: lab.reboots(n) for n in lab.hosts})
    finally:
        await lab.stop()
    with Store.open(state_dir, create=False) as store:
        run = store.latest_run()
    result.run_state = run.state if run else None
    problems = []
    if code != 0:
        problems.append(f"orchestrator exited {code}")
    if result.run_state != "done":
        problems.append(f"run ended {result.run_state!r}")
    if result.reboots_wrong:
        shown = dict(list(result.reboots_wrong.items())[:5])
        problems.append(f"{len(result.reboots_wrong)} machines not booted exactly once: {shown}")
    if problems:
        result.error = "; ".join(problems) + f" (see {work / 'orchestrator.log'})"
        return result
    if prof is not None:
        result.profile_top = profile_lines(prof, args.profile_top)
        result.ok = True
        return result
    checkpoint(state_dir / "state.db")
    result.store_bytes = store_bytes(state_dir)
    n = args.status_samples
    result.status_ms = median_ms(time_command(config_file, ["status"], n))
    result.status_json_ms = median_ms(time_command(config_file, ["status", "--json"], n))
    result.history_ms = median_ms(time_command(config_file, ["history"], n))
    # The same commands on a store with 1,000 earlier runs (a copy: the run's own stays).
    history_dir = work / "state-history"
    shutil.copytree(state_dir, history_dir)
    add_history(history_dir / "state.db", HISTORY_RUNS)
    result.history_store_bytes = store_bytes(history_dir)
    result.bytes_per_run = (result.history_store_bytes - result.store_bytes) / HISTORY_RUNS
    history_config = work / "config-history.yaml"
    history_config.write_text(
        yaml.safe_dump({**config, "state_dir": str(history_dir)}, sort_keys=False)
    )
    result.history_status_ms = median_ms(time_command(history_config, ["status"], n))
    result.history_status_json_ms = median_ms(time_command(history_config, ["status", "--json"], n))
    result.history_history_ms = median_ms(time_command(history_config, ["history"], n))
    result.ok = True
    return result


# -- the report -----------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    commit = describe_commit(REPO)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg": os.getloadavg(),
        "commit": commit,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _mark(value: float | None, limit: float) -> str:
    return "" if value is None else (" ✅" if value <= limit else " ❌")


def markdown(results: dict[str, Any]) -> str:
    info = results["machine"]
    lines = [
        "# Scale bench (issue 11, item 5)",
        "",
        f"`{results['command']}` — {info['date']}, {info['nproc']} CPUs, Python "
        f"{info['python']}, commit `{info['commit']}`, load average before "
        f"{' '.join(f'{x:.2f}' for x in info['loadavg'])}.",
        "",
        f"Simulated lab: {results['settings']['lab']}. Orchestrator: "
        f"{results['settings']['orchestrator']}.",
        "",
        "| machines | wave | interlock | wall s | CPU ms/machine | peak RSS MB | lab CPU s "
        "| status ms | status --json ms | history ms | store bytes | bytes/run "
        f"| status ms, {HISTORY_RUNS} runs | --json ms, {HISTORY_RUNS} runs "
        f"| history ms, {HISTORY_RUNS} runs |",
        "|" + "---:|" * 15,
    ]
    for r in results["results"]:
        c = r["case"]
        head = f"| {c['machines']} | {c['wave_size']} | {'on' if c['interlock'] else 'off'} "
        if not r["ok"]:
            lines.append(head + f"| FAILED: {r['error']} |" + " |" * 11)
            continue
        big = c["machines"] >= 500
        lines.append(
            head
            + f"| {r['wall_s']:.1f} | {r['cpu_ms_per_machine']:.1f} "
            + f"| {r['peak_rss_mb']:.1f}{_mark(r['peak_rss_mb'], RSS_LIMIT_MB) if big else ''} "
            + f"| {r['lab_cpu_s']:.1f} "
            + f"| {_ms(r['status_ms'])}{_mark(r['status_ms'], 150) if big else ''} "
            + f"| {_ms(r['status_json_ms'])}{_mark(r['status_json_ms'], 150) if big else ''} "
            + f"| {_ms(r['history_ms'])} | {r['store_bytes']} | {r['bytes_per_run']:.0f} "
            + f"| {_ms(r['history_status_ms'])} | {_ms(r['history_status_json_ms'])} "
            + f"| {_ms(r['history_history_ms'])} |"
        )
    if results["marginal_cpu_ms_per_machine"]:
        lines += [
            "",
            "CPU per machine beyond the smallest run's (its start-up and fixed costs), "
            "`(cpu(N) - cpu(N0)) / (N - N0)`, one at a time or in waves, interlock on or off:",
            "",
        ]
        for key, values in results["marginal_cpu_ms_per_machine"].items():
            shown = ", ".join(f"{n}: {ms:.1f} ms" for n, ms in values.items())
            lines.append(f"- {key}: {shown or '-'}")
    profiles = [r for r in results["profiles"] if r["profile_top"]]
    for r in profiles:
        lines += ["", f"## Profile: {Case(**r['case']).name}", "", "```"]
        lines += r["profile_top"]
        lines += ["```"]
    lines += [
        "",
        f"Limits at 500 machines: peak RSS <= {RSS_LIMIT_MB:.0f} MB, `status` and "
        f"`status --json` <= {STATUS_LIMIT_S * 1000:.0f} ms (median of "
        f"{results['settings']['status_samples']} subprocess runs each).",
        "",
    ]
    return "\n".join(lines)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run_all(args: argparse.Namespace, root: Path) -> list[Result]:
    results = []
    interlock = [s == "on" for s in args.interlock]
    modes = {"no": (False,), "also": (False, True), "only": (True,)}[args.profile]
    # Profiled: the largest size's cases with the interlock off (or on, when only that runs).
    profiled = (max(args.sizes), False not in interlock)
    for case in cases(args.sizes, args.wave_size, interlock, args.one_by_one_max):
        chosen = (case.machines, case.interlock) == profiled
        for profile in modes if chosen else (False,):
            label = f"{case.name}{' (profiled)' if profile else ''}"
            print(f"scale: {label} ...", file=sys.stderr, flush=True)
            result = await run_case(case, args, root, profile)
            if result.ok:
                print(
                    f"scale:   wall {result.wall_s:.1f}s, cpu {result.cpu_ms_per_machine:.1f} "
                    f"ms/machine, rss {result.peak_rss_mb:.0f} MB, lab cpu "
                    f"{result.lab_cpu_s:.1f}s, status {_ms(result.status_ms)} ms",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                print(f"scale:   FAILED: {result.error}", file=sys.stderr, flush=True)
            results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 40, 100, 500])
    parser.add_argument(
        "--wave-size",
        type=int,
        nargs="+",
        default=None,
        help="wave sizes to run each size with (default: 1 below 100 machines, else 25); "
        f"above 1 the config gets `{WAVE_KEY}: N`",
    )
    parser.add_argument("--interlock", nargs="+", choices=["on", "off"], default=["on", "off"])
    parser.add_argument("--boot-time", type=float, default=Behaviour.boot_time)
    parser.add_argument("--http-delay", type=float, default=Behaviour.http_delay)
    parser.add_argument("--poll-interval", type=float, default=0.25)
    parser.add_argument("--stable-passes", type=int, default=2)
    parser.add_argument("--connect-timeout", type=float, default=5.0)
    parser.add_argument("--status-samples", type=int, default=9)
    parser.add_argument("--timeout", type=float, default=1800.0, help="per run, seconds")
    parser.add_argument(
        "--profile",
        choices=["no", "also", "only"],
        default="no",
        help="run each case once more with the orchestrator under cProfile, or only so",
    )
    parser.add_argument(
        "--one-by-one-max",
        type=int,
        default=40,
        help="the largest size that runs with waves of 1 when --wave-size lists 1",
    )
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--keep", action="store_true", help="keep the cases' directories")
    parser.add_argument("--results", type=Path, default=BENCH_DIR, help="where the results go")
    parser.add_argument("--name", default="scale-results", help="results file name stem")
    args = parser.parse_args(argv)
    raise_nofile()
    root = Path(tempfile.mkdtemp(prefix="lab-orchestrator-scale-"))
    print(f"scale: cases in {root}", file=sys.stderr)
    info = machine_info()
    try:
        all_results = asyncio.run(run_all(args, root))
    except BaseException:
        print(f"scale: interrupted; the cases stay in {root}", file=sys.stderr)
        raise
    failed = [r for r in all_results if not r.ok]
    if not args.keep and not failed:
        shutil.rmtree(root, ignore_errors=True)
    table = [r for r in all_results if not r.profiled]
    profiles = [r for r in all_results if r.profiled]
    marginal: dict[str, dict[int, float]] = {}
    for group in sorted({(r.case.wave_size > 1, r.case.interlock) for r in table if r.ok}):
        cpu = {
            r.case.machines: r.cpu_s
            for r in table
            if r.ok and (r.case.wave_size > 1, r.case.interlock) == group
        }
        key = f"{'waves' if group[0] else 'one at a time'}, interlock {'on' if group[1] else 'off'}"
        marginal[key] = marginal_ms(cpu)
    results = {
        "command": " ".join(["python -m bench.scale", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {**info, "loadavg_after": os.getloadavg()},
        "settings": {
            "lab": f"SimLab in the bench's process, boot_time {args.boot_time} s, http_delay "
            f"{args.http_delay} s (HTTP up after SSH), one HTTP check a machine",
            "orchestrator": f"`python -m orchestrator run` child; update/deploy `true`, "
            f"preflight on, poll_interval {args.poll_interval} s, stable_passes "
            f"{args.stable_passes}, ssh.connect_timeout {args.connect_timeout} s",
            "status_samples": args.status_samples,
            "history_runs": HISTORY_RUNS,
            "kept": str(root) if args.keep or failed else None,
        },
        "results": [{**asdict(r), "case": asdict(r.case)} for r in table],
        "marginal_cpu_ms_per_machine": marginal,
        "profiles": [{**asdict(r), "case": asdict(r.case)} for r in profiles],
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.results / f"{args.name}.md").write_text(markdown(results))
    print(markdown(results))
    for r in failed:
        print(f"scale: FAILED {r.case.name}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
