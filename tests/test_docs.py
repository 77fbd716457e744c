"""The README's promises that code can check: the state diagram is the one states.py defines,
and the config reference and example config are the ones the schema generates."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from health_checks.registry import CHECK_TYPES
from orchestrator.config import Config, parse_config
from orchestrator.paths import load_yaml
from orchestrator.states import RunKind, mermaid
from tests.conftest import REPO

REGENERATE = ".venv/bin/orchestrator config-reference --write config/"
STALE = f"is out of date with the schema; regenerate it with `{REGENERATE}`"


def test_readme_state_diagram_is_generated_from_the_state_machine():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```mermaid\n(.*?)\n```", readme, flags=re.S)
    assert block is not None
    assert block.group(1) == mermaid(RunKind.NIGHTLY, ["first", "last"])


# --- the generated config reference and example -------------------------------------------------


def config_reference(*args: str) -> str:
    """``orchestrator config-reference`` run for real, from the repository root."""
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "config-reference", *args],
        cwd=REPO,
        capture_output=True,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode("utf-8")


def test_committed_reference_is_the_generated_one():
    committed = (REPO / "config" / "REFERENCE.md").read_text(encoding="utf-8")
    assert committed == config_reference(), f"config/REFERENCE.md {STALE}"


def test_committed_example_is_the_generated_one():
    committed = (REPO / "config" / "lab.example.yaml").read_text(encoding="utf-8")
    assert committed == config_reference("--example"), f"config/lab.example.yaml {STALE}"


def test_write_produces_both_files(tmp_path: Path):
    out = config_reference("--write", str(tmp_path / "docs"))
    written = {tmp_path / "docs" / "REFERENCE.md", tmp_path / "docs" / "lab.example.yaml"}
    assert {Path(line) for line in out.splitlines()} == written
    reference = (tmp_path / "docs" / "REFERENCE.md").read_text(encoding="utf-8")
    example = (tmp_path / "docs" / "lab.example.yaml").read_text(encoding="utf-8")
    assert reference == config_reference()
    assert example == config_reference("--example")


def test_example_loads_and_round_trips():
    path = REPO / "config" / "lab.example.yaml"
    loaded = parse_config(path, path.read_text(encoding="utf-8"))
    settings = loaded.settings
    dumped = settings.model_dump(mode="json")
    # Notification URLs carry tokens: a dump masks them, so they cannot leak through one.
    secrets = [url.get_secret_value() for url in settings.notify.urls]
    assert secrets and not any(secret in str(dumped) for secret in secrets)
    dumped["notify"]["urls"] = secrets
    assert Config.model_validate(dumped) == settings
    assert loaded.machine_order == tuple(settings.order or settings.machines)


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return [annotation] if issubclass(annotation, BaseModel) else []
    return [model for arg in typing.get_args(annotation) for model in _models(arg)]


def _all_models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    todo: list[type[BaseModel]] = [Config, *CHECK_TYPES.values()]
    while todo:
        model = todo.pop(0)
        if model in found:
            continue
        found.append(model)
        for field in model.model_fields.values():
            todo += _models(field.annotation)
    return found


def test_the_walk_reaches_every_section_and_check_type():
    names = {model.__name__ for model in _all_models()}
    assert {"CommandStep", "SshSettings", "RebootSettings", "LocalSettings", "Hooks"} <= names
    assert {"Machine", *(model.__name__ for model in CHECK_TYPES.values())} <= names


@pytest.mark.parametrize("model", _all_models(), ids=lambda model: model.__name__)
def test_every_field_has_a_description_and_an_example(model: type[BaseModel]):
    hint = f"; add it to the Field(...) and regenerate: `{REGENERATE}`"
    for name, field in model.model_fields.items():
        where = f"{model.__name__}.{name}"
        assert field.description and field.description.strip(), f"{where} has no description{hint}"
        section = isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        # A nested section (`ssh:`) is exemplified by the examples of its own keys.
        assert section or field.examples, f"{where} has no example{hint}"


def _keys_by_model(value: Any, models: list[type[BaseModel]], seen: dict[str, set[str]]) -> None:
    """Record, per model, which of its keys the example data uses."""
    if isinstance(value, list):
        for item in value:
            _keys_by_model(item, models, seen)
        return
    if not isinstance(value, dict):
        return
    fitting = [model for model in models if _fits(model, value)]
    if not fitting:  # a mapping of names to models (machines)
        for item in value.values():
            _keys_by_model(item, models, seen)
        return
    model = fitting[0]
    seen.setdefault(model.__name__, set()).update(value)
    for key, item in value.items():
        _keys_by_model(item, _models(model.model_fields[key].annotation), seen)


def _fits(model: type[BaseModel], value: dict[str, Any]) -> bool:
    try:
        model.model_validate(value)
    except ValueError:
        return False
    return True


def _commented_out(field: Any) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("example_commented_out") is True


def test_example_uses_every_key_of_every_model():
    path = REPO / "config" / "lab.example.yaml"
    text = path.read_text(encoding="utf-8")
    raw = load_yaml(path, text)  # the product's loader: `on:` is a key, not YAML 1.1's True
    seen: dict[str, set[str]] = {}
    _keys_by_model(raw, [Config], seen)
    for model in _all_models():
        # A key that is the alternative of another (heartbeat `url` or `url_file`) is shown
        # commented out, with its example value.
        shown = {
            name
            for name, field in model.model_fields.items()
            if _commented_out(field) and re.search(rf"^ *# {name}: \S", text, re.M)
        }
        missing = set(model.model_fields) - seen.get(model.__name__, set()) - shown
        assert not missing, f"config/lab.example.yaml lacks {model.__name__} keys {missing}"


def test_reference_has_a_table_per_check_type_with_every_key():
    reference = (REPO / "config" / "REFERENCE.md").read_text(encoding="utf-8")
    for name, model in CHECK_TYPES.items():
        table = re.search(rf"^## .*`type: {name}`\n(.*?)(?=^## |\Z)", reference, re.M | re.S)
        assert table is not None, f"no section for check type {name}"
        for key in model.model_fields:
            assert f"| `{key}` |" in table.group(1), f"{name}.{key}"
