"""Every side effect on a machine, behind a few narrow functions.

``SshHost`` talks to a remote machine with asyncssh; ``LocalHost`` does the same on the
controller itself, through the process runner. Both satisfy one ``Host`` protocol: ``run``
(the one way a command reaches a machine) and the thin callers built on it, ``read_boot_id``,
``system_state`` and ``request_reboot``, which is all the engine and the health gate need.

asyncssh pitfalls handled here (see STYLE.md): host keys are always checked against explicit
known_hosts files; connect, login and every command share one deadline; a connection that
drops mid-command leaves ``exit_status`` at None, which is checked by hand; output is read
with a cap rather than buffered whole, through a small channel window, so a host that writes
without end costs bounded memory (see ``SshHost.run``).

**Quoting for any login shell.** sshd hands the command string to the remote user's login
shell, and shells disagree on quoting: ``shlex.join``'s ``'x\\'`` is one word to sh, bash and
zsh but an unterminated quote to fish, whose single quotes honour ``\\'``. So the string sent
is only ever made of words every shell reads alike (``remote_command``): a command whose words
are all plain (``cat /proc/sys/kernel/random/boot_id``) goes as it is; any other is sent as
``exec /bin/sh -s -- x<octal> ...``, each word's bytes as octal digits, and ``DECODER`` on
stdin has POSIX ``/bin/sh`` (with ``printf`` and ``sed``, both on every NixOS and Debian
system) turn them back into the exact argv and ``exec`` it. Nothing in the string can be
misread by bash, zsh, fish, tcsh or sh; the command's stdin is at end of file either way.

**Host text.** What a host prints is data: ``run`` returns it raw for parsers (a boot id,
``systemctl is-active``'s lines). Every text this module makes *about* a host — an error with
the SSH disconnect reason, the system state, a refused reboot's output — goes through
``health_checks.text.from_host`` (control characters escaped, length capped) before it can
reach a log line, the store, ``status`` or ``history``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncssh

from health_checks.text import from_host
from orchestrator import defaults, process
from orchestrator.errors import OrchestratorError
from orchestrator.process import CappedOutput, Completed

READ_BOOT_ID = ["cat", str(defaults.BOOT_ID_FILE)]
SYSTEM_STATE = list(defaults.STATE_COMMAND)
# A boot id is 37 bytes, a system state one word: never keep more than a probe needs.
BOOT_ID_MAX_OUTPUT = 64
STATE_MAX_OUTPUT = 1024
REBOOT_MAX_OUTPUT = 4096
# The most of a system state shown in a probe or message.
STATE_SHOWN = 200
# The SSH receive window of one command: what a host may have in flight towards us. asyncssh
# asks for more only as we read, so this (plus one read) bounds a channel's buffers.
CHANNEL_WINDOW = 256 * 1024
# The least stderr kept (and, for answers of a known size, tolerated) of any command.
STDERR_CAP = 4096
# How long a closed channel may take to confirm its close before the connection is dropped.
CLOSE_GRACE = 1.0
PROBE_KILL_GRACE = 0.5
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


class ConnectFailed(ProbeFailed):
    """No connection, so the command was certainly not sent."""


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
    """Why an SSH operation failed, in one sanitised line: asyncssh's message may carry the
    host's own words (a disconnect reason), which are escaped like all host text."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncssh.PermissionDenied):
        return "authentication failed (check ssh.identity_file and the machine's authorized keys)"
    return from_host(str(exc) or type(exc).__name__, 300)


# Words that sh, bash, dash, zsh, fish and tcsh all read as themselves: no quotes, escapes,
# globs, expansions, braces, comments or separators. The first word is also a command name:
# no `=` (an assignment to sh) and no leading `@` (a tcsh builtin) or `-`/`.`.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9@+:,./_-][A-Za-z0-9@+=:,./_-]*")
_PLAIN_COMMAND = re.compile(r"[A-Za-z0-9_/][A-Za-z0-9+:,./_-]*")

