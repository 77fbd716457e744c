"""Probes and the health gate a rebooted machine must pass before the rollout moves on."""
