"""Load and validate the orchestrator's YAML configuration.

The schema is the pydantic models below, and it documents itself: every field carries a
description and an example, from which ``orchestrator config-reference`` generates
``config/REFERENCE.md`` and ``config/lab.example.yaml``. Defaults come from ``defaults``.
Every problem becomes one ``ConfigError`` line naming the file, the key path and what is
wrong, because a typo that silently dropped a health check would defeat the point of the gate.
"""

from __future__ import annotations

import re
from datetime import time as dt_time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from health_checks.base import Check, Timeouts
from health_checks.registry import CHECK_TYPES, AnyCheck
from health_checks.schema import (
    Argv,
    ConfigModel,
    Duration,
    FilePath,
    HostName,
    Port,
    PositiveDuration,
    ServiceUrl,
    UserName,
)
from orchestrator import defaults
from orchestrator.errors import ConfigError
from orchestrator.paths import load_yaml, read_config_text
from orchestrator.states import WAVE_PREFIX, Waves
from orchestrator.window import Window

MACHINE_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")


class CommandStep(ConfigModel):
    """A step run on the controller. Every key has a default per step (``update``,
    ``deploy``): a partial section such as ``deploy: {timeout: 1h}`` keeps the other key."""

    command: Argv = Field(
        description="argv list run in `flake` (never a shell string).",
        examples=[list(defaults.UPDATE_COMMAND)],
    )
    timeout: PositiveDuration = Field(
        description="The step is stopped (SIGTERM, then SIGKILL) and the run aborts after this.",
        examples=["15m"],
    )


def _step_defaults(command: tuple[str, ...], timeout: float) -> BeforeValidator:
    """Fill the keys a partial ``update:``/``deploy:`` section leaves out from ``defaults``."""

    def fill(value: object) -> object:
        if isinstance(value, dict):
            return {"command": list(command), "timeout": timeout} | value
        return value

    return BeforeValidator(fill)


class DeployStep(CommandStep):
    mode: Literal["all", "per-machine"] = Field(
        default=defaults.DEPLOY_MODE,
        description="`all`: `command` once, before the first reboot (the original script's "
        "`lab deploy-all`). `per-machine`: `machine_command` right before each machine's "
        "reboot, so a generation that breaks the first machine never reaches the others.",
        examples=["per-machine"],
    )
    machine_command: Argv = Field(
        default=list(defaults.DEPLOY_MACHINE_COMMAND),
        description="argv run in `flake` for one machine in `per-machine` mode; the word "
        "`{machine}` becomes the machine's name (one whole word, never through a shell). "
        "Recommended: a command that runs `nixos-rebuild boot --target-host` (see the README), "
        "so the new generation is switched to by the reboot that the gate then verifies.",
        examples=[list(defaults.DEPLOY_MACHINE_COMMAND)],
    )

    @field_validator("machine_command")
    @classmethod
    def _one_placeholder(cls, argv: list[str]) -> list[str]:
        for word in argv:
            if word != defaults.MACHINE_PLACEHOLDER and re.search(r"\{[^{}]*\}", word):
                raise ValueError(
                    f"{word!r}: the only placeholder is {defaults.MACHINE_PLACEHOLDER}, "
                    "as a whole word"
                )
        return argv

    @model_validator(mode="after")
    def _names_the_machine(self) -> DeployStep:
        if self.mode == "per-machine" and defaults.MACHINE_PLACEHOLDER not in self.machine_command:
            raise ValueError(
                f"machine_command must contain the word {defaults.MACHINE_PLACEHOLDER} "
                "in per-machine mode"
            )
        return self

    def machine_argv(self, machine: str) -> list[str]:
        return [
            machine if word == defaults.MACHINE_PLACEHOLDER else word
            for word in self.machine_command
        ]