# Run by POSIX /bin/sh from stdin (`sh -s -- WORD...`): each WORD is `x` and three octal digits
# per byte; printf's `\ooo` format escapes turn them back into bytes (a trailing `x` keeps
# command substitution from eating trailing newlines), then the exact argv is exec'd.
DECODER = r"""set -eu
for w do
    shift
    d=$(printf %s "${w#x}" | sed 's/[0-7][0-7][0-7]/\\&/g')
    d=$(printf "${d}x")
    set -- "$@" "${d%x}"
done
exec "$@"
"""


def is_plain(argv: Sequence[str]) -> bool:
    """Whether ``argv`` can go to any login shell as it is (see ``remote_command``)."""
    return bool(argv) and all(
        (_PLAIN_COMMAND if index == 0 else _PLAIN_WORD).fullmatch(word)
        for index, word in enumerate(argv)
    )


def encode_word(word: str) -> str:
    return "x" + "".join(f"{byte:03o}" for byte in word.encode("utf-8", "surrogateescape"))


def remote_command(argv: Sequence[str]) -> tuple[str, bytes | None]:
    """The command string for sshd and what to send on its stdin (None: nothing, stdin is
    /dev/null) so the remote side executes exactly ``argv``, whatever the login shell."""
    if not argv:
        raise ValueError("empty argv")
    if any("\0" in word for word in argv):
        raise ValueError("a NUL byte cannot be part of an argument")
    if is_plain(argv):
        return " ".join(argv), None
    words = " ".join(encode_word(word) for word in argv)
    return f"exec /bin/sh -s -- {words}", DECODER.encode()


class OutputOverflow(ProbeFailed):
    """The command wrote more than its cap before it ended: reading stopped, channel closed."""

    def __init__(self, message: str, head: str, limit: int) -> None:
        super().__init__(message)
        self.head = head  # what was kept of the stream that overflowed (raw host text)
        self.limit = limit


@dataclass(frozen=True)
class SshEndpoint:
    name: str
    host: str
    port: int
    user: str
    client_key: asyncssh.SSHKey | None  # ssh.identity_file, loaded; None: the client's own
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
        stamps = tuple((str(path), path.stat().st_mtime_ns, path.stat().st_size) for path in files)
        return _parsed_known_hosts(stamps)
    except (OSError, ValueError) as exc:
        raise OrchestratorError(f"ssh.known_hosts: cannot read: {exc}") from None


@functools.lru_cache(maxsize=4)
def _parsed_known_hosts(stamps: tuple[tuple[str, int, int], ...]) -> asyncssh.SSHKnownHosts:
    """Parsed once per version of the files, not once per machine: 500 machines each
    parsing a 500-line file cost 240 MB and seconds of CPU."""
    return asyncssh.read_known_hosts([path for path, _, _ in stamps])


class Host(Protocol):
    """A machine the engine and the gate act on: remote over SSH, or the controller."""

    @property
    def name(self) -> str: ...
    @property
    def host_key(self) -> str | None: ...

    async def run(
        self,
        argv: Sequence[str],
        timeout: float,
        max_output: int = ...,
        *,
        stop_at_cap: bool = ...,
    ) -> Completed: ...
    async def read_boot_id(self, timeout: float) -> str | None: ...
    async def system_state(self, timeout: float) -> str: ...
    async def request_reboot(self) -> None: ...
    def as_root(self, argv: Sequence[str]) -> list[str]: ...
    async def connect(self, timeout: float) -> None: ...
    def drop(self) -> None: ...
    async def close(self) -> None: ...


def _refused(name: str, result: Completed) -> RebootRefused:
    said = process.last_line(result.stderr) or process.last_line(result.stdout)
    return RebootRefused(
        f"{name}: `{from_host(process.display(result.argv), 200)}` failed with exit code "
        f"{result.returncode}" + (f": {from_host(said, 300)}" if said else "")
    )


