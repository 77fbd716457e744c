"""Every side effect on a machine, behind a few narrow functions.

``SshHost`` talks to a remote machine with asyncssh; ``LocalHost`` does the same three things on
the controller itself without SSH. Both offer ``read_boot_id``, ``system_state`` and
``request_reboot``, which is all the engine and the health gate need.

asyncssh pitfalls handled here (see STYLE.md): host keys are always checked against explicit
known_hosts files; connect, login and every command have a deadline; ``run()`` does not raise
when the connection drops mid-command (``exit_status is None``), so that is checked by hand.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from orchestrator.errors import OrchestratorError

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
READ_BOOT_ID = ["cat", BOOT_ID_PATH]
SYSTEM_STATE = ["systemctl", "is-system-running"]
# A reboot command that has not answered by then was delivered; the host is going down.
REBOOT_COMMAND_TIMEOUT = 30.0
# While a machine is dark its SYNs are dropped and Linux resends one only after 1 s, then 3 s:
# a single connect started just before the machine came back would notice it a second late
# or never within the connect timeout. A fresh TCP attempt this often (earlier ones stay in
# flight, so a slow network still gets its answer) notices a machine within this interval.
CONNECT_RETRY_INTERVAL = 0.1

log = logging.getLogger("orchestrator")


class ProbeFailed(Exception):
    """A transient failure: the host may simply not be back yet."""


class HostKeyChanged(OrchestratorError):
    """The host presented a key we do not trust: never retried, never ignored."""


class RebootRefused(OrchestratorError):
    """The reboot command ran and said no (sudo refused, reboot inhibited, …)."""


def parse_boot_id(text: str) -> str | None:
    """A boot id is a UUID; anything else (shutdown noise, an error) is unknown, never 'new'."""
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncssh.PermissionDenied):
        return "authentication failed (check ssh.identity_file and the machine's authorized keys)"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


@dataclass(frozen=True)
class SshEndpoint:
    name: str
    host: str
    port: int
    user: str
    identity_file: Path | None
    known_hosts: tuple[Path, ...]
    connect_timeout: float


async def open_tcp(host: str, port: int, limit: float) -> socket.socket:
    """A connected TCP socket to ``host:port`` within ``limit`` seconds, or the last error.

    Staggered attempts, happy-eyeballs style: a new one every ``CONNECT_RETRY_INTERVAL``
    while earlier ones are still waiting, and the first to connect wins. A refused connection
    (a booting machine whose sshd is not listening yet) is retried at the next tick like a
    dropped one, so it is handled like a timeout until ``limit``. Only reachability is decided
    here: the SSH handshake, host key check and login happen on the socket afterwards.
    """
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + limit
    async with asyncio.timeout(limit):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)

    async def attempt(info: tuple[Any, ...]) -> socket.socket:
        family, kind, proto, _, address = info
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return sock

    tasks: list[asyncio.Task[socket.socket]] = []  # attempts not yet looked at
    winner: socket.socket | None = None
    last_error: BaseException | None = None
    next_start = time.monotonic()
    try:
        while winner is None:
            now = time.monotonic()
            if now >= deadline:
                # Attempts still waiting: the machine is dark. Otherwise say what it answered.
                raise TimeoutError() if tasks or last_error is None else last_error
            if now >= next_start:
                # One attempt per resolved address per tick (usually exactly one).
                tasks += [asyncio.create_task(attempt(info)) for info in infos]
                next_start = now + CONNECT_RETRY_INTERVAL
            wait = max(0.0, min(next_start, deadline) - time.monotonic())
            if tasks:
                await asyncio.wait(tasks, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(wait)
            for task in [task for task in tasks if task.done()]:
                tasks.remove(task)
                error = task.exception()
                if error is not None:
                    last_error = error
                elif winner is None:
                    winner = task.result()
                else:
                    task.result().close()
        return winner
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()  # the attempt closes its own socket
            elif not task.cancelled() and task.exception() is None:
                task.result().close()


def load_known_hosts(files: Sequence[Path]) -> asyncssh.SSHKnownHosts:
    if not files:
        raise OrchestratorError(
            "no known_hosts file found (looked for ~/.ssh/known_hosts and "
            "/etc/ssh/ssh_known_hosts); set ssh.known_hosts — host keys are always checked"
        )
    for path in files:
        if not path.is_file():
            raise OrchestratorError(f"ssh.known_hosts: {path}: no such file")
    try:
        return asyncssh.read_known_hosts([str(path) for path in files])
    except (OSError, ValueError) as exc:
        raise OrchestratorError(f"ssh.known_hosts: cannot read: {exc}") from None


class SshHost:
    """One remote machine. Keeps a single connection open between probes and reconnects when
    it drops, so a healthy host costs one command round-trip per poll, not a handshake."""

    def __init__(
        self,
        endpoint: SshEndpoint,
        known_hosts: asyncssh.SSHKnownHosts,
        expected_host_key: str | None,
    ) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        self._known_hosts = known_hosts
        self.expected_host_key = expected_host_key
        self.host_key: str | None = None
        self._conn: asyncssh.SSHClientConnection | None = None

    async def _connection(self, timeout: float) -> asyncssh.SSHClientConnection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        self._conn = None
        endpoint = self.endpoint
        options: dict[str, object] = {}
        if endpoint.identity_file is not None:
            options["client_keys"] = [str(endpoint.identity_file)]
            options["agent_path"] = None
        limit = min(timeout, endpoint.connect_timeout)
        deadline = time.monotonic() + limit
        try:
            sock = await open_tcp(endpoint.host, endpoint.port, limit)
            # asyncssh owns the socket from here: it closes it if the handshake fails.
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                conn = await asyncssh.connect(
                    endpoint.host,
                    endpoint.port,
                    sock=sock,
                    username=endpoint.user,
                    known_hosts=self._known_hosts,
                    config=None,
                    login_timeout=limit,
                    keepalive_interval=5,
                    keepalive_count_max=2,
                    **options,
                )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostKeyChanged(
                f"{self.name}: SSH host key of {endpoint.host}:{endpoint.port} does not match "
                f"known_hosts ({_reason(exc)}); refusing to run any command on it — if the "
                "machine was reinstalled, update known_hosts and run again"
            ) from None
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            raise ProbeFailed(f"ssh: {_reason(exc)}") from None
        server_key = conn.get_server_host_key()
        fingerprint = server_key.get_fingerprint() if server_key is not None else None
        if self.expected_host_key and fingerprint != self.expected_host_key:
            conn.abort()
            raise HostKeyChanged(
                f"{self.name}: came back with a different SSH host key ({fingerprint}, "
                f"was {self.expected_host_key}); refusing to run any command on it"
            )
        self.host_key = fingerprint
        self._conn = conn
        return conn

    async def _run(self, argv: Sequence[str], timeout: float) -> asyncssh.SSHCompletedProcess:
        # The remote side always goes through the user's shell; shlex.join makes every argument
        # a single literal word there, so nothing from the config is ever interpreted.
        conn = await self._connection(timeout)
        try:
            async with asyncio.timeout(timeout):
                result = await conn.run(shlex.join(argv), check=False)
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            self.drop()
            raise ProbeFailed(f"ssh: {shlex.join(argv)}: {_reason(exc)}") from None
        if result.exit_status is None:
            self.drop()
            raise ProbeFailed(f"ssh: connection lost during {shlex.join(argv)}")
        return result

    async def read_boot_id(self, timeout: float) -> str | None:
        result = await self._run(READ_BOOT_ID, timeout)
        return parse_boot_id(str(result.stdout)) if result.exit_status == 0 else None

    async def system_state(self, timeout: float) -> str:
        # is-system-running exits non-zero for anything but "running": read its word instead.
        result = await self._run(SYSTEM_STATE, timeout)
        return str(result.stdout).strip() or f"unknown (exit {result.exit_status})"

    async def request_reboot(self, command: Sequence[str], timeout: float) -> None:
        argv = list(command)
        if self.endpoint.user != "root":
            argv = ["sudo", "-n", *argv]
        conn = await self._connection(timeout)
        try:
            async with asyncio.timeout(REBOOT_COMMAND_TIMEOUT):
                result = await conn.run(shlex.join(argv), check=False)
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            # The host going down under us is the expected outcome of a reboot.
            log.debug("%s: reboot command ended with %s", self.name, _reason(exc))
            self.drop()
            return
        self.drop()
        if result.exit_status is None or result.exit_status == 0:
            return
        detail = (str(result.stderr).strip() or str(result.stdout).strip()).splitlines()
        raise RebootRefused(
            f"{self.name}: `{shlex.join(argv)}` failed with exit code {result.exit_status}"
            + (f": {detail[-1]}" if detail else "")
        )

    def drop(self) -> None:
        if self._conn is not None:
            self._conn.abort()
        self._conn = None

    async def close(self) -> None:
        self.drop()


class LocalHost:
    """The controller itself: the same three operations, without SSH."""

    host_key: str | None = None
    expected_host_key: str | None = None

    def __init__(
        self,
        name: str,
        boot_id_file: Path,
        state_command: Sequence[str],
        reboot_command: Sequence[str],
    ) -> None:
        self.name = name
        self.boot_id_file = boot_id_file
        self.state_command = list(state_command)
        self.reboot_command = list(reboot_command)

    async def read_boot_id(self, timeout: float) -> str | None:
        try:
            return parse_boot_id(self.boot_id_file.read_text())
        except OSError as exc:
            raise ProbeFailed(f"boot id: {self.boot_id_file}: {exc.strerror}") from None

    async def _exec(self, argv: Sequence[str], timeout: float) -> tuple[int, str, str]:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise ProbeFailed(f"{shlex.join(argv)}: {exc.strerror or exc}") from None
        try:
            async with asyncio.timeout(timeout):
                stdout, stderr = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise ProbeFailed(f"{shlex.join(argv)}: timed out") from None
        assert process.returncode is not None
        return process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")

    async def system_state(self, timeout: float) -> str:
        status, stdout, _ = await self._exec(self.state_command, timeout)
        return stdout.strip() or f"unknown (exit {status})"

    async def request_reboot(self, command: Sequence[str], timeout: float) -> None:
        del command  # the local machine has its own command (local.reboot_command)
        try:
            status, stdout, stderr = await self._exec(self.reboot_command, REBOOT_COMMAND_TIMEOUT)
        except ProbeFailed as exc:
            raise RebootRefused(f"{self.name}: {exc}") from None
        if status != 0:
            detail = (stderr.strip() or stdout.strip()).splitlines()
            raise RebootRefused(
                f"{self.name}: `{shlex.join(self.reboot_command)}` failed with exit code {status}"
                + (f": {detail[-1]}" if detail else "")
            )

    def drop(self) -> None:
        pass

    async def close(self) -> None:
        pass


Host = SshHost | LocalHost
