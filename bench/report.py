"""bench/results.md: the issue's targets next to what was measured, one column per scenario."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

# The targets of issue 3 ("The benchmark"). Per-host figures (detection, advance lag) are
# judged over every host of every repeat; per-run figures on the median of the repeats.
TARGETS: dict[str, str] = {
    "detection median": "<= 0.5 s",
    "detection max": "<= 1.5 s",
    "advance lag": "<= detection + stability window + 0.3 s, for every host",
    "overhead per host": "<= 1.5 s",
    "CPU per host": "<= 0.3 s",
    "peak RSS": "<= 80 MB at 40 hosts",
    "status median": "<= 150 ms",
}


def _s(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f} s"


def _judge(text: str, value: float | None, limit: float | None, unit: str = "s") -> str:
    if value is None or limit is None:
        return text
    if value <= limit:
        return f"{text} ✅"
    over = value - limit
    return f"{text} ❌ (+{over * 1000:.0f} ms)" if unit == "ms" else f"{text} ❌ (+{over:.2f})"


def one_line(run: dict[str, Any]) -> str:
    if "error" in run:
        return f"FAILED: {run['error']} (see {run['dir']})"
    s = run["summary"]
    det = [h["detection_s"] for h in run["hosts"]]
    return (
        f"wall {s['wall_s']:.1f}s, detection median {statistics.median(det):.2f}s "
        f"max {max(det):.2f}s, overhead/host {s['overhead_per_host_s']:.2f}s, "
        f"cpu/host {s['cpu_per_host_s']:.3f}s, rss {s['peak_rss_mb']:.0f}MB"
    )


Cell = Callable[[dict[str, Any]], str]


def _rss(sc: dict[str, Any]) -> str:
    rss = sc["peak_rss_mb"]
    if rss["median"] is None:
        return "-"
    text = f"{rss['median']:.1f} MB (worst {rss['max']:.1f})"
    return _judge(text, rss["median"], 80.0 if sc["scenario"]["hosts"] >= 40 else None)


def _status(sc: dict[str, Any]) -> str:
    text, json_ = sc["status_text_median_s"], sc["status_json_median_s"]
    shown = f"{text * 1000:.0f} ms (`--json` {json_ * 1000:.0f} ms)"
    return _judge(shown, text, 0.150, unit="ms")


def _seed(sc: dict[str, Any]) -> str:
    if sc["seed_over_ours"]["median"] is None:
        return "-"
    seed = sc["seed_schedule_s"]["median"]
    return f"{seed:.0f} s ({seed / 60:.0f} min) = **{sc['seed_over_ours']['median']:.0f}x** ours"


ROWS: list[tuple[str, str, Cell]] = [
    (
        "detection, median",
        TARGETS["detection median"],
        lambda sc: _judge(_s(sc["detection_s"]["median"]), sc["detection_s"]["median"], 0.5),
    ),
    (
        "detection, max",
        TARGETS["detection max"],
        lambda sc: _judge(_s(sc["detection_s"]["max"]), sc["detection_s"]["max"], 1.5),
    ),
    (
        "advance lag, median / max",
        "",
        lambda sc: f"{_s(sc['advance_lag_s']['median'])} / {_s(sc['advance_lag_s']['max'])}",
    ),
    (
        "advance lag beyond detection + stability window, median / max",
        "<= 0.3 s",
        lambda sc: _judge(
            f"{_s(sc['advance_excess_s']['median'])} / {_s(sc['advance_excess_s']['max'])}",
            sc["advance_excess_s"]["max"],
            0.3,
        ),
    ),
    (
        "run overhead per host (median of runs)",
        TARGETS["overhead per host"],
        lambda sc: _judge(
            f"{_s(sc['overhead_per_host_s']['median'])} (worst "
            f"{_s(sc['overhead_per_host_s']['max'])})",
            sc["overhead_per_host_s"]["median"],
            1.5,
        ),
    ),
    (
        "overhead outside the per-host advance: start -> first reboot request; last healthy "
        "-> exit",
        "",
        lambda sc: (
            f"{_s(sc['start_to_first_reboot_s']['median'])}; "
            f"{_s(sc['last_healthy_to_exit_s']['median'])}"
        ),
    ),
    (
        "orchestrator CPU per host (median of runs)",
        TARGETS["CPU per host"],
        lambda sc: _judge(
            f"{_s(sc['cpu_per_host_s']['median'], 3)} (worst {_s(sc['cpu_per_host_s']['max'], 3)})",
            sc["cpu_per_host_s"]["median"],
            0.3,
        ),
    ),
    ("orchestrator peak RSS (median of runs)", TARGETS["peak RSS"], _rss),
    ("`orchestrator status`, median of 20", TARGETS["status median"], _status),
    (
        "ground truth reboot -> healthy, median",
        "",
        lambda sc: _s(sc["reboot_to_healthy_s"]["median"]),
    ),
    ("whole run, median of runs", "", lambda sc: _s(sc["wall_s"]["median"], 1)),
    ("seed's fixed `sleep 600` schedule, same boots", "", _seed),
]


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    product = results["product"]
    scenarios = results["scenarios"]
    names = list(scenarios)
    lines = [
        "# Benchmark results",
        "",
        f"`{results['command']}` on {m['date']}: {m['nproc']} CPUs, Python {m['python']}, "
        f"Linux {m['kernel']}, {m['openssh']}; orchestrator from {product['source']} at "
        f"{product['commit']}.",
        f"Load before: `{m['uptime']}`; after: `{m['uptime_after']}` (other test runs share "
        "this machine).",
        "",
        "| metric | target | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for label, target, cell in ROWS:
        lines.append(
            f"| {label} | {target} | " + " | ".join(cell(scenarios[n]) for n in names) + " |"
        )
    lines.append("")
    for name, sc in scenarios.items():
        s = sc["scenario"]
        cross = sc["detection_from_healthy_at_s"]
        lines += [
            f"**{name}**: {sc['runs_ok']} run(s) judged"
            + (
                f", {len(sc['runs_failed'])} failed: {'; '.join(sc['runs_failed'])}"
                if sc["runs_failed"]
                else ""
            )
            + f"; boots {s['boot_time'][0]:g}-{s['boot_time'][1]:g} s (per host, fixed seed), "
            f"HTTP up {s['http_delay']:g} s after sshd on even hosts; gate {s['stable_passes']} "
            f"passes {s['poll_interval']:g} s apart (stability window "
            f"{sc['stability_window_s']:g} s). Detection p90 {_s(sc['detection_s']['p90'])}; "
            f"cross-check from `healthy_at` minus the window: median {_s(cross['median'])}, "
            f"max {_s(cross['max'])}.",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    # Re-render a results.json: python -m bench.report bench/results.json > bench/results.md
    import json
    import sys

    with open(sys.argv[1] if len(sys.argv) > 1 else "bench/results.json") as f:
        print(markdown(json.load(f)), end="")
