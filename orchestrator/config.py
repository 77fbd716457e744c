"""Load and validate the orchestrator's YAML configuration.

The schema is the pydantic models below; ``config/lab.example.yaml`` documents every key. Every
problem becomes one ``ConfigError`` line naming the file, the key path and what is wrong, because
a typo that silently drops a health check would defeat the point of the gate.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)
from pytimeparse.timeparse import timeparse as parse_timespan

from orchestrator.errors import ConfigError
from orchestrator.paths import DEFAULT_STATE_DIR

MACHINE_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")


def _duration_seconds(value: object) -> float:
    """Accept ``30s``, ``10m``, ``2h``, ``1h30m`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("not a duration (use e.g. 30s, 10m, 2h)")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        parsed = parse_timespan(value.strip())
        if parsed is None:
            raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 10m, 2h)")
        seconds = float(parsed)
    else:
        raise ValueError("not a duration (use e.g. 30s, 10m, 2h)")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be longer than 0s")
    return seconds


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not a valid http(s) URL")
    return value


def _argv(value: list[str]) -> list[str]:
    if not value or not value[0]:
        raise ValueError("must be a non-empty list: the program, then its arguments")
    return value


Duration = Annotated[float, BeforeValidator(_duration_seconds)]
PositiveDuration = Annotated[float, BeforeValidator(_duration_seconds), AfterValidator(_positive)]
Argv = Annotated[list[str], AfterValidator(_argv)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Model(BaseModel):
    # Frozen so the engine can pass config around without fear; extra keys are errors.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class CommandStep(_Model):
    command: Argv
    timeout: PositiveDuration


class SshSettings(_Model):
    user: str = "root"
    port: Port = 22
    identity_file: Path | None = None
    known_hosts: Path | list[Path] | None = None
    connect_timeout: PositiveDuration = 5.0

    def known_hosts_files(self) -> list[Path]:
        """Explicit files as given; otherwise the usual locations that exist.

        asyncssh alone would read only ``~/.ssh/known_hosts``, which a systemd service user
        usually lacks, while NixOS writes ``programs.ssh.knownHosts`` to the system file.
        """
        if self.known_hosts is None:
            candidates = [Path("~/.ssh/known_hosts").expanduser(), Path("/etc/ssh/ssh_known_hosts")]
            return [path for path in candidates if path.is_file()]
        if isinstance(self.known_hosts, list):
            return [path.expanduser() for path in self.known_hosts]
        return [self.known_hosts.expanduser()]


class RebootSettings(_Model):
    command: Argv = ["systemctl", "reboot"]
    timeout: PositiveDuration = 900.0
    poll_interval: PositiveDuration = 1.0
    probe_timeout: PositiveDuration = 2.0
    stable_passes: Annotated[int, Field(ge=1, le=100)] = 2
    settle: Duration = 0.0
    allow_degraded: bool = False


class LocalSettings(_Model):
    reboot_command: Argv = ["systemctl", "reboot"]
    state_command: Argv = ["systemctl", "is-system-running"]
    boot_id_file: Path = Path("/proc/sys/kernel/random/boot_id")


class HttpCheck(_Model):
    url: HttpUrl
    status: Annotated[int, Field(ge=100, le=599)] = 200
    body_contains: str | None = None
    timeout: PositiveDuration = 2.0
    verify_tls: bool = True


class Machine(_Model):
    host: str | None = None
    user: str | None = None
    port: Port | None = None
    local: bool = False
    checks: list[HttpCheck] = []


class Config(_Model):
    flake: Path | None = None
    state_dir: Path = DEFAULT_STATE_DIR
    log_file: Path | None = None
    update: CommandStep = CommandStep(command=["lab", "update"], timeout=900.0)
    deploy: CommandStep = CommandStep(command=["lab", "deploy-all"], timeout=2700.0)
    ssh: SshSettings = SshSettings()
    reboot: RebootSettings = RebootSettings()
    local: LocalSettings = LocalSettings()
    preflight: bool = True
    order: list[str] | None = None
    machines: dict[str, Machine]


class LoadedConfig(BaseModel):
    """A validated config plus where it came from; ``machines`` is in reboot order."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    path: Path
    settings: Config
    flake_dir: Path
    machine_order: tuple[str, ...]

    def machine(self, name: str) -> Machine:
        try:
            return self.settings.machines[name]
        except KeyError:
            raise ConfigError(f"{self.path}: machines: no machine named {name!r}") from None

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
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("function-after[_argv(), list[str]]",):
            continue
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _describe(error: Any) -> str:
    kind = error["type"]
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
    return _key_path(loc), _describe(error)


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
        if machine.host is not None and (
            machine.host.startswith("-") or not re.fullmatch(r"[A-Za-z0-9._:\[\]-]+", machine.host)
        ):
            raise ConfigError(f"{path}: machines.{name}.host: not a valid host name or address")
    order = tuple(config.order) if config.order is not None else tuple(config.machines)
    if config.order is not None:
        unknown = [name for name in config.order if name not in config.machines]
        if unknown:
            raise ConfigError(f"{path}: order: {unknown[0]!r} is not a machine")
        if sorted(config.order) != sorted(config.machines):
            missing = sorted(set(config.machines) - set(config.order)) or ["a machine twice"]
            raise ConfigError(f"{path}: order: must list every machine once ({missing[0]})")
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


def parse_config(path: Path, text: str) -> LoadedConfig:
    try:
        raw = yaml.safe_load(text)  # the pure loader: its error marks are the most exact
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{path}: {where}{problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: (top level): must be a mapping with at least `machines:`")
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        key, problem = _first_error(exc)
        raise ConfigError(f"{path}: {key}: {problem}") from None
    order = _check_machines(path, config)
    flake_dir = (config.flake or path.resolve().parent).expanduser()
    return LoadedConfig(path=path, settings=config, flake_dir=flake_dir, machine_order=order)


def load_config(path: Path) -> LoadedConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file (pass --config or set ORCHESTRATOR_CONFIG)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse_config(path, text)
