"""The health gate: what "this machine is back" means, and the loop that waits for it.

A round passes when SSH connects with the trusted host key, the boot id is a UUID different
from the one saved before the reboot, ``systemctl is-system-running`` says ``running`` (or
``degraded`` when allowed) and every configured check passes. The gate passes when
``stable_passes`` rounds in a row pass, ``poll_interval`` apart, on one unchanged boot id — a
single lucky probe of a flapping service is not enough. Reachability alone never proves a
reboot. The gate runs checks of any type through their common interface and never names one.

Every probe of a round passes through ``health_checks.text.from_host`` as the round is made
(``GateRound``): whatever a check type put in a probe's name or detail, what is stored,
logged and shown has no control characters and a bounded length.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_fixed,
)

from health_checks.base import Check, CommandHost, Probe, ProbeContext, Timeouts
from health_checks.clients import HttpClients
from health_checks.text import from_host

__all__ = [
    "GateHost",
    "GateNotPassed",
    "GatePolicy",
    "GateRound",
    "Probe",
    "gate_round",
    "probe_once",
    "probe_settled",
    "wait_until_healthy",
]


# A probe's name is config (a URL, a command); its detail often host text.
PROBE_NAME_LIMIT = 300
PROBE_DETAIL_LIMIT = 400


def sanitized(probe: Probe) -> Probe:
    """``probe`` with its name and detail made safe to store and show (idempotent)."""
    name = from_host(probe.name, PROBE_NAME_LIMIT)
    detail = from_host(probe.detail, PROBE_DETAIL_LIMIT)
    if name == probe.name and detail == probe.detail:
        return probe
    return Probe(name, probe.ok, detail)


@dataclass(frozen=True)
class GateRound:
    probes: tuple[Probe, ...]
    boot_id: str | None
    host_key: str | None

    def __post_init__(self) -> None:
        # The one boundary for probes: every round is made here, by any check type.
        object.__setattr__(self, "probes", tuple(sanitized(p) for p in self.probes))

    @property
    def passed(self) -> bool:
        return all(probe.ok for probe in self.probes)

    @property
    def first_failure(self) -> Probe | None:
        return next((probe for probe in self.probes if not probe.ok), None)

    def as_json(self) -> list[dict[str, object]]:
        return [{"probe": p.name, "ok": p.ok, "detail": p.detail} for p in self.probes]


class GateHost(CommandHost, Protocol):
    @property
    def host_key(self) -> str | None: ...

    async def read_boot_id(self, timeout: float) -> str | None: ...
    async def system_state(self, timeout: float) -> str: ...


@dataclass(frozen=True)
class GatePolicy:
    allow_degraded: bool
    timeouts: Timeouts
    poll_interval: float
    stable_passes: int
    # Between rounds of a machine that is back (a new boot id) but not passing yet: it is
    # about to, and a whole poll_interval of waiting would be added to every advance. Only
    # for the first catch_up_for seconds after it is back: one that stays unhealthy is not
    # asked ten times a second for the rest of reboot.timeout. Likewise for the first
    # catch_up_for seconds of the wait while it is not back yet (see wait_until_healthy).
    catch_up_interval: float = 0.1
    catch_up_for: float = 30.0


@dataclass(frozen=True)
class GateTarget:
    """One machine as the gate sees it: how to reach it and what to check."""

    host: GateHost
    address: str
    checks: Sequence[Check]


async def _bounded(check: Check, ctx: ProbeContext) -> Probe:
    budget = check.budget(ctx.timeouts)
    try:
        async with asyncio.timeout(budget):
            return await check.probe(ctx)
    except TimeoutError:
        return Probe(check.describe(ctx.address), False, f"no answer within {budget:g}s")


async def gate_round(
    target: GateTarget,
    http: HttpClients,
    *,
    boot_id_before: str | None,
    policy: GatePolicy,
    transient: type[Exception],
) -> GateRound:
    """One round of every probe. ``boot_id_before=None`` (preflight) only asks for a valid id.

    ``transient`` is the exception type that means "not reachable yet" (``remote.ProbeFailed``);
    anything else, such as a changed host key, propagates and ends the wait.
    """
    host = target.host
    timeouts = policy.timeouts
    # Checks run only once SSH has read a new boot id: until then the round fails anyway, and
    # an HTTP or TCP connect sent while the machine is dark only waits out its SYN timeout —
    # started just before the machine returns, it would fail the first round that could pass.
    try:
        boot_id = await host.read_boot_id(timeouts.command)
    except transient as exc:
        probe = Probe("ssh", False, str(exc).removeprefix("ssh: "))
        return GateRound((probe,), None, host.host_key)
    if boot_id is None:
        probe = Probe("boot id", False, "unreadable or not a UUID")
        return GateRound((probe,), None, host.host_key)
    if boot_id_before is not None and boot_id == boot_id_before:
        probe = Probe("boot id", False, "unchanged: not rebooted yet")
        return GateRound((probe,), boot_id, host.host_key)

    async def system_probe() -> Probe:
        try:
            state = await host.system_state(timeouts.command)
        except transient as exc:
            return Probe("ssh", False, str(exc).removeprefix("ssh: "))
        wanted = ("running", "degraded") if policy.allow_degraded else ("running",)
        return Probe("system", state in wanted, state)

    ctx = ProbeContext(host, target.address, http, timeouts, transient)
    probes = await asyncio.gather(system_probe(), *(_bounded(c, ctx) for c in target.checks))
    return GateRound((Probe("boot id", True, boot_id), *probes), boot_id, host.host_key)


async def probe_once(
    target: GateTarget, http: HttpClients, policy: GatePolicy, transient: type[Exception]
) -> GateRound:
    """One bounded round with no "before" boot id: what preflight and ``plan`` ask."""
    limit = policy.timeouts.round
    try:
        async with asyncio.timeout(limit):
            return await gate_round(
                target, http, boot_id_before=None, policy=policy, transient=transient
            )
    except TimeoutError:
        return GateRound((Probe("gate", False, f"no answer within {limit:g}s"),), None, None)


async def probe_settled(
    target: GateTarget,
    http: HttpClients,
    policy: GatePolicy,
    transient: type[Exception],
    attempts: int,
) -> GateRound:
    """Up to ``attempts`` rounds, ``poll_interval`` apart, until one passes: preflight's
    question "is this machine healthy now?". One round that timed out on a busy controller or
    network is not an answer to abort a night's run on; a machine that fails every round is."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=wait_fixed(policy.poll_interval),
        retry=retry_if_result(lambda result: not result.passed),
        # Out of attempts: the last round is the answer (it says which probe failed).
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    result: GateRound = await retrying(probe_once, target, http, policy, transient)
    return result


