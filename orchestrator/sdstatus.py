"""systemd's status line: what ``systemctl status lab-orchestrator`` shows as ``Status:``.

Each run event becomes one ``STATUS=`` message (sd_notify) saying where the run is and what it
waits for, e.g. ``verifying grey-area: waiting: http …/health: 503 (1m12s of 15m)``. It goes
through ``sdnotify``, a small pure-Python client of the notify socket (and in nixpkgs); the
service unit sets ``NotifyAccess=main`` so only this process may set the line.

Outside systemd (no ``NOTIFY_SOCKET``) there is no hook at all. Under systemd a message that
cannot be sent (socket gone, receive queue full) is a warning in the log once, and never
changes the run: the status line is a window onto the run, not part of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence

from health_checks.text import from_host
from orchestrator.hooks import EventKind, Hook, RunEvent, Waiting
from orchestrator.process import display
from orchestrator.report import RunSummary, exact_duration
from orchestrator.states import WAVE_PREFIX, Phase, StateName

log = logging.getLogger("orchestrator")

# One line that fits `systemctl status` on a usual terminal; longer host text is cut.
STATUS_MAX = 120
# How much of the update/deploy command the status line shows.
COMMAND_MAX = 48
# The engine reports a wait only when its first failing probe changes; in between, the line's
# elapsed time is brought up to date this often, so it never shows a stale "(12s of 15m)".
REFRESH_INTERVAL = 5.0


def duration(seconds: float) -> str:
    """``72`` -> ``1m12s``, ``900`` -> ``15m``: whole seconds, zero parts left out, so the
    timeout reads as configured."""
    return exact_duration(float(max(0, int(seconds))))


def _clip(text: str, room: int) -> str:
    # from_host escapes whatever could break the line and marks a cut with "…[N more]".
    return from_host(text, limit=max(16, room))


def _machines(count: int) -> str:
    return f"{count} machine" if count == 1 else f"{count} machines"


def _step(name: str, command: Sequence[str]) -> str:
    return f"{name} ({_clip(display(command), COMMAND_MAX)})" if command else name


def state_text(summary: RunSummary, update: Sequence[str] = (), deploy: Sequence[str] = ()) -> str:
    """Where the run in ``summary`` is, as the status line says it (without the run id: the
    unit runs one run at a time, and ``orchestrator status`` has the id)."""
    state = StateName.parse(summary.state)
    machine = state.machine or ""
    names = [m.name for m in summary.machines]
    match state.phase:
        case Phase.PREFLIGHT:
            text = f"preflight: probing {_machines(len(names))}"
        case Phase.UPDATING:
            text = _step("updating", update)
        case Phase.DEPLOYING if machine:
            text = f"deploying {machine}"
        case Phase.DEPLOYING:
            text = _step("deploying", deploy)
        case Phase.REBOOTING if machine in names:
            text = f"rebooting {machine} ({names.index(machine) + 1} of {len(names)})"
        case Phase.REBOOTING:
            # A wave of several machines: `rebooting wave-2 (3 of 20 waves, 25 machines)`.
            waves = {m.wave for m in summary.machines}
            number = machine.removeprefix(WAVE_PREFIX)
            members = [m for m in summary.machines if str(m.wave) == number]
            text = f"rebooting {machine} ({number} of {len(waves)} waves, {len(members)} machines)"
        case Phase.VERIFYING | Phase.SETTLING:
            text = f"{state.phase} {machine}"
        case Phase.ROLLING_BACK:
            text = f"rolling back {machine}: its new generation failed the gate"
        case Phase.PAUSED:
            text = f"paused before {machine}: waiting for the maintenance window"
        case Phase.VERIFYING_ROLLBACK:
            text = f"verifying {machine} on the rolled-back generation"
        case Phase.DONE:
            took = "" if summary.duration_s is None else f" in {duration(summary.duration_s)}"
            text = f"done: {_machines(len(names))}{took}"
        case Phase.ABORTED:
            where = f"aborted at {summary.failed_machine}" if summary.failed_machine else "aborted"
            text = f"{where}: {summary.error or '(no error recorded)'}"
    return _clip(text, STATUS_MAX)


def waiting_text(machine: str, waiting: Waiting) -> str:
    """``verifying M: waiting: <first failing probe> (<elapsed> of <timeout>)``; the probe's
    text is what gets cut when the line is too long, never the prefix or the times."""
    prefix = f"verifying {machine}: waiting: "
    suffix = f" ({duration(waiting.elapsed)} of {duration(waiting.limit)})"
    failure = _clip(waiting.failure, STATUS_MAX - len(prefix) - len(suffix))
    return _clip(prefix + failure + suffix, STATUS_MAX)


def status_text(
    event: RunEvent, update: Sequence[str] = (), deploy: Sequence[str] = ()
) -> str | None:
    """The status line after ``event``, or None to leave the line as it is.

    MACHINE_REBOOTING and MACHINE_HEALTHY say nothing new: the state line already names the
    reboot (``rebooting M (2 of 4)``), and a healthy machine moves to ``settling`` at once."""
    match event.kind:
        case EventKind.MACHINE_WAITING:
            if event.waiting is None or event.machine is None:
                return None
            return waiting_text(event.machine, event.waiting)
        case EventKind.RUN_STARTED:
            text = state_text(event.summary, update, deploy)
            return _clip(f"{text} (resumed)", STATUS_MAX) if event.resumed else text
        case EventKind.STATE_CHANGED | EventKind.RUN_FINISHED:
            return state_text(event.summary, update, deploy)
        case EventKind.MACHINE_REBOOTING | EventKind.MACHINE_HEALTHY:
            return None


class Notifier:
    """The notify socket, through sdnotify, made safe for a run: never blocks, never raises."""

    def __init__(self) -> None:
        """Connects to ``NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket, which
        sdnotify maps to a leading NUL); raises OSError when that cannot be done."""
        import sdnotify

        # debug=True: sdnotify raises instead of swallowing, so a failure can be logged once.
        self._notifier = sdnotify.SystemdNotifier(debug=True)
        # A datagram send blocks when the receiver's queue is full; a status line is not worth
        # stalling the event loop (and so the health gate) for: drop it instead.
        self._notifier.socket.setblocking(False)
        self._warned = False

    def send(self, status: str) -> bool:
        """Sends ``STATUS=status``; False (and a warning the first time) if it could not."""
        # sdnotify encodes the message as latin-1 (and fails on anything beyond it), while
        # systemd reads UTF-8: hand it the UTF-8 bytes spelled as latin-1, which it turns back
        # into exactly those bytes.
        message = f"STATUS={status}".encode().decode("latin-1")
        try:
            self._notifier.notify(message)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("warning: systemd status not sent: %s; ignored", exc.strerror or exc)
            return False
        return True

    def close(self) -> None:
        self._notifier.socket.close()


class StatusLine:
    """The hook: every event, as the status line it leads to (sent only when it changed)."""

    name = "systemd-status"
    timeout = 1.0  # a datagram on a non-blocking socket: no wait at all

    def __init__(
        self,
        notifier: Notifier,
        update: Sequence[str] = (),
        deploy: Sequence[str] = (),
        refresh: float = REFRESH_INTERVAL,
    ) -> None:
        self.notifier = notifier
        self._update = list(update)
        self._deploy = list(deploy)
        self._refresh = refresh
        self._last: str | None = None
        self._ticker: asyncio.Task[None] | None = None

    def wants(self, event: RunEvent) -> bool:
        return True

    async def __call__(self, event: RunEvent) -> None:
        # Any event means the wait the ticker describes is over or has a new first failure.
        self._stop_ticker()
        text = status_text(event, self._update, self._deploy)
        if text is None:
            return
        self._send(text)
        if event.kind is EventKind.MACHINE_WAITING and event.waiting and event.machine:
            self._ticker = asyncio.create_task(self._tick(event.machine, event.waiting))

    def _send(self, text: str) -> None:
        if text != self._last:
            self._last = text
            self.notifier.send(text)

    async def _tick(self, machine: str, waiting: Waiting) -> None:
        since = time.monotonic()
        while True:
            await asyncio.sleep(self._refresh)
            elapsed = waiting.elapsed + time.monotonic() - since
            if elapsed > waiting.limit:
                return  # the gate gives up now; its abort brings the next line
            self._send(waiting_text(machine, Waiting(waiting.failure, elapsed, waiting.limit)))

    def _stop_ticker(self) -> None:
        # Not awaited: a cancelled task never runs another step, so it sends nothing more,
        # and awaiting it could swallow a cancellation meant for the caller.
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None


def hooks(update: Sequence[str] = (), deploy: Sequence[str] = ()) -> list[Hook]:
    """The status-line hook when systemd listens (``NOTIFY_SOCKET``), else none. ``update``
    and ``deploy`` are the commands the ``updating``/``deploying`` lines name, if given."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return []
    try:
        notifier = Notifier()
    except OSError as exc:
        log.warning("warning: systemd status: cannot use NOTIFY_SOCKET: %s", exc.strerror or exc)
        return []
    return [StatusLine(notifier, update, deploy)]
