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
# Preflight asks each machine up to this many rounds before calling it unhealthy.
PREFLIGHT_ATTEMPTS = 3

STATE_COMMAND = ("systemctl", "is-system-running")
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")

HOOK_TIMEOUT = 60.0

NOTIFY_ON: tuple[Literal["aborted", "done"], ...] = ("aborted",)
NOTIFY_TIMEOUT = 30.0
HEARTBEAT_TIMEOUT = 10.0
