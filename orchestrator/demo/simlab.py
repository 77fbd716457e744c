"""An embedded, simulated lab: in-process asyncssh servers with HTTP health endpoints on
loopback, each able to "reboot" (connections drop, a dark period, a new boot id, SSH back
before HTTP). It backs ``orchestrator demo`` and the fast tests; the orchestrator talks to it
exactly as to real machines, through its ordinary config (addresses, ports, keys).

It understands the commands the orchestrator sends (boot id, system state, reboot,
``systemctl is-active`` for systemd checks, the generation facts script) and nothing else.
A lab made with ``nixos=True`` simulates NixOS machines (``SimNixos``): each has a small
in-memory store, system profile and boot loader, answers the facts script and
``readlink -e /run/booted-system`` as a real one would, takes a deploy the way
``nixos-rebuild boot --target-host`` makes one (``nix-env -p PROFILE --set SYSTEM``, then
``SYSTEM/bin/switch-to-configuration boot``), runs the target helper's verbs with the
semantics of ``nix/target-helper.sh`` (under the name ``TARGET_HELPER``, which the lab's
config sets as ``target_helper``), and on a reboot boots what its boot loader says. Otherwise
the facts script is answered as by a machine that is not NixOS.

Every host keeps a ground-truth event list (what really happened, when; on NixOS which system
each boot booted) and the argv of every command it received, which tests judge the
orchestrator by.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import re
import shlex
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from orchestrator import defaults, generations

REBOOT_ARGV = list(defaults.REBOOT_COMMAND)
BOOT_ID_ARGV = ["cat", str(defaults.BOOT_ID_FILE)]
STATE_ARGV = list(defaults.STATE_COMMAND)
# How the facts script arrives (remote.remote_command: its words as octal, decoded by sh).
SH_DECODER = ["exec", "/bin/sh", "-s", "--"]
NOT_NIXOS_FACTS = f"format={generations.FORMAT}\nend=1\n"
READLINK_BOOTED = ["readlink", "-e", generations.BOOTED_SYSTEM]


def decoded(words: list[str]) -> list[str]:
    """The argv ``remote.encode_word`` encoded (``x`` and three octal digits a byte)."""
    out = []
    for word in words:
        digits = word[1:]
        data = bytes(int(digits[i : i + 3], 8) for i in range(0, len(digits), 3))
        out.append(data.decode("utf-8", "surrogateescape"))
    return out


# -- a simulated NixOS ------------------------------------------------------------------------

# The demo's name for the target helper (nix/target-helper.sh, installed on a real machine as
# `lab-orchestrator-target`): the lab's config sets `target_helper` to it.
TARGET_HELPER = ("simlab-target",)
PROFILE = generations.SYSTEM_PROFILE
PARTS = ("kernel", "initrd", "kernel-modules", "systemd")
NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"
# The NixOS releases the simulated machines know, each with its kernel and systemd versions.
RELEASES: dict[str, tuple[str, str]] = {
    "25.05.20250512": ("6.12.28", "257.5"),
    "25.05.20250520": ("6.12.30", "257.5"),
    "25.05.20250602": ("6.12.31", "257.6"),
}
INSTALLED = ("25.05.20250512", "25.05.20250520")  # each machine's generations 1 and 2
TONIGHT = "25.05.20250602"  # what the demo's deploy builds
# As nix/target-helper.sh checks its argument.
_HELPER_SYSTEM = re.compile(r"/nix/store/[0-9a-df-np-sv-z]{32}-nixos-system-[A-Za-z0-9+._?=-]+")
SWITCH = "/bin/switch-to-configuration"
_HELPER_USAGE = "usage: target-helper.sh rollback|boot-once|make-default SYSTEM"


def _store_path(name: str, *inputs: str) -> str:
    """A store path whose hash is made from ``inputs`` (the same inputs: the same path)."""
    digest = hashlib.sha256("\0".join((name, *inputs)).encode()).digest()
    return f"/nix/store/{''.join(NIX_BASE32[byte % 32] for byte in digest)}-{name}"


@dataclass(frozen=True)
class SimSystem:
    """A ``nixos-system-*`` store path and the boot parts it links to."""

    path: str
    parts: tuple[tuple[str, str], ...]

    def part(self, name: str) -> str:
        return dict(self.parts)[name]


def build(machine: str, release: str) -> SimSystem:
    """The system a build of ``release`` for ``machine`` makes (always the same one)."""
    kernel, systemd = RELEASES[release]
    linux = _store_path(f"linux-{kernel}", kernel)
    parts = (
        ("kernel", f"{linux}/bzImage"),
        ("initrd", f"{_store_path(f'initrd-linux-{kernel}', machine, kernel)}/initrd"),
        ("kernel-modules", _store_path(f"linux-{kernel}-modules", kernel)),
        ("systemd", _store_path(f"systemd-{systemd}", systemd)),
    )
    return SimSystem(_store_path(f"nixos-system-{machine}-{release}", machine, release), parts)


def built(machine: str, path: str) -> SimSystem | None:
    """The system at ``path`` if a build for ``machine`` makes it (what a deploy can copy)."""
    release = path.rpartition("-")[2]
    system = build(machine, release) if release in RELEASES else None
    return system if system is not None and system.path == path else None


@dataclass
class Boot:
    """Ground truth of one boot of a NixOS machine: the boot entry (profile generation) the
    boot loader chose and the system it booted."""

    boot_id: str
    generation: int
    system: str


@dataclass
class SimNixos:
    """A NixOS machine's store, system profile and systemd-boot, in memory.

    The boot loader is systemd-boot's: ``loader_default`` is loader.conf's default (what
    ``switch-to-configuration boot`` wrote: the profile's generation then), and the EFI
    variables ``efi_default`` and ``efi_oneshot`` (set by ``bootctl``) win over it."""

    machine: str
    store: dict[str, SimSystem] = field(default_factory=dict)
    generations: dict[int, str] = field(default_factory=dict)  # profile generation -> system
    profile: int = 0
    loader_default: int = 0
    efi_default: int | None = None
    efi_oneshot: int | None = None
    booted: str = ""
    current: str = ""
    broken: set[str] = field(default_factory=set)  # systems whose services fail
    boots: list[Boot] = field(default_factory=list)

    @classmethod
    def installed(cls, machine: str) -> SimNixos:
        nixos = cls(machine)
        for release in INSTALLED:
            nixos.new_generation(nixos.add(build(machine, release)).path)
        nixos.loader_default = nixos.profile
        nixos.booted = nixos.current = nixos.generations[nixos.profile]
        return nixos

    def add(self, system: SimSystem) -> SimSystem:
        self.store[system.path] = system
        return system

    def new_generation(self, system: str) -> int:
        """``nix-env -p PROFILE --set SYSTEM``: a new generation, which the profile points to."""
        self.profile = max(self.generations, default=0) + 1
        self.generations[self.profile] = system
        return self.profile

    def generation_of(self, system: str) -> int | None:
        """The highest generation whose link resolves to ``system``."""
        return max((n for n, s in self.generations.items() if s == system), default=None)

    @property
    def profile_system(self) -> SimSystem:
        return self.store[self.generations[self.profile]]

    def healthy(self) -> bool:
        return self.booted not in self.broken

    # -- what a boot boots ------------------------------------------------------------------------

    def boot(self, boot_id: str) -> Boot:
        if self.efi_oneshot is not None:
            generation, self.efi_oneshot = self.efi_oneshot, None
        elif self.efi_default is not None:
            generation = self.efi_default
        else:
            generation = self.loader_default
        self.booted = self.current = self.generations[generation]
        self.boots.append(Boot(boot_id, generation, self.booted))
        return self.boots[-1]

    # -- the commands ---------------------------------------------------------------------------

    def facts(self) -> str:
        """What ``generations.SCRIPT`` prints on this machine, line for line."""
        booted, profile = self.store[self.booted], self.profile_system
        lines = [
            f"format={generations.FORMAT}",
            f"booted={booted.path}",
            f"current={self.current}",
            f"profile={profile.path}",
            f"profile_link=system-{self.profile}-link",
        ]
        for part in PARTS:
            lines += [f"booted.{part}={booted.part(part)}", f"profile.{part}={profile.part(part)}"]
        stop = max(0, self.profile - generations.SEARCH_DEPTH)
        found = next(
            (n for n in range(self.profile, stop, -1) if self.generations.get(n) == self.booted),
            None,
        )
        if found is not None:
            lines.append(f"booted_generation={found}")
        lines.append("end=1")
        return "".join(f"{line}\n" for line in lines)

    def run(self, argv: list[str]) -> tuple[int, str, str] | None:
        """Exit status, stdout and stderr of a command a NixOS machine knows; None: unknown."""
        if argv == list(generations.ARGV):
            return 0, self.facts(), ""
        if argv == READLINK_BOOTED:
            return 0, f"{self.booted}\n", ""
        if argv[:4] == ["nix-env", "-p", PROFILE, "--set"] and len(argv) == 5:
            # What a deploy runs once it copied the system's closure over: the copy is
            # simulated by knowing which systems a build for this machine makes.
            system = self.store.get(argv[4]) or built(self.machine, argv[4])
            if system is None:
                return 1, "", f"error: path '{argv[4]}' is not valid\n"
            old = self.profile
            self.new_generation(self.add(system).path)
            return 0, "", f"switching profile from version {old} to {self.profile}\n"
        if len(argv) == 2 and argv[1] == "boot" and argv[0].endswith(SWITCH):
            if argv[0].removesuffix(SWITCH) not in self.store:
                return 127, "", f"{argv[0]}: No such file or directory\n"
            self.loader_default = self.profile  # systemd-boot-builder: the profile is default
            return 0, "", "updating systemd-boot entries\n"
        if argv[: len(TARGET_HELPER)] == list(TARGET_HELPER):
            return self.helper(argv[len(TARGET_HELPER) :])
        return None

    def helper(self, args: list[str]) -> tuple[int, str, str]:
        """nix/target-helper.sh on a systemd-boot machine: the same checks, answers and exits."""

        def said(status: int, message: str) -> tuple[int, str, str]:
            return status, "", f"target-helper: {message}\n"

        if len(args) != 2 or args[0] not in ("rollback", "boot-once", "make-default"):
            return said(2, _HELPER_USAGE)
        verb, system = args
        if not _HELPER_SYSTEM.fullmatch(system):
            return said(2, "SYSTEM must be /nix/store/<hash>-nixos-system-<name>")
        if system not in self.store:
            return said(2, f"{system} does not exist")
        generation = self.generation_of(system)
        if generation is None:
            return said(2, f"{system} is in no generation of {PROFILE}")
        if verb == "rollback":
            changed = "no" if self.generations[self.profile] == system else "yes"
            if changed == "yes":
                self.new_generation(system)
            self.loader_default = self.profile  # switch-to-configuration boot
            self.efi_oneshot = self.efi_default = None  # bootctl set-oneshot/set-default ""
            answer = f"generation={self.profile}\nbootloader=systemd-boot\nchanged={changed}\n"
            return 0, answer, ""
        if verb == "boot-once":
            good = self.generation_of(self.booted)
            if good is None:
                return said(1, "the booted system is in no profile generation")
            self.efi_default, self.efi_oneshot = good, generation
            answer = f"generation={generation}\ndefault_generation={good}\n"
            return 0, answer + "bootloader=systemd-boot\n", ""
        self.efi_oneshot = None  # make-default
        self.efi_default = None if self.loader_default == generation else generation
        return 0, f"generation={generation}\nbootloader=systemd-boot\n", ""

    def truth(self) -> dict[str, Any]:
        return {
            "boots": [vars(boot) for boot in self.boots],
            "booted": self.booted,
            "booted_generation": self.generation_of(self.booted),
            "profile_generation": self.profile,
            "generations": {str(n): system for n, system in sorted(self.generations.items())},
            "broken": sorted(self.broken),
        }


@dataclass
class Behaviour:
    """How a simulated host behaves on its next boots (tests change these on the fly)."""

    boot_time: float = 1.0  # dark period: SSH refuses, HTTP refuses
    http_delay: float = 0.3  # HTTP comes up this long after SSH
    http_status: int = 200
    system_state: str = "running"
    never_returns: bool = False
    ignore_reboot: bool = False  # accepts the command, nothing happens
    new_host_key: bool = False
    reboot_exit_status: int = 0  # non-zero: reboot refused (e.g. inhibited)
    units: dict[str, str] = field(default_factory=dict)  # unit -> state; others are inactive


@dataclass
class Event:
    at: float
    host: str
    event: str
    detail: str = ""


@dataclass
class SimHost:
    name: str
    lab: SimLab
    behaviour: Behaviour = field(default_factory=Behaviour)
    boot_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    state: str = "running"
    ssh_port: int = 0
    http_port: int = 0
    http_up: bool = False
    host_key: asyncssh.SSHKey = field(
        default_factory=lambda: asyncssh.generate_private_key("ssh-ed25519")
    )
    _ssh: asyncssh.SSHAcceptor | None = None
    _http: asyncio.Server | None = None
    _connections: set[asyncssh.SSHServerConnection] = field(default_factory=set)
    _rebooting: asyncio.Task[None] | None = None
    commands: list[list[str]] = field(default_factory=list)  # every argv received, in order
    nixos: SimNixos | None = None  # None: not NixOS

    def record(self, event: str, detail: str = "") -> None:
        self.lab.events.append(Event(time.time(), self.name, event, detail))

    # -- services -----------------------------------------------------------------------------

    async def start(self) -> None:
        await self._start_ssh()
        await self._start_http()

    async def _start_ssh(self) -> None:
        host = self

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
                host._connections.add(conn)

            def connection_lost(self, exc: Exception | None) -> None:
                host._connections.difference_update({c for c in host._connections if c.is_closed()})

        self._ssh = await asyncssh.create_server(
            Server,
            "127.0.0.1",
            self.ssh_port,
            server_host_keys=[self.host_key],
            authorized_client_keys=self.lab.authorized_keys,
            process_factory=self._command,
            reuse_address=True,
        )
        self.ssh_port = self._ssh.sockets[0].getsockname()[1]

    async def _start_http(self) -> None:
        self._http = await asyncio.start_server(
            self._health, "127.0.0.1", self.http_port, reuse_address=True
        )
        self.http_port = self._http.sockets[0].getsockname()[1]
        self.http_up = True

    async def _health(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Just enough HTTP/1.1 for a health probe: read the request head, answer, close.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
            status = self.behaviour.http_status
            if self.nixos is not None and not self.nixos.healthy():
                status = 503  # the booted system's services do not come up
            body = b"ok\n" if status == 200 else b"unhealthy\n"
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        writer.close()

    async def _command(self, process: asyncssh.SSHServerProcess[str]) -> None:
        argv = shlex.split(process.command or "")
        self.commands.append(argv)
        if not await self.before_command(argv):
            process.channel.get_connection().abort()  # the command is lost with the connection
            return
        if argv[:4] == SH_DECODER:
            await process.stdin.read()  # the decoder script, as sh would read it first
            argv = decoded(argv[4:])
        if argv[:2] == ["sudo", "-n"]:
            argv = argv[2:]
        nixos = self.nixos.run(argv) if self.nixos is not None else None
        if nixos is not None:
            status, stdout, stderr = nixos
            process.stdout.write(stdout)
            process.stderr.write(stderr)
            process.exit(status)
        elif argv == BOOT_ID_ARGV:
            process.stdout.write(self.boot_id + "\n")
            process.exit(0)
        elif argv[:2] == ["systemctl", "is-active"] and len(argv) > 2:
            states = [self.behaviour.units.get(unit, "inactive") for unit in argv[2:]]
            process.stdout.write("".join(f"{state}\n" for state in states))
            process.exit(0 if all(state == "active" for state in states) else 3)
        elif argv == list(generations.ARGV):
            process.stdout.write(NOT_NIXOS_FACTS)
            process.exit(0)
        elif argv == READLINK_BOOTED:
            process.exit(1)  # readlink -e: no such file, and says nothing
        elif argv == STATE_ARGV:
            process.stdout.write(self.state + "\n")
            process.exit(0 if self.state == "running" else 1)
        elif argv == REBOOT_ARGV:
            self.record("reboot_requested")
            status = self.behaviour.reboot_exit_status
            if status != 0:
                process.stderr.write("Call to Reboot failed: Operation inhibited\n")
            elif not self.behaviour.ignore_reboot and self._rebooting is None:
                self.state = "stopping"
                self._rebooting = asyncio.create_task(self.reboot())
            process.exit(status)
        else:
            process.stderr.write(f"{argv[0] if argv else 'sh'}: command not found\n")
            process.exit(127)

    async def before_command(self, argv: list[str]) -> bool:
        """Called as each command arrives; False drops it unexecuted. Tests override this to
        stop the orchestrator at an exact point of its conversation with a host."""
        return True

    # -- the simulated reboot -----------------------------------------------------------------

    async def reboot(self) -> None:
        try:
            await asyncio.sleep(0.05)  # `systemctl reboot` returns before the shutdown begins
            await self.go_dark()
            if self.behaviour.never_returns:
                return
            await asyncio.sleep(self.behaviour.boot_time)
            await self.boot()
        finally:
            self._rebooting = None

    async def go_dark(self) -> None:
        if self._ssh is not None:
            self._ssh.close()
            self._ssh = None
        for conn in list(self._connections):
            conn.abort()
        self._connections.clear()
        if self._http is not None:
            self._http.close()
            self._http = None
        self.http_up = False
        self.record("down")

    async def boot(self) -> None:
        self.boot_id = str(uuid.uuid4())
        self.state = "starting"
        if self.behaviour.new_host_key:
            self.host_key = asyncssh.generate_private_key("ssh-ed25519")
        self.record("booted", self.boot_id)
        if self.nixos is not None:
            booted = self.nixos.boot(self.boot_id)
            self.record("booted_system", f"generation {booted.generation} {booted.system}")
        await self._start_ssh()
        self.record("ssh_up")
        self.state = self.behaviour.system_state
        await asyncio.sleep(self.behaviour.http_delay)
        await self._start_http()
        self.record("http_up")
        services_up = self.nixos is None or self.nixos.healthy()
        if self.state == "running" and self.behaviour.http_status == 200 and services_up:
            self.record("healthy")

    async def stop(self) -> None:
        if self._rebooting is not None:
            self._rebooting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rebooting
        await self.go_dark()


class SimLab:
    def __init__(
        self,
        directory: Path,
        names: list[str],
        behaviour: Behaviour | None = None,
        *,
        nixos: bool = False,
    ) -> None:
        self.directory = directory
        self.events: list[Event] = []
        self.client_key = asyncssh.generate_private_key("ssh-ed25519")
        self.authorized_keys = asyncssh.import_authorized_keys(
            self.client_key.export_public_key().decode()
        )
        self.hosts = {
            name: self.make_host(name, copy.deepcopy(behaviour or Behaviour())) for name in names
        }
        self.nixos = nixos
        for name, host in self.hosts.items():
            host.nixos = SimNixos.installed(name) if nixos else None

    def make_host(self, name: str, behaviour: Behaviour) -> SimHost:
        return SimHost(name, self, behaviour)

    async def start(self) -> None:
        await asyncio.gather(*(host.start() for host in self.hosts.values()))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.identity_file.write_bytes(self.client_key.export_private_key())
        self.identity_file.chmod(0o600)
        self.hosts_file.write_text(
            json.dumps({name: host.ssh_port for name, host in self.hosts.items()}) + "\n"
        )
        self.known_hosts.write_text(
            "".join(
                f"[127.0.0.1]:{host.ssh_port} "
                + host.host_key.export_public_key().decode().strip()
                + "\n"
                for host in self.hosts.values()
            )
        )

    async def stop(self) -> None:
        await asyncio.gather(*(host.stop() for host in self.hosts.values()))

    @property
    def identity_file(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.directory / "known_hosts"

    @property
    def hosts_file(self) -> Path:
        """Each host's SSH port by name (JSON), for the demo's deploy command."""
        return self.directory / "hosts.json"

    def machines(self) -> dict[str, Any]:
        return {
            name: {
                "host": "127.0.0.1",
                "port": host.ssh_port,
                "checks": [{"url": f"http://127.0.0.1:{host.http_port}/health", "timeout": "1s"}],
            }
            for name, host in self.hosts.items()
        }

    def config(self, state_dir: Path, **overrides: Any) -> dict[str, Any]:
        """An orchestrator config for this lab: only addresses, keys and short timings."""
        config: dict[str, Any] = {
            "flake": str(self.directory),
            "state_dir": str(state_dir),
            "update": {"command": ["true"], "timeout": "1m"},
            "deploy": {"command": ["true"], "timeout": "1m"},
            "ssh": {
                "user": "root",
                "identity_file": str(self.identity_file),
                "known_hosts": str(self.known_hosts),
                "connect_timeout": "2s",
            },
            "reboot": {
                "timeout": "30s",
                "poll_interval": 0.25,
                "probe_timeout": "1s",
                "stable_passes": 2,
            },
            "machines": self.machines(),
        }
        if self.nixos:
            config["target_helper"] = list(TARGET_HELPER)
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        return config

    def reboots(self, name: str) -> int:
        """Ground truth: how many times the host really booted again."""
        return sum(1 for e in self.events if e.host == name and e.event == "booted")

    def first(self, name: str, event: str) -> float | None:
        return next((e.at for e in self.events if e.host == name and e.event == event), None)

    def truth(self) -> dict[str, Any]:
        """Ground truth per host, as JSON: its reboots and, on NixOS, what each boot booted."""
        return {
            name: {
                "reboots": self.reboots(name),
                **({"nixos": host.nixos.truth()} if host.nixos is not None else {}),
            }
            for name, host in self.hosts.items()
        }