class SshSettings(ConfigModel):
    user: UserName = Field(
        default=defaults.SSH_USER,
        description="SSH user; per machine: `machines.<name>.user`.",
        examples=["root"],
    )
    port: Port = Field(
        default=defaults.SSH_PORT,
        description="SSH port; per machine: `machines.<name>.port`.",
        examples=[22],
    )
    identity_file: FilePath | None = Field(
        default=None,
        description="Private key; the SSH client's usual keys when unset.",
        examples=["/var/lib/lab-orchestrator/id_ed25519"],
    )
    passphrase_file: FilePath | None = Field(
        default=None,
        description="A file holding the passphrase of an encrypted `identity_file` (its first "
        "line); the NixOS module feeds it with systemd's LoadCredential.",
        examples=["/run/credentials/lab-orchestrator.service/ssh-passphrase"],
    )
    known_hosts: FilePath | list[FilePath] | None = Field(
        default=None,
        description="Host keys are always checked. A path or a list; when unset, "
        "`~/.ssh/known_hosts` and `/etc/ssh/ssh_known_hosts` (what NixOS's "
        "`programs.ssh.knownHosts` writes), those that exist.",
        examples=["/etc/ssh/ssh_known_hosts"],
    )
    connect_timeout: PositiveDuration = Field(
        default=defaults.SSH_CONNECT_TIMEOUT,
        description="Bound on one connect: TCP, SSH handshake and login.",
        examples=["5s"],
    )

    def known_hosts_files(self) -> list[Path]:
        """Explicit files as given; otherwise the usual locations that exist.

        asyncssh alone would read only ``~/.ssh/known_hosts``, which a systemd service user
        usually lacks, while NixOS writes ``programs.ssh.knownHosts`` to the system file.
        """
        if self.known_hosts is None:
            candidates = [path.expanduser() for path in defaults.KNOWN_HOSTS_FILES]
            return [path for path in candidates if path.is_file()]
        if isinstance(self.known_hosts, list):
            return [path.expanduser() for path in self.known_hosts]
        return [self.known_hosts.expanduser()]


class RebootSettings(ConfigModel):
    command: Argv = Field(
        default=list(defaults.REBOOT_COMMAND),
        description="Sent over SSH to each remote machine; prefixed with `sudo -n` when the "
        "SSH user is not root (see nix/target.nix for the matching sudo rule).",
        examples=[list(defaults.REBOOT_COMMAND)],
    )
    timeout: PositiveDuration = Field(
        default=defaults.REBOOT_TIMEOUT,
        description="Reboot request to healthy, per machine; then the run aborts.",
        examples=["15m"],
    )
    poll_interval: PositiveDuration = Field(
        default=defaults.POLL_INTERVAL,
        description="How often the health gate probes a rebooting machine.",
        examples=["1s"],
    )
    probe_timeout: PositiveDuration = Field(
        default=defaults.PROBE_TIMEOUT,
        description="Bound on one probe once connected (a command, an HTTP request, a TCP "
        "connect); every check's own `timeout` must fit in it. A gate round is bounded by "
        "`ssh.connect_timeout` + 2 x this.",
        examples=["2s"],
    )
    stable_passes: Annotated[int, Field(ge=1, le=100)] = Field(
        default=defaults.STABLE_PASSES,
        description="The gate must pass this many rounds in a row, on one boot id.",
        examples=[2],
    )
    settle: Duration = Field(
        default=defaults.SETTLE,
        description="Extra wait after a machine is healthy; `10m` is the original spacing.",
        examples=["0s"],
    )
    allow_degraded: bool = Field(
        default=False,
        description="Accept `systemctl is-system-running` = `degraded`.",
        examples=[False],
    )
    when: Literal["always", "if-needed"] = Field(
        default=defaults.REBOOT_WHEN,
        description="`always` reboots every machine (the original script). `if-needed` "
        "skips a NixOS machine whose booted system already runs the profile's `if_changed` "
        "parts (NixOS autoUpgrade's rule); a machine that is not NixOS is always rebooted.",
        examples=["if-needed"],
    )
    if_changed: list[Literal["kernel", "initrd", "kernel-modules", "systemd"]] = Field(
        default=list(defaults.REBOOT_IF_CHANGED),
        min_length=1,
        description="With `when: if-needed`: the parts of a NixOS system whose change needs a "
        "reboot.",
        examples=[["kernel", "initrd", "kernel-modules", "systemd"]],
    )
    boot_once: bool = Field(
        default=defaults.BOOT_ONCE,
        description="Boot a new NixOS generation once (systemd-boot one-shot entry, GRUB "
        "`grub-reboot`) with the running one as the default, and make the new one the default "
        "only after the gate passed: a machine that hangs on it and is power-cycled comes back "
        "on the known-good generation. Needs `target_helper` on the machine.",
        examples=[True],
    )
    power_cycle_after: PositiveDuration = Field(
        default=defaults.POWER_CYCLE_AFTER,
        description="A machine with a `power_cycle` command that has not answered SSH for "
        "this long after its reboot request is power-cycled, once per reboot; the gate then "
        "waits for the rest of `timeout`.",
        examples=["5m"],
    )

    @field_validator("if_changed")
    @classmethod
    def _no_repeats(cls, parts: list[str]) -> list[str]:
        repeated = sorted({part for part in parts if parts.count(part) > 1})
        if repeated:
            raise ValueError(f"{repeated[0]} is listed twice")
        return parts


