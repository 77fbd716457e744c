"""The simulated lab and ``orchestrator demo``, kept apart from the product's core.

Only the ``demo`` command imports this package; the engine, the gate and the CLI core never
do. The simulated hosts are reached through an ordinary config, exactly like real machines.
This module itself is light (the runner, asyncssh and the rest load when the demo runs).
"""

from __future__ import annotations

# The seed's machines, which the demo simulates (and `--break` may name), in reboot order.
SEED_MACHINES = ("sleeper-service", "grey-area", "reverse-proxy")


def run_demo(debug: bool = False, keep: bool = False, broken: str | None = None) -> int:
    from orchestrator.demo.runner import run_demo as run

    return run(debug=debug, keep=keep, broken=broken)


__all__ = ["SEED_MACHINES", "run_demo"]
