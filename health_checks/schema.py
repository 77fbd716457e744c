"""Field types shared by the config schema and the check models.

They live here, at the bottom of the layering, so that a check module under ``health_checks/``
can declare its own settings without importing the orchestrator, and the orchestrator's config
schema uses the very same types (one duration syntax, one argv rule everywhere).
"""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import Path
from typing import Annotated

import httpx
import idna
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr
from pytimeparse.timeparse import timeparse as parse_timespan

MAX_DURATION = 7 * 24 * 3600.0  # a week: longer is a typo, and `.inf` would hang a run
NOT_A_DURATION = "not a duration (use e.g. 30s, 10m, 2h)"
_SECONDS = re.compile(r"[0-9]+(\.[0-9]*)?")


def _duration_seconds(value: object) -> float:
    """Accept ``30s``, ``10m``, ``2h``, ``1h30m`` or a plain number of seconds, up to 7 days."""
    if isinstance(value, bool):
        raise ValueError(NOT_A_DURATION)
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and _SECONDS.fullmatch(value.strip()):
            seconds = float(value)  # "90" or "1.5": seconds, as a plain number would be
        elif isinstance(value, str):
            parsed = parse_timespan(value.strip())
            if parsed is None:
                shown = value if len(value) <= 40 else value[:37] + "..."
                raise ValueError(f"not a duration: {shown!r} (use e.g. 30s, 10m, 2h)")
            seconds = float(parsed)
        else:
            raise ValueError(NOT_A_DURATION)
    except (OverflowError, ArithmeticError):
        raise ValueError(f"must be at most 7 days ({MAX_DURATION:g}s)") from None
    if math.isnan(seconds):
        raise ValueError(NOT_A_DURATION)
    if seconds < 0:
        raise ValueError("must not be negative")
    if seconds > MAX_DURATION:
        raise ValueError(f"must be at most 7 days ({MAX_DURATION:g}s)")
    return seconds


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be longer than 0s")
    return seconds


_LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}")


def _valid_host(host: str) -> bool:
    """An IP address (IPv6 with or without brackets) or an ASCII DNS name whose labels are
    1-63 characters and whose ``xn--`` labels are valid IDNA."""
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        pass
    else:
        return True
    if not host or len(host) > 253:
        return False
    for label in host.removesuffix(".").split("."):
        if not _LABEL.fullmatch(label):
            return False
        if label[:4].lower() == "xn--":
            try:
                idna.decode(label)
            except (idna.IDNAError, UnicodeError, ValueError):
                return False
    return True


def _http_url(value: str) -> str:
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in value):
        raise ValueError("not a valid http(s) URL (it contains a space or a control character)")
    try:
        url = httpx.URL(value)
        host = url.raw_host.decode("ascii")
        port = url.port
    except (httpx.InvalidURL, UnicodeError, ValueError):
        raise ValueError("not a valid http(s) URL") from None
    if url.scheme not in ("http", "https") or not host or not _valid_host(host):
        raise ValueError("not a valid http(s) URL")
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"not a valid http(s) URL (port {port} is not in 1-65535)")
    return value


_SERVICE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def _service_url(value: object) -> object:
    """An apprise or ping URL: a scheme and a body (apprise alone knows its 100+ schemes).
    The message never repeats the value: these URLs carry tokens."""
    if not isinstance(value, str):
        return value  # SecretStr says "must be a string"
    if not _SERVICE_URL.fullmatch(value) or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("not a URL of the form scheme://... (the value is secret: not shown)")
    return value


def _argv(value: list[str]) -> list[str]:
    if not value or not value[0]:
        raise ValueError("must be a non-empty list: the program, then its arguments")
    if any("\0" in word for word in value):
        raise ValueError("must not contain a NUL byte")
    return value


def _host_name(value: str) -> str:
    if value.startswith("-") or not _valid_host(value):
        raise ValueError("not a valid host name or address")
    return value


_USER = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,31}")


def _user_name(value: str) -> str:
    """POSIX portable user names: letters, digits, `.`, `_`, `-`, not starting with `-`."""
    if not _USER.fullmatch(value):
        raise ValueError(
            "not a valid user name (letters, digits, '.', '_' and '-', at most 32, "
            "not starting with '-')"
        )
    return value


def _path_text(value: object) -> object:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("must be a path, not an empty string")
        if "\0" in value:
            raise ValueError("must not contain a NUL byte")
    return value


Duration = Annotated[float, BeforeValidator(_duration_seconds)]
PositiveDuration = Annotated[float, BeforeValidator(_duration_seconds), AfterValidator(_positive)]
Argv = Annotated[list[str], AfterValidator(_argv)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
ServiceUrl = Annotated[SecretStr, BeforeValidator(_service_url)]
HostName = Annotated[str, AfterValidator(_host_name)]
UserName = Annotated[str, AfterValidator(_user_name)]
FilePath = Annotated[Path, BeforeValidator(_path_text)]
Port = Annotated[int, Field(ge=1, le=65535)]


class ConfigModel(BaseModel):
    """Frozen, so the engine can pass config around without fear; unknown keys are errors,
    because a typo that silently dropped a health check would defeat the gate."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)
