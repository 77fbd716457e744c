"""An embedded, simulated lab: in-process asyncssh servers with HTTP health endpoints on
loopback, each able to "reboot" (connections drop, a dark period, a new boot id, SSH back
before HTTP). It backs ``orchestrator demo`` and the fast tests; the orchestrator talks to it
exactly as to real machines, through its ordinary config (addresses, ports, keys).

It understands the commands the orchestrator sends (boot id, system state, reboot,
``systemctl is-active`` for systemd checks, and the generation facts script, to which it
answers as a machine that is not NixOS) and nothing else. Every host keeps a ground-truth
event list (what really happened, when) and the argv of every command it received, which
tests judge the orchestrator by.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
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


def decoded(words: list[str]) -> list[str]:
    """The argv ``remote.encode_word`` encoded (``x`` and three octal digits a byte)."""
    out = []
    for word in words:
        digits = word[1:]
        data = bytes(int(digits[i : i + 3], 8) for i in range(0, len(digits), 3))
        out.append(data.decode("utf-8", "surrogateescape"))
    return out


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
        if argv[:2] == ["sudo", "-n"]:
            argv = argv[2:]
        if argv == BOOT_ID_ARGV:
            process.stdout.write(self.boot_id + "\n")
            process.exit(0)
        elif argv[:2] == ["systemctl", "is-active"] and len(argv) > 2:
            states = [self.behaviour.units.get(unit, "inactive") for unit in argv[2:]]
            process.stdout.write("".join(f"{state}\n" for state in states))
            process.exit(0 if all(state == "active" for state in states) else 3)
        elif argv[:4] == SH_DECODER and decoded(argv[4:]) == list(generations.ARGV):
            await process.stdin.read()  # the decoder script, as sh would read it first
            process.stdout.write(NOT_NIXOS_FACTS)
            process.exit(0)
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
        await self._start_ssh()
        self.record("ssh_up")
        self.state = self.behaviour.system_state
        await asyncio.sleep(self.behaviour.http_delay)
        await self._start_http()
        self.record("http_up")
        if self.state == "running" and self.behaviour.http_status == 200:
            self.record("healthy")

    async def stop(self) -> None:
        if self._rebooting is not None:
            self._rebooting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rebooting
        await self.go_dark()


class SimLab:
    def __init__(
        self, directory: Path, names: list[str], behaviour: Behaviour | None = None
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

    def make_host(self, name: str, behaviour: Behaviour) -> SimHost:
        return SimHost(name, self, behaviour)

    async def start(self) -> None:
        await asyncio.gather(*(host.start() for host in self.hosts.values()))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.identity_file.write_bytes(self.client_key.export_private_key())
        self.identity_file.chmod(0o600)
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
