"""The runner: does the work of each state, persists, then moves the state machine on.

Read it next to ``states.py``: one handler per phase, each doing exactly the side effects of
that state. Every move is committed to the store before the next handler starts, and every
side effect that cannot be repeated blindly (the reboot) has its intent committed first, so a
SIGKILL anywhere is finished correctly by ``orchestrator resume``.

Run policy lives here too: ``drive`` starts a run or continues the one in progress, and
``abort`` stops one — both only through the moves of the state table. The CLI calls them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import asyncssh

from health_checks.booted_system import BootedSystemCheck, is_wrong_generation
from health_checks.clients import HttpClients
from health_checks.gate import (
    GateNotPassed,
    GatePolicy,
    GateRound,
    GateTarget,
    Probe,
    probe_once,
    probe_settled,
    wait_until_healthy,
)
from orchestrator import (
    defaults,
    generations,
    heartbeat,
    keys,
    lock,
    logs,
    metrics,
    notify,
    process,
    remote,
    report,
    sdstatus,
    target,
    window,
)
from orchestrator.config import LoadedConfig, load_config
from orchestrator.errors import ConfigError, LockHeldError, OrchestratorError, StoreError
from orchestrator.hooks import EventKind, EventPoint, Hook, RunEvent, Waiting, command_hooks
from orchestrator.paths import read_state_dir
from orchestrator.remote import Host, LocalHost, ProbeFailed, SshEndpoint, SshHost
from orchestrator.states import (
    ABORT,
    ADVANCE,
    FINAL_STATES,
    PAUSE,
    ROLL_BACK,
    SKIP,
    Phase,
    RunKind,
    StateName,
    build_machine,
    machine_phases,
)
from orchestrator.store import MachineRecord, RunRecord, StepProcess, Store, now

log = logging.getLogger("orchestrator")
_T = TypeVar("_T")
_I = TypeVar("_I")


class RunAborted(OrchestratorError):
    """Ends the run in ``aborted``; ``machine`` is the one that stopped the rollout, if any."""

    def __init__(self, message: str, machine: str | None = None) -> None:
        super().__init__(message)
        self.machine = machine


def internal_error(exc: BaseException) -> str:
    """The one line recorded for an exception nobody foresaw (the traceback goes to the
    debug log)."""
    text = " ".join(str(exc).split()) or "(no message)"
    return f"internal error: {type(exc).__name__}: {text} (run with --debug for the traceback)"


class GateFailed(Exception):
    """A machine did not pass its gate; ``failure`` says why in one line."""

    def __init__(self, failure: str, last_probe: str | None, wrong_generation: bool) -> None:
        super().__init__(failure)
        self.failure = failure
        self.last_probe = last_probe
        self.wrong_generation = wrong_generation


class _StayPaused(Exception):
    """The window is still closed: the run stays paused and this process stops driving it."""


class _WrongGeneration(Exception):
    """Raised from a gate round that read a booted system other than the one expected."""


Facts = generations.GenerationFacts | generations.NotNixos


@dataclass
class _EarlyTurn:
    """What is asked for the next wave's turn while the wave before it is in its stability
    window (``Engine._start_early``): the interlock's round, and generation facts that will
    be read before its reboot anyway. Both read-only."""

    wave: str
    started: float  # monotonic
    interlock: asyncio.Task[list[GateRound | BaseException]]
    facts: dict[str, asyncio.Task[Facts]]

    def cancel(self) -> None:
        self.interlock.cancel()
        for task in self.facts.values():
            task.cancel()


class RunModel:
    """The object transitions drives; ``state`` is its only attribute of interest."""

    state: str
    advance: Callable[..., Awaitable[bool]]
    abort: Callable[..., Awaitable[bool]]
    skip: Callable[..., Awaitable[bool]]
    roll_back: Callable[..., Awaitable[bool]]


def make_host(
    config: LoadedConfig, name: str, pinned_key: Callable[[], str | None] = lambda: None
) -> Host:
    """The one place that decides how a machine is reached: locally or over SSH."""
    settings = config.settings
    if config.machine(name).local:
        local = settings.local
        return LocalHost(name, local.boot_id_file, local.state_command, local.reboot_command)
    address, port, user = config.ssh_target(name)
    ssh = settings.ssh
    endpoint = SshEndpoint(
        name=name,
        host=address,
        port=port,
        user=user,
        client_key=_client_key(ssh.identity_file, ssh.passphrase_file),
        known_hosts=tuple(ssh.known_hosts_files()),
        connect_timeout=ssh.connect_timeout,
    )
    known_hosts = remote.load_known_hosts(endpoint.known_hosts)
    return SshHost(endpoint, known_hosts, settings.reboot.command, pinned_key)


@functools.cache
def _client_key(identity_file: Path | None, passphrase_file: Path | None) -> asyncssh.SSHKey | None:
    """The SSH identity, read once per process (a passphrase's KDF can take a second); a key
    file that cannot be used is one ``OrchestratorError`` line, which aborts the run."""
    if identity_file is None:
        return None
    return keys.load_identity(
        identity_file.expanduser(), passphrase_file.expanduser() if passphrase_file else None
    )


def gate_policy(config: LoadedConfig) -> GatePolicy:
    reboot = config.settings.reboot
    return GatePolicy(
        allow_degraded=reboot.allow_degraded,
        timeouts=config.settings.timeouts,
        poll_interval=reboot.poll_interval,
        stable_passes=reboot.stable_passes,
    )


def gate_target(config: LoadedConfig, host: Host) -> GateTarget:
    return GateTarget(host, config.address(host.name), config.machine(host.name).checks)


def configured_hooks(config: LoadedConfig, store: Store) -> list[Hook]:
    """Everything that hears of a run, in the order it hears: the metrics file and systemd's
    status line first (local and quick), then the owner's commands, the notification and the
    heartbeat (which may wait on the network)."""
    settings = config.settings
    hooks: list[Hook] = [
        *metrics.hooks(settings.metrics, store),
        *sdstatus.hooks(settings.update.command, settings.deploy.command),
    ]
    commands = settings.hooks
    hooks += command_hooks(commands.on_start, commands.on_done, commands.on_abort, commands.timeout)
    hooks += notify.hooks(settings.notify)
    hooks += heartbeat.hooks(settings.heartbeat)
    return hooks


async def plan_probe(
    config: LoadedConfig,
) -> tuple[
    dict[str, GateRound], dict[str, generations.GenerationFacts | generations.NotNixos | str]
]:
    """A live preflight that touches nothing and records nothing: each machine's round, and
    the generation facts of each one that passed it (or why they could not be read)."""
    http = HttpClients()
    hosts = [make_host(config, name) for name in config.machine_order]
    policy = gate_policy(config)

    async def facts(host: Host) -> generations.GenerationFacts | generations.NotNixos | str:
        try:
            return await generations.read(host, policy.timeouts.command)
        except generations.FactsUnreadable as exc:
            return str(exc)

    try:
        rounds = await bounded(hosts, lambda host: preflight_round(config, host, http, policy))
        passed = [
            host
            for host, result in zip(hosts, rounds, strict=True)
            if result.passed and config.machine(host.name).generations
        ]
        read = await bounded(passed, facts)
    finally:
        await http.aclose()
        for host in hosts:
            await host.close()
    verdicts = flag_shared_boot_ids(dict(zip(config.machine_order, rounds, strict=True)))
    return verdicts, {host.name: answer for host, answer in zip(passed, read, strict=True)}


async def bounded(items: Sequence[_I], work: Callable[[_I], Awaitable[_T]]) -> list[_T]:
    """``work`` for every item, ``defaults.PROBE_CONCURRENCY`` at a time, results in order:
    500 machines probed at once would be 500 SSH handshakes racing their own timeouts."""
    limit = asyncio.Semaphore(defaults.PROBE_CONCURRENCY)

    async def one(item: _I) -> _T:
        async with limit:
            return await work(item)

    return list(await asyncio.gather(*(one(item) for item in items)))


async def _all_to_the_end(
    names: Sequence[str], work: Callable[[str], Awaitable[_T]]
) -> tuple[dict[str, _T], list[tuple[str, OrchestratorError]]]:
    """``work`` for each name at once, every one to its end: what each returned, and the
    orchestrator errors each raised (anything else is raised at once: a bug or a cancel)."""
    results = await asyncio.gather(*(work(name) for name in names), return_exceptions=True)
    done: dict[str, _T] = {}
    failed: list[tuple[str, OrchestratorError]] = []
    for name, result in zip(names, results, strict=True):
        if isinstance(result, OrchestratorError):
            failed.append((name, result))
        elif isinstance(result, BaseException):
            raise result
        else:
            done[name] = result
    return done, failed


async def preflight_round(
    config: LoadedConfig, host: Host, http: HttpClients, policy: GatePolicy
) -> GateRound:
    """Preflight's (and ``plan``'s) verdict on one machine: healthy in one of a few rounds."""
    target = gate_target(config, host)
    return await probe_settled(target, http, policy, ProbeFailed, defaults.PREFLIGHT_ATTEMPTS)


def flag_shared_boot_ids(rounds: dict[str, GateRound]) -> dict[str, GateRound]:
    """Fail every machine that reported the same boot id as another one.

    A boot id is unique to one boot of one machine: two machines that share one are a cloned
    VM or a name that leads to the wrong host, and the gate could never tell whether the
    machine it rebooted came back. Each such round gets a failing ``boot id`` probe, first,
    naming the other machines."""
    by_boot_id: dict[str, list[str]] = {}
    for name, result in rounds.items():
        if result.boot_id is not None:
            by_boot_id.setdefault(result.boot_id, []).append(name)
    flagged = dict(rounds)
    for names in by_boot_id.values():
        for name in names if len(names) > 1 else ():
            others = ", ".join(other for other in names if other != name)
            probe = Probe("boot id", False, f"same as {others} (cloned machine or wrong host?)")
            result = rounds[name]
            rest = tuple(p for p in result.probes if p.name != "boot id")
            flagged[name] = GateRound((probe, *rest), result.boot_id, result.host_key)
    return flagged


class Engine:
    def __init__(
        self, config: LoadedConfig, store: Store, run: RunRecord, events: EventPoint
    ) -> None:
        self.config = config
        self.settings = config.settings
        self.store = store
        self.run_id = run.run_id
        self.events = events
        self.model = RunModel()
        build_machine(
            self.model,
            run.kind,
            run.waves.names,
            initial=run.state,
            per_machine_deploy=run.per_machine_deploy,
        )
        self.waves = run.waves
        self.kind = run.kind
        self.policy = gate_policy(config)
        self._hosts: dict[str, Host] = {}
        self._warming: set[asyncio.Task[None]] = set()
        # What asks the fleet in the background shares one bound: the interlock's rounds,
        # the warm-up of the next wave's connections and its early generation reads.
        self._probe_slots = asyncio.Semaphore(defaults.PROBE_CONCURRENCY)
        self._early: _EarlyTurn | None = None
        # The machines of the wave being gated, and those of them on a passing streak.
        self._gated: frozenset[str] = frozenset()
        self._passing: set[str] = set()
        self._http = HttpClients()
        for name in run.machine_names:
            config.machine(name)  # a machine removed from the config since the run began

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def record(self) -> RunRecord:
        return self.store.run(self.run_id)

    def _machine(self, name: str) -> MachineRecord:
        return self.store.machine(self.run_id, name)

    def host(self, name: str) -> Host:
        if name not in self._hosts:
            # The key seen in preflight (or before the reboot) is the only one accepted
            # afterwards, even if known_hosts lists several for the machine.
            self._hosts[name] = make_host(self.config, name, lambda: self._machine(name).host_key)
        return self._hosts[name]

    def target(self, name: str) -> GateTarget:
        return gate_target(self.config, self.host(name))

    async def _fire(self, trigger: str, error: str | None = None) -> None:
        await getattr(self.model, trigger)()
        # Committed before the next state's work starts: this is the resume point.
        self.store.set_state(self.run_id, self.model.state, error=error)
        logs.set_run_context(self.run_id, self.model.state)
        if self.model.state not in FINAL_STATES:
            log.info("run %d: %s", self.run_id, self.model.state)
        await self._emit(EventKind.STATE_CHANGED)

    def _check_abort(self, where: str) -> None:
        if self.store.abort_requested(self.run_id):
            raise RunAborted(f"aborted on request (orchestrator abort) before {where}")

    async def _emit(
        self,
        kind: EventKind,
        machine: str | None = None,
        *,
        resumed: bool = False,
        waiting: Waiting | None = None,
    ) -> None:
        await self.events.emit(RunEvent(kind, self._summary, machine, resumed, waiting))

    def _summary(self) -> report.RunSummary:
        return report.summarize(self.record)

    # -- the loop -----------------------------------------------------------------------------

    async def drive(self, *, resumed: bool) -> RunRecord:
        # Each handler does its state's work and returns the trigger that leaves it (None:
        # advance); the trigger is fired, and the new state committed, only after the work.
        handlers: dict[Phase, Callable[[str | None], Awaitable[str | None]]] = {
            Phase.PREFLIGHT: self.preflight,
            Phase.UPDATING: self.updating,
            Phase.DEPLOYING: self.deploying,
            Phase.REBOOTING: self.rebooting,
            Phase.VERIFYING: self.verifying,
            Phase.SETTLING: self.settling,
            Phase.ROLLING_BACK: self.rolling_back,
            Phase.VERIFYING_ROLLBACK: self.verifying_rollback,
            Phase.PAUSED: self.paused,
        }
        logs.set_run_context(self.run_id, self.model.state)
        await self._emit(EventKind.RUN_STARTED, resumed=resumed)
        async with AsyncExitStack() as stack:
            stack.push_async_callback(self._http.aclose)
            stack.push_async_callback(self._close_hosts)
            while self.model.state not in FINAL_STATES:
                state = StateName.parse(self.model.state)
                try:
                    trigger = await handlers[state.phase](state.machine)
                except _StayPaused:
                    break
                except StoreError:
                    # A store that cannot be written stops everything right here: no further
                    # side effect may happen without its intent on disk.
                    raise
                except OrchestratorError as exc:
                    # RunAborted, HostKeyChanged, RebootRefused, ProcessFailed, a missing
                    # known_hosts file: each ends the rollout at this machine.
                    machine = getattr(exc, "machine", None) or self._sole_machine(state.machine)
                    await self._end_aborted(str(exc), machine)
                    break
                except Exception as exc:
                    # A bug, or a failure nobody foresaw: the run must still end in a final
                    # state, with the error on record, rather than stay half-way forever.
                    # (Not BaseException: Ctrl-C or a cancellation is an interruption, and
                    # the next run or resume continues from the saved state.)
                    log.debug("run %d: internal error in %s", self.run_id, state, exc_info=True)
                    await self._end_aborted(internal_error(exc), self._sole_machine(state.machine))
                    break
                await self._fire(trigger or ADVANCE)
                if trigger == PAUSE:
                    break  # the next `run` (the timer) or `resume` inside the window goes on
        record = self.record
        for line in report.summary_lines(report.summarize(record)):
            log.info("summary: %s", line)
        await report_end(self.store, record, self.events)
        return record

    async def _close_hosts(self) -> None:
        for task in self._warming:
            task.cancel()
        self._drop_early()
        for host in self._hosts.values():
            await host.close()

    def _warm_up_next(self, wave: str) -> None:
        """Open the SSH connections to the machines of the wave after ``wave`` while ``wave``
        is verifying, so that their boot-id reads and reboot requests need no handshake once
        ``wave`` passes. Best effort: a failure here is met again, and reported, by the real
        command."""

        async def connect(host: Host) -> None:
            async with self._probe_slots:
                with contextlib.suppress(ProbeFailed, OrchestratorError):
                    await host.connect(self.policy.timeouts.connect)

        for name in self.waves.after(wave):
            if self.config.machine(name).local:
                continue
            task = asyncio.create_task(connect(self.host(name)))
            self._warming.add(task)
            task.add_done_callback(self._warming.discard)

    def _sole_machine(self, wave: str | None) -> str | None:
        """The machine an error in ``wave``'s state concerns: its only one, else none (a
        wave's handlers name the machine in the error, or record each machine's own)."""
        if wave is None:
            return None
        members = self.waves.members(wave)
        return members[0] if len(members) == 1 else None

    async def _each(
        self, names: Sequence[str], work: Callable[[str], Awaitable[_T]]
    ) -> dict[str, _T]:
        """``work`` for every machine of a wave at once, each to its end: a wave is rebooted
        and gated together, and one machine's failure must not cut another's work short
        (a reboot sent, a gate half-way). Then the failures, if any, end the run: one
        machine's error as it is; several are each recorded against their machine and
        raised as one line."""
        if len(names) == 1:
            return {names[0]: await work(names[0])}
        done, failed = await _all_to_the_end(names, work)
        if failed:
            raise self._wave_failed(failed)
        return done

    def _wave_failed(self, failed: Sequence[tuple[str, OrchestratorError]]) -> OrchestratorError:
        if len(failed) == 1:
            return failed[0][1]
        for name, error in failed:
            self.store.record_machine_error(self.run_id, name, str(error))
        return RunAborted("; ".join(str(error) for _, error in failed))

    async def _end_aborted(self, message: str, machine: str | None) -> None:
        if machine is not None:
            self.store.record_machine_error(self.run_id, machine, message)
        log.error("run %d aborted: %s", self.run_id, message)
        await self._fire(ABORT, error=message)

    # -- one handler per phase ----------------------------------------------------------------

    async def preflight(self, _: str | None) -> str | None:
        if not self.settings.preflight:
            log.info("preflight: skipped (preflight: false)")
            return None
        names = self.record.machine_names
        log.info("preflight: probing %s", ", ".join(names))
        results = await bounded(
            names, lambda n: preflight_round(self.config, self.host(n), self._http, self.policy)
        )
        rounds = flag_shared_boot_ids(dict(zip(names, results, strict=True)))
        failures = [f"{name}: {r.first_failure}" for name, r in rounds.items() if not r.passed]
        for name, result in rounds.items():
            self.store.record_probes(
                self.run_id, name, result.as_json(), host_key=result.host_key, pin_host_key=True
            )
        if failures:
            raise RunAborted("preflight failed, nothing was touched: " + "; ".join(failures))
        log.info("preflight: all %d machines reachable and healthy", len(names))
        return None

    async def updating(self, _: str | None) -> str | None:
        self._check_abort("updating")
        await self._step("update", self.settings.update.command, self.settings.update.timeout)
        return None

    async def deploying(self, name: str | None) -> str | None:
        deploy = self.settings.deploy
        if name is None:
            self._check_abort("deploying")
            await self._step("deploy", deploy.command, deploy.timeout)
            return None
        # deploy.mode: per-machine, for each machine of the wave in turn (one step runs at a
        # time). A deploy cut short by a kill runs again (the killed one is ended first): it is
        # idempotent, and only its success lets the machine be rebooted. Not outside the
        # window either: the new generation would be what a power cut boots.
        if self._window_closed(name):
            return PAUSE
        for machine in self.waves.members(name):
            if self._machine(machine).deployed_at is not None:
                continue
            self._check_abort(f"deploying {machine}")
            await self._step(f"deploy {machine}", deploy.machine_argv(machine), deploy.timeout)
            self.store.record_deployed(self.run_id, machine)
        return None

    async def _step(self, label: str, argv: list[str], timeout: float) -> None:
        await self._end_orphaned_step(label)
        token = secrets.token_hex(16)

        def started(pid: int) -> None:
            # Committed before the command gets far: after a SIGKILL of this process, the
            # resume finds the group and ends it before starting the step again.
            stat = process.proc_stat(pid)
            step = StepProcess(pid, stat.start if stat else None, process.boot_id(), token)
            self.store.record_step_process(self.run_id, step)

        try:
            result = await process.run(
                argv,
                timeout=timeout,
                cwd=self.config.flake_dir,
                env={**os.environ, process.STEP_TOKEN_VARIABLE: token},
                label=label,
                log_output=True,
                on_start=started,
            )
            result.check()
        except process.ProcessFailed as exc:
            raise RunAborted(f"{label}: {exc}") from None
        finally:
            # The group is stopped by now (process.run stops it on every exit).
            if self.store.step_process(self.run_id) is not None:
                self.store.clear_step_process(self.run_id)
        log.info("%s: done", label)

    async def _end_orphaned_step(self, label: str) -> None:
        """End the step a killed orchestrator left running, so the step never runs twice at
        once; a process group whose id was since reused by someone else is left alone."""
        step = self.store.step_process(self.run_id)
        if step is None:
            return
        pgid = step.pgid
        if process.is_our_group(pgid, step.leader_start, step.boot_id, step.token):
            log.info(
                "%s: the step of the interrupted run is still running (process group %d); "
                "stopping it before starting again",
                label,
                pgid,
            )
            if not await process.end_group(pgid):
                raise RunAborted(
                    f"{label}: the step of the interrupted run (process group {pgid}) survived "
                    "SIGKILL; not starting it again beside it"
                )
            log.info("%s: process group %d of the interrupted run has ended", label, pgid)
        self.store.clear_step_process(self.run_id)

    def _window_closed(self, name: str) -> bool:
        """Whether this machine's turn must wait for the maintenance window: asked on entering
        its first state, before anything is done to it. `orchestrator reboot MACHINE` is a
        person asking now, and is never held back."""
        hours = self.settings.window.window
        if hours is None or self.kind is RunKind.REBOOT:
            return False
        moment = window.local_now()
        if hours.contains(moment):
            return False
        self.store.record_paused_until(self.run_id, hours.next_start(moment))
        log.info("run %d: %s, before %s", self.run_id, window.paused_line(hours, moment), name)
        return True

    async def paused(self, name: str | None) -> str | None:
        """Paused by the maintenance window: go on if it is open now, else stay paused."""
        assert name is not None
        hours = self.settings.window.window
        moment = window.local_now()
        if hours is not None and not hours.contains(moment):
            self.store.record_paused_until(self.run_id, hours.next_start(moment))
            log.info("run %d: still %s", self.run_id, window.paused_line(hours, moment))
            raise _StayPaused()
        self.store.record_paused_until(self.run_id, None)
        log.info("run %d: the maintenance window is open: going on with %s", self.run_id, name)
        return None

    async def rebooting(self, wave: str | None) -> str | None:
        """Take the wave's machines down together: each one's boot id and generation read,
        its reboot decided, its intent committed, and only then the reboot requests, all at
        once. After an interruption, a machine whose intent is saved has its reboot checked
        (and sent again if it never started); the others go on as if nothing happened."""
        assert wave is not None
        run = self.record
        members = self.waves.members(wave)
        records = [run.machine(name) for name in members]
        sent = [r.name for r in records if r.reboot_requested_at is not None]
        first = machine_phases(run.kind, run.per_machine_deploy)[0] is Phase.REBOOTING
        if first and not sent and self._window_closed(wave):
            return PAUSE
        if sent:
            await self._each(sent, self._resume_reboot)
        fresh = [r.name for r in records if r.reboot_requested_at is None and not r.skipped]
        if fresh:
            # No reboot intent is saved for these: nothing has been done to them. The
            # interlock needs no state of its own: a kill during it leaves the run in
            # rebooting:<wave> with no intent, so the resume simply asks the fleet again.
            # Their boot ids and generation facts are read meanwhile (both read-only), so
            # the interlock's round is not waited for before them.
            early = self._take_early(wave)
            reads = asyncio.ensure_future(
                self._each(fresh, lambda name: self._read_before_reboot(name, early))
            )
            try:
                at_once = await self._interlock(wave, early)
            except BaseException:
                reads.cancel()
                await asyncio.gather(reads, return_exceptions=True)
                raise
            boot_ids = await reads
            if not at_once:
                # The interlock waited for the fleet: the boot id saved with the intent must
                # be the one each machine runs now, not one read before the wait.
                boot_ids = await self._each(fresh, self._read_boot_id)
            self._check_abort(f"rebooting {wave}")
            going = [name for name in fresh if self._decide_reboot(name, self._machine(name))]
            await self._each(going, self._boot_once)
            self._check_abort(f"rebooting {wave}")
            for name in going:
                host = self.host(name)
                self.store.record_reboot_intent(self.run_id, name, boot_ids[name], host.host_key)
                log.info("%s: rebooting (boot id %s)", name, boot_ids[name])
            await self._each(going, self._request_reboot)
        if all(self._machine(name).skipped for name in members):
            return SKIP
        return None

    async def _resume_reboot(self, name: str) -> None:
        """A machine whose reboot intent was saved before an interruption."""
        record = self._machine(name)
        if record.boot_id_before is None:
            return
        host = self.host(name)
        if await self._reboot_under_way(name, host, record.boot_id_before):
            return
        log.info(
            "%s: the reboot requested before the interruption never started; requesting it again",
            name,
        )
        self._check_abort(f"rebooting {name}")
        self.store.record_reboot_resend(self.run_id, name)
        await host.request_reboot()

    async def _read_boot_id(self, name: str) -> str:
        """The boot id a machine's reboot must change."""
        try:
            boot_id = await self.host(name).read_boot_id(self.policy.timeouts.command)
        except ProbeFailed as exc:
            raise RunAborted(
                f"{name}: cannot read the boot id before rebooting: {exc}", name
            ) from None
        if boot_id is None:
            raise RunAborted(
                f"{name}: boot id is not a UUID; refusing to reboot a machine whose return "
                "could not be proven",
                name,
            )
        return boot_id

    async def _read_before_reboot(self, name: str, early: _EarlyTurn | None) -> str:
        """A machine's boot id, and (once) its generation facts: what its reboot is decided
        and proven on."""
        boot_id = await self._read_boot_id(name)
        if self._machine(name).nixos is None:
            # Not read again after a kill before the intent was saved: no reboot was sent,
            # so what was read then still holds (and the warning is not repeated).
            facts = early.facts.get(name) if early is not None else None
            await self._generation_before(name, self.host(name), facts)
        return boot_id

    async def _request_reboot(self, name: str) -> None:
        await self.host(name).request_reboot()
        log.info("%s: reboot requested", name)
        await self._emit(EventKind.MACHINE_REBOOTING, name)

    def _interlock_others(self, wave: str, covered: str | None = None) -> list[str]:
        """Who the interlock before ``wave`` asks: every machine of the run outside it (done
        or still pending; a skipped one was never taken down and is left out), but those of
        wave ``covered``, whose own gates prove them healthy."""
        members = set(self.waves.members(wave))
        if covered is not None:
            members |= set(self.waves.members(covered))
        return [m.name for m in self.record.machines if m.name not in members and not m.skipped]

    async def _interlock_round(self, others: list[str]) -> list[GateRound | BaseException]:
        async def probe(other: str) -> GateRound:
            async with self._probe_slots:
                return await probe_once(self.target(other), self._http, self.policy, ProbeFailed)

        return await asyncio.gather(*(probe(o) for o in others), return_exceptions=True)

    def _start_early(self, wave: str) -> None:
        """Start the next wave's turn now, as every machine of ``wave`` has passed a gate
        round: the interlock's round then runs during ``wave``'s stability window instead of
        after it. It asks every machine but those of the two waves: ``wave``'s are proven
        healthy by the rest of their own gates; a round that finds anyone unhealthy is not
        used, and the interlock then asks the whole fleet again as usual. The next wave's
        generation facts are read meanwhile too (read-only), unless a per-machine deploy
        comes before its reboot. Never its boot ids: a machine that rebooted on its own in
        the meantime would seem to come back from a reboot it was never sent."""
        index = self.waves.names.index(wave) + 1
        if index >= len(self.waves.names) or self._early is not None:
            return
        following = self.waves.names[index]
        if not self.settings.interlock.enabled:
            return
        others = self._interlock_others(following, covered=wave)
        interlock = asyncio.create_task(self._interlock_round(others))
        facts: dict[str, asyncio.Task[Facts]] = {}
        first = machine_phases(self.kind, self.record.per_machine_deploy)[0]
        if first is Phase.REBOOTING:

            async def read(name: str) -> Facts:
                async with self._probe_slots:
                    return await generations.read(self.host(name), self.policy.timeouts.command)

            for name in self.waves.members(following):
                if self._machine(name).nixos is None and self.config.machine(name).generations:
                    task = asyncio.create_task(read(name))
                    # Awaited by _generation_before, or never (then its failure is no one's).
                    task.add_done_callback(lambda done: done.cancelled() or done.exception())
                    facts[name] = task
        self._early = _EarlyTurn(following, time.monotonic(), interlock, facts)

    def _drop_early(self) -> None:
        if self._early is not None:
            self._early.cancel()
            self._early = None

    def _take_early(self, wave: str) -> _EarlyTurn | None:
        """The early turn for ``wave``, if it is for it and recent: started at most
        ``stable_passes`` poll intervals ago, i.e. within the stability window it ran in and
        one interval more (a settle delay, or a resume, makes it stale)."""
        early, self._early = self._early, None
        if early is None:
            return None
        max_age = self.policy.poll_interval * self.policy.stable_passes
        if early.wave != wave or time.monotonic() - early.started > max_age:
            early.cancel()
            return None
        return early

    async def _interlock(self, name: str, early: _EarlyTurn | None = None) -> bool:
        """The fleet interlock: before wave ``name`` is taken down, every machine of the run
        outside it (done or still pending; a skipped one was never taken down and is left
        out) gets one bounded gate round, all at once, as in preflight. While any fails,
        nothing is taken down: every ``reboot.poll_interval`` the fleet is asked again, until
        all pass or ``interlock.timeout`` runs out (then the run aborts, naming the machine
        and its probe) or an ``orchestrator abort`` arrives. True: the fleet passed at the
        first ask, which may be the round ``early`` started during the wave before's
        stability window (``_start_early``), if it passed."""
        settings = self.settings.interlock
        others = self._interlock_others(name)
        if not settings.enabled or not others:
            return True  # `orchestrator reboot MACHINE`: a run of one, there are no others
        if early is not None:
            answers = await early.interlock
            if all(isinstance(a, GateRound) and a.passed for a in answers):
                log.info(
                    "%s: interlock: the other %d machines are healthy (those just rebooted "
                    "by their own gates)",
                    name,
                    len(others),
                )
                return True
        deadline = time.monotonic() + settings.timeout
        logged: str | None = None
        while True:
            answers = await self._interlock_round(others)
            failing: tuple[str, str] | None = None
            for other, answer in zip(others, answers, strict=True):
                if isinstance(answer, OrchestratorError):
                    # A changed host key: not something waiting mends.
                    raise RunAborted(
                        f"interlock: {answer}; not taking {name} down", self._sole_machine(name)
                    )
                if isinstance(answer, BaseException):
                    raise answer
                if failing is None and answer.first_failure is not None:
                    failing = (other, str(answer.first_failure))
            if failing is None:
                if logged is not None:
                    log.info("%s: interlock: every other machine is healthy again", name)
                else:
                    log.info("%s: interlock: the other %d machines are healthy", name, len(others))
                return logged is None
            other, probe_text = failing
            line = f"interlock: {other}: {probe_text}"
            if line != logged:
                logged = line
                log.info("%s: waiting: %s", name, line)
            if time.monotonic() >= deadline:
                # Recorded against the machine not taken down: a machine already rebooted stays
                # `healthy` in the run's record (it was proven back), so the one the rollout
                # stopped at is this one; the message names the unhealthy one and its probe.
                raise RunAborted(
                    f"interlock: {other} is unhealthy ({probe_text}); not taking {name} down",
                    self._sole_machine(name),
                )
            self._check_abort(f"rebooting {name}")
            remaining = deadline - time.monotonic()
            await asyncio.sleep(max(0.0, min(self.settings.reboot.poll_interval, remaining)))
            self._check_abort(f"rebooting {name}")

    def _decide_reboot(self, name: str, record: MachineRecord) -> bool:
        """Record why the machine is rebooted, or why not; False: skip it
        (``reboot.when: if-needed`` and its booted system already runs the profile's parts).
        A machine without generation facts is always rebooted, as before."""
        facts = record.facts_before
        if record.nixos is not True or facts is None:
            return True
        reboot = self.settings.reboot
        need = generations.reboot_need(facts, reboot.if_changed)
        # `orchestrator reboot MACHINE` is a request for a reboot: never skipped.
        asked = self.kind is RunKind.REBOOT
        if need.needed or reboot.when == "always" or asked:
            why = "requested by `orchestrator reboot`" if asked else "reboot.when is always"
            reason = need.reason if need.needed else f"{why} ({need.reason})"
            self.store.record_reboot_reason(self.run_id, name, reason, skipped=False)
            log.info("%s: reboot needed: %s", name, reason)
            return True
        self.store.record_reboot_reason(self.run_id, name, need.reason, skipped=True)
        log.info("%s: skipped, no reboot needed: %s", name, need.reason)
        return False

    async def _boot_once(self, name: str) -> None:
        """``reboot.boot_once``: the new generation boots once, the known-good one stays the
        default, so a machine that hangs on the new one comes back on the old one after a
        power cycle. Repeated after a kill before the reboot intent (it is idempotent)."""
        record = self._machine(name)
        host = self.host(name)
        facts = record.facts_before
        if not self.settings.reboot.boot_once or facts is None or record.nixos is not True:
            return
        if not facts.reboot_changes_system:
            return  # the reboot boots what runs now: nothing to fall back from
        unavailable = self._helper_unavailable(name)
        if unavailable is not None:
            log.warning("warning: %s: boot_once: %s; rebooting normally", name, unavailable)
            return
        try:
            bootloader = await target.boot_once(
                host, self.settings.target_helper, facts.profile.system
            )
        except target.BootloaderUnsupported as exc:
            log.warning(
                "warning: %s: boot_once: %s; rebooting into the new generation as the default",
                name,
                exc or "neither systemd-boot nor GRUB",
            )
            return
        except target.HelperFailed as exc:
            raise RunAborted(f"{name}: boot_once: {exc}; nothing was rebooted", name) from None
        self.store.record_boot_once(self.run_id, name, bootloader)
        log.info(
            "%s: boot once (%s): generation %d next boot only, generation %s stays the default",
            name,
            bootloader,
            facts.profile_generation,
            facts.booted_generation or "?",
        )

    async def _generation_before(
        self, name: str, host: Host, early: asyncio.Task[Facts] | None = None
    ) -> None:
        """Record what the machine runs and what its reboot should boot. Never stops the
        reboot: a machine that is not NixOS, or whose facts cannot be read, gets one warning
        and is rebooted exactly as without them (its generation checks are skipped).
        ``early``: the same read, started during the previous wave's stability window."""
        if not self.config.machine(name).generations:
            self.store.record_generation_before(
                self.run_id, name, generations.NotNixos("generations: false")
            )
            log.info("%s: generation checks off (generations: false)", name)
            return
        try:
            facts = await (early or generations.read(host, self.policy.timeouts.command))
        except generations.FactsUnreadable as exc:
            log.warning(
                "warning: %s: cannot read the NixOS generation (%s): generation checks skipped",
                name,
                exc,
            )
            return
        self.store.record_generation_before(self.run_id, name, facts)
        if isinstance(facts, generations.NotNixos):
            log.warning(
                "warning: %s: not NixOS (%s): generation checks skipped", name, facts.reason
            )
            return
        log.info(
            "%s: booted into generation %s (%s); the profile is generation %d (%s)",
            name,
            facts.booted_generation or "?",
            generations.store_name(facts.booted.system),
            facts.profile_generation,
            generations.store_name(facts.profile.system),
        )

    async def _generation_after(self, name: str) -> None:
        """Record what the machine came back on, once it passed the gate: only for a machine
        whose facts were read before (the others were warned about once, then)."""
        if self._machine(name).nixos is not True:
            return
        try:
            facts = await generations.read(self.host(name), self.policy.timeouts.command)
        except generations.FactsUnreadable as exc:
            log.warning(
                "warning: %s: cannot read the NixOS generation after the reboot: %s", name, exc
            )
            return
        if isinstance(facts, generations.NotNixos):
            log.warning("warning: %s: not NixOS after the reboot (%s)", name, facts.reason)
            return
        self.store.record_generation_after(self.run_id, name, facts)
        log.info(
            "%s: came back on generation %s (%s)",
            name,
            facts.booted_generation or "?",
            generations.store_name(facts.booted.system),
        )

    async def _reboot_under_way(self, name: str, host: Host, boot_id_before: str) -> bool:
        """After an interruption between saving the intent and the next state: did the reboot
        request get through? A host that is unreachable, on a new boot id, or shutting down
        ("stopping") got it; one still ``running`` on the old boot id did not."""
        timeout = self.policy.timeouts.command
        try:
            boot_id = await host.read_boot_id(timeout)
            state = await host.system_state(timeout) if boot_id == boot_id_before else None
        except ProbeFailed as exc:
            log.info("%s: unreachable after the interruption (%s): reboot under way", name, exc)
            host.drop()
            return True
        host.drop()
        if boot_id != boot_id_before:
            log.info("%s: boot id changed since the reboot request: reboot happened", name)
            return True
        if state not in ("running", "degraded"):
            log.info("%s: still on the old boot id but %s: reboot under way", name, state)
            return True
        return False

    def _gate_target(self, name: str, expected_system: str | None) -> GateTarget:
        """The machine's gate; on a NixOS machine with one more probe: the booted system."""
        gate = self.target(name)
        if expected_system is None:
            return gate
        record = self._machine(name)
        known = {
            system: generation
            for system, generation in (
                (record.system_before, record.generation_before),
                (record.system_expected, record.generation_expected),
            )
            if system is not None and generation is not None
        }
        check = BootedSystemCheck(expected=expected_system, generations=known)
        return GateTarget(gate.host, gate.address, (*gate.checks, check))

    async def _await_gate(
        self,
        name: str,
        *,
        boot_id_before: str,
        requested_at: datetime | None,
        expected_system: str | None,
        rollback: bool,
    ) -> GateRound:
        """Wait until the machine passes its gate after a reboot; ``GateFailed`` when it does
        not within ``reboot.timeout``, or at once when it booted the wrong generation.

        A machine that has a ``power_cycle`` command and has not answered SSH for
        ``reboot.power_cycle_after`` since the reboot request is power-cycled, once per reboot
        (the intent is committed first, so a resume never runs it twice)."""
        reboot = self.settings.reboot
        power_cycle = self.config.machine(name).power_cycle
        started = time.monotonic()
        # When the machine last answered SSH, in monotonic time: at the latest, the request.
        waited = (now() - requested_at).total_seconds() if requested_at else 0.0
        last_answer = [started - max(0.0, waited)]
        last_logged: list[str] = []
        wrong: list[Probe] = []

        async def on_round(result: GateRound) -> None:
            failure = result.first_failure
            summary = "passed" if failure is None else str(failure)
            if result.boot_id is not None:
                last_answer[0] = time.monotonic()
            if not last_logged or last_logged[-1] != summary:
                last_logged.append(summary)
                self.store.record_probes(self.run_id, name, result.as_json())
                if failure is not None:
                    log.info("%s: waiting: %s", name, summary)
                    elapsed = time.monotonic() - started
                    waiting = Waiting(summary, elapsed, reboot.timeout)
                    await self._emit(EventKind.MACHINE_WAITING, name, waiting=waiting)
            if not rollback:
                self._on_gate_round(name, result.passed)
            if self.store.abort_requested(self.run_id):
                raise RunAborted(
                    f"aborted on request (orchestrator abort) while verifying {name}, "
                    "which was rebooted but not yet proven healthy",
                    name,
                )
            if result.boot_id not in (None, boot_id_before):
                # /run/booted-system is fixed for a boot: a wrong one will not come right.
                wrong[:] = [p for p in result.probes if is_wrong_generation(p)][:1]
                if wrong:
                    raise _WrongGeneration()
            dark_for = time.monotonic() - last_answer[0]
            if power_cycle and result.boot_id is None and dark_for >= reboot.power_cycle_after:
                await self._power_cycle(name, power_cycle, dark_for, rollback=rollback)

        try:
            return await wait_until_healthy(
                self._gate_target(name, expected_system),
                self._http,
                boot_id_before=boot_id_before,
                policy=self.policy,
                deadline=started + reboot.timeout,
                transient=ProbeFailed,
                on_round=on_round,
            )
        except _WrongGeneration:
            probe = wrong[0]
            failure = f"{name} did not pass the health gate: {probe}"
            raise GateFailed(failure, str(probe), True) from None
        except GateNotPassed as exc:
            last = exc.last.first_failure if exc.last else None
            raise GateFailed(
                f"{name} did not pass the health gate within {reboot.timeout:g}s"
                + (f"; last failing probe: {last}" if last else ""),
                str(last) if last else None,
                False,
            ) from None

    async def _power_cycle(
        self, name: str, argv: list[str], dark_for: float, *, rollback: bool
    ) -> None:
        record = self._machine(name)
        done = record.rollback_power_cycled_at if rollback else record.power_cycled_at
        if done is not None:
            return
        self._check_abort(f"power-cycling {name}")
        self.store.record_power_cycle(self.run_id, name, rollback=rollback)
        log.warning(
            "%s: no SSH answer for %s since the reboot request: power-cycling it (%s)",
            name,
            report.human_duration(dark_for),
            process.display(argv),
        )
        try:
            result = await process.run(
                argv,
                timeout=defaults.POWER_CYCLE_TIMEOUT,
                cwd=self.config.flake_dir,
                label=f"power cycle {name}",
                log_output=True,
            )
            result.check()
        except process.ProcessFailed as exc:
            # Run once, as promised; the gate goes on waiting in case it worked anyway.
            log.warning("warning: %s: power cycle: %s", name, exc)
            return
        log.info("%s: power cycle done; waiting for the rest of reboot.timeout", name)
        self.host(name).drop()

    async def verifying(self, wave: str | None) -> str | None:
        """Gate every rebooted machine of the wave, all at once and each to its end; the wave
        passes when all of them do. A failure stops the run after the wave: the machines
        that can be rolled back are (``roll_back``), the others' errors are recorded."""
        assert wave is not None
        self._warm_up_next(wave)
        rebooted = [n for n in self.waves.members(wave) if not self._machine(n).skipped]
        self._gated, self._passing = frozenset(rebooted), set()
        if len(rebooted) == 1:
            return await self._verify(rebooted[0])
        done, failed = await _all_to_the_end(rebooted, self._verify)
        if ROLL_BACK in done.values():
            for name, error in failed:
                self.store.record_machine_error(self.run_id, name, str(error))
                log.error("%s: %s", name, error)
            return ROLL_BACK
        if failed:
            raise self._wave_failed(failed)
        return None

    def _on_gate_round(self, name: str, passed: bool) -> None:
        """A pass may be the first of the streak that proves ``name``: once every rebooted
        machine of its wave is on one, the next wave's interlock can ask the others now,
        during the stability window. A failing round stops that."""
        if not passed:
            self._passing.discard(name)
            self._drop_early()
            return
        self._passing.add(name)
        if self._gated <= self._passing:
            self._start_early(self.waves.wave_of(name))

    async def _verify(self, name: str) -> str | None:
        record = self._machine(name)
        assert record.boot_id_before is not None
        expected = record.system_expected if record.nixos else None
        try:
            result = await self._await_gate(
                name,
                boot_id_before=record.boot_id_before,
                requested_at=record.reboot_requested_at,
                expected_system=expected,
                rollback=False,
            )
        except GateFailed as exc:
            return await self._after_failure(name, exc)
        healthy_at = now()
        self.store.record_healthy(
            self.run_id,
            name,
            boot_id_after=result.boot_id,
            healthy_at=healthy_at,
            probes=result.as_json(),
        )
        took = report.seconds_between(record.reboot_requested_at, healthy_at)
        log.info(
            "%s: healthy on boot id %s, %.1fs after the reboot request",
            name,
            report.short_id(result.boot_id),
            took or 0.0,
        )
        await self._generation_after(name)
        await self._make_default(name)
        # The connection stays open: the interlock before the next reboot asks this machine
        # again at once, and a new handshake would be all of that round's cost.
        await self._emit(EventKind.MACHINE_HEALTHY, name)
        return None

    async def _make_default(self, name: str) -> None:
        """After boot-once and a passed gate: the new generation becomes the default."""
        record = self._machine(name)
        if record.boot_once is None or record.made_default_at is not None:
            return
        assert record.system_expected is not None
        try:
            await target.make_default(
                self.host(name), self.settings.target_helper, record.system_expected
            )
        except (target.HelperFailed, target.BootloaderUnsupported) as exc:
            raise RunAborted(
                f"{name}: healthy on generation {record.generation_expected}, but making it "
                f"the boot default failed ({exc or 'unsupported bootloader'}); its next "
                f"reboot would boot generation {record.generation_before} again",
                name,
            ) from None
        self.store.record_made_default(self.run_id, name)
        log.info("%s: generation %s is the boot default now", name, record.generation_expected)

    async def _after_failure(self, name: str, failed: GateFailed) -> str:
        """A failed gate ends the rollout at this machine: rolled back first when
        ``on_failure: rollback``, its facts are known, and SSH still answers."""
        record = self._machine(name)
        why_not = self._cannot_roll_back(record)
        if why_not is None:
            try:
                await self.host(name).read_boot_id(self.policy.timeouts.command)
            except ProbeFailed as exc:
                why_not = f"SSH does not answer ({exc})"
        if why_not is not None:
            if self.settings.on_failure == "rollback" and record.nixos is True:
                raise RunAborted(f"{failed.failure}; not rolled back: {why_not}", name)
            raise RunAborted(failed.failure, name)
        failure = (
            f"generation {record.generation_expected} failed "
            f"(last probe: {failed.last_probe or 'none'})"
        )
        self.store.record_rollback_start(self.run_id, name, failure)
        log.error("%s: %s; rolling back to generation %s", name, failure, record.generation_before)
        return ROLL_BACK

    def _helper_unavailable(self, name: str) -> str | None:
        """Why the target helper cannot run on this machine, if it cannot: on the controller
        it runs through ``sudo -n`` unless we are root, and a service with NoNewPrivileges
        (the module's dedicated user) can never gain root that way."""
        if self.config.machine(name).local and os.geteuid() != 0 and process.no_new_privileges():
            return "the orchestrator runs with NoNewPrivileges, so sudo cannot run the helper here"
        return None

    def _cannot_roll_back(self, record: MachineRecord) -> str | None:
        if self.settings.on_failure != "rollback":
            return "on_failure is stop"
        if record.nixos is not True or record.system_before is None:
            return "its NixOS generation is not known"
        unavailable = self._helper_unavailable(record.name)
        if unavailable is not None:
            return unavailable
        if record.system_before == record.system_expected:
            return f"it already boots generation {record.generation_before}'s system"
        return None

    def _rolling_back(self, wave: str) -> list[str]:
        """The machines of the wave whose failed gate started a rollback."""
        return [
            name
            for name in self.waves.members(wave)
            if self._machine(name).rollback_started_at is not None
        ]

    async def rolling_back(self, wave: str | None) -> str | None:
        assert wave is not None
        await self._each(self._rolling_back(wave), self._roll_back)
        return None

    async def _roll_back(self, name: str) -> None:
        """Make the known-good system the boot default again, then reboot into it. Both
        steps have their intent committed first; the helper is idempotent (a second call
        makes no second generation), so a resume after a kill rolls back exactly once."""
        record = self._machine(name)
        host = self.host(name)
        if record.rollback_requested_at is not None and record.rollback_boot_id_before:
            if await self._reboot_under_way(name, host, record.rollback_boot_id_before):
                return
            log.info("%s: the rollback reboot never started; requesting it again", name)
            self._check_abort(f"the rollback reboot of {name}")
            self.store.record_rollback_reboot_resend(self.run_id, name)
            await host.request_reboot()
            return
        assert record.system_before is not None
        self._check_abort(f"rolling back {name}")
        if record.rollback_done_at is None:
            try:
                generation = await target.rollback(
                    host, self.settings.target_helper, record.system_before
                )
            except target.HelperFailed as exc:
                raise RunAborted(
                    f"{name}: {record.failure}; rollback failed: {exc}", name
                ) from None
            self.store.record_rollback_done(self.run_id, name, generation)
            log.info(
                "%s: generation %s's system is the boot default again (profile generation %s)",
                name,
                record.generation_before,
                generation or "?",
            )
        try:
            boot_id = await host.read_boot_id(self.policy.timeouts.command)
        except ProbeFailed as exc:
            raise RunAborted(
                f"{name}: {record.failure}; rolled back, but cannot read the boot id to reboot "
                f"into it: {exc}",
                name,
            ) from None
        if boot_id is None:
            raise RunAborted(f"{name}: {record.failure}; rolled back, boot id unreadable", name)
        self._check_abort(f"the rollback reboot of {name}")
        self.store.record_rollback_reboot_intent(self.run_id, name, boot_id)
        log.info(
            "%s: rebooting into generation %s (boot id %s)",
            name,
            record.generation_before,
            report.short_id(boot_id),
        )
        await host.request_reboot()
        await self._emit(EventKind.MACHINE_REBOOTING, name)

    async def verifying_rollback(self, wave: str | None) -> str | None:
        """The same gate, against the known-good system, for every machine of the wave that
        was rolled back. The run ends ``aborted`` either way: the generation it was
        deploying failed on them."""
        assert wave is not None
        await self._each(self._rolling_back(wave), self._verify_rollback)
        raise AssertionError("unreachable: every rolled-back machine ends the run")

    async def _verify_rollback(self, name: str) -> None:
        record = self._machine(name)
        assert record.rollback_boot_id_before is not None
        try:
            result = await self._await_gate(
                name,
                boot_id_before=record.rollback_boot_id_before,
                requested_at=record.rollback_requested_at,
                expected_system=record.system_before,
                rollback=True,
            )
        except GateFailed as exc:
            raise RunAborted(
                f"{name}: {record.failure}; rolled back to generation "
                f"{record.generation_before}, but that did not pass the health gate either "
                f"({exc.failure.removeprefix(name + ' ')}): {name} needs a human",
                name,
            ) from None
        self.store.record_rollback_healthy(
            self.run_id, name, boot_id_after=result.boot_id, probes=result.as_json()
        )
        took = report.seconds_between(record.rollback_requested_at, now())
        log.info(
            "%s: healthy on the rolled-back generation (boot id %s), %.1fs after its reboot",
            name,
            report.short_id(result.boot_id),
            took or 0.0,
        )
        await self._generation_after(name)
        raise RunAborted(
            f"{name}: {record.failure}; rolled back to generation {record.generation_before}: "
            "healthy",
            name,
        )

    async def settling(self, name: str | None) -> str | None:
        assert name is not None
        settle = self.settings.reboot.settle
        # A wave settles from the last of its machines to be proven healthy.
        times = [self._machine(m).healthy_at for m in self.waves.members(name)]
        healthy_at = max((t for t in times if t is not None), default=None)
        if settle <= 0 or healthy_at is None:
            return None
        # Measured from healthy_at, so a resume does not start the wait over.
        remaining = settle - (now() - healthy_at).total_seconds()
        if remaining > 0:
            log.info("%s: settling for %.0fs before the next machine", name, remaining)
        while remaining > 0:
            self._check_abort(f"the machine after {name}")
            await asyncio.sleep(min(remaining, self.settings.reboot.poll_interval))
            remaining = settle - (now() - healthy_at).total_seconds()
        return None