class SshHost:
    """One remote machine. Keeps a single connection open between probes and reconnects when
    it drops, so a healthy host costs one command round-trip per poll, not a handshake.

    ``pinned_key`` gives the fingerprint seen before (in preflight, before the reboot), the
    only one accepted afterwards even when known_hosts lists several for the machine."""

    def __init__(
        self,
        endpoint: SshEndpoint,
        known_hosts: asyncssh.SSHKnownHosts,
        reboot_command: Sequence[str],
        pinned_key: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.endpoint = endpoint
        self._known_hosts = known_hosts
        self._pinned_key = pinned_key
        self._reboot_argv = list(reboot_command)
        if endpoint.user != "root":
            self._reboot_argv = ["sudo", "-n", *self._reboot_argv]
        self._host_key: str | None = None
        self._conn: asyncssh.SSHClientConnection | None = None
        self._connecting = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def host_key(self) -> str | None:
        return self._host_key

    async def _connection(self, timeout: float) -> asyncssh.SSHClientConnection:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        # One connect at a time: a command arriving while the warm-up connect (see
        # ``connect``) is under way waits for it instead of opening a second connection.
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                await self._connecting.acquire()
        except TimeoutError:
            raise ConnectFailed("ssh: timed out waiting for the connection under way") from None
        try:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            return await self._open(max(0.0, timeout - (time.monotonic() - started)))
        finally:
            self._connecting.release()

    async def _open(self, timeout: float) -> asyncssh.SSHClientConnection:
        self._conn = None
        endpoint = self.endpoint
        options: dict[str, object] = {}
        if endpoint.client_key is not None:
            options["client_keys"] = [endpoint.client_key]
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
            raise ConnectFailed(f"ssh: {_reason(exc)}") from None
        server_key = conn.get_server_host_key()
        fingerprint = server_key.get_fingerprint() if server_key is not None else None
        pinned = self._pinned_key()
        if pinned and fingerprint != pinned:
            conn.abort()
            raise HostKeyChanged(
                f"{self.name}: came back with a different SSH host key ({fingerprint}, "
                f"was {pinned}); refusing to run any command on it"
            )
        self._host_key = fingerprint
        self._conn = conn
        return conn

    async def run(
        self,
        argv: Sequence[str],
        timeout: float,
        max_output: int = process.DEFAULT_MAX_OUTPUT,
        *,
        stop_at_cap: bool = False,
    ) -> Completed:
        """The only way a command reaches a remote machine.

        One deadline covers connecting (when the connection is not open) and the command.
        The remote side goes through the user's login shell, whichever it is; what it executes
        is exactly ``argv`` (``remote_command``). Each stream keeps at most ``max_output``
        bytes (head and tail); the rest is read and dropped as it comes, through a channel
        window of ``CHANNEL_WINDOW``, so memory stays bounded however much the host writes and
        the exit code still decides. With ``stop_at_cap`` a stream that passes the cap ends
        the command at once (``OutputOverflow``): for answers of a known small size, where
        more output can only be wrong and reading on would only burn the deadline.

        Raises ``ConnectFailed`` when the command was not sent and ``ProbeFailed`` when it was
        but no exit status came back.
        """
        deadline = time.monotonic() + timeout
        command, script = remote_command(argv)
        shown = from_host(process.display(argv), 200)
        # --debug shows every command a machine is sent, argv as it runs there.
        log.debug("%s: run %s", self.name, from_host(process.display(argv), 2000))
        conn = await self._connection(timeout)
        # stderr is only ever an explanation, and login-shell noise (a locale warning from a
        # dotfile) must not make a 37-byte boot id "too long": it gets at least STDERR_CAP.
        err_cap = max(max_output, STDERR_CAP)
        stdout, stderr = CappedOutput(max_output), CappedOutput(err_cap)
        overflow: OutputOverflow | None = None
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                remote = await conn.create_process(
                    command,
                    stdin=asyncssh.DEVNULL if script is None else asyncssh.PIPE,
                    encoding=None,
                    window=CHANNEL_WINDOW,
                )
                try:
                    if script is not None:
                        remote.stdin.write(script)
                        remote.stdin.write_eof()
                    drains = [
                        asyncio.ensure_future(
                            _drain(remote.stdout, stdout, max_output if stop_at_cap else None)
                        ),
                        asyncio.ensure_future(
                            _drain(remote.stderr, stderr, err_cap if stop_at_cap else None)
                        ),
                    ]
                    try:
                        await asyncio.gather(*drains)
                    except _CapReached as cap:
                        head = (stdout if cap.stream is stdout else stderr).text()
                        overflow = OutputOverflow(
                            f"ssh: {shown}: wrote more than {cap.stream.limit} bytes; "
                            "stopped reading",
                            head,
                            cap.stream.limit,
                        )
                    finally:
                        for drain in drains:
                            drain.cancel()
                finally:
                    # Only this channel goes (other probes share the connection). A host
                    # that does not answer the close loses the connection instead: the
                    # wait never takes the deadline.
                    remote.close()
                    try:
                        async with asyncio.timeout(CLOSE_GRACE):
                            await remote.wait_closed()
                    except TimeoutError:
                        self.drop()
                status = remote.exit_status
        except (OSError, TimeoutError, asyncssh.Error) as exc:
            self.drop()
            raise ProbeFailed(f"ssh: {shown}: {_reason(exc)}") from None
        if overflow is not None:
            raise overflow
        if status is None:
            self.drop()
            raise ProbeFailed(f"ssh: connection lost during {shown}")
        return Completed(tuple(argv), status, stdout.text(), stderr.text())

    async def read_boot_id(self, timeout: float) -> str | None:
        try:
            result = await self.run(READ_BOOT_ID, timeout, BOOT_ID_MAX_OUTPUT, stop_at_cap=True)
        except OutputOverflow:
            return None  # more than a boot id is not a boot id
        return parse_boot_id(result.stdout) if result.returncode == 0 else None

    async def system_state(self, timeout: float) -> str:
        try:
            result = await self.run(SYSTEM_STATE, timeout, STATE_MAX_OUTPUT, stop_at_cap=True)
        except OutputOverflow as exc:
            # Never a state: a state is one word. Show how it began.
            head = exc.head.strip()[:STATE_SHOWN]
            return from_host(f"not a state: more than {exc.limit} bytes: {head}", STATE_SHOWN)
        return state_word(result.stdout, result.stderr, result.returncode)

    def as_root(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as root on this machine: through ``sudo -n`` unless the SSH user is root
        (the target's sudo rules name each such command exactly; see nix/target.nix)."""
        return list(argv) if self.endpoint.user == "root" else ["sudo", "-n", *argv]

    async def request_reboot(self) -> None:
        """Send the reboot command. Its exit code decides; a connection that drops (or a
        command still silent at ``REBOOT_COMMAND_TIMEOUT``) is a host going down, which the
        gate then has to prove. A command that writes more than ``REBOOT_MAX_OUTPUT`` is
        neither: the host is up and talking, not rebooting, so that is ``RebootRefused``."""
        try:
            result = await self.run(
                self._reboot_argv, REBOOT_COMMAND_TIMEOUT, REBOOT_MAX_OUTPUT, stop_at_cap=True
            )
        except ConnectFailed as exc:
            raise RebootRefused(f"{self.name}: cannot send the reboot: {exc}") from None
        except OutputOverflow as exc:
            first = process.last_line(exc.head.split("\n", 1)[0])
            raise RebootRefused(
                f"{self.name}: the reboot command kept writing (more than {exc.limit} "
                "bytes) instead of ending; not taken as a reboot"
                + (f": {from_host(first, 200)}" if first else "")
            ) from None
        except ProbeFailed as exc:
            # The host going down under us is the expected outcome of a reboot.
            log.debug("%s: reboot command ended with %s", self.name, exc)
            return
        finally:
            self.drop()
        if result.returncode != 0:
            raise _refused(self.name, result)

    async def connect(self, timeout: float) -> None:
        """Open the connection now (TCP, handshake, login), so that the next command is one
        round trip: the engine does this for the next machine while one is verifying."""
        await self._connection(timeout)

    def drop(self) -> None:
        if self._conn is not None:
            self._conn.abort()
        self._conn = None

    async def close(self) -> None:
        self.drop()


class _CapReached(Exception):
    def __init__(self, stream: CappedOutput) -> None:
        super().__init__("output cap reached")
        self.stream = stream


async def _drain(
    stream: asyncssh.SSHReader[bytes], sink: CappedOutput, stop_after: int | None
) -> None:
    seen = 0
    while chunk := await stream.read(65536):
        sink.feed(chunk)
        seen += len(chunk)
        if stop_after is not None and seen > stop_after:
            raise _CapReached(sink)


def state_word(stdout: str, stderr: str, returncode: int | None) -> str:
    """What ``systemctl is-system-running`` said, made fit for a probe: its answer (one word
    on a healthy host, anything on a broken or hostile one) sanitised and capped; never equal
    to ``running`` unless that is exactly what it printed."""
    answer = stdout.strip()
    if answer:
        return from_host(answer, STATE_SHOWN)
    why = f"exit {returncode}" if returncode is not None else "no answer"
    said = process.last_line(stderr)
    return from_host(f"unknown ({why}{': ' + said if said else ''})", STATE_SHOWN)


class LocalHost:
    """The controller itself: the same operations, through the process runner."""

    def __init__(
        self,
        name: str,
        boot_id_file: Path,
        state_command: Sequence[str],
        reboot_command: Sequence[str],
    ) -> None:
        self._name = name
        self.boot_id_file = boot_id_file
        self.state_command = list(state_command)
        self.reboot_command = list(reboot_command)

    @property
    def name(self) -> str:
        return self._name

    @property
    def host_key(self) -> str | None:
        return None  # reached without SSH: there is no host key to pin

    async def run(
        self,
        argv: Sequence[str],
        timeout: float,
        max_output: int = process.DEFAULT_MAX_OUTPUT,
        *,
        stop_at_cap: bool = False,
    ) -> Completed:
        # The local runner always reads on (dropping past the cap): the controller's own
        # programs are trusted to end. ``stop_at_cap`` is accepted for the same signature.
        try:
            # A probe's deadline is short: a child that ignores SIGTERM must not stretch it.
            return await process.run(
                argv, timeout=timeout, max_output=max_output, grace=PROBE_KILL_GRACE
            )
        except process.ProcessFailed as exc:
            raise ProbeFailed(from_host(str(exc))) from None

    async def read_boot_id(self, timeout: float) -> str | None:
        try:
            with self.boot_id_file.open("rb") as boot_id:
                return parse_boot_id(boot_id.read(BOOT_ID_MAX_OUTPUT).decode(errors="replace"))
        except OSError as exc:
            raise ProbeFailed(from_host(f"boot id: {self.boot_id_file}: {exc.strerror}")) from None

    async def system_state(self, timeout: float) -> str:
        result = await self.run(self.state_command, timeout, STATE_MAX_OUTPUT)
        return state_word(result.stdout, result.stderr, result.returncode)

    def as_root(self, argv: Sequence[str]) -> list[str]:
        return list(argv) if os.geteuid() == 0 else ["sudo", "-n", *argv]

    async def request_reboot(self) -> None:
        try:
            result = await self.run(self.reboot_command, REBOOT_COMMAND_TIMEOUT, REBOOT_MAX_OUTPUT)
        except ProbeFailed as exc:
            raise RebootRefused(f"{self.name}: {exc}") from None
        if result.returncode != 0:
            raise _refused(self.name, result)

    async def connect(self, timeout: float) -> None:
        pass  # nothing to open

    def drop(self) -> None:
        pass  # no connection to drop

    async def close(self) -> None:
        pass