class LocalSettings(ConfigModel):
    reboot_command: Argv = Field(
        default=list(defaults.REBOOT_COMMAND),
        description="How the controller reboots itself.",
        examples=[list(defaults.REBOOT_COMMAND)],
    )
    state_command: Argv = Field(
        default=list(defaults.STATE_COMMAND),
        description="Prints the controller's system state (`running`, `degraded`, …).",
        examples=[list(defaults.STATE_COMMAND)],
    )
    boot_id_file: FilePath = Field(
        default=defaults.BOOT_ID_FILE,
        description="Where the controller's boot id is read.",
        examples=[str(defaults.BOOT_ID_FILE)],
    )


class Hooks(ConfigModel):
    on_start: list[Argv] = Field(
        default=[],
        description="Commands (argv lists) run when a run starts. Each gets the run summary "
        "as JSON on stdin and ORCHESTRATOR_RUN_ID, ORCHESTRATOR_STATE and "
        "ORCHESTRATOR_FAILED_MACHINE in its environment.",
        examples=[[["logger", "-t", "lab-orchestrator", "run started"]]],
    )
    on_done: list[Argv] = Field(
        default=[],
        description="Commands run once when a run ends `done`.",
        examples=[[["/etc/lab-orchestrator/hooks/on-done"]]],
    )
    on_abort: list[Argv] = Field(
        default=[],
        description="Commands run once when a run ends `aborted`.",
        examples=[[["/etc/lab-orchestrator/hooks/page-me"]]],
    )
    timeout: PositiveDuration = Field(
        default=defaults.HOOK_TIMEOUT,
        description="Bound on each hook command. A hook that fails or runs past it is a "
        "warning in the log; it never changes the run's outcome or exit code.",
        examples=["1m"],
    )


class NotifySettings(ConfigModel):
    """Notifications through apprise. The URLs carry tokens: they never appear in a log line,
    `status`, `plan` or an error message."""

    urls: list[ServiceUrl] = Field(
        default=[],
        description="apprise URLs (`ntfy://`, `tgram://`, `mailto://`, `matrix://`, `json://` "
        "and 100+ more). Prefer `urls_file`: a config file is often world-readable.",
        examples=[["ntfy://ntfy.sh/my-lab-topic"]],
    )
    urls_file: FilePath | None = Field(
        default=None,
        description="A file with one apprise URL per line (`#` starts a comment), read at each "
        "run; the NixOS module passes `notify.urlsFile` with systemd's LoadCredential.",
        examples=["/run/credentials/lab-orchestrator.service/notify-urls"],
    )
    on: list[Literal["aborted", "done"]] = Field(
        default=list(defaults.NOTIFY_ON),
        description="The run endings that send a notification.",
        examples=[["aborted", "done"]],
    )
    timeout: PositiveDuration = Field(
        default=defaults.NOTIFY_TIMEOUT,
        description="Bound on sending one notification. One that fails or runs past it is a "
        "warning; it never changes the run's outcome or exit code.",
        examples=["30s"],
    )


class HeartbeatSettings(ConfigModel):
    """A dead-man switch: an external service alerts when a run's success ping does not
    arrive, even when the controller died mid-run and nothing is left to tell anyone."""

    url: ServiceUrl | None = Field(
        default=None,
        description="A healthchecks.io ping URL (`<url>/start` when a run starts or resumes, "
        "`<url>` when it ends done, `<url>/fail` when it ends aborted) or an Uptime Kuma push "
        "URL (`.../api/push/<token>`, sent `status=up` or `status=down`). Secret, like "
        "notification URLs; set `url` or `url_file`, not both.",
        examples=["https://hc-ping.com/0d2b4f4e-5a4c-4a8e-9a56-2a6c2f3b9b10"],
        json_schema_extra={"example_commented_out": True},
    )
    url_file: FilePath | None = Field(
        default=None,
        description="A file holding the URL (its first line), read at each run; the NixOS "
        "module passes `heartbeat.urlFile` with systemd's LoadCredential.",
        examples=["/run/credentials/lab-orchestrator.service/heartbeat-url"],
    )
    timeout: PositiveDuration = Field(
        default=defaults.HEARTBEAT_TIMEOUT,
        description="Bound on one ping. A failing ping is a warning and changes nothing else.",
        examples=["10s"],
    )

    @model_validator(mode="after")
    def _one_source(self) -> HeartbeatSettings:
        if self.url is not None and self.url_file is not None:
            raise ValueError("set url or url_file, not both")
        return self


