"""The simulated lab and ``orchestrator demo``, kept apart from the product's core.

Only the ``demo`` command imports this package; the engine, the gate and the CLI core never
do. The simulated hosts are reached through an ordinary config, exactly like real machines.
"""

from orchestrator.demo.runner import run_demo

__all__ = ["run_demo"]
