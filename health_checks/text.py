"""Text that came from a machine, made safe to store and show: the one sanitiser.

A host controls what its commands print, what its HTTP server answers and the reason its SSH
server gives for a disconnect. None of that may control the owner's terminal (``\\x1b[2J``,
``\\x1b]0;title\\x07``), forge a log line (``running\\n00:00:00 run 1: done``; under journald
each line is an entry of its own) or grow a status line without bound. So every piece of host
text that becomes part of a message — a probe's detail, an error, a log line, ``status`` and
``history`` — goes through ``from_host`` first:

- C0 and C1 control characters and DEL become visible escapes (``\\n``, ``\\r``, ``\\t``,
  ``\\x1b``, ``\\x9b``); so do Unicode format and separator characters that reorder or hide
  text (bidi overrides such as U+202E, zero-width characters, U+2028/U+2029) as ``\\u202e``;
- the result is at most ``limit`` characters, a longer text ending in ``…[N more]``.

Backslashes are kept as they are, so ``from_host`` is idempotent: text that passed through it
once (at ``remote.py``'s boundary) passes unchanged through it again (at the gate's). Where
host output is *parsed* (a boot id, ``systemctl is-active``'s lines) it is parsed raw, and
only what is said about it is sanitised.

Where it is applied: ``orchestrator/remote.py`` for everything a ``Host`` reports as text
(SSH errors and disconnect reasons, the system state, a refused reboot's output);
``health_checks/gate.py`` for every ``Probe`` of a round (name and detail), whatever check
type made it; and each check type for the text it builds from host output, as well as for its
``describe()`` of configured words.
"""

from __future__ import annotations

import unicodedata

__all__ = ["DEFAULT_LIMIT", "from_host"]

# One detail or error line: enough for a useful message, small enough for a status column.
DEFAULT_LIMIT = 512

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return _NAMED.get(char) or f"\\x{code:02x}"
    if code < 0x7F:
        return char
    # Cf: format (bidi overrides and isolates, zero-width joiners, BOM); Zl/Zp: line and
    # paragraph separators (a new line to some viewers); Cs: lone surrogates from a decode.
    if unicodedata.category(char) in ("Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
    return char


def from_host(text: str, limit: int = DEFAULT_LIMIT) -> str:
    """``text`` with every control or invisible-format character escaped, at most ``limit``
    characters long (a cut text ends in ``…[N more]``, N counting escaped characters)."""
    if limit < 16:
        raise ValueError("limit must leave room for the truncation marker")
    pieces = [_escape(char) for char in text]
    total = sum(len(piece) for piece in pieces)
    if total <= limit:
        return "".join(pieces)
    kept: list[str] = []
    used = 0
    # The marker's own length depends on N; reserve room for the longest it can be.
    room = limit - len(f"…[{total} more]")
    for piece in pieces:
        if used + len(piece) > room:
            break  # never cut an escape in half
        kept.append(piece)
        used += len(piece)
    return "".join(kept) + f"…[{total - used} more]"
