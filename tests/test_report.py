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