class GateNotPassed(Exception):
    def __init__(self, last: GateRound | None, reason: str) -> None:
        super().__init__(reason)
        self.last = last


async def wait_until_healthy(
    target: GateTarget,
    http: HttpClients,
    *,
    boot_id_before: str,
    policy: GatePolicy,
    deadline: float,
    transient: type[Exception],
    on_round: Callable[[GateRound], Awaitable[None]],
) -> GateRound:
    """Poll until the gate passes ``stable_passes`` times in a row or ``deadline`` (monotonic).

    Raises ``GateNotPassed`` with the last round when time runs out. Whatever ``on_round``
    raises (an abort request, a changed host key) ends the wait at once.
    """
    streak: list[GateRound] = []
    rounds: list[GateRound] = []
    waiting_since = time.monotonic()
    round_started = [waiting_since]
    back_since: list[float | None] = [None]

    def until_next_round(_: object) -> float:
        # Rounds start poll_interval apart, start to start (the first pass of a streak counts
        # from its end, see attempt): a round's own duration is not added to the wait, so the
        # stability window after a first pass is poll_interval (times stable_passes - 1)
        # exactly, and a slow round is followed by the next at once.
        # A machine that is back but not passing yet is asked again sooner (catch_up_interval),
        # so the first passing round follows its health by a fraction of a second.
        # So is one not back yet, early in the wait: still on the old boot id it is about to
        # go down, and a round that meets it dark keeps reconnecting until it returns
        # (remote.open_tcp); a whole poll_interval between such rounds would be added to the
        # detection of every machine that goes down and returns within it.
        last = rounds[-1] if rounds else None
        back = last is not None and last.boot_id not in (None, boot_id_before)
        if back and back_since[0] is None:
            back_since[0] = round_started[0]
        interval = policy.poll_interval
        since = back_since[0] if back_since[0] is not None else waiting_since
        catching_up = time.monotonic() - since < policy.catch_up_for
        if catching_up and last is not None and not last.passed:
            interval = min(interval, policy.catch_up_interval)
        return max(0.0, interval - (time.monotonic() - round_started[0]))

    async def attempt() -> GateRound:
        round_started[0] = time.monotonic()
        # tenacity checks its stop condition only between attempts, so each attempt is
        # bounded here or a hanging probe would overshoot the deadline.
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GateNotPassed(rounds[-1] if rounds else None, "deadline reached")
        round_limit = policy.timeouts.round
        try:
            async with asyncio.timeout(min(remaining, round_limit)):
                result = await gate_round(
                    target,
                    http,
                    boot_id_before=boot_id_before,
                    policy=policy,
                    transient=transient,
                )
        except TimeoutError:
            if remaining < round_limit and rounds:
                # The deadline cut this round short: the last whole round says why the
                # machine did not pass (e.g. its failing HTTP check), "timed out" would not.
                raise GateNotPassed(rounds[-1], "deadline reached") from None
            result = GateRound(
                (Probe("gate", False, f"round took longer than {round_limit:g}s"),), None, None
            )
        finished = time.monotonic()
        rounds[:] = [result]
        await on_round(result)
        if not result.passed or (streak and streak[0].boot_id != result.boot_id):
            streak.clear()
        if result.passed:
            streak.append(result)
            if len(streak) == 1:
                # The stability window counts from the end of the first pass, not from its
                # start: a round that began while the machine was dark spent most of its time
                # reconnecting, and start to start the next would follow its probes by much
                # less than poll_interval.
                round_started[0] = finished
        if len(streak) < policy.stable_passes:
            raise _NotYet(result)
        return result

    try:
        async for attempt_context in AsyncRetrying(
            stop=stop_after_delay(max(0.0, deadline - time.monotonic())),
            wait=until_next_round,
            retry=retry_if_exception_type(_NotYet),
            reraise=True,
        ):
            with attempt_context:
                return await attempt()
    except _NotYet as exc:
        raise GateNotPassed(exc.round, "deadline reached") from None
    raise AssertionError("unreachable: tenacity either returns or raises")


class _NotYet(Exception):
    def __init__(self, result: GateRound) -> None:
        super().__init__("gate not passed yet")
        self.round = result
