"""systemd's status line (issue 9, item 4). Filled in by its own change."""

from __future__ import annotations

from orchestrator.config import NotifySettings
from orchestrator.hooks import Hook


def hooks(settings: NotifySettings) -> list[Hook]:
    return []