async def report_end(store: Store, record: RunRecord, events: EventPoint) -> None:
    """Tell the hooks a run ended, once: the store remembers that it was told, so a run whose
    process died between its final state and this is reported by the next start or resume."""
    if not record.finished or record.end_reported_at is not None:
        return
    await events.emit(RunEvent(EventKind.RUN_FINISHED, report.summarize(record)))
    store.record_end_reported(record.run_id)


# -- run policy: what the CLI calls -----------------------------------------------------------


async def _drive(
    config: LoadedConfig, store: Store, start: RunKind | None, only: str | None
) -> RunRecord | None:
    events = EventPoint(configured_hooks(config, store))
    owed = store.unreported_end()
    if owed is not None:
        log.info(
            "run %d ended %s before its end was reported; reporting it", owed.run_id, owed.state
        )
        await report_end(store, owed, events)
    run = store.active_run()
    if run is not None:
        logs.set_run_context(run.run_id, run.state)
        if start is RunKind.REBOOT:
            raise OrchestratorError(
                f"run {run.run_id} is in progress ({run.state}); let it finish "
                "or stop it with `orchestrator abort` first"
            )
        log.info(
            "run %d: continuing from %s (started %s)",
            run.run_id,
            run.state,
            run.started_at.isoformat(timespec="seconds"),
        )
        return await Engine(config, store, run, events).drive(resumed=True)
    if start is None:
        return None
    names = (only,) if only else config.machine_order
    machines = [(name, config.machine(name).local) for name in names]
    per_machine = start is RunKind.NIGHTLY and config.settings.deploy.mode == "per-machine"
    waves = config.run_waves(names)
    run = store.create_run(
        start,
        machines,
        config.path,
        per_machine_deploy=per_machine,
        waves=waves if waves.grouped else None,
    )
    logs.set_run_context(run.run_id, run.state)
    shown = " -> ".join(
        " + ".join(group) if len(group) <= 4 else f"{group[0]} + … + {group[-1]} ({len(group)})"
        for group in waves.groups
    )
    log.info("run %d: %s run of %s", run.run_id, start.value, shown)
    return await Engine(config, store, run, events).drive(resumed=False)


