"""The health gate: what "this machine is back" means, and the loop that waits for it.

A round passes when SSH connects with the trusted host key, the boot id is a UUID different
from the one saved before the reboot, ``systemctl is-system-running`` says ``running`` (or
``degraded`` when allowed) and every HTTP check passes. The gate passes when ``stable_passes``
rounds in a row pass, ``poll_interval`` apart, on one unchanged boot id — a single lucky probe
of a flapping service is not enough. Reachability alone never proves a reboot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_fixed

if TYPE_CHECKING:
    from orchestrator.config import HttpCheck


@dataclass(frozen=True)
class Probe:
    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}"


@dataclass(frozen=True)
class GateRound:
    probes: tuple[Probe, ...]
    boot_id: str | None
    host_key: str | None

    @property
    def passed(self) -> bool:
        return all(probe.ok for probe in self.probes)

    @property
    def first_failure(self) -> Probe | None:
        return next((probe for probe in self.probes if not probe.ok), None)

    def as_json(self) -> list[dict[str, object]]:
        return [{"probe": p.name, "ok": p.ok, "detail": p.detail} for p in self.probes]


class GateHost(Protocol):
    name: str
    host_key: str | None

    async def read_boot_id(self, timeout: float) -> str | None: ...
    async def system_state(self, timeout: float) -> str: ...


class HttpProbe(Protocol):
    async def probe(self, check: HttpCheck) -> Probe: ...


@dataclass(frozen=True)
class GatePolicy:
    allow_degraded: bool
    probe_timeout: float
    poll_interval: float
    stable_passes: int


async def gate_round(
    host: GateHost,
    checks: Sequence[HttpCheck],
    http: HttpProbe,
    *,
    boot_id_before: str | None,
    policy: GatePolicy,
    transient: type[Exception],
) -> GateRound:
    """One round of every probe. ``boot_id_before=None`` (preflight) only asks for a valid id.

    ``transient`` is the exception type that means "not reachable yet" (``remote.ProbeFailed``);
    anything else, such as a changed host key, propagates and ends the wait.
    """

    # HTTP is probed only once SSH has read a new boot id: until then the round fails anyway,
    # and an HTTP connect sent while the machine is dark only waits out its SYN timeout —
    # started just before the machine returns, it would fail the first round that could pass.
    try:
        boot_id = await host.read_boot_id(policy.probe_timeout)
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
            state = await host.system_state(policy.probe_timeout)
        except transient as exc:
            return Probe("ssh", False, str(exc).removeprefix("ssh: "))
        wanted = ("running", "degraded") if policy.allow_degraded else ("running",)
        return Probe("system", state in wanted, state)

    probes = await asyncio.gather(system_probe(), *(http.probe(check) for check in checks))
    return GateRound((Probe("boot id", True, boot_id), *probes), boot_id, host.host_key)


class GateNotPassed(Exception):
    def __init__(self, last: GateRound | None, reason: str) -> None:
        super().__init__(reason)
        self.last = last


async def wait_until_healthy(
    host: GateHost,
    checks: Sequence[HttpCheck],
    http: HttpProbe,
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

    async def attempt() -> GateRound:
        # tenacity checks its stop condition only between attempts, so each attempt is
        # bounded here or a hanging probe would overshoot the deadline.
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GateNotPassed(rounds[-1] if rounds else None, "deadline reached")
        round_limit = policy.probe_timeout + 1.0
        try:
            async with asyncio.timeout(min(remaining, round_limit)):
                result = await gate_round(
                    host,
                    checks,
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
            result = GateRound((Probe("gate", False, "round timed out"),), None, None)
        rounds[:] = [result]
        await on_round(result)
        if not result.passed or (streak and streak[0].boot_id != result.boot_id):
            streak.clear()
        if result.passed:
            streak.append(result)
        if len(streak) < policy.stable_passes:
            raise _NotYet(result)
        return result

    try:
        async for attempt_context in AsyncRetrying(
            stop=stop_after_delay(max(0.0, deadline - time.monotonic())),
            wait=wait_fixed(policy.poll_interval),
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
