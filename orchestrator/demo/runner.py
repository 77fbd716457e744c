"""``orchestrator demo``: a whole nightly run against the simulated lab, in under a minute.

The seed's machines (sleeper-service, grey-area, reverse-proxy) are simulated hosts on
loopback; the controller is this process. The run is a real ``orchestrator run`` child process
using the production engine; only its config differs (addresses, keys, and for the controller
the reboot command and where the boot id is read). When that child asks the controller to
reboot, this process plays systemd's shutdown: SIGTERM, then SIGKILL, a new boot id, and the
boot unit's ``orchestrator resume``, which verifies the controller and finishes the run.

The simulated machines are NixOS machines (see ``simlab.SimNixos``): the deploy is per
machine (``deploy.mode: per-machine``), each machine's ``deploy.machine_command`` gives it a
new generation right before its reboot, and the gate checks that it booted that generation.
With ``--break MACHINE`` that machine's new generation is broken (its HTTP health check fails
while it runs it): the gate fails after ``reboot.timeout``, the engine rolls it back to the
generation it ran before (``on_failure: rollback``, through the simulated target helper),
reboots it into that, proves it healthy again and ends the run ``aborted``; the machines after
it are never touched. The simulated machines' own record of what they booted is printed at
the end (and kept in ``lab/truth.json`` with ``--keep``).

The owner's side is on loopback too: a receiver stands in for the notification service
(apprise posts to its ``json://`` URL) and for healthchecks.io (the heartbeat pings), and
prints what arrives; the run writes the Prometheus metrics file node_exporter would read.
"""

from __future__ import annotations

import asyncio
import json
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
from orchestrator.demo import SEED_MACHINES
from orchestrator.demo.receiver import Request, receiver
from orchestrator.demo.simlab import TONIGHT, Behaviour, SimLab, build
from orchestrator.generations import store_name
from orchestrator.store import RunRecord, Store

CONTROLLER = "self"  # the machine name of this controller, the run's `local: true` one
SHUTDOWN_GRACE = 1.0
# Short, so that a broken generation fails its gate within the demo's minute.
REBOOT_TIMEOUT = "10s"
NOTIFY_PATH = "/notify"
PING_PATH = "/ping/"
# The metrics file's lines the demo shows: did the last run succeed, how long, how many runs.
SHOWN_METRICS = (
    "lab_orchestrator_last_run_success ",
    "lab_orchestrator_last_run_duration_seconds ",
    'lab_orchestrator_runs_total{kind="nightly",outcome="%s"}',
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


def _booted(lab: SimLab) -> None:
    """What each simulated machine itself says it booted: its ground truth, not the run's."""
    lines = []
    for name, host in lab.hosts.items():
        assert host.nixos is not None
        boots = [
            f"generation {boot.generation} ({store_name(boot.system)})" for boot in host.nixos.boots
        ]
        shown = ", then ".join(boots) if boots else "not rebooted"
        lines.append(f"    {name}: {shown}; profile generation {host.nixos.profile} now")
    _say("the simulated machines' own record of their boots:\n" + "\n".join(lines))


def _as_intended(run: RunRecord | None, broken: str | None) -> bool:
    """Did the run end as the demo means it to: ``done``, or with ``--break`` ``aborted`` at
    the broken machine, which was rolled back and proven healthy again?"""
    if run is None:
        return False
    if broken is None:
        return run.state == "done"
    machine = run.machine(broken)
    return run.state == "aborted" and machine.rollback_healthy_at is not None


async def _demo(directory: Path, debug: bool, broken: str | None) -> int:
    with receiver(on_request=_arrived) as owner:
        notify_url = owner.url(NOTIFY_PATH, scheme="json")
        return await _run(directory, debug, broken, notify_url, owner.url)


async def _run(
    directory: Path,
    debug: bool,
    broken: str | None,
    notify_url: str,
    receiver_url: Callable[[str], str],
) -> int:
    lab = SimLab(
        directory / "lab", list(SEED_MACHINES), Behaviour(boot_time=1.5, http_delay=0.5), nixos=True
    )
    if broken is not None:
        nixos = lab.hosts[broken].nixos
        assert nixos is not None
        nixos.broken.add(build(broken, TONIGHT).path)
    await lab.start()
    controller = Controller(directory)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, controller.reboot_requested.set)
    config = lab.config(
        directory / "state",
        flake=str(directory),
        update={"command": [sys.executable, "-c", "print('flake.lock: inputs updated')"]},
        deploy={
            "mode": "per-machine",
            "machine_command": [
                *(sys.executable, "-m", "orchestrator.demo.deploy"),
                *("--controller", CONTROLLER, str(lab.directory), "{machine}"),
            ],
        },
        on_failure="rollback",
        reboot={"poll_interval": 0.5, "stable_passes": 2, "timeout": REBOOT_TIMEOUT},
        local={
            # systemctl reboot, as far as the run can tell: returns at once, then shutdown.
            "reboot_command": [sys.executable, "-c", _SIGNAL_DEMO % os.getpid()],
            "state_command": ["cat", str(controller.state_file)],
            "boot_id_file": str(controller.boot_id_file),
        },
    )
    # The controller of the demo is this machine: its real generation (on NixOS) is none
    # of the demo's business.
    config["machines"][CONTROLLER] = {"local": True, "generations": False}
    metrics_file = directory / "lab_orchestrator.prom"
    config["notify"] = {"urls": [notify_url], "on": ["aborted", "done"]}
    config["heartbeat"] = {"url": receiver_url(f"{PING_PATH}{uuid.uuid4()}")}
    config["metrics"] = {"textfile": str(metrics_file)}
    config_file = directory / "demo.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    _say(f"simulated lab up: {', '.join(SEED_MACHINES)} (NixOS) + this controller ({config_file})")
    if broken is not None:
        _say(
            f"{broken}: tonight's generation is broken (its HTTP health check will fail); "
            f"reboot.timeout is {REBOOT_TIMEOUT}"
        )

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
        with Store.open(directory / "state", create=False) as store:
            run = store.latest_run()
        _say(f"metrics for node_exporter ({metrics_file.name}), three of its lines:")
        shown = metrics_file.read_text().splitlines()
        outcome = run.state if run is not None else "?"
        for prefix in SHOWN_METRICS:
            prefix = prefix.replace("%s", outcome)
            line = next((line for line in shown if line.startswith(prefix)), f"{prefix} (none)")
            print(f"    {line}", file=sys.stderr)
        _booted(lab)
        (lab.directory / "truth.json").write_text(json.dumps(lab.truth(), indent=2) + "\n")
        return 0 if _as_intended(run, broken) else 1
    finally:
        await lab.stop()


def run_demo(debug: bool = False, keep: bool = False, broken: str | None = None) -> int:
    directory = Path(tempfile.mkdtemp(prefix="lab-orchestrator-demo-"))
    try:
        return asyncio.run(_demo(directory, debug, broken))
    finally:
        if keep:
            print(f"demo files kept in {directory}", file=sys.stderr)
        else:
            shutil.rmtree(directory, ignore_errors=True)
