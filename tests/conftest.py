"""Shared fixtures: the simulated lab on a background event loop, and the orchestrator run
as a real child process (the way systemd runs it), judged by what the hosts saw."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.demo.simlab import Behaviour, SimHost, SimLab
from orchestrator.store import RunRecord, Store
from tests.netlab.fixtures import netlab  # noqa: F401  (the real-sshd lab, for tests/test_fault_*)

ORCHESTRATOR = [sys.executable, "-m", "orchestrator"]
REPO = Path(__file__).resolve().parent.parent


class LabThread:
    """Runs a SimLab on its own event loop so the test thread can drive the orchestrator."""

    def __init__(self, lab: SimLab) -> None:
        self.lab = lab
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(lab.start())

    def call(self, coroutine: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.call(self.lab.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    # -- ground truth ---------------------------------------------------------------------------

    def reboots(self, name: str) -> int:
        return self.lab.reboots(name)

    def reboot_order(self) -> list[str]:
        return [e.host for e in list(self.lab.events) if e.event == "reboot_requested"]

    def wait_for_event(self, name: str, event: str, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            at = self.lab.first(name, event)
            if at is not None:
                return at
            time.sleep(0.005)
        raise AssertionError(f"{name} never reported {event}")


def changes_on_reboot(**changes: Any) -> type[SimHost]:
    """A host class whose behaviour changes the moment it is asked to reboot (healthy before,
    so preflight passes; broken after, which is what the gate must catch)."""

    class ChangesOnReboot(SimHost):
        async def before_command(self, argv: list[str]) -> bool:
            if argv == ["systemctl", "reboot"] and self.name in changes:
                for key, value in changes[self.name].items():
                    setattr(self.behaviour, key, value)
            return True

    return ChangesOnReboot


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., LabThread]]:
    labs: list[LabThread] = []

    def factory(
        names: list[str] | None = None,
        behaviour: Behaviour | None = None,
        host_class: type[SimHost] = SimHost,
        *,
        nixos: bool = False,
    ) -> LabThread:
        class Lab(SimLab):
            def make_host(self, name: str, behaviour: Behaviour) -> SimHost:
                return host_class(name, self, behaviour)

        lab = Lab(
            tmp_path / f"lab{len(labs)}",
            names or ["alpha", "bravo", "charlie"],
            behaviour,
            nixos=nixos,
        )
        labs.append(LabThread(lab))
        return labs[-1]

    yield factory
    for lab in labs:
        lab.stop()


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def orchestrator(
    config: Path | None, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [*ORCHESTRATOR, *(["--config", str(config)] if config else []), *args]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, check=False, cwd=REPO
    )


def spawn(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    # Output goes to a file next to the config, so a test that fails while waiting on the run
    # can show what the orchestrator said (a pipe nobody reads could also block it).
    log = (config.parent / f"orchestrator-{time.monotonic_ns()}.log").open("w")
    return subprocess.Popen(
        [*ORCHESTRATOR, "--config", str(config), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env=env,
    )


def latest_run(state_dir: Path) -> RunRecord | None:
    try:
        store = Store.open(state_dir, create=False)
    except FileNotFoundError:
        return None
    with store:
        return store.latest_run()


def wait_for_run(
    state_dir: Path, predicate: Callable[[RunRecord], bool], timeout: float = 30.0
) -> RunRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = latest_run(state_dir)
        if run is not None and predicate(run):
            return run
        time.sleep(0.002)
    logs = "".join(path.read_text() for path in sorted(state_dir.parent.glob("orchestrator-*.log")))
    raise AssertionError(
        f"the run never reached the expected point (last: {latest_run(state_dir)})\n{logs}"
    )


@pytest.fixture
def env_without_journal() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("JOURNAL_STREAM", None)
    return env
