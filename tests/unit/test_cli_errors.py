"""The CLI's one-line errors (issue 8, items 4 and 8): status/history on bad files, history -n,
plan and the log file, and --debug keeping the exit code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import orchestrator

GOOD = "state_dir: {state}\nmachines:\n  grey-area:\n    host: grey-area.local\n"


def run(path: Path | None, *args: str, cache: Path) -> object:
    return orchestrator(path, *args, env={**os.environ, "XDG_CACHE_HOME": str(cache)})


def one_error_line(result: object, path: Path) -> str:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["status", "history"])
def test_a_tab_indented_file_is_one_line(tmp_path: Path, command: str) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text("machines:\n\tgrey-area: {host: g}\n")
    line = one_error_line(run(path, command, cache=tmp_path / "cache"), path)
    assert "line 2" in line


@pytest.mark.parametrize("command", ["status", "history"])
def test_status_and_history_refuse_an_invalid_config(tmp_path: Path, command: str) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(GOOD.format(state=tmp_path / "state") + "    chekcs: []\n")
    line = one_error_line(run(path, command, cache=tmp_path / "cache"), path)
    assert line.endswith("machines.grey-area.chekcs: unknown key")


@pytest.mark.parametrize(
    "content",
    ["machines: {a: {host: a}}\nssh: {port: 2001-02-30}\n", "a: " + "[" * 1000 + "]" * 1000,
     "machines: {a: {host: a}}\nmachines: {}\n"],
    ids=["date", "nesting", "duplicate"],
)  # fmt: skip
def test_the_fast_path_gives_one_line_for_what_pyyaml_cannot_build(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(content)
    for command in ("status", "history", "abort"):
        one_error_line(run(path, command, cache=tmp_path / "cache"), path)


def test_a_valid_config_is_validated_once_then_remembered(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(GOOD.format(state=tmp_path / "state"))
    cache = tmp_path / "cache"
    first = run(path, "status", cache=cache)
    assert first.returncode == 0, first.stderr
    markers = list((cache / "lab-orchestrator" / "valid").iterdir())
    assert [marker.read_text() for marker in markers] == [str(tmp_path / "state")]
    again = run(path, "status", "--json", cache=cache)
    assert again.returncode == 0 and '"run_id": null' in again.stdout
    path.write_text(GOOD.format(state=tmp_path / "state") + "    chekcs: []\n")
    one_error_line(run(path, "status", cache=cache), path)  # a new content is validated again


@pytest.mark.parametrize("limit", ["0", "-1", "x"])
def test_history_limit_must_be_at_least_one(tmp_path: Path, limit: str) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(GOOD.format(state=tmp_path / "state"))
    result = run(path, "history", "-n", limit, cache=tmp_path / "cache")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "--limit" in lines[0]
    assert result.stdout == ""


def test_plan_does_not_create_the_log_file(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    log_file = tmp_path / "orchestrator.log"
    path.write_text(
        f"state_dir: {tmp_path / 'state'}\nlog_file: {log_file}\n"
        "ssh: {connect_timeout: 0.2s}\nreboot: {probe_timeout: 0.2s}\n"
        "machines:\n  grey-area:\n    host: 127.0.0.1\n    port: 9\n"
    )
    result = run(path, "plan", cache=tmp_path / "cache")
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    assert not log_file.exists()
    assert not (tmp_path / "state").exists()


def test_debug_shows_the_traceback_and_keeps_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text("machines: {}\n")
    result = run(None, "--config", str(path), "--debug", "validate-config", cache=tmp_path / "c")
    assert result.returncode == 2, result.stderr
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {path}: machines:")


def test_a_log_file_that_cannot_be_opened_names_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(
        GOOD.format(state=tmp_path / "state") + f"log_file: {tmp_path / 'absent' / 'x.log'}\n"
    )
    line = one_error_line(run(path, "run", cache=tmp_path / "cache"), path)
    assert line.endswith("No such file or directory"), line
    assert f"{path}: log_file: cannot open" in line
    assert not (tmp_path / "state").exists()
