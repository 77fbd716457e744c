"""Issue 8, item 10: an exception nobody foresaw inside a handler ends the run `aborted` with
one recorded line, exit 1 — never a traceback that leaves the run half-way forever. A store
that cannot be written still stops at once.

The engine runs in-process through the real CLI entry point; the only fake is the machine:
a host whose SSH layer raises an exception type the engine does not expect (as a library
bug or an unforeseen reply would)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator import cli, engine
from orchestrator.errors import StoreError
from orchestrator.process import Completed
from orchestrator.store import Store

MESSAGE = "reply of an unexpected shape"


class OddHost:
    """Passes preflight; its reboot request fails with an exception of no expected type."""

    host_key = "SHA256:fake"

    def __init__(self, name: str, fail_in: str = "request_reboot") -> None:
        self.name = name
        self.boot_id = str(uuid.uuid4())
        self.fail_in = fail_in
        self.reboots = 0

    def _maybe_fail(self, where: str) -> None:
        if where == self.fail_in:
            raise KeyError(MESSAGE)

    async def run(
        self, argv: Any, timeout: float, max_output: int = 0, *, stop_at_cap: bool = False
    ) -> Completed:
        return Completed(tuple(argv), 0, "", "")

    async def read_boot_id(self, timeout: float) -> str | None:
        return self.boot_id

    async def system_state(self, timeout: float) -> str:
        return "running"

    async def request_reboot(self) -> None:
        self._maybe_fail("request_reboot")
        self.reboots += 1

    def drop(self) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """cli.main sets up the orchestrator logger (handlers on this test's captured stderr,
    no propagation); later tests must find it as it was."""
    logger = logging.getLogger("orchestrator")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    hosts = {"alpha": OddHost("alpha"), "bravo": OddHost("bravo")}
    monkeypatch.setattr(engine, "make_host", lambda config, name, pinned=None: hosts[name])
    config = tmp_path / "lab.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "flake": str(tmp_path),
                "state_dir": str(tmp_path / "state"),
                "update": {"command": ["true"]},
                "deploy": {"command": ["true"]},
                "reboot": {"poll_interval": 0.1, "stable_passes": 1},
                "machines": {"alpha": {"host": "alpha.local"}, "bravo": {"host": "bravo.local"}},
            }
        )
    )
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    return {"config": config, "state": tmp_path / "state", "hosts": hosts}


def run_cli(*args: str) -> int:
    with pytest.raises(SystemExit) as exited:
        cli.main(list(args))
    code = exited.value.code
    assert isinstance(code, int)
    return code


def latest(state_dir: Path) -> Any:
    with Store.open(state_dir, create=False) as store:
        return store.latest_run()


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_an_unexpected_exception_in_a_handler_aborts_the_run_with_one_line(lab, capsys, debug):
    code = run_cli("--config", str(lab["config"]), *(["--debug"] if debug else []), "run")

    stderr = capsys.readouterr().err
    expected = f"internal error: KeyError: '{MESSAGE}' (run with --debug for the traceback)"
    assert code == 1, stderr
    run = latest(lab["state"])
    assert run.state == "aborted"  # a final state: nothing for resume to pick up
    assert run.error == expected
    assert run.machine("alpha").error == expected  # where it happened
    assert f"aborted: {expected}" in stderr
    assert ("Traceback" in stderr) is debug  # the traceback only with --debug, in the log
    if debug:
        assert "in request_reboot" in stderr
    assert [h.reboots for h in lab["hosts"].values()] == [0, 0]
    # Nothing is left to resume; bravo was never touched.
    assert run_cli("--config", str(lab["config"]), "resume") == 0
    assert latest(lab["state"]).run_id == run.run_id


def test_an_unexpected_exception_in_preflight_aborts_too(lab, capsys):
    lab["hosts"]["bravo"].fail_in = "read_boot_id"
    original = OddHost.read_boot_id

    async def read_boot_id(self: OddHost, timeout: float) -> str | None:
        self._maybe_fail("read_boot_id")
        return await original(self, timeout)

    OddHost.read_boot_id = read_boot_id  # type: ignore[method-assign]
    try:
        code = run_cli("--config", str(lab["config"]), "run")
    finally:
        OddHost.read_boot_id = original  # type: ignore[method-assign]
    assert code == 1
    run = latest(lab["state"])
    assert run.state == "aborted"
    assert run.error.startswith("internal error: KeyError: ")


def test_a_store_that_cannot_be_written_still_stops_at_once(lab, capsys, monkeypatch):
    """The exception to the rule: a failing store write is not turned into an abort (that
    would need the store too); the process stops with the store error and the run stays
    where it was, for resume."""

    def broken(self: Store, *args: object, **kwargs: object) -> None:
        raise StoreError(f"cannot write state store {self.path}: disk I/O error")

    monkeypatch.setattr(Store, "record_reboot_intent", broken)
    code = run_cli("--config", str(lab["config"]), "run")
    stderr = capsys.readouterr().err
    assert code == 1
    assert stderr.strip().splitlines()[-1].startswith("error: cannot write state store")
    assert latest(lab["state"]).state == "rebooting:alpha"
    assert lab["hosts"]["alpha"].reboots == 0
