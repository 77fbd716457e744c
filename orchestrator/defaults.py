"""Every default value of the configuration, defined once.

The schema (``config.py``) takes its defaults from here, and so do the few places that need a
default without loading the schema: ``paths`` (``status`` must answer without importing
pydantic), ``remote`` and the demo. The generated reference (``config/REFERENCE.md``) shows
them from the schema, and ``nix/module.nix`` points to that reference instead of restating them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

CONFIG_PATH = Path("/etc/lab-orchestrator/config.yaml")
STATE_DIR = Path("/var/lib/lab-orchestrator")

UPDATE_COMMAND = ("lab", "update")
UPDATE_TIMEOUT = 900.0
DEPLOY_COMMAND = ("lab", "deploy-all")
DEPLOY_TIMEOUT = 2700.0
DEPLOY_MODE: Literal["all", "per-machine"] = "all"
DEPLOY_MACHINE_COMMAND = ("lab", "deploy", "{machine}")
# The one placeholder of `deploy.machine_command`, replaced by the machine's name as one
# whole argv word.
MACHINE_PLACEHOLDER = "{machine}"

SSH_USER = "root"
SSH_PORT = 22
SSH_CONNECT_TIMEOUT = 5.0
KNOWN_HOSTS_FILES = (Path("~/.ssh/known_hosts"), Path("/etc/ssh/ssh_known_hosts"))

REBOOT_COMMAND = ("systemctl", "reboot")
REBOOT_TIMEOUT = 900.0
POLL_INTERVAL = 1.0
PROBE_TIMEOUT = 2.0
STABLE_PASSES = 2
SETTLE = 0.0
REBOOT_WHEN: Literal["always", "if-needed"] = "always"
# NixOS's system.autoUpgrade rule: a reboot is needed when one of these differs between the
# booted system and the system profile.
REBOOT_IF_CHANGED: tuple[Literal["kernel", "initrd", "kernel-modules", "systemd"], ...] = (
    "kernel",
    "initrd",
    "kernel-modules",
)
BOOT_ONCE = False
POWER_CYCLE_AFTER = 300.0
ON_FAILURE: Literal["stop", "rollback"] = "rollback"
# Installed on each NixOS target by nix/target.nix (the sudo rule names it exactly).
TARGET_HELPER = ("lab-orchestrator-target",)
# The fleet interlock: before each reboot, one bounded round of every other machine; a run
# that finds one unhealthy waits up to this long for it, then aborts.
INTERLOCK_ENABLED = True
INTERLOCK_TIMEOUT = 600.0
# How many machines are probed or connected to at once (preflight, plan, the interlock, the
# warm-up of the next wave; each holds an SSH connection and an HTTP request or two): 40
# machines on a 2-core controller are three batches, not 40 handshakes at once.
PROBE_CONCURRENCY = 16
# Preflight asks each machine up to this many rounds before calling it unhealthy.
PREFLIGHT_ATTEMPTS = 3

STATE_COMMAND = ("systemctl", "is-system-running")
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")

HOOK_TIMEOUT = 60.0

NOTIFY_ON: tuple[Literal["aborted", "done"], ...] = ("aborted",)
NOTIFY_TIMEOUT = 30.0
HEARTBEAT_TIMEOUT = 10.0
POWER_CYCLE_TIMEOUT = 120.0  # the power-cycle command (a smart plug, IPMI): seconds
