"""What a test does when this machine lacks a tool it needs: skip on a developer's machine,
fail under CI (``CI`` set), which must install everything the tests need (``.ci/run``)."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(reason: str, install: str) -> NoReturn:
    """``reason``: what is missing; ``install``: how CI provides it."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must provide it ({install})")
    pytest.skip(reason)