class MetricsSettings(ConfigModel):
    textfile: FilePath | None = Field(
        default=None,
        description="Prometheus metrics file for node_exporter's textfile collector, rewritten "
        "atomically at run start, at each state change and at the end.",
        examples=["/var/lib/prometheus-node-exporter/lab_orchestrator.prom"],
    )

    @field_validator("textfile")
    @classmethod
    def _prom_suffix(cls, textfile: Path | None) -> Path | None:
        # node_exporter's textfile collector reads only *.prom: another name is silently
        # never scraped, and the "no successful run" alert could not tell why.
        if textfile is not None and textfile.suffix != ".prom":
            raise ValueError("must end in .prom (node_exporter reads only *.prom files)")
        return textfile


def _wall_clock(value: object) -> object:
    """A time of day as written; YAML 1.1 reads an unquoted ``22:30`` as the number 1350."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError('write the time in quotes, e.g. "22:30" (YAML reads 22:30 as a number)')
    if isinstance(value, str) and not re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", value.strip()):
        raise ValueError(f"{value!r} is not a time of day (HH:MM or HH:MM:SS)")
    return value


WallClock = Annotated[dt_time, BeforeValidator(_wall_clock)]


class WindowSettings(ConfigModel):
    """Both keys or neither: without them, reboots start whenever the run gets to them."""

    start: WallClock | None = Field(
        default=None,
        description="When reboots may start, in the controller's local time (`HH:MM`, quoted).",
        examples=["01:00"],
    )
    end: WallClock | None = Field(
        default=None,
        description="When no further reboot starts; a machine rebooted before it is still "
        "verified after it. Not after `start`: the window crosses midnight.",
        examples=["05:00"],
    )

    @model_validator(mode="after")
    def _both_and_not_empty(self) -> WindowSettings:
        if (self.start is None) != (self.end is None):
            missing = "end" if self.end is None else "start"
            raise ValueError(f"{missing} is missing: a window needs both start and end")
        if self.start is not None and self.start == self.end:
            raise ValueError("start and end are the same time: the window would be empty")
        return self

    @property
    def window(self) -> Window | None:
        if self.start is None or self.end is None:
            return None
        return Window(self.start, self.end)


class InterlockSettings(ConfigModel):
    """Before each reboot, every other machine of the run (those already rebooted and those
    still to come) gets one health-gate round, all at once: if any is unhealthy, no further
    machine is taken down."""

    enabled: bool = Field(
        default=defaults.INTERLOCK_ENABLED,
        description="Probe every other machine before each reboot; `false`: only the machine "
        "being rebooted is looked at.",
        examples=[True],
    )
    timeout: PositiveDuration = Field(
        default=defaults.INTERLOCK_TIMEOUT,
        description="How long a run waits, re-probing every `reboot.poll_interval`, for an "
        "unhealthy machine to be healthy again before the next reboot; then it aborts, naming "
        "that machine and its failing probe. Nothing is taken down meanwhile.",
        examples=["10m"],
    )


class Machine(ConfigModel):
    host: HostName | None = Field(
        default=None,
        description="Address or DNS name; required unless `local: true`.",
        examples=["grey-area.local"],
    )
    user: UserName | None = Field(
        default=None, description="SSH user (default `ssh.user`).", examples=["root"]
    )
    port: Port | None = Field(
        default=None, description="SSH port (default `ssh.port`).", examples=[22]
    )
    local: bool = Field(
        default=False,
        description="This machine is the controller itself: no SSH, `local.*` instead. At "
        "most one, and it must be last.",
        examples=[False],
    )
    generations: bool = Field(
        default=True,
        description="Read this machine's NixOS generation facts (and with them skip, the "
        "wrong-generation probe, boot once and rollback). `false`: treat it as not NixOS, "
        "without the warning.",
        examples=[True],
    )
    power_cycle: Argv | None = Field(
        default=None,
        description="argv run on the controller to power-cycle this machine out of band (a "
        "smart plug, `ipmitool ... chassis power cycle`) when it has not answered SSH for "
        "`reboot.power_cycle_after` after a reboot request; at most once per reboot.",
        examples=[
            [
                "ipmitool",
                "-I",
                "lanplus",
                "-H",
                "grey-area-bmc",
                "-U",
                "admin",
                "-f",
                "/run/credentials/lab-orchestrator.service/ipmi",
                "chassis",
                "power",
                "cycle",
            ]
        ],
    )
    depends_on: list[str] = Field(
        default=[],
        description="Machines this one depends on (its database, its DNS): each must come "
        "earlier in the reboot order, so it is rebooted and proven healthy first; the loader "
        "checks this (and with it, that there are no cycles).",
        examples=[["sleeper-service"]],
    )
    checks: list[AnyCheck] = Field(
        default=[],
        description="Health checks that must pass after the reboot, besides SSH, boot id and "
        "system state. Each has a `type:` (" + ", ".join(CHECK_TYPES) + "; `http` when "
        "omitted); see the check types below.",
        examples=[[{"url": "http://grey-area.local:8080/health", "body_contains": "ok"}]],
    )


def _one_check_of_each_type() -> list[dict[str, Any]]:
    """An example check of every registered type, from each model's own field examples, so a
    new check type appears in the generated example config without being listed here."""
    return [
        {"type": name}
        | {
            key: field.examples[0]
            for key, field in model.model_fields.items()
            if key != "type" and field.is_required() and field.examples
        }
        for name, model in CHECK_TYPES.items()
    ]


SEED_MACHINES_EXAMPLE = {
    "sleeper-service": {
        "host": "sleeper-service.local",
        "depends_on": [],
        "checks": [{"url": "http://sleeper-service.local:8080/health", "body_contains": "ok"}],
    },
    "grey-area": {
        "host": "grey-area.local",
        "depends_on": ["sleeper-service"],
        "checks": _one_check_of_each_type(),
    },
    "reverse-proxy": {
        "host": "reverse-proxy.local",
        "user": "root",
        "port": 22,
        "checks": [{"url": "https://reverse-proxy.local/", "status": 200}],
    },
    "self": {"local": True},
}


class Config(ConfigModel):
    flake: FilePath | None = Field(
        default=None,
        description="Working directory of the update and deploy commands (the original "
        "script's labPath). Default: the directory that holds the config file.",
        examples=["/home/geir/Home-lab"],
    )
    state_dir: FilePath = Field(
        default=defaults.STATE_DIR,
        description="Where the run state (SQLite), the run lock and the run history live.",
        examples=[str(defaults.STATE_DIR)],
    )
    log_file: FilePath | None = Field(
        default=None,
        description="An extra log file; every event also goes to stderr (the journal).",
        examples=["/var/log/lab-orchestrator.log"],
    )
    update: Annotated[
        CommandStep, _step_defaults(defaults.UPDATE_COMMAND, defaults.UPDATE_TIMEOUT)
    ] = Field(
        CommandStep(command=list(defaults.UPDATE_COMMAND), timeout=defaults.UPDATE_TIMEOUT),
        description="Step 1 of a nightly run: update the flake inputs.",
        examples=[{"command": list(defaults.UPDATE_COMMAND), "timeout": "15m"}],
    )
    deploy: Annotated[
        DeployStep, _step_defaults(defaults.DEPLOY_COMMAND, defaults.DEPLOY_TIMEOUT)
    ] = Field(
        DeployStep(command=list(defaults.DEPLOY_COMMAND), timeout=defaults.DEPLOY_TIMEOUT),
        description="Step 2 of a nightly run: deploy every machine, at once or one by one.",
        examples=[{"command": list(defaults.DEPLOY_COMMAND), "timeout": "45m"}],
    )
    on_failure: Literal["stop", "rollback"] = Field(
        default=defaults.ON_FAILURE,
        description="When a NixOS machine fails its gate (the wrong generation included) and "
        "SSH still answers: `rollback` makes the system it ran before the boot default again "
        "(with `target_helper`), reboots it once more and gates it; the run ends `aborted` "
        "either way. `stop` leaves it as it is. A machine that is not NixOS is never rolled "
        "back.",
        examples=["rollback"],
    )
    target_helper: Argv = Field(
        default=list(defaults.TARGET_HELPER),
        description="Run on a NixOS machine for `on_failure: rollback` and `reboot.boot_once` "
        "(nix/target.nix installs it, with its exact sudo rule); prefixed with `sudo -n` when "
        "the user is not root.",
        examples=[list(defaults.TARGET_HELPER)],
    )
    ssh: SshSettings = Field(default=SshSettings(), description="How remote machines are reached.")
    reboot: RebootSettings = Field(
        RebootSettings(), description="The reboot, and the health gate after it."
    )
    local: LocalSettings = Field(
        LocalSettings(), description="The `local: true` machine (the controller): no SSH."
    )
    hooks: Hooks = Field(
        default=Hooks(), description="Your own commands at the start and end of a run."
    )
    notify: NotifySettings = Field(
        default=NotifySettings(), description="Tell the owner how a run ended (apprise)."
    )
    heartbeat: HeartbeatSettings = Field(
        default=HeartbeatSettings(),
        description="A dead-man ping per run (healthchecks.io, Uptime Kuma).",
    )
    metrics: MetricsSettings = Field(
        default=MetricsSettings(), description="Prometheus textfile metrics."
    )
    window: WindowSettings = Field(
        default=WindowSettings(),
        description="The maintenance window: no reboot starts outside it. A run that reaches "
        "a reboot outside it pauses (`paused until 01:00 (next window)`, exit 0); the next "
        "`orchestrator run` or `resume` inside it continues from there, without updating or "
        "deploying again. Default: reboots start whenever the run gets to them.",
    )
    interlock: InterlockSettings = Field(
        default=InterlockSettings(),
        description="The fleet interlock: before each reboot, every other machine gets one "
        "health-gate round; while one of them is unhealthy no further machine is taken down.",
    )
    preflight: bool = Field(
        default=True,
        description="Probe every machine (SSH, boot id, system state, checks) before "
        "touching anything.",
        examples=[True],
    )
    max_unavailable: int = Field(
        default=1,
        ge=1,
        strict=True,  # `true` is not 1 machine
        description="How many machines may be down at once: the machines, in reboot order, "
        "go down in waves of this many, rebooted and gated together; a failure stops the run "
        "after its wave. A machine that `depends_on` one of the wave starts the next wave. "
        "The `local: true` machine always goes alone and last. Not with `waves`.",
        examples=[1, 5],
    )
    waves: list[Annotated[list[str], Field(min_length=1)]] | None = Field(
        default=None,
        description="The waves by name, instead of `max_unavailable`: every machine in exactly "
        "one, a dependency in an earlier wave than the machine, the `local: true` machine "
        "alone in the last. Their order is the reboot order (`order` is not needed).",
        examples=[[["sleeper-service"], ["grey-area", "reverse-proxy"], ["self"]]],
        json_schema_extra={"example_commented_out": True},
    )
    order: list[str] | None = Field(
        default=None,
        description="Reboot order as a list, when the mapping of machines cannot keep order "
        "(Nix attrsets are sorted). Default: the order of `machines`.",
        examples=[["sleeper-service", "grey-area", "reverse-proxy", "self"]],
    )
    machines: dict[str, Machine] = Field(
        description="The machines, in reboot order. Names: lowercase letters, digits, `.` and "
        "`-`. The one `local: true` machine, if any, must be last: it reboots the "
        "orchestrator itself, and the boot unit's `orchestrator resume` finishes the run.",
        examples=[SEED_MACHINES_EXAMPLE],
    )

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(connect=self.ssh.connect_timeout, probe=self.reboot.probe_timeout)


class LoadedConfig(BaseModel):
    """A validated config plus where it came from; ``machines`` is in reboot order."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    path: Path
    settings: Config
    flake_dir: Path
    machine_order: tuple[str, ...]
    waves: Waves = Field(default_factory=lambda: Waves(()))

    def run_waves(self, names: tuple[str, ...]) -> Waves:
        """The waves of a run of ``names``: the configured ones, or one machine at a time for
        a run of a single machine (`orchestrator reboot MACHINE`)."""
        if names == self.machine_order:
            return self.waves
        return Waves.one_by_one(names)

    def machine(self, name: str) -> Machine:
        try:
            return self.settings.machines[name]
        except KeyError:
            raise ConfigError(f"{self.path}: machines: no machine named {name!r}") from None

    def address(self, name: str) -> str:
        """How the controller reaches a machine (TCP and other checks default to it)."""
        return self.machine(name).host or "localhost"

    def ssh_target(self, name: str) -> tuple[str, int, str]:
        machine = self.machine(name)
        assert machine.host is not None  # guaranteed by _check_machines for remote machines
        return (
            machine.host,
            machine.port or self.settings.ssh.port,
            machine.user or self.settings.ssh.user,
        )


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "string_type": "must be a string",
    "path_type": "must be a path",
}


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(previous, int) and part in CHECK_TYPES:
            pass  # the tag of a check's type, which pydantic adds to the location
        else:
            path += f".{part}" if path else str(part)
        previous = part
    return path or "(top level)"


