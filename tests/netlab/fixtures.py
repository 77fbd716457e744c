"""pytest fixture for the netlab. tests/conftest.py imports it:

    from tests.netlab.fixtures import netlab  # noqa: F401

and a test asks for labs by calling it:

    def test_something(netlab):
        lab = netlab(4, controller=True, faults={"h2": Fault(http="fail")})
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.netlab.lab import Lab, missing_prerequisites
from tests.prereqs import missing


def require_netlab() -> None:
    """Skip (or, under CI, fail) a test when this machine cannot run a lab."""
    reason = missing_prerequisites()
    if reason is None:
        return
    missing(reason, ".ci/run calls install-prereqs.sh")


@pytest.fixture
def netlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Lab]]:
    """Factory: `netlab(hosts=4, **Lab kwargs)` starts a Lab; all are stopped after the test."""
    require_netlab()
    labs: list[Lab] = []

    def make(hosts: Any = 4, **kwargs: Any) -> Lab:
        if kwargs.get("nixos"):
            # Fake NixOS hosts bind-mount their store onto /nix, which must exist.
            reason = missing_prerequisites(nixos=True)
            if reason is not None:
                missing(reason, "install-prereqs.sh creates /nix")
        lab = Lab(tmp_path_factory.mktemp("netlab"), hosts, **kwargs)
        labs.append(lab)
        return lab.start()

    try:
        yield make
    finally:
        for lab in reversed(labs):
            lab.stop()
