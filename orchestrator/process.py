"""The only code that starts a process on the controller.

Every child is owned: it runs in its own process group, and however the owner leaves (normal
exit, exception, timeout, cancellation) the whole group gets SIGTERM, a grace period, then
SIGKILL, so no ``lab deploy-all`` or hook outlives the step that started it. Commands are argv
lists, never shell strings, and are logged copy-pasteably (``display``).

Output is kept within a cap (its head and tail; the middle is counted and dropped, never
buffered), so a chatty or hostile program cannot grow the orchestrator's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from health_checks.text import from_host
from orchestrator.errors import OrchestratorError

log = logging.getLogger("orchestrator")

KILL_GRACE = 5.0  # SIGTERM → SIGKILL, and SIGKILL → reaped
DEFAULT_MAX_OUTPUT = 64 * 1024  # per stream, head plus tail
LOG_LINE_MAX = 4096  # one logged line; the rest of a longer one is counted
DISPLAY_MAX = 4 * LOG_LINE_MAX  # the same line escaped (an escape takes up to 6 characters)
_READ_CHUNK = 64 * 1024


# Words a POSIX shell reads as themselves (``shlex``'s safe set); anything else is quoted.
_PLAIN_WORD = re.compile(r"[\w@%+=:,./-]+", re.ASCII)
# A reserved word or an assignment in the command position would be read as syntax, not as
# the command's name (``a=b x`` runs ``x``), so there even a plain word is quoted.
_SYNTAX_FIRST = re.compile(
    r".*=.*|!|\{|\}|case|do|done|elif|else|esac|fi|for|if|in|then|until|while", re.ASCII
)
_SPECIAL_IN_DOUBLE_QUOTES = '$`"\\'


def _ansi_c(word: str) -> str:
    """``word`` as ``$'…'``: each character ``from_host`` would escape is written as that same
    escape (``\\n``, ``\\x1b``, ``\\u202e``), which is also its ANSI-C quoting."""
    out = []
    for char in word:
        code = ord(char)
        if char in "\\'":
            out.append("\\" + char)
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape): itself
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0x80 <= code <= 0x9F:  # C1: \\xHH would be a lone byte, not this character
            out.append(f"\\u{code:04x}")
        else:
            out.append(from_host(char))
    return "$'" + "".join(out) + "'"


def _double_quoted(word: str) -> str:
    # Inside "…" a backslash is literal unless a special character follows it, so only those
    # backslashes are doubled: ``'a\\nb'`` stays readable as ``"a\\nb"``.
    out = []
    for index, char in enumerate(word):
        if char in _SPECIAL_IN_DOUBLE_QUOTES[:3]:
            out.append("\\" + char)
        elif char == "\\":
            after = word[index + 1 : index + 2]
            out.append("\\\\" if after in ("", *_SPECIAL_IN_DOUBLE_QUOTES) else "\\")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _quote(word: str, first: bool) -> str:
    """One argv word for a POSIX shell, pasted into an interactive one: the shortest of
    plain, ``'…'``, ``"…"`` (a word with a ``'``) and ``$'…'`` (control characters, which
    also keeps the line one line)."""
    if _PLAIN_WORD.fullmatch(word) and not (first and _SYNTAX_FIRST.fullmatch(word)):
        return word
    # An escape is at most 10 characters (\\U0001abcd), so this limit never cuts: the text
    # differs exactly when some character needs escaping.
    if from_host(word, limit=10 * len(word) + 16) != word:
        # $'…' is POSIX.1-2024 and in bash, zsh, ksh and busybox sh (not yet in dash 0.5.12).
        return _ansi_c(word)
    if "'" not in word:
        return f"'{word}'"
    if "!" not in word:
        return _double_quoted(word)
    # "…!…" starts history expansion in interactive bash: stay in single quotes and put each
    # ' in between as \' (`'it'\''s!'`), still without the '"'"' of shlex.join.
    return "\\'".join(f"'{piece}'" if piece else "" for piece in word.split("'"))


def display(argv: Sequence[str]) -> str:
    """``argv`` as one copy-pasteable shell line: pasted into a POSIX shell it runs this very
    argv. Quoting is the lightest that is exact (``"it's"``, not ``'it'"'"'s'``); a control
    character (a newline inside a ``python -c`` script) is written ``$'…\\n…'``, so one event
    stays one log line and the line still pastes."""
    words = [_quote(word, index == 0) for index, word in enumerate(argv)]
    return from_host(" ".join(words), limit=DISPLAY_MAX)


class ProcessFailed(OrchestratorError):
    """A command failed to start, exited non-zero, or ran past its deadline.

    The message names the command, what happened (exit code or timeout) and the last line of
    its error output, so a single log line is enough to act on.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        returncode: int | None = None,
        timeout: float | None = None,
        reason: str | None = None,
        last_line: str = "",
    ) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        if reason is not None:
            what = reason
        elif timeout is not None:
            what = f"did not finish within {timeout:g}s; stopped it"
        else:
            what = f"failed with exit code {returncode}"
        super().__init__(f"`{display(argv)}` {what}" + (f": {last_line}" if last_line else ""))


