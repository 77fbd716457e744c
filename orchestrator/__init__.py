"""lab-orchestrator: nightly, health-gated update and rolling reboot of a NixOS homelab."""