def _describe(error: Any) -> str:
    kind = error["type"]
    if kind == "unknown_check_type":
        given = error["input"].get("type") if isinstance(error["input"], dict) else None
        return f"unknown check type {given!r} (one of: {', '.join(CHECK_TYPES)})"
    if kind == "string_type" and isinstance(error.get("input"), bool):
        # `command: [true]`: YAML reads true/false/yes/no/on/off as booleans.
        return 'must be a string (YAML reads true, yes, on as a boolean: quote it, "true")'
    if kind == "literal_error":
        if "checks" in error["loc"]:
            return "wrong check type for these keys"
        return f"must be one of: {error['ctx']['expected'].replace(' or ', ', ')}"
    if kind == "too_short" and error.get("ctx", {}).get("min_length") == 1:
        return "must not be empty"
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    if kind in ("less_than_equal", "greater_than_equal", "less_than", "greater_than"):
        return str(error["msg"]).lower()
    message = str(error["msg"])
    # pydantic prefixes messages of our own validators with "Value error, ".
    return message.removeprefix("Value error, ")


def _first_error(exc: ValidationError) -> tuple[str, str]:
    error = exc.errors(include_url=False)[0]
    # Union members add their own type names to the location (e.g. `list[...]`); drop them.
    loc = tuple(
        part
        for part in error["loc"]
        if not (isinstance(part, str) and ("[" in part or part in ("str", "float", "int")))
    )
    if error["type"] == "unknown_check_type":
        loc = (*loc, "type")
    return _key_path(loc), _describe(error)


