"""Real-host test lab: fake machines in network namespaces with real OpenSSH sshd (issue 3)."""

from tests.netlab.lab import CONTROLLER, Fault, Host, Lab, LabError, down, missing_prerequisites

__all__ = ["CONTROLLER", "Fault", "Host", "Lab", "LabError", "down", "missing_prerequisites"]
