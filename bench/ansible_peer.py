"""A peer in the same run (issue 11): ours against Ansible's `serial: 1` + `reboot` + `uri`.

`python -m bench.ansible_peer [--hosts 4] [--pairs 3] [--stable-passes 1 2]` (root). On one
netlab (tests/netlab: network namespaces, real OpenSSH sshd) it alternates, for each
`stable_passes` value, our rolling run (`orchestrator --config C run`, update/deploy `true`,
preflight on) and `ansible-playbook` of PLAYBOOK below: A B A B A B. Each run is judged by the
lab's ground truth alone: per host, healthy -> the next host's reboot request (advance lag),
and per run, wall time minus the sum of the hosts' own reboot -> healthy (overhead). It writes
bench/peer-results.json and bench/peer-results.md; raw artifacts go to bench/out/.
`ansible-playbook` must be beside this python (`make bench` installs ansible-core, pinned in
bench/constraints-ansible.txt) or on PATH.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import metrics
from bench.common import tool_beside_python
from bench.run import (
    BENCH_DIR,
    FirstPassWatcher,
    Scenario,
    default_scenario,
    machine_info,
    orchestrator_bin,
    product_info,
)
from tests.netlab import Lab
from tests.netlab.lab import missing_prerequisites

# What an Ansible user writes for a rolling reboot behind a health check. The lab's hosts
# reboot through their `systemctl reboot` shim (there is no `shutdown` on them), and the
# reboot module's default boot detection reads /proc/sys/kernel/random/boot_id, which each
# host has of its own. Kept verbatim in README.md ("## Benchmark").
PLAYBOOK = """\
- name: Rolling reboot, one host at a time, each healthy before the next
  hosts: all
  serial: 1
  gather_facts: false
  tasks:
    - name: Reboot
      ansible.builtin.reboot:
        reboot_command: systemctl reboot
        reboot_timeout: 120
        test_command: systemctl is-system-running

    - name: Wait until the health endpoint answers 200
      ansible.builtin.uri:
        url: "http://{{ ansible_host }}:8080/health"
        status_code: 200
      register: health
      until: health.status == 200
      retries: 120
      delay: 1