class CappedOutput:
    """Keeps at most ``limit`` bytes of a stream: the first half and the latest half."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._head = bytearray()
        self._tail = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        room = self.limit // 2 - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data:
            return
        self._tail += data
        excess = len(self._tail) - (self.limit - self.limit // 2)
        if excess > 0:
            del self._tail[:excess]
            self.dropped += excess

    def text(self) -> str:
        head = self._head.decode(errors="replace")
        tail = self._tail.decode(errors="replace")
        if self.dropped:
            return f"{head}\n[… {self.dropped} bytes dropped …]\n{tail}"
        return head + tail


def last_line(text: str) -> str:
    """The last non-blank line of a command's output, escaped: output of update/deploy and
    of reboot commands relays what machines print."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return from_host(lines[-1]) if lines else ""


@dataclass(frozen=True)
class Completed:
    """A finished command: its exit code and the (capped) text of both streams."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Completed:
        if self.returncode != 0:
            raise ProcessFailed(
                self.argv,
                returncode=self.returncode,
                last_line=last_line(self.stderr) or last_line(self.stdout),
            )
        return self


class LineLogger:
    """Splits a byte stream into lines for the log, whatever their length.

    asyncio's ``readline`` fails on lines over 64 KiB; this reads chunks instead and logs at
    most ``LOG_LINE_MAX`` bytes of each line, noting how much of it was left out.
    """

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._line = bytearray()
        self._overflow = 0

    def feed(self, data: bytes) -> None:
        while data:
            newline = data.find(b"\n")
            piece, data = (data, b"") if newline < 0 else (data[:newline], data[newline + 1 :])
            room = LOG_LINE_MAX - len(self._line)
            self._line += piece[: max(room, 0)]
            self._overflow += max(len(piece) - max(room, 0), 0)
            if newline >= 0:
                self._flush()

    def close(self) -> None:
        if self._line or self._overflow:
            self._flush()

    def _flush(self) -> None:
        # `lab deploy-all` relays what the machines print: escaped like any host text.
        text = from_host(self._line.decode(errors="replace").rstrip("\r"), limit=DISPLAY_MAX)
        if self._overflow:
            text += f" [… {self._overflow} more bytes of this line]"
        self._emit(text)
        self._line.clear()
        self._overflow = 0


class Child:
    """A running child process, owned by ``spawn``."""

    def __init__(self, argv: Sequence[str], process: asyncio.subprocess.Process) -> None:
        self.argv = tuple(argv)
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    async def wait(self) -> int:
        return await self.process.wait()

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    async def stop(self, grace: float = KILL_GRACE) -> None:
        """SIGTERM to the whole group, then SIGKILL after ``grace``; returns once reaped.

        The group is signalled even after the leader exited: a grandchild it left behind (a
        daemonising ``nixos-rebuild``) still belongs to the group and must not outlive it.
        """
        for sig in (signal.SIGTERM, signal.SIGKILL):
            self.signal_group(sig)
            try:
                async with asyncio.timeout(grace):
                    await asyncio.shield(self.process.wait())
                if sig is signal.SIGTERM:
                    # Leader gone; whatever else is in the group gets no second chance.
                    self.signal_group(signal.SIGKILL)
                return
            except TimeoutError:
                continue


@contextlib.asynccontextmanager
async def spawn(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin: int | None = asyncio.subprocess.DEVNULL,
    stdout: int | None = None,
    stderr: int | None = None,
    label: str | None = None,
    grace: float = KILL_GRACE,
    on_start: Callable[[int], None] | None = None,
) -> AsyncIterator[Child]:
    """Start ``argv`` in a new process group; the group is stopped when the block exits.

    ``stdin``/``stdout``/``stderr`` take ``asyncio.subprocess.PIPE``, ``DEVNULL`` or ``None``
    (inherit). A program that cannot be started raises ``ProcessFailed``. ``on_start`` is
    called with the child's PID (its process group id) as soon as it runs; if it raises, the
    group is stopped and the exception propagates.
    """
    argv = list(argv)
    if not argv or not argv[0]:
        raise ProcessFailed(argv, reason="is not a command (empty argv)")
    where = f" in {cwd}" if cwd is not None else ""
    log.log(
        logging.INFO if label else logging.DEBUG,
        "%srunning `%s`%s",
        f"{label}: " if label else "",
        display(argv),
        where,
    )
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        missing = argv[0] if exc.filename in (None, argv[0]) else f"directory {cwd}"
        raise ProcessFailed(argv, reason=f"cannot start: not found: {missing}") from None
    except OSError as exc:
        raise ProcessFailed(argv, reason=f"cannot start: {exc.strerror or exc}") from None
    child = Child(argv, process)
    try:
        if on_start is not None:
            on_start(child.pid)
        yield child
    finally:
        # Also on success: the leader may have exited and left its group behind.
        await child.stop(grace)


async def _pump(
    stream: asyncio.StreamReader | None, sink: CappedOutput, lines: LineLogger | None
) -> None:
    if stream is None:
        return
    while chunk := await stream.read(_READ_CHUNK):
        sink.feed(chunk)
        if lines is not None:
            lines.feed(chunk)
    if lines is not None:
        lines.close()


async def run(
    argv: Sequence[str],
    *,
    timeout: float,
    max_output: int = DEFAULT_MAX_OUTPUT,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    label: str | None = None,
    log_output: bool = False,
    grace: float = KILL_GRACE,
    on_start: Callable[[int], None] | None = None,
) -> Completed:
    """Run ``argv`` to completion within ``timeout`` seconds and return what it said.

    A non-zero exit is returned, not raised (``Completed.check()`` raises); failing to start
    and running past ``timeout`` raise ``ProcessFailed``. With ``log_output`` each line of
    both streams goes to the log as ``label: line`` while the command runs. ``grace`` is how
    long a stopped child gets between SIGTERM and SIGKILL; ``on_start`` is as for ``spawn``.
    """
    stdout_kept, stderr_kept = CappedOutput(max_output), CappedOutput(max_output)
    prefix = f"{label}: " if label else ""

    def emit(line: str) -> None:
        log.info("%s%s", prefix, line)

    async with spawn(
        argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        label=label,
        grace=grace,
        on_start=on_start,
    ) as child:
        process = child.process
        try:
            async with asyncio.timeout(timeout):
                # Concurrently: a child that writes before it reads its input must not block.
                await asyncio.gather(
                    _feed_stdin(process, input),
                    _pump(process.stdout, stdout_kept, LineLogger(emit) if log_output else None),
                    _pump(process.stderr, stderr_kept, LineLogger(emit) if log_output else None),
                )
                returncode = await process.wait()
        except TimeoutError:
            raise ProcessFailed(
                argv, timeout=timeout, last_line=last_line(stderr_kept.text())
            ) from None
    return Completed(tuple(argv), returncode, stdout_kept.text(), stderr_kept.text())


async def _feed_stdin(process: asyncio.subprocess.Process, data: bytes | None) -> None:
    if data is None or process.stdin is None:
        return
    # A program that does not read its input (exits first, closes stdin) is not an error.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        process.stdin.write(data)
        await process.stdin.drain()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        process.stdin.close()


# -- a process group left behind by a killed orchestrator ---------------------------------------

PROC = Path("/proc")
BOOT_ID_FILE = PROC / "sys/kernel/random/boot_id"
# Set in the environment of a step's command; every process of the step inherits it, so a
# process group can be recognised as ours even after its leader has exited.
STEP_TOKEN_VARIABLE = "ORCHESTRATOR_STEP_TOKEN"
GONE_POLL = 0.05


@dataclass(frozen=True)
class ProcStat:
    state: str  # field 3: R, S, D, Z, …
    pgrp: int  # field 5
    start: int  # field 22: clock ticks after boot


def proc_stat(pid: int) -> ProcStat | None:
    """``/proc/<pid>/stat``, or None when there is no such process."""
    try:
        data = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ")": split after it.
    fields = data[data.rindex(b")") + 2 :].split()
    return ProcStat(fields[0].decode(), int(fields[2]), int(fields[19]))


def boot_id() -> str:
    return BOOT_ID_FILE.read_text().strip()


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in os.scandir(PROC):
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat.pgrp == pgid and stat.state != "Z":
                members.append(int(entry.name))
    return members


def carries_token(pid: int, token: str) -> bool:
    try:
        environ = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return False
    return f"{STEP_TOKEN_VARIABLE}={token}".encode() in environ.split(b"\0")


def is_our_group(pgid: int, leader_start: int | None, boot: str, token: str) -> bool:
    """Whether process group ``pgid`` is still the one a step started, never a recycled id.

    Ours if, on the same boot, its leader is the very process we started (same PID and start
    time), or, once the leader has exited, a member still carries the step's token. A PID is
    not reused while its process group has members, so a group whose leader has a different
    start time is someone else's."""
    if boot != boot_id():
        return False  # the group ended with the boot it ran in
    leader = proc_stat(pgid)
    if leader is not None and leader.state != "Z":
        return leader.pgrp == pgid and leader.start == leader_start
    return any(carries_token(pid, token) for pid in group_members(pgid))


async def _until_gone(pgid: int, limit: float) -> bool:
    deadline = asyncio.get_running_loop().time() + limit
    while group_members(pgid):
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(GONE_POLL)
    return True


async def end_group(pgid: int, grace: float = KILL_GRACE) -> bool:
    """SIGTERM to process group ``pgid``, SIGKILL after ``grace``; True once no live member
    is left (checked, not assumed), False if one survived SIGKILL for ``grace`` too."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        if await _until_gone(pgid, grace):
            return True
    return False


def no_new_privileges() -> bool:
    """Whether this process runs with NoNewPrivileges (``/proc/self/status``): then no
    setuid program, sudo included, can give it root."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("NoNewPrivs:"):
                    return line.split(":", 1)[1].strip() == "1"
    except OSError:
        pass
    return False
