"""The runner: does the work of each state, persists, then moves the state machine on.

Read it next to ``states.py``: one handler per phase, each doing exactly the side effects of
that state. Every move is committed to the store before the next handler starts, and every
side effect that cannot be repeated blindly (the reboot) has its intent committed first, so a
SIGKILL anywhere is finished correctly by ``orchestrator resume``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import datetime

from health_checks.gate import (
    GateNotPassed,
    GatePolicy,
    GateRound,
    Probe,
    gate_round,
    wait_until_healthy,
)
from health_checks.http import HttpProber
from orchestrator import commands, remote
from orchestrator.config import LoadedConfig
from orchestrator.errors import OrchestratorError, StoreError
from orchestrator.remote import Host, LocalHost, ProbeFailed, SshEndpoint, SshHost
from orchestrator.states import ABORT, ADVANCE, FINAL_STATES, Phase, StateName, build_machine
from orchestrator.store import RunRecord, Store, now

log = logging.getLogger("orchestrator")


class RunAborted(OrchestratorError):
    """Ends the run in ``aborted``; ``machine`` is the one that stopped the rollout, if any."""

    def __init__(self, message: str, machine: str | None = None) -> None:
        super().__init__(message)
        self.machine = machine


class RunModel:
    """The object transitions drives; ``state`` is its only attribute of interest."""

    state: str
    advance: Callable[..., Awaitable[bool]]
    abort: Callable[..., Awaitable[bool]]


def _seconds(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "?"
    return f"{(end - start).total_seconds():.1f}s"


def make_host(config: LoadedConfig, name: str, expected_host_key: str | None) -> Host:
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
        identity_file=ssh.identity_file.expanduser() if ssh.identity_file else None,
        known_hosts=tuple(ssh.known_hosts_files()),
        connect_timeout=ssh.connect_timeout,
    )
    return SshHost(endpoint, remote.load_known_hosts(endpoint.known_hosts), expected_host_key)


def gate_policy(config: LoadedConfig) -> GatePolicy:
    reboot = config.settings.reboot
    return GatePolicy(
        allow_degraded=reboot.allow_degraded,
        probe_timeout=reboot.probe_timeout,
        poll_interval=reboot.poll_interval,
        stable_passes=reboot.stable_passes,
    )


async def probe_once(
    config: LoadedConfig, host: Host, http: HttpProber, policy: GatePolicy
) -> GateRound:
    """One gate round with no "before" boot id: what preflight and ``plan`` ask."""
    limit = config.settings.ssh.connect_timeout + policy.probe_timeout
    try:
        async with asyncio.timeout(limit):
            return await gate_round(
                host,
                config.machine(host.name).checks,
                http,
                boot_id_before=None,
                policy=policy,
                transient=ProbeFailed,
            )
    except TimeoutError:
        return GateRound((Probe("gate", False, f"no answer within {limit:g}s"),), None, None)


async def plan_probe(config: LoadedConfig) -> dict[str, GateRound]:
    """A live preflight that touches nothing and records nothing."""
    http = HttpProber()
    hosts = [make_host(config, name, None) for name in config.machine_order]
    try:
        rounds = await asyncio.gather(
            *(probe_once(config, h, http, gate_policy(config)) for h in hosts)
        )
    finally:
        await http.aclose()
        for host in hosts:
            await host.close()
    return dict(zip(config.machine_order, rounds, strict=True))


class Engine:
    def __init__(self, config: LoadedConfig, store: Store, run: RunRecord) -> None:
        self.config = config
        self.settings = config.settings
        self.store = store
        self.run_id = run.run_id
        self.model = RunModel()
        build_machine(self.model, run.kind, run.machine_names, initial=run.state)
        self.policy = gate_policy(config)
        self._hosts: dict[str, Host] = {}
        self._http = HttpProber()
        for name in run.machine_names:
            config.machine(name)  # a machine removed from the config since the run began

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def record(self) -> RunRecord:
        return self.store.run(self.run_id)

    def host(self, name: str) -> Host:
        # The key seen in preflight (or before the reboot) is the only one accepted afterwards,
        # even if known_hosts lists several for the machine.
        expected = self.record.machine(name).host_key
        if name not in self._hosts:
            self._hosts[name] = make_host(self.config, name, expected)
        self._hosts[name].expected_host_key = expected
        return self._hosts[name]

    async def _fire(self, trigger: str, error: str | None = None) -> None:
        await getattr(self.model, trigger)()
        # Committed before the next state's work starts: this is the resume point.
        self.store.set_state(self.run_id, self.model.state, error=error)
        if self.model.state not in FINAL_STATES:
            log.info("run %d: %s", self.run_id, self.model.state)

    def _check_abort(self, where: str) -> None:
        if self.store.abort_requested(self.run_id):
            raise RunAborted(f"aborted on request (orchestrator abort) before {where}")

    # -- the loop -----------------------------------------------------------------------------

    async def drive(self) -> RunRecord:
        handlers: dict[Phase, Callable[[str | None], Awaitable[None]]] = {
            Phase.PREFLIGHT: self.preflight,
            Phase.UPDATING: self.updating,
            Phase.DEPLOYING: self.deploying,
            Phase.REBOOTING: self.rebooting,
            Phase.VERIFYING: self.verifying,
            Phase.SETTLING: self.settling,
        }
        async with AsyncExitStack() as stack:
            stack.push_async_callback(self._http.aclose)
            stack.push_async_callback(self._close_hosts)
            while self.model.state not in FINAL_STATES:
                state = StateName.parse(self.model.state)
                try:
                    await handlers[state.phase](state.machine)
                except StoreError:
                    # A store that cannot be written stops everything right here: no further
                    # side effect may happen without its intent on disk.
                    raise
                except OrchestratorError as exc:
                    # RunAborted, HostKeyChanged, RebootRefused, StepFailed, a missing
                    # known_hosts file: each ends the rollout at this machine.
                    machine = getattr(exc, "machine", None) or state.machine
                    await self._end_aborted(str(exc), machine)
                    break
                await self._fire(ADVANCE)
        record = self.record
        self._summary(record)
        return record

    async def _close_hosts(self) -> None:
        for host in self._hosts.values():
            await host.close()

    async def _end_aborted(self, message: str, machine: str | None) -> None:
        if machine is not None:
            self.store.update_machine(self.run_id, machine, error=message)
        log.error("run %d aborted: %s", self.run_id, message)
        await self._fire(ABORT, error=message)

    # -- one handler per phase ----------------------------------------------------------------

    async def preflight(self, _: str | None) -> None:
        if not self.settings.preflight:
            log.info("preflight: skipped (preflight: false)")
            return
        names = self.record.machine_names
        log.info("preflight: probing %s", ", ".join(names))
        rounds = await asyncio.gather(*(self._probe_once(name) for name in names))
        failures = [
            f"{name}: {r.first_failure}"
            for name, r in zip(names, rounds, strict=True)
            if not r.passed
        ]
        for name, result in zip(names, rounds, strict=True):
            self.store.update_machine(
                self.run_id, name, host_key=result.host_key, last_probes=result.as_json()
            )
        if failures:
            raise RunAborted("preflight failed, nothing was touched: " + "; ".join(failures))
        log.info("preflight: all %d machines reachable and healthy", len(names))

    async def _probe_once(self, name: str) -> GateRound:
        return await probe_once(self.config, self.host(name), self._http, self.policy)

    async def updating(self, _: str | None) -> None:
        self._check_abort("updating")
        await commands.run_step("update", self.settings.update, self.config.flake_dir)

    async def deploying(self, _: str | None) -> None:
        self._check_abort("deploying")
        await commands.run_step("deploy", self.settings.deploy, self.config.flake_dir)

    async def rebooting(self, name: str | None) -> None:
        assert name is not None
        record = self.record.machine(name)
        host = self.host(name)
        timeout = self.settings.ssh.connect_timeout
        if record.reboot_requested_at is not None and record.boot_id_before is not None:
            if await self._reboot_under_way(name, host, record.boot_id_before):
                return
            log.info(
                "%s: the reboot requested before the interruption never started; "
                "requesting it again",
                name,
            )
            self._check_abort(f"rebooting {name}")
            self.store.record_reboot_resend(self.run_id, name)
            await host.request_reboot(self.settings.reboot.command, timeout)
            return
        self._check_abort(f"rebooting {name}")
        try:
            boot_id = await host.read_boot_id(timeout)
        except ProbeFailed as exc:
            raise RunAborted(f"{name}: cannot read the boot id before rebooting: {exc}") from None
        if boot_id is None:
            raise RunAborted(
                f"{name}: boot id is not a UUID; refusing to reboot a machine whose return "
                "could not be proven"
            )
        self.store.record_reboot_intent(self.run_id, name, boot_id, host.host_key)
        log.info("%s: rebooting (boot id %s)", name, boot_id)
        await host.request_reboot(self.settings.reboot.command, timeout)
        log.info("%s: reboot requested", name)

    async def _reboot_under_way(self, name: str, host: Host, boot_id_before: str) -> bool:
        """After an interruption between saving the intent and the next state: did the reboot
        request get through? A host that is unreachable, on a new boot id, or shutting down
        ("stopping") got it; one still ``running`` on the old boot id did not."""
        timeout = self.settings.ssh.connect_timeout
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

    async def verifying(self, name: str | None) -> None:
        assert name is not None
        record = self.record.machine(name)
        assert record.boot_id_before is not None
        host = self.host(name)
        reboot = self.settings.reboot
        started = time.monotonic()
        last_logged: list[str] = []

        async def on_round(result: GateRound) -> None:
            failure = result.first_failure
            summary = "passed" if failure is None else str(failure)
            if not last_logged or last_logged[-1] != summary:
                last_logged.append(summary)
                self.store.update_machine(self.run_id, name, last_probes=result.as_json())
                if failure is not None:
                    log.info("%s: waiting: %s", name, summary)
            if self.store.abort_requested(self.run_id):
                raise RunAborted(
                    f"aborted on request (orchestrator abort) while verifying {name}, "
                    "which was rebooted but not yet proven healthy",
                    name,
                )

        try:
            result = await wait_until_healthy(
                host,
                self.config.machine(name).checks,
                self._http,
                boot_id_before=record.boot_id_before,
                policy=self.policy,
                deadline=started + reboot.timeout,
                transient=ProbeFailed,
                on_round=on_round,
            )
        except GateNotPassed as exc:
            last = exc.last.first_failure if exc.last else None
            raise RunAborted(
                f"{name} did not pass the health gate within {reboot.timeout:g}s"
                + (f"; last failing probe: {last}" if last else ""),
                name,
            ) from None
        healthy_at = now()
        self.store.update_machine(
            self.run_id,
            name,
            boot_id_after=result.boot_id,
            healthy_at=healthy_at,
            last_probes=result.as_json(),
            error=None,
        )
        since = _seconds(record.reboot_requested_at, healthy_at)
        log.info(
            "%s: healthy on boot id %s, %s after the reboot request", name, result.boot_id, since
        )
        host.drop()

    async def settling(self, name: str | None) -> None:
        assert name is not None
        settle = self.settings.reboot.settle
        healthy_at = self.record.machine(name).healthy_at
        if settle <= 0 or healthy_at is None:
            return
        # Measured from healthy_at, so a resume does not start the wait over.
        remaining = settle - (now() - healthy_at).total_seconds()
        if remaining > 0:
            log.info("%s: settling for %.0fs before the next machine", name, remaining)
        while remaining > 0:
            self._check_abort(f"the machine after {name}")
            await asyncio.sleep(min(remaining, self.settings.reboot.poll_interval))
            remaining = settle - (now() - healthy_at).total_seconds()

    # -- the end ------------------------------------------------------------------------------

    def _summary(self, record: RunRecord) -> None:
        end = record.finished_at or now()
        log.info(
            "summary: run %d (%s) %s after %s",
            record.run_id,
            record.kind,
            record.state,
            _seconds(record.started_at, end),
        )
        for machine in record.machines:
            if machine.healthy_at is not None:
                took = _seconds(machine.reboot_requested_at, machine.healthy_at)
                what = (
                    f"rebooted, healthy {took} after the request "
                    f"(boot id {machine.boot_id_before} -> {machine.boot_id_after})"
                )
            elif machine.error:
                what = f"FAILED: {machine.error}"
            elif machine.reboot_requested_at is not None:
                what = "reboot requested, not verified"
            else:
                what = "not rebooted"
            log.info("summary: %s: %s", machine.name, what)
        if record.error:
            log.info("summary: error: %s", record.error)
