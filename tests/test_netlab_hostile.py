"""Issue 8, items 1 and 2, against real sshd hosts (tests/netlab) that attack their observer:
every host hostile at once, on every channel (`tests.netlab.Hostile`) — an endless boot id,
`systemctl is-system-running` printing escape sequences and a forged log line (or escape lines
without end), `systemctl reboot` writing without end, an endless and a 100 MB HTTP body, an
SSH server whose disconnect reason is escape sequences.

The orchestrator is the real program (`python -m orchestrator run`), its peak RSS taken from
the kernel (`wait4`'s ru_maxrss for exactly that child). Verdicts: it stays small, it ends
aborted cleanly (exit 1, one `error:` reason, no traceback), and no raw control character and
no forged line reaches stderr, `log_file`, `status`, `status --json` or `history` — while the
escaped form does, so the test cannot pass by the text simply never being shown."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, latest_run
from tests.fault_lab import boots, reboots_requested, write_config
from tests.netlab import Hostile, Lab

pytestmark = pytest.mark.netlab

RSS_LIMIT_MB = 100
RUN_TIMEOUT = 120
# Raw bytes a host sent that must never be shown: ESC, BEL, C1 CSI, right-to-left override.
RAW = ("\x1b", "\x07", "\x9b", "\u202e")
FORGED = re.compile(r"^(\d\d:\d\d:\d\d )?00:00:00 run 1: done FORGED", re.MULTILINE)


@dataclass(frozen=True)
class Measured:
    returncode: int
    stderr: str
    peak_rss_mb: float
    seconds: float


# Linux records, at exec, the memory high-water mark of the image being replaced into the
# process's ru_maxrss: a child forked straight from this (large) pytest process would report
# pytest's size. So a small launcher forks the orchestrator from its own small image, waits
# for it with wait4 and writes that child's ru_maxrss (KiB) to argv[1].
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def run_measured(config: Path, *args: str, workdir: Path) -> Measured:
    """One real orchestrator process; its own peak RSS from wait4 (not the test's)."""
    err_path = workdir / "stderr.txt"
    rss_path = workdir / "peak-rss-kib"
    started = time.monotonic()
    with err_path.open("wb") as err:
        orchestrator = [sys.executable, "-m", "orchestrator", "--config", str(config), *args]
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(rss_path), *orchestrator],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=REPO,
        )
        deadline = time.monotonic() + RUN_TIMEOUT
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError("the orchestrator did not finish against hostile hosts")
            time.sleep(0.05)
    del usage  # the launcher's own figure, inflated by this process's size
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Measured(
        proc.returncode,
        err_path.read_text(errors="replace"),
        int(rss_path.read_text()) / 1024,
        time.monotonic() - started,
    )


