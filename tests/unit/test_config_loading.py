"""Config loading in-process: defaults, durations and the hooks section (what tests/test_config.py,
which drives the CLI, does not already cover)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from health_checks.base import Timeouts
from orchestrator import defaults
from orchestrator.config import LoadedConfig, parse_config
from orchestrator.errors import ConfigError
from tests.conftest import REPO

PATH = Path("/etc/lab-orchestrator/lab.yaml")
MINIMAL = {"machines": {"alpha": {"host": "alpha.local"}}}


def load(**top: object) -> LoadedConfig:
    return parse_config(PATH, yaml.safe_dump({**MINIMAL, **top}, sort_keys=False))


def error(**top: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load(**top)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{PATH}: ")
    return message.removeprefix(f"{PATH}: ")


def test_every_default_comes_from_the_defaults_module():
    settings = load().settings
    assert {
        "state_dir": settings.state_dir,
        "update": (settings.update.command, settings.update.timeout),
        "deploy": (settings.deploy.command, settings.deploy.timeout),
        "ssh.user": settings.ssh.user,
        "ssh.port": settings.ssh.port,
        "ssh.connect_timeout": settings.ssh.connect_timeout,
        "reboot.command": settings.reboot.command,
        "reboot.timeout": settings.reboot.timeout,
        "reboot.poll_interval": settings.reboot.poll_interval,
        "reboot.probe_timeout": settings.reboot.probe_timeout,
        "reboot.stable_passes": settings.reboot.stable_passes,
        "reboot.settle": settings.reboot.settle,
        "local.reboot_command": settings.local.reboot_command,
        "local.state_command": settings.local.state_command,
        "local.boot_id_file": settings.local.boot_id_file,
        "hooks.timeout": settings.hooks.timeout,
    } == {
        "state_dir": defaults.STATE_DIR,
        "update": (list(defaults.UPDATE_COMMAND), defaults.UPDATE_TIMEOUT),
        "deploy": (list(defaults.DEPLOY_COMMAND), defaults.DEPLOY_TIMEOUT),
        "ssh.user": defaults.SSH_USER,
        "ssh.port": defaults.SSH_PORT,
        "ssh.connect_timeout": defaults.SSH_CONNECT_TIMEOUT,
        "reboot.command": list(defaults.REBOOT_COMMAND),
        "reboot.timeout": defaults.REBOOT_TIMEOUT,
        "reboot.poll_interval": defaults.POLL_INTERVAL,
        "reboot.probe_timeout": defaults.PROBE_TIMEOUT,
        "reboot.stable_passes": defaults.STABLE_PASSES,
        "reboot.settle": defaults.SETTLE,
        "local.reboot_command": list(defaults.REBOOT_COMMAND),
        "local.state_command": list(defaults.STATE_COMMAND),
        "local.boot_id_file": defaults.BOOT_ID_FILE,
        "hooks.timeout": defaults.HOOK_TIMEOUT,
    }


# Run in a fresh interpreter: the defaults are changed before the schema is first imported.
REPLACED_DEFAULTS = """
import json, sys
from pathlib import Path
from orchestrator import defaults as d
d.STATE_DIR = Path("/srv/state")
d.UPDATE_COMMAND, d.UPDATE_TIMEOUT = ("up", "date"), 11.0
d.DEPLOY_COMMAND, d.DEPLOY_TIMEOUT = ("de", "ploy"), 12.0
d.SSH_USER, d.SSH_PORT, d.SSH_CONNECT_TIMEOUT = "operator", 2022, 13.0
d.REBOOT_COMMAND, d.REBOOT_TIMEOUT = ("re", "boot"), 14.0
d.POLL_INTERVAL, d.PROBE_TIMEOUT, d.STABLE_PASSES, d.SETTLE = 15.0, 16.0, 17, 18.0
d.STATE_COMMAND, d.BOOT_ID_FILE = ("st", "ate"), Path("/boot-id")
d.HOOK_TIMEOUT = 19.0
d.DEPLOY_MODE, d.DEPLOY_MACHINE_COMMAND = "per-machine", ("de", "ploy", "{machine}")
d.REBOOT_WHEN, d.REBOOT_IF_CHANGED, d.BOOT_ONCE = "if-needed", ("systemd",), True
d.POWER_CYCLE_AFTER, d.ON_FAILURE, d.TARGET_HELPER = 20.0, "stop", ("hel", "per")
from orchestrator.config import parse_config
config = parse_config(Path("lab.yaml"), sys.argv[1])
print(json.dumps(config.settings.model_dump(mode="json", exclude={"machines"})))
"""


def test_the_schema_takes_every_default_from_the_defaults_module():
    result = subprocess.run(
        [sys.executable, "-c", REPLACED_DEFAULTS, yaml.safe_dump(MINIMAL)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert settings["state_dir"] == "/srv/state"
    assert settings["update"] == {"command": ["up", "date"], "timeout": 11.0}
    assert settings["deploy"] == {
        "command": ["de", "ploy"],
        "timeout": 12.0,
        "mode": "per-machine",
        "machine_command": ["de", "ploy", "{machine}"],
    }
    assert (settings["on_failure"], settings["target_helper"]) == ("stop", ["hel", "per"])
    ssh = settings["ssh"]
    assert (ssh["user"], ssh["port"], ssh["connect_timeout"]) == ("operator", 2022, 13.0)
    assert {k: v for k, v in settings["reboot"].items() if k != "allow_degraded"} == {
        "command": ["re", "boot"],
        "timeout": 14.0,
        "poll_interval": 15.0,
        "probe_timeout": 16.0,
        "stable_passes": 17,
        "settle": 18.0,
        "when": "if-needed",
        "if_changed": ["systemd"],
        "boot_once": True,
        "power_cycle_after": 20.0,
    }
    assert settings["local"] == {
        "reboot_command": ["re", "boot"],
        "state_command": ["st", "ate"],
        "boot_id_file": "/boot-id",
    }
    assert settings["hooks"]["timeout"] == 19.0


def test_optional_settings_default_to_off_or_unset():
    settings = load().settings
    assert settings.preflight is True
    assert settings.reboot.allow_degraded is False
    assert (settings.flake, settings.log_file, settings.order) == (None, None, None)
    assert (settings.ssh.identity_file, settings.ssh.known_hosts) == (None, None)
    hooks = settings.hooks
    assert (hooks.on_start, hooks.on_done, hooks.on_abort) == ([], [], [])
    alpha = settings.machines["alpha"]
    assert (alpha.user, alpha.port, alpha.local, alpha.checks) == (None, None, False, [])


def test_a_machine_without_user_or_port_uses_the_ssh_section():
    config = load(ssh={"user": "deploy", "port": 2222})
    assert config.ssh_target("alpha") == ("alpha.local", 2222, "deploy")


def test_the_gate_timeouts_come_from_connect_and_probe_timeouts():
    config = load(ssh={"connect_timeout": "3s"}, reboot={"probe_timeout": "4s"})
    assert config.settings.timeouts == Timeouts(connect=3.0, probe=4.0)
    assert config.settings.timeouts.command == 7.0


@pytest.mark.parametrize(
    ("given", "seconds"),
    [("45s", 45.0), ("1.5s", 1.5), ("2m", 120.0), ("1:30", 90.0), ("1h", 3600.0), (7, 7.0)],
)
def test_a_duration_accepts_units_clock_times_and_numbers(given, seconds):
    assert load(hooks={"timeout": given}).settings.hooks.timeout == seconds


@pytest.mark.parametrize("given", [True, [30], {"s": 30}, "soon"])
def test_a_duration_rejects_what_is_not_one(given):
    assert error(hooks={"timeout": given}).startswith("hooks.timeout: not a duration")


def test_settle_may_be_zero_but_a_poll_interval_may_not():
    assert load(reboot={"settle": "0s"}).settings.reboot.settle == 0.0
    assert error(reboot={"poll_interval": "0s"}) == "reboot.poll_interval: must be longer than 0s"


def test_hooks_are_lists_of_argv_lists():
    hooks = load(
        hooks={
            "on_start": [["logger", "-t", "lab-orchestrator", "run started"]],
            "on_done": [["/etc/hooks/on-done"], ["curl", "-fsS", "https://hc.example/ping"]],
            "on_abort": [["/etc/hooks/page me", "$(not a shell)"]],
            "timeout": "90s",
        }
    ).settings.hooks
    assert hooks.on_start == [["logger", "-t", "lab-orchestrator", "run started"]]
    assert hooks.on_done == [["/etc/hooks/on-done"], ["curl", "-fsS", "https://hc.example/ping"]]
    assert hooks.on_abort == [["/etc/hooks/page me", "$(not a shell)"]]
    assert hooks.timeout == 90.0


@pytest.mark.parametrize(
    ("hooks", "expected"),
    [
        (
            {"on_done": [["/etc/hooks/on-done"], []]},
            "hooks.on_done[1]: must be a non-empty list: the program, then its arguments",
        ),
        (
            {"on_start": [[""]]},
            "hooks.on_start[0]: must be a non-empty list: the program, then its arguments",
        ),
        ({"on_start": ["logger", "run started"]}, "hooks.on_start[0]: must be a list"),
        ({"on_abort": "/etc/hooks/page-me"}, "hooks.on_abort: must be a list"),
        ({"on_abort": [["logger", 5]]}, "hooks.on_abort[0][1]: must be a string"),
        ({"on_failure": [["logger"]]}, "hooks.on_failure: unknown key"),
        ({"timeout": "0s"}, "hooks.timeout: must be longer than 0s"),
    ],
    ids=[
        "empty-argv",
        "empty-program",
        "single-argv-not-a-list-of-them",
        "shell-string",
        "non-string-word",
        "unknown-event",
        "zero-timeout",
    ],
)
def test_a_bad_hook_is_rejected_naming_its_key(hooks, expected):
    assert error(hooks=hooks) == expected
