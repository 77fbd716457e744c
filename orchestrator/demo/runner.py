"""``orchestrator demo``: a whole nightly run against the simulated lab, in under a minute.

The seed's machines (sleeper-service, grey-area, reverse-proxy) are simulated hosts on
loopback; the controller is this process. The run is a real ``orchestrator run`` child process
using the production engine; only its config differs (addresses, keys, and for the controller
the reboot command and where the boot id is read). When that child asks the controller to
reboot, this process plays systemd's shutdown: SIGTERM, then SIGKILL, a new boot id, and the
boot unit's ``orchestrator resume``, which verifies the controller and finishes the run.

The owner's side is on loopback too: a receiver stands in for the notification service
(apprise posts to its ``json://`` URL) and for healthchecks.io (the heartbeat pings), and
prints what arrives; the run writes the Prometheus metrics file node_exporter would read.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml

from orchestrator import process
from orchestrator.demo.receiver import Request, receiver
from orchestrator.demo.simlab import Behaviour, SimLab
from orchestrator.store import Store

SEED_MACHINES = ["sleeper-service", "grey-area", "reverse-proxy"]
SHUTDOWN_GRACE = 1.0
NOTIFY_PATH = "/notify"
PING_PATH = "/ping/"
# The metrics file's lines the demo shows: did the last run succeed, how long, how many runs.
SHOWN_METRICS = (
    "lab_orchestrator_last_run_success ",
    "lab_orchestrator_last_run_duration_seconds ",
    'lab_orchestrator_runs_total{kind="nightly",outcome="done"}',
)
_SIGNAL_DEMO = "import os, signal; os.kill(%d, signal.SIGUSR1)"


def _say(message: str) -> None:
    print(f"\n=== {message}", file=sys.stderr, flush=True)


class Controller:
    """The controller as the run sees it: a boot id file and a system state file."""

    def __init__(self, directory: Path) -> None:
        self.boot_id_file = directory / "controller-boot_id"
        self.state_file = directory / "controller-state"
        self.boot_id_file.write_text(f"{uuid.uuid4()}\n")
        self.state_file.write_text("running\n")
        self.reboot_requested = asyncio.Event()

    def set_state(self, state: str) -> None:
        self.state_file.write_text(f"{state}\n")

    def boot(self) -> None:
        self.boot_id_file.write_text(f"{uuid.uuid4()}\n")


def _orchestrator(config: Path, command: str, debug: bool) -> list[str]:
    argv = [sys.executable, "-m", "orchestrator", "--config", str(config)]
    return [*argv, *(["--debug"] if debug else []), command]


def _arrived(request: Request) -> None:
    """What the owner's phone (a notification) and healthchecks.io (a ping) would receive."""
    if request.path == NOTIFY_PATH:
        note = request.json()
        body = "\n".join(f"    {line}" for line in str(note["message"]).splitlines())
        _say(f"notification arrived: {note['title']}\n{body}")
    else:
        kind = request.path.rsplit("/", 1)[-1]
        name = kind if kind in ("start", "fail") else "success"
        _say(f"heartbeat ping arrived: {name} ({request.method} {request.path})")


async def _demo(directory: Path, debug: bool) -> int:
    with receiver(on_request=_arrived) as owner:
        return await _run(directory, debug, owner.url(NOTIFY_PATH, scheme="json"), owner.url)


async def _run(
    directory: Path, debug: bool, notify_url: str, receiver_url: Callable[[str], str]
) -> int:
    lab = SimLab(directory / "lab", SEED_MACHINES, Behaviour(boot_time=1.5, http_delay=0.5))
    await lab.start()
    controller = Controller(directory)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, controller.reboot_requested.set)
    config = lab.config(
        directory / "state",
        flake=str(directory),
        update={"command": [sys.executable, "-c", "print('flake.lock: inputs updated')"]},
        deploy={"command": [sys.executable, "-c", "print('deployed 4 machines')"]},
        reboot={"poll_interval": 0.5, "stable_passes": 2},
        local={
            # systemctl reboot, as far as the run can tell: returns at once, then shutdown.
            "reboot_command": [sys.executable, "-c", _SIGNAL_DEMO % os.getpid()],
            "state_command": ["cat", str(controller.state_file)],
            "boot_id_file": str(controller.boot_id_file),
        },
    )
    config["machines"]["self"] = {"local": True}
    metrics_file = directory / "lab_orchestrator.prom"
    config["notify"] = {"urls": [notify_url], "on": ["aborted", "done"]}
    config["heartbeat"] = {"url": receiver_url(f"{PING_PATH}{uuid.uuid4()}")}
    config["metrics"] = {"textfile": str(metrics_file)}
    config_file = directory / "demo.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    _say(f"simulated lab up: {', '.join(SEED_MACHINES)} + this controller ({config_file})")

    try:
        async with process.spawn(_orchestrator(config_file, "run", debug)) as child:
            finished = asyncio.create_task(child.wait())
            reboot = asyncio.create_task(controller.reboot_requested.wait())
            await asyncio.wait({finished, reboot}, return_when=asyncio.FIRST_COMPLETED)
            controller_rebooted = reboot.done()
            if controller_rebooted:
                _say("controller: `systemctl reboot` — shutting down, the orchestrator is stopped")
                controller.set_state("stopping")
                await child.stop(grace=SHUTDOWN_GRACE)  # systemd: SIGTERM, then SIGKILL
            else:
                reboot.cancel()
        if controller_rebooted:
            await asyncio.sleep(1.0)
            controller.boot()
            controller.set_state("starting")
            _say("controller: booted; the boot unit runs `orchestrator resume`")
            loop.call_later(0.5, controller.set_state, "running")
            async with process.spawn(_orchestrator(config_file, "resume", debug)) as resumed:
                await resumed.wait()
        _say("orchestrator status")
        async with process.spawn(_orchestrator(config_file, "status", debug)) as status:
            await status.wait()
        _say(f"metrics for node_exporter ({metrics_file.name}), three of its lines:")
        shown = metrics_file.read_text().splitlines()
        for prefix in SHOWN_METRICS:
            print("    " + next(line for line in shown if line.startswith(prefix)), file=sys.stderr)
        with Store.open(directory / "state", create=False) as store:
            run = store.latest_run()
        return 0 if run is not None and run.state == "done" else 1
    finally:
        await lab.stop()


def run_demo(debug: bool = False, keep: bool = False) -> int:
    directory = Path(tempfile.mkdtemp(prefix="lab-orchestrator-demo-"))
    try:
        return asyncio.run(_demo(directory, debug))
    finally:
        if keep:
            print(f"demo files kept in {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)