def shown(config: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--config", str(config), *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def strings_in(data: Any) -> list[str]:
    if isinstance(data, str):
        return [data]
    if isinstance(data, dict):
        return [s for value in data.values() for s in strings_in(value)]
    if isinstance(data, list):
        return [s for value in data for s in strings_in(value)]
    return []


def assert_safe(where: str, text: str) -> None:
    for raw in RAW:
        assert raw not in text, f"raw {raw!r} from a host reached {where}"
    assert not FORGED.search(text), f"a forged log line reached {where}"
    assert "\r" not in text, f"a carriage return reached {where}"


def assert_everything_shown_is_safe(config: Path, measured: Measured, log_file: Path) -> dict:
    assert_safe("stderr", measured.stderr)
    assert "Traceback" not in measured.stderr
    assert_safe("log_file", log_file.read_text(errors="replace"))
    assert_safe("status", shown(config, "status"))
    assert_safe("history", shown(config, "history"))
    data = json.loads(shown(config, "status", "--json"))
    for text in strings_in(data):
        assert_safe("status --json", text)
    return data


def machine(lab: Lab, name: str, checks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"host": lab.hosts[name].address, "checks": checks}


def test_every_host_hostile_at_once_in_preflight_is_bounded_and_shown_escaped(netlab, tmp_path):
    lab = netlab(
        4,
        hostile={
            "h1": Hostile(boot_id=True),
            "h2": Hostile(state="endless", http="endless"),
            "h3": Hostile(state="forged", http="huge"),
            "h4": Hostile(ssh_disconnect=True),
        },
    )
    url = {name: host.health_url for name, host in lab.hosts.items()}
    endless_escapes = ["sh", "-c", "yes \"$(printf '\\033[2J\\033]0;t\\007')\""]
    forged_failure = ["sh", "-c", "printf '\\033[31m\\n00:00:00 run 1: done FORGED\\n' >&2; exit 1"]
    log_file = tmp_path / "orchestrator.log"
    config = write_config(
        lab,
        tmp_path,
        log_file=str(log_file),
        machines={
            "h1": machine(lab, "h1", [{"url": url["h1"]}]),
            "h2": machine(
                lab,
                "h2",
                [
                    {"url": url["h2"], "body_contains": "healthy"},
                    {"type": "command", "command": endless_escapes},
                ],
            ),
            "h3": machine(
                lab,
                "h3",
                [
                    {"url": url["h3"]},
                    {"url": url["h3"] + "?body", "body_contains": "END"},
                    {"type": "command", "command": forged_failure},
                    {"type": "command", "command": ["printf", "\x1b]0;from config\x07"]},
                ],
            ),
            "h4": machine(lab, "h4", [{"url": url["h4"]}]),
        },
    )

    measured = run_measured(config, "run", workdir=tmp_path)

    assert measured.returncode == 1, measured.stderr
    assert measured.peak_rss_mb < RSS_LIMIT_MB, measured
    print(f"peak RSS {measured.peak_rss_mb:.1f} MB in {measured.seconds:.1f}s (preflight)")
    assert reboots_requested(lab) == [] and boots(lab) == {}
    errors = [line for line in measured.stderr.splitlines() if "aborted:" in line]
    assert len(errors) == 1 and "preflight failed, nothing was touched" in errors[0]
    # Every host's attack was seen, and shown escaped.
    assert "h1: boot id: unreadable or not a UUID" in errors[0]
    assert "h2: system: not a state: more than 1024 bytes: \\x1b[2J\\x1b]0;pwned\\x07" in errors[0]
    assert "h3: system: running\\n\\x1b[2J" in errors[0]
    assert "h4: ssh: \\x1b[2J\\x1b]0;pwned\\x07\\x1b[31mred\\x9b2J\\u202eevil\\n" in errors[0]

    data = assert_everything_shown_is_safe(config, measured, log_file)
    assert data["state"] == "aborted"
    probes = {m["name"]: {p["probe"]: p for p in m["last_probes"]} for m in data["machines"]}
    h2 = probes["h2"]
    assert h2[f"http {url['h2']}"]["detail"] == "body lacks 'healthy' in its first 65536 bytes"
    (endless,) = [p for name, p in h2.items() if name.startswith("command sh -c 'yes")]
    assert not endless["ok"]
    h3 = probes["h3"]
    assert h3[f"http {url['h3']}"]["ok"]  # status 200; the 100 MB body is never read
    assert h3[f"http {url['h3']}"]["detail"] == "HTTP 200"
    # END is the last of 100 MB: past the 64 KiB read, so not found (and not read for).
    assert h3[f"http {url['h3']}?body"]["detail"] == "body lacks 'END' in its first 65536 bytes"
    failing = [p for p in h3.values() if not p["ok"]]
    assert any(p["detail"] == "exit 1: 00:00:00 run 1: done FORGED" for p in failing), failing
    assert "command printf '\\x1b]0;from config\\x07'" in h3  # configured argv, escaped
    assert run_error_mentions(tmp_path, "\\x1b")


def run_error_mentions(directory: Path, text: str) -> bool:
    run = latest_run(directory / "state")
    return run is not None and run.error is not None and text in run.error


def test_a_reboot_command_that_writes_without_end_is_refused_not_taken_as_delivered(
    netlab, tmp_path
):
    # Every host hostile; all of them pass preflight (their HTTP bodies, endless or 100 MB,
    # are never read without body_contains), then h1's `systemctl reboot` floods.
    lab = netlab(
        4,
        boot_time=0.5,
        hostile={
            "h1": Hostile(reboot=True, http="huge"),
            "h2": Hostile(http="endless", reboot=True),
            "h3": Hostile(http="endless"),
            "h4": Hostile(http="huge"),
        },
    )
    log_file = tmp_path / "orchestrator.log"
    config = write_config(lab, tmp_path, log_file=str(log_file))

    measured = run_measured(config, "run", workdir=tmp_path)

    assert measured.returncode == 1, measured.stderr
    assert measured.peak_rss_mb < RSS_LIMIT_MB, measured
    print(f"peak RSS {measured.peak_rss_mb:.1f} MB in {measured.seconds:.1f}s (reboot flood)")
    # Refused at once (the output cap), not after the 30 s reboot-command timeout, and the
    # run stopped at h1: nobody else was asked.
    assert measured.seconds < 20, measured
    assert boots(lab) == {}
    run = latest_run(tmp_path / "state")
    assert run is not None and run.state == "aborted"
    assert run.error.startswith(
        "h1: the reboot command kept writing (more than 4096 bytes) instead of ending; "
        "not taken as a reboot: \\x1b[2J\\x1b]0;pwned\\x07"
    ), run.error
    assert run.machine("h2").reboot_requested_at is None
    data = assert_everything_shown_is_safe(config, measured, log_file)
    outcome = {m["name"]: m["state"] for m in data["machines"]}
    assert outcome == {"h1": "failed", "h2": "untouched", "h3": "untouched", "h4": "untouched"}
    assert "\\x1b[2J" in measured.stderr
