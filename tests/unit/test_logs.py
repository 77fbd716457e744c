"""Logging: one event is one line on stderr and in log_file, and log_file is private."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from orchestrator import logs
from orchestrator.errors import ConfigError


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
