"""What `orchestrator status` prints: host-supplied text verbatim, per-machine states."""

from __future__ import annotations

from pathlib import Path

from orchestrator import report
from orchestrator.states import Phase, RunKind
from orchestrator.store import Store


def test_status_table_prints_text_from_hosts_verbatim(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    store = Store.open(tmp_path)
    run = store.create_run(RunKind.NIGHTLY, [("grey-area", False), ("self", True)], tmp_path)
    store.update_machine(run.run_id, "grey-area", error="HTTP 503: [bold]maintenance[/bold] :fire:")
    store.set_state(run.run_id, Phase.ABORTED.value, error="grey-area: [red]down[/red]")
    report.status_text(store.run(run.run_id))
    out = capsys.readouterr().out
    assert "[bold]maintenance[/bold] :fire:" in out
    assert "error: grey-area: [red]down[/red]" in out
    data = report.status_json(store.run(run.run_id))
    assert [m["state"] for m in data["machines"]] == ["failed", "untouched"]
