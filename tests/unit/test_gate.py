"""The health gate's logic against an in-memory host: streaks, boot ids, deadlines, bounds."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence

import pytest

from health_checks.base import Check, Probe, Timeouts
from health_checks.clients import HttpClients
from health_checks.command import CommandCheck
from health_checks.gate import (
    GateNotPassed,
    GatePolicy,
    GateRound,
    GateTarget,
    gate_round,
    probe_settled,
    wait_until_healthy,
)
from orchestrator.process import Completed
from orchestrator.remote import HostKeyChanged, ProbeFailed

OLD = "11111111-1111-1111-1111-111111111111"
NEW = "22222222-2222-2222-2222-222222222222"
NEWER = "33333333-3333-3333-3333-333333333333"
GUARD = 20.0  # a broken gate fails the test instead of hanging it


async def _forever() -> None:
    await asyncio.Event().wait()


class Script:
    """Answers in order, then repeats the last answer; an exception is raised, HANG hangs."""

    HANG = object()

    def __init__(self, *answers: object) -> None:
        self._answers = list(answers)

    async def next(self) -> object:
        answer = self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]
        if answer is Script.HANG:
            await _forever()
        if isinstance(answer, BaseException):
            raise answer
        return answer


class FakeHost:
    """A GateHost in memory; ``calls`` logs (what, monotonic time) of every request."""

    name = "alpha"
    host_key = "SHA256:alpha-key"

    def __init__(
        self,
        boot_ids: Script,
        states: Script | None = None,
        commands: Callable[[list[str]], Awaitable[Completed]] | None = None,
    ) -> None:
        self._boot_ids = boot_ids
        self._states = states or Script("running")
        self._commands = commands
        self.calls: list[tuple[str, float]] = []

    def called(self) -> list[str]:
        return [what for what, _ in self.calls]

    async def read_boot_id(self, timeout: float) -> str | None:
        self.calls.append(("boot", time.monotonic()))
        return await self._boot_ids.next()  # type: ignore[return-value]

    async def system_state(self, timeout: float) -> str:
        self.calls.append(("state", time.monotonic()))
        return await self._states.next()  # type: ignore[return-value]

    async def run(self, argv: Sequence[str], timeout: float, max_output: int = 0) -> Completed:
        self.calls.append(("run", time.monotonic()))
        if self._commands is None:
            return Completed(tuple(argv), 0, "", "")
        return await self._commands(list(argv))


def command_check(*argv: str, **extra: object) -> Check:
    return CommandCheck.model_validate({"type": "command", "command": list(argv), **extra})


def policy(
    *,
    stable_passes: int = 2,
    poll_interval: float = 0.05,
    connect: float = 0.2,
    probe: float = 0.3,
    allow_degraded: bool = False,
) -> GatePolicy:
    return GatePolicy(
        allow_degraded=allow_degraded,
        timeouts=Timeouts(connect=connect, probe=probe),
        poll_interval=poll_interval,
        stable_passes=stable_passes,
    )


class Stop(Exception):
    """Raised from on_round to end a wait from the test."""


async def wait(
    host: FakeHost,
    rounds: list[GateRound],
    *,
    gate: GatePolicy,
    checks: Sequence[Check] = (),
    deadline_in: float = 10.0,
    on_round: Callable[[GateRound], None] | None = None,
) -> GateRound:
    async def record(result: GateRound) -> None:
        rounds.append(result)
        if on_round is not None:
            on_round(result)

    http = HttpClients()
    try:
        async with asyncio.timeout(GUARD):
            return await wait_until_healthy(
                GateTarget(host, "10.0.0.5", checks),
                http,
                boot_id_before=OLD,
                policy=gate,
                deadline=time.monotonic() + deadline_in,
                transient=ProbeFailed,
                on_round=record,
            )
    finally:
        await http.aclose()


async def test_gate_passes_only_after_stable_passes_consecutive_passing_rounds():
    host = FakeHost(Script(NEW))
    rounds: list[GateRound] = []
    result = await wait(host, rounds, gate=policy(stable_passes=3))
    assert len(rounds) == 3 and all(r.passed for r in rounds)
    assert result is rounds[-1]
    assert result.boot_id == NEW and result.host_key == "SHA256:alpha-key"
    assert result.probes == (Probe("boot id", True, NEW), Probe("system", True, "running"))


async def test_a_failing_round_restarts_the_streak():
    host = FakeHost(Script(NEW), states=Script("running", "starting", "running"))
    rounds: list[GateRound] = []
    await wait(host, rounds, gate=policy(stable_passes=2))
    assert [r.passed for r in rounds] == [True, False, True, True]
    assert rounds[1].first_failure == Probe("system", False, "starting")


async def test_a_boot_id_change_mid_streak_restarts_the_streak():
    host = FakeHost(Script(NEW, NEW, NEWER))
    rounds: list[GateRound] = []
    result = await wait(host, rounds, gate=policy(stable_passes=3))
    assert [r.boot_id for r in rounds] == [NEW, NEW, NEWER, NEWER, NEWER]
    assert all(r.passed for r in rounds)
    assert result.boot_id == NEWER


async def test_an_unchanged_boot_id_never_passes():
    host = FakeHost(Script(OLD))
    rounds: list[GateRound] = []
    with pytest.raises(GateNotPassed) as caught:
        await wait(host, rounds, gate=policy(stable_passes=1), deadline_in=0.5)
    unchanged = Probe("boot id", False, "unchanged: not rebooted yet")
    assert len(rounds) >= 2
    assert all(r.probes == (unchanged,) for r in rounds)
    assert caught.value.last is not None and caught.value.last.first_failure == unchanged


async def test_checks_are_not_probed_until_a_new_boot_id_is_read():
    host = FakeHost(Script(ProbeFailed("ssh: connection refused"), None, OLD, NEW))
    rounds: list[GateRound] = []
    await wait(host, rounds, gate=policy(stable_passes=1), checks=[command_check("app-ok")])
    assert [r.first_failure for r in rounds[:3]] == [
        Probe("ssh", False, "connection refused"),
        Probe("boot id", False, "unreadable or not a UUID"),
        Probe("boot id", False, "unchanged: not rebooted yet"),
    ]
    calls = host.called()
    assert calls[:4] == ["boot", "boot", "boot", "boot"]
    assert sorted(calls[4:]) == ["run", "state"]  # one round, concurrently


async def test_a_transient_error_is_a_failed_round_and_the_wait_goes_on():
    host = FakeHost(Script(ProbeFailed("ssh: timed out"), NEW))
    rounds: list[GateRound] = []
    result = await wait(host, rounds, gate=policy(stable_passes=1))
    assert rounds[0] == GateRound((Probe("ssh", False, "timed out"),), None, "SHA256:alpha-key")
    assert result.passed and len(rounds) == 2


async def test_a_non_transient_error_ends_the_wait_at_once():
    changed = HostKeyChanged("alpha: came back with a different SSH host key")
    host = FakeHost(Script(NEW, changed))
    rounds: list[GateRound] = []
    started = time.monotonic()
    with pytest.raises(HostKeyChanged) as caught:
        await wait(host, rounds, gate=policy(stable_passes=5), deadline_in=15)
    assert caught.value is changed
    assert host.called().count("boot") == 2 and len(rounds) == 1
    assert time.monotonic() - started < 5  # not retried until the deadline


async def test_deadline_reports_the_last_whole_rounds_failure_not_the_cut_round():
    answers = Script(Completed(("app-ok",), 1, "", "starting up\napp not ready\n"), Script.HANG)

    async def commands(argv: list[str]) -> Completed:
        return await answers.next()  # type: ignore[return-value]

    host = FakeHost(Script(NEW), commands=commands)
    rounds: list[GateRound] = []
    # The check's own budget (probe) is long, so the second round is cut by the deadline.
    gate = policy(stable_passes=1, probe=5.0)
    started = time.monotonic()
    with pytest.raises(GateNotPassed) as caught:
        await wait(host, rounds, gate=gate, checks=[command_check("app-ok")], deadline_in=0.6)
    assert str(caught.value) == "deadline reached"
    assert caught.value.last is rounds[-1]
    assert caught.value.last.first_failure == Probe(
        "command app-ok", False, "exit 1: app not ready"
    )
    assert len(rounds) == 1  # the round the deadline cut short is never reported
    assert host.called().count("run") == 2
    assert time.monotonic() - started < 0.6 + 3


async def test_a_hanging_check_is_cut_at_its_own_timeout_and_the_round_completes():
    async def commands(argv: list[str]) -> Completed:
        if argv == ["hangs"]:
            await _forever()
        return Completed(tuple(argv), 0, "", "")

    host = FakeHost(Script(NEW), commands=commands)
    checks = [command_check("hangs", timeout=0.2), command_check("fine")]
    http = HttpClients()
    started = time.monotonic()
    try:
        async with asyncio.timeout(GUARD):
            result = await gate_round(
                GateTarget(host, "10.0.0.5", checks),
                http,
                boot_id_before=OLD,
                policy=policy(probe=3.0),
                transient=ProbeFailed,
            )
    finally:
        await http.aclose()
    took = time.monotonic() - started
    assert result.probes == (
        Probe("boot id", True, NEW),
        Probe("system", True, "running"),
        Probe("command hangs", False, "no answer within 0.2s"),
        Probe("command fine", True, "exit 0"),
    )
    assert 0.2 * 0.9 <= took < 1.5  # its own 0.2 s, long before the 3 s probe bound


async def test_a_round_never_exceeds_the_round_timeout():
    # A host whose state query ignores its timeout: only the round's own bound can stop it.
    host = FakeHost(Script(NEW), states=Script(Script.HANG))
    gate = policy(connect=0.1, probe=0.1)
    limit = gate.timeouts.round
    rounds: list[GateRound] = []
    started = time.monotonic()

    def stop(_: GateRound) -> None:
        raise Stop

    with pytest.raises(Stop):
        await wait(host, rounds, gate=gate, deadline_in=15, on_round=stop)
    took = time.monotonic() - started
    assert rounds == [
        GateRound((Probe("gate", False, f"round took longer than {limit:g}s"),), None, None)
    ]
    assert limit * 0.9 <= took < limit + 2


async def test_rounds_are_at_least_poll_interval_apart():
    host = FakeHost(Script(NEW))
    rounds: list[GateRound] = []
    await wait(host, rounds, gate=policy(stable_passes=4, poll_interval=0.2))
    starts = [at for what, at in host.calls if what == "boot"]
    assert len(starts) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert all(0.2 * 0.95 <= gap < 0.2 + 1.5 for gap in gaps), gaps


async def test_a_machine_not_back_yet_is_asked_again_at_the_catch_up_interval():
    # Still on the old boot id (the reboot has not taken it down yet), then dark, then back:
    # not a whole poll_interval between those rounds, or detection would wait out one.
    host = FakeHost(Script(OLD, OLD, ProbeFailed("ssh: connection lost"), NEW))
    rounds: list[GateRound] = []
    started = time.monotonic()
    await wait(host, rounds, gate=policy(stable_passes=1, poll_interval=5.0))
    assert len(rounds) == 4
    assert time.monotonic() - started < 1.0


class SlowFirstRound(FakeHost):
    """A first round that spends ``delay`` before its boot id, as one reconnecting does."""

    def __init__(self, boot_ids: Script, delay: float) -> None:
        super().__init__(boot_ids)
        self._delay = delay

    async def read_boot_id(self, timeout: float) -> str | None:
        if not self.calls:
            await asyncio.sleep(self._delay)
        return await super().read_boot_id(timeout)


async def test_the_stability_window_counts_from_the_end_of_the_first_pass():
    host = SlowFirstRound(Script(NEW), delay=0.3)
    rounds: list[GateRound] = []
    await wait(host, rounds, gate=policy(stable_passes=2, poll_interval=0.2))
    first_probed = next(at for what, at in host.calls if what == "state")
    second_started = [at for what, at in host.calls if what == "boot"][1]
    assert second_started - first_probed >= 0.2 * 0.95


@pytest.mark.parametrize("allow_degraded", [True, False])
async def test_a_degraded_system_passes_only_when_allowed(allow_degraded):
    host = FakeHost(Script(NEW), states=Script("degraded"))
    rounds: list[GateRound] = []
    gate = policy(stable_passes=1, allow_degraded=allow_degraded)
    if allow_degraded:
        assert (await wait(host, rounds, gate=gate)).passed
    else:
        with pytest.raises(GateNotPassed) as caught:
            await wait(host, rounds, gate=gate, deadline_in=0.3)
        assert caught.value.last is not None
        assert caught.value.last.first_failure == Probe("system", False, "degraded")


async def _settled(host: FakeHost, attempts: int) -> GateRound:
    http = HttpClients()
    try:
        async with asyncio.timeout(GUARD):
            target = GateTarget(host, "10.0.0.5", ())
            return await probe_settled(target, http, policy(), ProbeFailed, attempts)
    finally:
        await http.aclose()


async def test_preflight_is_not_failed_by_one_round_that_timed_out_on_a_busy_machine():
    host = FakeHost(Script(ProbeFailed("ssh: timed out"), ProbeFailed("ssh: timed out"), NEW))
    result = await _settled(host, attempts=3)
    assert result.passed
    assert host.called().count("boot") == 3


async def test_preflight_fails_a_machine_that_fails_every_round_with_its_last_failure():
    host = FakeHost(Script(NEW), Script("starting", "starting", "maintenance"))
    result = await _settled(host, attempts=3)
    assert not result.passed
    assert result.first_failure == Probe("system", False, "maintenance")
    assert host.called().count("state") == 3  # no fourth round
