"""What every bench needs from its surroundings: a tool of the venv, and the commit measured."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def tool_beside_python(name: str, install_hint: str) -> str:
    """The ``name`` command of this venv (next to its python), else the one on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        sys.exit(f"bench: no `{name}` next to this python or on PATH ({install_hint})")
    return found


def describe_commit(tree: Path) -> str:
    """``git describe --always --dirty`` of the tree, so results name what they measured."""
    return subprocess.run(
        ["git", "-C", str(tree), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