"""

# Between two runs: the last host is healthy when a run ends; let its HTTP and sshd settle.
PAUSE_S = 1.0


def ansible_playbook_bin() -> str:
    return tool_beside_python("ansible-playbook", "make bench")


def ansible_version(playbook_bin: str) -> str:
    out = subprocess.run(
        [playbook_bin, "--version"], capture_output=True, text=True, check=False
    ).stdout
    return out.splitlines()[0].strip() if out else "?"


def inventory(lab: Lab, hosts: list[str]) -> str:
    """INI inventory: each host's address, root, the lab's client key, strict host keys."""
    lines = ["[lab]"]
    lines += [f"{h} ansible_host={lab.hosts[h].address}" for h in hosts]
    lines += [
        "",
        "[lab:vars]",
        "ansible_user=root",
        f"ansible_ssh_private_key_file={lab.client_key_path}",
        "ansible_ssh_common_args='-o UserKnownHostsFile="
        f"{lab.known_hosts_path} -o StrictHostKeyChecking=yes'",
        # The hosts' python (the build machine's); said, so no interpreter discovery warning.
        "ansible_python_interpreter=/usr/bin/python3",
        "",
    ]
    return "\n".join(lines)


def _spawn_and_wait(
    argv: list[str], workdir: Path, env: dict[str, str], limit_s: float
) -> tuple[int, float, float, Any]:
    """Run argv as a child, output to workdir/log; (exit code, started, ended, rusage)."""
    with open(workdir / "log", "wb") as log:
        started = time.time()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
        )
        killer = threading.Timer(limit_s, proc.kill)
        killer.start()
        # wait4: CPU time and peak RSS of the process and every child it waited for.
        _, wait_status, usage = os.wait4(proc.pid, 0)
        ended = time.time()
        killer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(wait_status)
    return proc.returncode, started, ended, usage


def _summary(rows: list[dict[str, Any]], started: float, ended: float, usage: Any) -> Any:
    return metrics.run_summary(
        rows,
        started=started,
        ended=ended,
        cpu_s=usage.ru_utime + usage.ru_stime,
        maxrss_kb=usage.ru_maxrss,
    )


def run_ours(lab: Lab, scenario: Scenario, workdir: Path, orch: str) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    hosts = list(lab.hosts)
    state_dir = workdir / "state"
    config = lab.write_config(workdir / "config.yaml", state_dir, **scenario.config_overrides(lab))
    watcher = FirstPassWatcher(state_dir / "state.db")
    watcher.start()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    code, started, ended, usage = _spawn_and_wait(
        [orch, "--config", str(config), "run"], workdir, env, 60 * len(hosts) + 120
    )
    watcher.stop()
    result: dict[str, Any] = {"tool": "ours", "dir": str(workdir), "exit_code": code}
    try:
        if code != 0:
            raise metrics.BadRun(f"orchestrator exited {code}, see {workdir}/log")
        status = json.loads(
            subprocess.run(
                [orch, "--config", str(config), "status", "--json"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        gate = metrics.GateConfig(scenario.poll_interval, scenario.stable_passes)
        truth = lab.events(since=started)
        rows = metrics.per_host(hosts, truth, status, watcher.first_pass, gate, started)
    except metrics.BadRun as exc:
        result["error"] = str(exc)
        return result
    result["hosts"] = rows
    result["summary"] = _summary(rows, started, ended, usage)
    return result


def run_ansible(lab: Lab, playbook_dir: Path, workdir: Path, playbook_bin: str) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    hosts = list(lab.hosts)
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    # Its own home (control sockets, temp files) and no ansible.cfg from anywhere else.
    env |= {
        "ANSIBLE_HOME": str(playbook_dir / "ansible-home"),
        "ANSIBLE_CONFIG": str(playbook_dir / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
    }
    argv = [
        playbook_bin,
        "-i",
        str(playbook_dir / "inventory.ini"),
        str(playbook_dir / "playbook.yml"),
    ]
    code, started, ended, usage = _spawn_and_wait(argv, workdir, env, 150 * len(hosts) + 120)
    result: dict[str, Any] = {"tool": "ansible", "dir": str(workdir), "exit_code": code}
    try:
        if code != 0:
            raise metrics.BadRun(f"ansible-playbook exited {code}, see {workdir}/log")
        rows = metrics.truth_rows(hosts, lab.events(since=started), started)
    except metrics.BadRun as exc:
        result["error"] = str(exc)
        return result
    result["hosts"] = rows
    result["summary"] = _summary(rows, started, ended, usage)
    return result


def tool_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if "error" not in r]
    rows = [row for r in good for row in r["hosts"]]

    def over_runs(key: str) -> dict[str, float | int | None]:
        return metrics.dist(r["summary"][key] for r in good)

    out: dict[str, Any] = {
        "runs_ok": len(good),
        "runs_failed": [r["error"] for r in runs if "error" in r],
        "overhead_per_host_s": over_runs("overhead_per_host_s"),
        "advance_lag_s": metrics.dist(r["advance_lag_s"] for r in rows),
        "start_to_first_reboot_s": over_runs("start_to_first_reboot_s"),
        "last_healthy_to_exit_s": over_runs("last_healthy_to_exit_s"),
        "wall_s": over_runs("wall_s"),
        "cpu_per_host_s": over_runs("cpu_per_host_s"),
        "reboot_to_healthy_s": metrics.dist(r["reboot_to_healthy_s"] for r in rows),
    }
    if rows and "detection_s" in rows[0]:
        out["detection_s"] = metrics.dist(r["detection_s"] for r in rows)
        out["advance_excess_s"] = metrics.dist(r["advance_excess_s"] for r in rows)
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compare(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    ours = tool_summary([p[0] for p in pairs])
    ansible = tool_summary([p[1] for p in pairs])
    pair_ratios = [
        o["summary"]["overhead_per_host_s"] / a["summary"]["overhead_per_host_s"]
        for o, a in pairs
        if "error" not in o and "error" not in a
    ]
    return {
        "ours": ours,
        "ansible": ansible,
        # The figure: median per-host overhead, ours / Ansible.
        "overhead_ratio": _ratio(
            ours["overhead_per_host_s"]["median"], ansible["overhead_per_host_s"]["median"]
        ),
        "overhead_ratio_per_pair": pair_ratios,
        "advance_lag_ratio": _ratio(
            ours["advance_lag_s"]["median"], ansible["advance_lag_s"]["median"]
        ),
    }


GOAL_RATIO = 0.25


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Peer benchmark: ours against Ansible, same lab, interleaved",
        "",
        f"`{results['command']}` on {m['date']}: {m['nproc']} CPUs, Python {m['python']}, "
        f"Linux {m['kernel']}, {m['openssh']}; orchestrator from {results['product']['source']}"
        f" at {results['product']['commit']}; {results['ansible']}.",
        f"{results['hosts']} hosts, {results['pairs']} pairs (ours, Ansible) per `stable_passes`"
        f" value, `poll_interval` {results['poll_interval']:g} s. Load before: "
        f"`{m['uptime']}`; after: `{m['uptime_after']}`.",
        "",
        "| stable_passes | tool | overhead per host, median (min-max of runs) | advance lag, "
        "median / max | start -> first reboot | last healthy -> exit | whole run, median |",
        "|---|---|---|---|---|---|---|",
    ]
    for sp, cmp_ in results["comparisons"].items():
        for tool in ("ours", "ansible"):
            t = cmp_[tool]
            o = t["overhead_per_host_s"]
            lines.append(
                f"| {sp} | {tool} | {_s(o['median'])} ({_s(o['min'])}-{_s(o['max'])}) | "
                f"{_s(t['advance_lag_s']['median'])} / {_s(t['advance_lag_s']['max'])} | "
                f"{_s(t['start_to_first_reboot_s']['median'])} | "
                f"{_s(t['last_healthy_to_exit_s']['median'])} | {_s(t['wall_s']['median'])} |"
            )
    lines += ["", "| stable_passes | overhead ratio ours / Ansible | per pair | goal |"]
    lines += ["|---|---|---|---|"]
    for sp, cmp_ in results["comparisons"].items():
        r = cmp_["overhead_ratio"]
        per_pair = ", ".join(f"{x:.3f}" for x in cmp_["overhead_ratio_per_pair"])
        verdict = "-" if r is None else ("✅" if r <= GOAL_RATIO else f"❌ ({r / GOAL_RATIO:.2f}x)")
        shown = "-" if r is None else f"{r:.3f}"
        lines.append(f"| {sp} | {shown} | {per_pair} | <= {GOAL_RATIO} {verdict} |")
    lines.append("")
    for sp, cmp_ in results["comparisons"].items():
        o = cmp_["ours"]
        if "detection_s" in o:
            lines.append(
                f"Ours, stable_passes {sp}: detection median {_s(o['detection_s']['median'])}, "
                f"advance beyond detection + stability window median "
                f"{_s(o['advance_excess_s']['median'])}; ground truth reboot -> healthy median "
                f"{_s(o['reboot_to_healthy_s']['median'])} (Ansible runs: "
                f"{_s(cmp_['ansible']['reboot_to_healthy_s']['median'])})."
            )
        for tool in ("ours", "ansible"):
            for err in cmp_[tool]["runs_failed"]:
                lines.append(f"FAILED ({tool}, stable_passes {sp}): {err}")
    lines.append("")
    return "\n".join(lines)


def one_line(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"{run['tool']}: FAILED: {run['error']}"
    s = run["summary"]
    lags = [h["advance_lag_s"] for h in run["hosts"][:-1]]
    return (
        f"{run['tool']}: wall {s['wall_s']:.1f}s, overhead/host {s['overhead_per_host_s']:.2f}s,"
        f" advance lag median {statistics.median(lags):.2f}s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ansible_peer", description=__doc__)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=3, help="(ours, Ansible) pairs per value")
    parser.add_argument("--stable-passes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--poll-interval", type=float, default=0.5)
    parser.add_argument("--results", type=Path, default=BENCH_DIR, help="where peer-results go")
    args = parser.parse_args(argv)
    reason = missing_prerequisites()
    if reason:
        print(f"bench: {reason}", file=sys.stderr)
        return 2
    orch = orchestrator_bin()
    playbook_bin = ansible_playbook_bin()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = BENCH_DIR / "out" / f"{stamp}-peer"
    out.mkdir(parents=True)
    info_before = machine_info()
    # The same hosts as the main bench's scenario of this size (boot times, HTTP delays).
    base = default_scenario(
        args.hosts,
        argparse.Namespace(repeat=1, poll_interval=args.poll_interval, stable_passes=1),
    )
    lab = Lab(out / "lab", args.hosts, faults=base.faults())
    comparisons: dict[str, Any] = {}
    raw: dict[str, list[dict[str, Any]]] = {}
    with lab:
        hosts = list(lab.hosts)
        (out / "inventory.ini").write_text(inventory(lab, hosts))
        (out / "playbook.yml").write_text(PLAYBOOK)
        (out / "ansible.cfg").write_text("[defaults]\n")
        for sp in args.stable_passes:
            scenario = dataclasses.replace(base, stable_passes=sp)
            pairs = []
            for i in range(1, args.pairs + 1):
                print(f"bench: stable_passes {sp}, pair {i}/{args.pairs} ...", file=sys.stderr)
                time.sleep(PAUSE_S)
                ours = run_ours(lab, scenario, out / f"sp{sp}-{i}-ours", orch)
                print(f"bench:   {one_line(ours)}", file=sys.stderr)
                time.sleep(PAUSE_S)
                peer = run_ansible(lab, out, out / f"sp{sp}-{i}-ansible", playbook_bin)
                print(f"bench:   {one_line(peer)}", file=sys.stderr)
                pairs.append((ours, peer))
            comparisons[str(sp)] = compare(pairs)
            raw[str(sp)] = [run for pair in pairs for run in pair]
    shutil.copy(lab.truth_path, out / "truth.jsonl")
    results = {
        "command": " ".join(
            ["python -m bench.ansible_peer", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": {**info_before, "uptime_after": machine_info()["uptime"]},
        "product": product_info(orch),
        "ansible": ansible_version(playbook_bin),
        "playbook": PLAYBOOK,
        "hosts": args.hosts,
        "pairs": args.pairs,
        "poll_interval": args.poll_interval,
        "faults": {h: dataclasses.asdict(f) for h, f in base.faults().items()},
        "goal_ratio": GOAL_RATIO,
        "comparisons": comparisons,
        "runs": raw,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "peer-results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.results / "peer-results.md").write_text(markdown(results))
    print(markdown(results))
    failed = sum(
        len(c[t]["runs_failed"]) for c in comparisons.values() for t in ("ours", "ansible")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