def _check_fits(path: Path, name: str, index: int, check: Check, config: Config) -> None:
    limit = config.reboot.probe_timeout
    if check.timeout is not None and check.timeout > limit:
        raise ConfigError(
            f"{path}: machines.{name}.checks[{index}].timeout: {check.timeout:g}s does not fit "
            f"in reboot.probe_timeout ({limit:g}s), the bound on one probe; lower it or raise "
            "reboot.probe_timeout"
        )


def _check_machines(path: Path, config: Config) -> tuple[str, ...]:
    if not config.machines:
        raise ConfigError(f"{path}: machines: at least one machine is required")
    for name, machine in config.machines.items():
        if not MACHINE_NAME.fullmatch(name):
            raise ConfigError(
                f"{path}: machines.{name}: not a valid machine name "
                "(lowercase letters, digits, '.' and '-', starting with a letter or digit)"
            )
        if not machine.local and not machine.host:
            raise ConfigError(f"{path}: machines.{name}.host: required key is missing")
        for index, check in enumerate(machine.checks):
            _check_fits(path, name, index, check, config)
    order = tuple(config.order) if config.order is not None else tuple(config.machines)
    if config.waves is not None:
        order = _check_waves(path, config)
    if config.order is not None:
        unknown = [name for name in config.order if name not in config.machines]
        if unknown:
            raise ConfigError(f"{path}: order: {unknown[0]!r} is not a machine")
        if sorted(config.order) != sorted(config.machines):
            missing = sorted(set(config.machines) - set(config.order)) or ["a machine twice"]
            raise ConfigError(f"{path}: order: must list every machine once ({missing[0]})")
    _check_dependencies(path, config, order)
    local = [name for name in order if config.machines[name].local]
    if len(local) > 1:
        raise ConfigError(
            f"{path}: machines.{local[1]}.local: only one machine can be local "
            f"(already: {local[0]})"
        )
    if local and order[-1] != local[0]:
        raise ConfigError(
            f"{path}: machines.{local[0]}.local: the local machine reboots the orchestrator "
            "itself and must be listed last"
        )
    return order


