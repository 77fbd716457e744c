"""Field types shared by the config schema and the check models.

They live here, at the bottom of the layering, so that a check module under ``health_checks/``
can declare its own settings without importing the orchestrator, and the orchestrator's config
schema uses the very same types (one duration syntax, one argv rule everywhere).
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pytimeparse.timeparse import timeparse as parse_timespan


def _duration_seconds(value: object) -> float:
    """Accept ``30s``, ``10m``, ``2h``, ``1h30m`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("not a duration (use e.g. 30s, 10m, 2h)")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        parsed = parse_timespan(value.strip())
        if parsed is None:
            raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 10m, 2h)")
        seconds = float(parsed)
    else:
        raise ValueError("not a duration (use e.g. 30s, 10m, 2h)")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be longer than 0s")
    return seconds


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not a valid http(s) URL")
    return value


def _argv(value: list[str]) -> list[str]:
    if not value or not value[0]:
        raise ValueError("must be a non-empty list: the program, then its arguments")
    return value


def _host_name(value: str) -> str:
    if value.startswith("-") or not re.fullmatch(r"[A-Za-z0-9._:\[\]-]+", value):
        raise ValueError("not a valid host name or address")
    return value


Duration = Annotated[float, BeforeValidator(_duration_seconds)]
PositiveDuration = Annotated[float, BeforeValidator(_duration_seconds), AfterValidator(_positive)]
Argv = Annotated[list[str], AfterValidator(_argv)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
HostName = Annotated[str, AfterValidator(_host_name)]
Port = Annotated[int, Field(ge=1, le=65535)]


class ConfigModel(BaseModel):
    """Frozen, so the engine can pass config around without fear; unknown keys are errors,
    because a typo that silently dropped a health check would defeat the gate."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)
