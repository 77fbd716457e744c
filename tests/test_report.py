"""What `orchestrator status` prints: host-supplied text verbatim, per-machine states."""

from __future__ import annotations

from pathlib import Path

from orchestrator import report
from orchestrator.states import Phase, RunKind
from orchestrator.store import Store


def test_status_table_prints_text_from_hosts_verbatim(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with Store.open(tmp_path) as store:
        run = store.create_run(RunKind.NIGHTLY, [("grey-area", False), ("self", True)], tmp_path)
        store.record_machine_error(
            run.run_id, "grey-area", "HTTP 503: [bold]maintenance[/bold] :fire:"
        )
        store.set_state(run.run_id, Phase.ABORTED.value, error="grey-area: [red]down[/red]")
        run = store.run(run.run_id)
    report.status_text(run)
    out = capsys.readouterr().out
    assert "[bold]maintenance[/bold] :fire:" in out
    assert "error: grey-area: [red]down[/red]" in out
    data = report.status_json(run)
    assert [m["state"] for m in data["machines"]] == ["failed", "untouched"]


def test_status_and_history_escape_host_text_stored_by_older_versions(
    tmp_path: Path, capsys, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "200")
    # Runs recorded before host text was escaped at the boundary may hold raw escapes.
    with Store.open(tmp_path) as store:
        run = store.create_run(RunKind.NIGHTLY, [("grey-area", False)], tmp_path)
        store.record_machine_error(run.run_id, "grey-area", "state: \x1b[2Jrunning\nFORGED")
        store.set_state(run.run_id, Phase.ABORTED.value, error="grey-area: \x1b]0;owned\x07")
        run = store.run(run.run_id)
    report.status_text(run)
    lines = report.history_lines([run])
    out = capsys.readouterr().out + "\n".join(lines)
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b[2Jrunning\\nFORGED" in out
    assert "grey-area: \\x1b]0;owned\\x07" in lines[0]
