"""Real-host test lab: fake machines in network namespaces with real OpenSSH sshd (issue 3)."""

from tests.netlab.lab import (
    CONTROLLER,
    HOSTILE_TEXT,
    NIXOS_KERNEL,
    Fault,
    Host,
    Hostile,
    Lab,
    LabError,
    down,
    missing_prerequisites,
)

__all__ = [
    "CONTROLLER",
    "HOSTILE_TEXT",
    "NIXOS_KERNEL",
    "Fault",
    "Host",
    "Hostile",
    "Lab",
    "LabError",
    "down",
    "missing_prerequisites",
]
