"""`status` on a config it has seen before answers from the per-user cache: a valid file's
state_dir, and a broken file's one-line problem, without loading the schema (pydantic)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def status(config: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    argv = [sys.executable, "-X", "importtime", "-m", "orchestrator", "--config", str(config)]
    return subprocess.run(
        [*argv, "status"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if not line.startswith("import time:")]


def imported_pydantic(result: subprocess.CompletedProcess[str]) -> bool:
    return any("pydantic" in line for line in result.stderr.splitlines() if "import time" in line)


def test_a_broken_config_is_reported_the_same_from_the_cache_without_the_schema(tmp_path):
    config = tmp_path / "lab.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nmachines: {{a: {{chekcs: []}}}}\n")
    first, second = status(config, tmp_path / "cache"), status(config, tmp_path / "cache")
    assert first.returncode == second.returncode == 2
    assert errors(first) == errors(second) == [f"error: {config}: machines.a.chekcs: unknown key"]
    assert imported_pydantic(first) and not imported_pydantic(second)


def test_a_fixed_config_is_validated_again(tmp_path):
    config = tmp_path / "lab.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nmachines: {{a: {{chekcs: []}}}}\n")
    assert status(config, tmp_path / "cache").returncode == 2
    config.write_text(f"state_dir: {tmp_path / 'state'}\nmachines: {{a: {{host: a.local}}}}\n")
    fixed = status(config, tmp_path / "cache")
    assert fixed.returncode == 0, fixed.stderr
    assert "no runs yet" in fixed.stdout
    again = status(config, tmp_path / "cache")
    assert again.returncode == 0 and not imported_pydantic(again)
