"""URLs that carry tokens (notifications, heartbeat): read from credential files, masked in
everything we show, and scrubbed from any text a library or a server hands back.

Apprise and ping URLs put their tokens anywhere: in the path (``hc-ping.com/<uuid>``), in the
host part (``tgram://<bot token>/<chat>``), in the user info or the query. So a URL is shown
as its scheme alone, plus the host for the generic web schemes whose host is an address, and
any message is scrubbed of every part of every configured URL before it is logged.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from orchestrator.errors import OrchestratorError

# Schemes whose host part is a plain address, so showing it tells the owner which receiver.
_ADDRESS_SCHEMES = {"http", "https", "json", "jsons", "xml", "xmls", "form", "forms"}
_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
# Parts shorter than this are words like "api" or "push", not tokens; scrubbing them would
# garble a message without protecting anything.
_MIN_SECRET_PART = 6
MASK = "***"


def mask(url: str) -> str:
    """``ntfy://***``, ``https://hc-ping.com/***``: enough to tell URLs apart, no token."""
    scheme, _, _ = url.partition("://")
    if scheme.lower() in _ADDRESS_SCHEMES:
        try:
            host = urlsplit(url).hostname
        except ValueError:
            host = None
        if host:
            return f"{scheme}://{host}/{MASK}"
    return f"{scheme}://{MASK}"


def _parts(url: str) -> set[str]:
    parts = {url}
    try:
        split = urlsplit(url)
    except ValueError:
        return parts
    _, _, rest = url.partition("://")
    parts.add(rest)
    parts.update((split.netloc, split.username or "", split.password or "", split.query))
    parts.update(segment for segment in split.path.split("/"))
    for key, value in parse_qsl(split.query, keep_blank_values=True):
        parts.update((value, f"{key}={value}"))
    if split.hostname and split.scheme.lower() not in _ADDRESS_SCHEMES:
        parts.add(split.hostname)  # e.g. tgram://<bot token>/…
    return {part for part in parts if len(part) >= _MIN_SECRET_PART}


def redact(text: str, urls: Sequence[str]) -> str:
    """``text`` with every URL and every token-sized part of one replaced by ``***``."""
    parts: set[str] = set()
    for url in urls:
        parts |= _parts(url)
    for part in sorted(parts, key=len, reverse=True):
        text = text.replace(part, MASK)
    return text


def _read(path: Path, key: str) -> list[str]:
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise OrchestratorError(f"{key}: cannot read {path}: {reason}") from None
    lines = [line.strip() for line in text.splitlines()]
    urls = [line for line in lines if line and not line.startswith("#")]
    for number, url in enumerate(urls, 1):
        if not _SHAPE.fullmatch(url):
            raise OrchestratorError(
                f"{key}: {path}: URL {number} is not of the form scheme://... "
                "(the value is secret: not shown)"
            )
    return urls


def read_lines(path: Path, key: str) -> list[str]:
    """Every URL of a credential file: one per line; blank lines and ``#`` comments skipped."""
    return _read(path, key)


def read_first(path: Path, key: str) -> str:
    """The one URL of a credential file (its first line that is not blank or a comment)."""
    urls = _read(path, key)
    if not urls:
        raise OrchestratorError(f"{key}: {path} holds no URL")
    return urls[0]