def _check_waves(path: Path, config: Config) -> tuple[str, ...]:
    """``waves``: every machine in exactly one; their order is the reboot order."""
    key = f"{path}: waves"
    if config.order is not None:
        raise ConfigError(f"{path}: order: not with `waves`, whose order is the reboot order")
    if config.max_unavailable != 1:
        raise ConfigError(f"{path}: max_unavailable: not with `waves`; choose one")
    seen: dict[str, int] = {}
    for index, wave in enumerate(config.waves or ()):
        for name in wave:
            if name not in config.machines:
                raise ConfigError(f"{key}[{index}]: {name!r} is not a machine")
            if name in seen:
                raise ConfigError(
                    f"{key}[{index}]: {name} is already in waves[{seen[name]}]; a machine goes "
                    "down in one wave"
                )
            seen[name] = index
    missing = [name for name in config.machines if name not in seen]
    if missing:
        raise ConfigError(f"{key}: {missing[0]} is in no wave; list every machine once")
    return tuple(name for wave in config.waves or () for name in wave)


def _group_waves(path: Path, config: Config, order: tuple[str, ...]) -> Waves:
    """The waves of a nightly run, checked: the configured ones, or ``max_unavailable``
    machines at a time in reboot order, a machine that depends on one of the wave so far
    starting the next; the local machine alone at the end either way."""
    if config.waves is not None:
        waves = Waves(tuple(tuple(wave) for wave in config.waves))
        for index, wave in enumerate(config.waves):
            local = [name for name in wave if config.machines[name].local]
            if local and (len(wave) > 1 or index != len(config.waves) - 1):
                raise ConfigError(
                    f"{path}: waves[{index}]: the local machine {local[0]} reboots the "
                    "orchestrator itself and must be alone in the last wave"
                )
            for name in wave:
                clash = sorted(set(config.machines[name].depends_on) & set(wave))
                if clash:
                    raise ConfigError(
                        f"{path}: machines.{name}.depends_on: {clash[0]} is in the same wave "
                        f"(waves[{index}]); a dependency must be in an earlier wave"
                    )
    else:
        groups: list[list[str]] = []
        for name in order:
            machine = config.machines[name]
            current = groups[-1] if groups else None
            if (
                current is None
                or machine.local  # last in the order (checked above), so alone
                or len(current) >= config.max_unavailable
                or set(machine.depends_on) & set(current)
            ):
                groups.append([name])
            else:
                current.append(name)
        waves = Waves(tuple(tuple(group) for group in groups))
    if waves.grouped:
        taken = [name for name in config.machines if name.startswith(WAVE_PREFIX)]
        reserved = [name for name in taken if name[len(WAVE_PREFIX) :].isdigit()]
        if reserved:
            raise ConfigError(
                f"{path}: machines.{reserved[0]}: with waves of several machines, "
                f"`{WAVE_PREFIX}<number>` names a wave; rename the machine"
            )
    return waves


