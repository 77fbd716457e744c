"""Prometheus textfile metrics (issue 9, item 3). Filled in by its own change."""

from __future__ import annotations

from orchestrator.config import MetricsSettings
from orchestrator.hooks import Hook
from orchestrator.store import Store


def hooks(settings: MetricsSettings, store: Store) -> list[Hook]:
    return []
