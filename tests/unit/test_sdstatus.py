"""systemd's status line: the STATUS= text of each event, made from real runs in a real store,
and the notifier against real datagram sockets (a path, an abstract name, one gone away)."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import uuid
from pathlib import Path

import pytest

from orchestrator import report, sdstatus
from orchestrator.hooks import EventKind, EventPoint, RunEvent, Waiting
from orchestrator.states import RunKind
from orchestrator.store import Store

NAMES = ["sleeper-service", "grey-area", "reverse-proxy", "ethics-gradient"]


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "state") as opened:
        yield opened


def _summary(store: Store, state: str, *, error: str | None = None, failed: str | None = None):
    run = store.create_run(RunKind.NIGHTLY, [(n, False) for n in NAMES], Path("/etc/lab.yaml"))
    if failed is not None:
        assert error is not None
        store.record_machine_error(run.run_id, failed, error)
    store.set_state(run.run_id, state, error=error)
    return report.summarize(store.run(run.run_id))


def _text(store: Store, state: str, kind: EventKind = EventKind.STATE_CHANGED, **kw) -> str | None:
    return sdstatus.status_text(RunEvent(kind, _summary(store, state, **kw)))


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("preflight", "preflight: probing 4 machines"),
        ("updating", "updating"),
        ("deploying", "deploying"),
        ("rebooting:grey-area", "rebooting grey-area (2 of 4)"),
        ("rebooting:ethics-gradient", "rebooting ethics-gradient (4 of 4)"),
        ("verifying:grey-area", "verifying grey-area"),
        ("settling:grey-area", "settling grey-area"),
    ],
)
def test_each_state_has_its_line(store, state, expected):
    assert _text(store, state) == expected


def test_updating_and_deploying_name_their_command_when_given(store):
    summary = _summary(store, "updating")
    event = RunEvent(EventKind.STATE_CHANGED, summary)
    assert sdstatus.status_text(event, ["lab", "update"], ["x"]) == "updating (lab update)"
    long = ["nixos-rebuild", "switch", "--flake", "/etc/nixos#" + "a" * 200]
    text = sdstatus.status_text(event, long)
    assert text is not None and text.startswith("updating (nixos-rebuild switch --flake ")
    assert len(text) <= sdstatus.STATUS_MAX and "more]" in text


def test_done_counts_machines_and_says_how_long(store):
    summary = _summary(store, "done")
    text = sdstatus.status_text(RunEvent(EventKind.STATE_CHANGED, summary))
    assert text is not None and re.fullmatch(r"done: 4 machines in \d+s", text)
    # RUN_FINISHED says the same, so the hook sends nothing twice.
    assert sdstatus.status_text(RunEvent(EventKind.RUN_FINISHED, summary)) == text


def test_aborted_names_the_machine_and_the_start_of_the_error(store):
    error = "grey-area did not pass the health gate within 900s; last failing probe: " + (
        "http http://grey-area/health: 503 " * 10
    )
    text = _text(store, "aborted", error=error, failed="grey-area")
    assert text is not None
    assert text.startswith("aborted at grey-area: grey-area did not pass the health gate")
    assert len(text) <= sdstatus.STATUS_MAX and text.endswith("more]")


def test_aborted_before_any_machine_has_no_machine(store):
    error = "preflight failed, nothing was touched: grey-area: ssh: connection refused"
    assert _text(store, "aborted", error=error) == f"aborted: {error}"


def test_a_resumed_run_says_so(store):
    summary = _summary(store, "verifying:grey-area")
    event = RunEvent(EventKind.RUN_STARTED, summary, resumed=True)
    assert sdstatus.status_text(event) == "verifying grey-area (resumed)"
    assert sdstatus.status_text(RunEvent(EventKind.RUN_STARTED, summary)) == "verifying grey-area"


def test_waiting_shows_the_first_failing_probe_and_the_time_spent(store):
    summary = _summary(store, "verifying:grey-area")
    waiting = Waiting("http …/health: 503", 72.4, 900)
    event = RunEvent(EventKind.MACHINE_WAITING, summary, "grey-area", waiting=waiting)
    assert sdstatus.status_text(event) == (
        "verifying grey-area: waiting: http …/health: 503 (1m12s of 15m)"
    )


def test_a_long_or_hostile_probe_text_is_cut_and_stays_one_line(store):
    summary = _summary(store, "verifying:grey-area")
    hostile = "http …/health: 503: " + "running\n00:00:00 run 1: done\x1b[2J" * 20
    event = RunEvent(
        EventKind.MACHINE_WAITING, summary, "grey-area", waiting=Waiting(hostile, 5, 900)
    )
    text = sdstatus.status_text(event)
    assert text is not None and len(text) <= sdstatus.STATUS_MAX
    assert "\n" not in text and "\x1b" not in text and "\\x1b" in text
    # The times survive the cut: the probe's text is what gives way.
    assert text.startswith("verifying grey-area: waiting: http …/health: 503: running\\n")
    assert text.endswith("more] (5s of 15m)")


@pytest.mark.parametrize("kind", [EventKind.MACHINE_REBOOTING, EventKind.MACHINE_HEALTHY])
def test_machine_events_that_add_nothing_leave_the_line(store, kind):
    summary = _summary(store, "verifying:grey-area")
    assert sdstatus.status_text(RunEvent(kind, summary, "grey-area")) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.9, "0s"),
        (42, "42s"),
        (60, "1m"),
        (72.4, "1m12s"),
        (372, "6m12s"),
        (900, "15m"),
        (3600, "1h"),
        (3720, "1h2m"),
        (3725, "1h2m5s"),
    ],
)
def test_durations_read_like_people_write_them(seconds, text):
    assert sdstatus.duration(seconds) == text


# -- the notifier, against real sockets -------------------------------------------------------


def _listener(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_notifier_sends_status_to_a_socket_path(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    with _listener(str(path)) as listener:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        notifier = sdstatus.Notifier()
        assert notifier.send("verifying grey-area: waiting: ssh: timed out (12s of 15m) ✓")
        message = listener.recv(4096)
    notifier.close()
    # systemd reads UTF-8; sdnotify alone would have failed on the check mark (latin-1).
    assert message.decode() == "STATUS=verifying grey-area: waiting: ssh: timed out (12s of 15m) ✓"


def test_notifier_sends_to_an_abstract_socket(monkeypatch):
    name = f"orchestrator-test-{uuid.uuid4().hex}"
    with _listener(b"\0" + name.encode()) as listener:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = sdstatus.Notifier()
        assert notifier.send("deploying")
        assert listener.recv(4096) == b"STATUS=deploying"
    notifier.close()


def test_a_socket_gone_away_is_one_warning_and_never_an_exception(tmp_path, monkeypatch, caplog):
    path = tmp_path / "notify"
    listener = _listener(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    notifier = sdstatus.Notifier()
    listener.close()
    caplog.set_level(logging.WARNING, logger="orchestrator")
    assert notifier.send("deploying") is False
    assert notifier.send("rebooting grey-area (2 of 4)") is False
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith("warning: systemd status not sent: ")
    notifier.close()


def test_a_full_queue_drops_the_line_rather_than_block(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    with _listener(str(path)):  # never read: its queue fills up
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        notifier = sdstatus.Notifier()
        sent = [notifier.send(f"settling m{i}") for i in range(5000)]
    notifier.close()
    assert sent[0] is True and sent[-1] is False


def test_no_notify_socket_means_no_hook(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdstatus.hooks() == []


def test_a_notify_socket_nobody_listens_on_means_no_hook(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    assert sdstatus.hooks() == []
    assert "cannot use NOTIFY_SOCKET" in caplog.text


# -- the hook: dedup and the ticking wait ------------------------------------------------------


def _drain(listener: socket.socket) -> list[str]:
    received: list[str] = []
    while True:
        try:
            received.append(listener.recv(4096).decode())
        except BlockingIOError:
            return received


async def test_the_hook_sends_changes_only_and_keeps_a_wait_up_to_date(
    store, tmp_path, monkeypatch
):
    path = tmp_path / "notify"
    listener = _listener(str(path))
    listener.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    line = sdstatus.StatusLine(sdstatus.Notifier(), refresh=0.05)
    events = EventPoint([line])
    summary = _summary(store, "verifying:grey-area")
    await events.emit(RunEvent(EventKind.STATE_CHANGED, summary))
    await events.emit(RunEvent(EventKind.STATE_CHANGED, summary))  # same line: not sent again
    waiting = Waiting("ssh: connection refused", 10, 900)
    await events.emit(RunEvent(EventKind.MACHINE_WAITING, summary, "grey-area", waiting=waiting))
    received: list[str] = []
    ticked = "STATUS=verifying grey-area: waiting: ssh: connection refused (11s of 15m)"
    for _ in range(500):  # the ticker moves the elapsed time on past 11s
        await asyncio.sleep(0.02)
        received += _drain(listener)
        if ticked in received:
            break
    await events.emit(RunEvent(EventKind.MACHINE_HEALTHY, summary, "grey-area"))  # stops it
    received += _drain(listener)
    await asyncio.sleep(0.3)
    assert _drain(listener) == []  # nothing more once the machine was healthy
    listener.close()
    line.notifier.close()
    assert received[:3] == [
        "STATUS=verifying grey-area",
        "STATUS=verifying grey-area: waiting: ssh: connection refused (10s of 15m)",
        ticked,  # a tick that changes no second sends nothing
    ]
