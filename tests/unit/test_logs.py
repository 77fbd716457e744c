"""Logging: one event is one line on stderr (or one journal entry with the run's fields) and
in log_file, and log_file is private."""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys
from pathlib import Path

import logging_journald
import pytest

from orchestrator import logs
from orchestrator.errors import ConfigError
from tests.journal_listener import receive


@pytest.fixture
def restore_logger():
    logger = logging.getLogger("orchestrator")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_log_file_is_created_private_whatever_the_umask(tmp_path, restore_logger):
    previous = os.umask(0o000)
    try:
        logs.setup(log_file=tmp_path / "orchestrator.log").info("hello")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "orchestrator.log").stat().st_mode) == 0o600


def test_log_file_is_never_written_through_a_symlink(tmp_path, restore_logger):
    target = tmp_path / "someone-elses-file"
    target.write_text("precious\n")
    (tmp_path / "orchestrator.log").symlink_to(target)
    with pytest.raises(ConfigError, match=r"log_file: cannot open .*symbolic link"):
        logs.setup(log_file=tmp_path / "orchestrator.log")
    assert target.read_text() == "precious\n"


def test_every_message_is_one_line_with_control_characters_escaped(
    tmp_path, capsys, restore_logger
):
    logger = logs.setup(log_file=tmp_path / "orchestrator.log")
    logger.info("h1: %s", "running\n00:00:00 run 1: done FORGED\x1b[2J")
    for text in (capsys.readouterr().err, (tmp_path / "orchestrator.log").read_text()):
        assert text.count("\n") == 1 and "\x1b" not in text
        assert "h1: running\\n00:00:00 run 1: done FORGED\\x1b[2J" in text


# -- the journal: native protocol entries with the run's fields --------------------------------


@pytest.fixture
def journal(tmp_path, monkeypatch):
    """A journal socket of our own, where logging_journald looks for journald's."""
    path = tmp_path / "journal.socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setattr(logging_journald.JournaldTransport, "SOCKET_PATH", path)
    yield sock
    sock.close()


@pytest.fixture
def no_run_context():
    logs.set_run_context(None)
    yield
    logs.set_run_context(None)


def _entry(sock: socket.socket) -> dict[str, str]:
    entry = receive(sock)
    assert all(len(values) == 1 for values in entry.values()), entry
    return {key: values[0] for key, values in entry.items()}


def _stderr_is_the_journal(monkeypatch) -> None:
    stat = os.fstat(sys.stderr.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")


def test_journal_entries_carry_the_run_state_and_machine(
    journal, capfd, monkeypatch, restore_logger, no_run_context
):
    _stderr_is_the_journal(monkeypatch)
    logger = logs.setup()
    logger.info("run %d: nightly run of %s", 12, "grey-area")
    logs.set_run_context(12, "deploying")
    logger.warning("deploy: %s", "warning: evaluation\x1b[2J")
    logs.set_run_context(12, "verifying:grey-area")
    logger.info("grey-area: waiting: http …/health: 503")
    before, deploying, verifying = _entry(journal), _entry(journal), _entry(journal)
    assert capfd.readouterr().err == ""  # the journal, not the journal *and* stderr
    assert before["MESSAGE"] == "run 12: nightly run of grey-area"
    assert not {"RUN_ID", "STATE", "MACHINE"} & before.keys()
    assert deploying["MESSAGE"] == "deploy: warning: evaluation\\x1b[2J"
    assert (deploying["RUN_ID"], deploying["STATE"], deploying["PRIORITY"]) == (
        "12",
        "deploying",
        "4",
    )
    assert "MACHINE" not in deploying
    assert verifying["MESSAGE"] == "grey-area: waiting: http …/health: 503"
    assert (verifying["STATE"], verifying["MACHINE"]) == ("verifying:grey-area", "grey-area")
    assert verifying["SYSLOG_IDENTIFIER"] == "orchestrator"
    assert verifying["CODE_FILE"] == __file__ and verifying["CODE_FUNC"].startswith("test_")


def test_a_message_too_big_for_a_datagram_goes_as_a_memfd(
    journal, capfd, monkeypatch, restore_logger, no_run_context
):
    _stderr_is_the_journal(monkeypatch)
    logger = logs.setup()
    (handler,) = logger.handlers
    assert isinstance(handler, logs.JournalHandler)
    # A small send buffer makes an ordinary long line too big for one datagram.
    handler.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    logs.set_run_context(3, "settling:grey-area")
    logger.info("deploy: %s", "x\ty" * 10_000)
    entry = _entry(journal)
    assert entry.pop("_MEMFD") == "1"
    assert entry["MESSAGE"] == "deploy: " + "x\\ty" * 10_000
    assert (entry["RUN_ID"], entry["MACHINE"]) == ("3", "grey-area")
    assert capfd.readouterr().err == ""


def test_stderr_that_is_not_the_journal_keeps_plain_lines(
    journal, capfd, monkeypatch, restore_logger
):
    # Inherited from some unit, but this stderr goes elsewhere (a terminal, a pipe).
    monkeypatch.setenv("JOURNAL_STREAM", "1:1")
    logs.setup().info("hello")
    assert capfd.readouterr().err == "hello\n"
    journal.settimeout(0.2)
    with pytest.raises(TimeoutError):
        journal.recv(4096)


@pytest.mark.parametrize("stream", ["", "garbage", "8"])
def test_a_malformed_journal_stream_is_not_the_journal(monkeypatch, stream):
    monkeypatch.setenv("JOURNAL_STREAM", stream)
    assert logs.stderr_is_journal() is False


def test_no_journal_socket_falls_back_to_stderr(tmp_path, capfd, monkeypatch, restore_logger):
    monkeypatch.setattr(logging_journald.JournaldTransport, "SOCKET_PATH", tmp_path / "none")
    _stderr_is_the_journal(monkeypatch)
    logs.setup().info("h1: %s", "up\nFORGED")
    assert capfd.readouterr().err == "h1: up\\nFORGED\n"


def test_a_journal_gone_mid_run_still_gets_the_line_through_stderr(
    journal, capfd, monkeypatch, restore_logger
):
    _stderr_is_the_journal(monkeypatch)
    logger = logs.setup()
    logger.info("first")
    assert _entry(journal)["MESSAGE"] == "first"
    journal.close()  # journald stopped: its socket refuses, and a reconnect finds none
    Path(logging_journald.JournaldTransport.SOCKET_PATH).unlink()
    logger.info("h1: %s", "second\x1b[2J")
    assert capfd.readouterr().err == "h1: second\\x1b[2J\n"
