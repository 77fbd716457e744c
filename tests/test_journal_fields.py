"""Under the journal, every log line is an entry of the run it belongs to: the real
`orchestrator` process, run as systemd runs it (stderr a stream whose device:inode is in
JOURNAL_STREAM), logging into a real datagram socket at /run/systemd/journal/socket inside a
private mount namespace (tests/journal_listener.py), against the simulated lab."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ORCHESTRATOR, REPO, write_config

# CI runs as root with util-linux: there a missing prerequisite is a failure, not a skip.
pytestmark = pytest.mark.skipif(
    not os.environ.get("CI") and (os.geteuid() != 0 or shutil.which("unshare") is None),
    reason="needs root and unshare(1) for a private /run/systemd/journal",
)

# What a host's step prints: a terminal escape and a carriage return meant to forge a line.
HOSTILE = r"printf 'deployed \033[2J\rrun 1: done FORGED\n'"
PHASES = ("rebooting", "verifying", "settling")


def _flat(entry: dict[str, list[str]]) -> dict[str, str]:
    assert all(len(values) == 1 for values in entry.values()), entry  # no field twice
    return {key: values[0] for key, values in entry.items()}


def _journal_run(tmp_path, lab, env) -> dict:
    config = write_config(
        tmp_path / "lab.yaml",
        lab.lab.config(tmp_path / "state", deploy={"command": ["sh", "-c", HOSTILE]}),
    )
    argv = ["unshare", "--mount", "--propagation", "private", "--"]
    argv += [sys.executable, str(REPO / "tests" / "journal_listener.py"), "--"]
    argv += [*ORCHESTRATOR, "--config", str(config), "run"]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, cwd=REPO, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_each_log_line_is_a_journal_entry_with_the_runs_fields(
    tmp_path, make_lab, env_without_journal
):
    # NixOS hosts: a machine that is not NixOS is rightly a warning, and this run is all info.
    lab = make_lab(["alpha", "bravo"], nixos=True)
    seen = _journal_run(tmp_path, lab, env_without_journal)
    assert seen["returncode"] == 0, seen
    # Every line went to the journal socket, none also (or instead) to the stderr stream.
    assert seen["stderr"] == ""
    entries = [_flat(entry) for entry in seen["entries"]]
    messages = [e["MESSAGE"] for e in entries]
    assert any(m.startswith("summary: run 1 (nightly) done after ") for m in messages), messages
    assert all(e["SYSLOG_IDENTIFIER"] == "orchestrator" for e in entries)
    assert all(e["PRIORITY"] == "6" for e in entries), entries  # a healthy run: all info
    assert all(e["CODE_FILE"].endswith(".py") and int(e["CODE_LINE"]) > 0 for e in entries)
    # `journalctl RUN_ID=1`: the run's lines, each with the state it was logged in, and the
    # machine of a machine's state.
    run = [e for e in entries if e.get("RUN_ID") == "1"]
    states = [e["STATE"] for e in run]
    assert list(dict.fromkeys(states)) == [
        "preflight",
        "updating",
        "deploying",
        *(f"{phase}:{m}" for m in ("alpha", "bravo") for phase in PHASES),
        "done",
    ]
    for entry in run:
        machine = entry["STATE"].partition(":")[2]
        assert entry.get("MACHINE") == (machine or None), entry
    by_message = {e["MESSAGE"]: e for e in run}
    assert by_message["run 1: verifying:bravo"]["STATE"] == "verifying:bravo"
    requested = by_message["alpha: reboot requested"]
    assert (requested["STATE"], requested["MACHINE"]) == ("rebooting:alpha", "alpha")
    summaries = [e for e in run if e["MESSAGE"].startswith("summary: ")]
    assert len(summaries) == 3 and {e["STATE"] for e in summaries} == {"done"}
    # `journalctl MACHINE=alpha`: alpha's reboot, wait and settling, nothing of bravo's.
    alpha = [e["MESSAGE"] for e in run if e.get("MACHINE") == "alpha"]
    assert "alpha: reboot requested" in alpha and "run 1: settling:alpha" in alpha
    assert any(m.startswith("alpha: healthy on boot id ") for m in alpha)
    assert not any("bravo" in m for m in alpha)
    # Host text is escaped in MESSAGE= as everywhere else: one line, no terminal control.
    deploy = by_message[r"deploy: deployed \x1b[2J\rrun 1: done FORGED"]
    assert deploy["STATE"] == "deploying" and "MACHINE" not in deploy
    assert all("\x1b" not in m and "\r" not in m and "\n" not in m for m in messages)
    assert "run 1: done FORGED" not in messages