def drive(config: LoadedConfig, start: RunKind | None, only: str | None = None) -> RunRecord | None:
    """Start a run of kind ``start`` or continue the one in progress (``start=None``: only
    continue). Returns the run as it ended, or None when there was nothing to continue.
    One run at a time: the run lock is held throughout."""
    if only is not None:
        config.machine(only)
    state_dir = config.settings.state_dir
    with lock.exclusive(state_dir), Store.open(state_dir) as store:
        return asyncio.run(_drive(config, store, start, only))


def abort(config_path: Path) -> str:
    """Stop the run in progress; returns what happened, in one line.

    With a live orchestrator the request is recorded and that process stops at its next safe
    point. With none (e.g. the run waits for the controller's boot-time resume) the run moves
    to ``aborted`` here, by the state table's ``abort`` trigger, and its end is reported.
    """
    state_dir = read_state_dir(config_path)
    try:
        store = Store.open(state_dir, create=False)
    except FileNotFoundError:
        return "no run in progress"
    with store:
        run = store.active_run()
        if run is None:
            return "no run in progress"
        try:
            with lock.exclusive(state_dir), Store.open(state_dir) as writable:
                # Opened for writing under the lock: a store of an older schema is migrated
                # first, so the end of the run is recorded (and reported) the current way.
                # Read again: the run may have ended between the first look and the lock.
                idle = writable.active_run()
                if idle is None:
                    return "no run in progress"
                return asyncio.run(_abort_idle(config_path, writable, idle))
        except LockHeldError:
            store.request_abort(run.run_id)
            pid = lock.holder_pid(state_dir)
            return (
                f"abort requested: run {run.run_id} (PID {pid or '?'}, now {run.state}) stops "
                "at the next safe point; it will not send another reboot"
            )


async def _abort_idle(config_path: Path, store: Store, run: RunRecord) -> str:
    message = f"aborted on request (orchestrator abort) in {run.state}"
    store.request_abort(run.run_id)
    model = RunModel()
    build_machine(
        model,
        run.kind,
        run.waves.names,
        initial=run.state,
        per_machine_deploy=run.per_machine_deploy,
    )
    await model.abort()
    store.set_state(run.run_id, model.state, error=message)
    done = f"run {run.run_id} aborted (no orchestrator was running it)"
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        # The abort stands; the hooks hear of it from the next run or resume that can load it.
        log.warning("warning: on_abort hooks not run now: %s", exc)
        return done
    await report_end(store, store.run(run.run_id), EventPoint(configured_hooks(config, store)))
    return done
