"""Where the config file is, and the one key ``status`` and ``history`` need from it.

Kept apart from ``config`` so the read-only commands never import pydantic: ``status`` should
answer in well under 150 ms and keep working while the rest of the file is being edited.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

from orchestrator import defaults
from orchestrator.errors import ConfigError


def load_yaml(text: str) -> object:
    """``yaml.safe_load`` with the C loader when PyYAML has it (a 40-machine file costs ~25 ms
    in the pure-Python one, a noticeable part of ``orchestrator status``)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def config_path(option: str | None, environ: Mapping[str, str]) -> Path:
    if option:
        return Path(option)
    if environ.get("ORCHESTRATOR_CONFIG"):
        return Path(environ["ORCHESTRATOR_CONFIG"])
    return defaults.CONFIG_PATH


def read_state_dir(path: Path) -> Path:
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file (pass --config or set ORCHESTRATOR_CONFIG)"
        ) from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    value = (
        raw.get("state_dir", defaults.STATE_DIR) if isinstance(raw, dict) else defaults.STATE_DIR
    )
    if not isinstance(value, str | Path):
        raise ConfigError(f"{path}: state_dir: must be a path")
    return Path(value).expanduser()
