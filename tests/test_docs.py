"""The README's promises that code can check: the state diagram is the one states.py defines,
and the example config it points to is complete and valid."""

from __future__ import annotations

import re

from orchestrator.config import Config
from orchestrator.states import RunKind, mermaid
from tests.conftest import REPO


def test_readme_state_diagram_is_generated_from_the_state_machine():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```mermaid\n(.*?)\n```", readme, flags=re.S)
    assert block is not None
    assert block.group(1) == mermaid(RunKind.NIGHTLY, ["first", "last"])


def test_example_config_mentions_every_key_of_the_schema():
    example = (REPO / "config" / "lab.example.yaml").read_text()
    for section, model in Config.model_fields.items():
        assert re.search(rf"^#? ?{section}:", example, flags=re.M), section
        annotation = model.annotation
        for key in getattr(annotation, "model_fields", {}):
            assert re.search(rf"^\s+{key}:", example, flags=re.M), f"{section}.{key}"