def _check_dependencies(path: Path, config: Config, order: tuple[str, ...]) -> None:
    """``depends_on``: every dependency is another machine that comes earlier in the reboot
    order. Earlier-only also rules out cycles: no machine can come before itself."""
    position = {name: index for index, name in enumerate(order)}
    for name in order:
        seen: set[str] = set()
        for index, other in enumerate(config.machines[name].depends_on):
            key = f"{path}: machines.{name}.depends_on"
            if other in seen:
                raise ConfigError(f"{key}[{index}]: {other!r} is listed twice")
            seen.add(other)
            if other == name:
                raise ConfigError(f"{key}: {name} cannot depend on itself")
            if other not in config.machines:
                raise ConfigError(f"{key}: {other!r} is not a machine")
            if position[other] > position[name]:
                raise ConfigError(
                    f"{key}: {other!r} comes after {name} in the reboot order; a dependency "
                    "must be rebooted first"
                )


def parse_config(path: Path, text: str) -> LoadedConfig:
    raw = load_yaml(path, text, exact=True)  # the pure loader: its error marks are the most exact
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: (top level): must be a mapping with at least `machines:`")
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        key, problem = _first_error(exc)
        raise ConfigError(f"{path}: {key}: {problem}") from None
    order = _check_machines(path, config)
    waves = _group_waves(path, config, order)
    flake_dir = (config.flake or path.resolve().parent).expanduser()
    return LoadedConfig(
        path=path, settings=config, flake_dir=flake_dir, machine_order=order, waves=waves
    )


def load_config(path: Path) -> LoadedConfig:
    return parse_config(path, read_config_text(path))
