"""The exact argv every host receives over a whole `orchestrator run`, as the hosts saw it.

The real CLI runs as a subprocess against the simulated lab. A gate round is one boot id read
followed, once the boot id is new, by the system state and the checks at once: within a round
those later commands are sorted (they run concurrently), and consecutive identical rounds are
folded into one (how many the gate polls depends on timing; how many passed is asserted apart).
"""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

import pytest

from orchestrator import generations, remote
from orchestrator.demo.simlab import Behaviour, SimHost
from tests.conftest import latest_run, orchestrator, write_config

BOOT_ID = ["cat", "/proc/sys/kernel/random/boot_id"]
STATE = ["systemctl", "is-system-running"]
UNIT = ["systemctl", "is-active", "nginx.service"]
REBOOT = ["systemctl", "reboot"]
SUDO_REBOOT = ["sudo", "-n", "systemctl", "reboot"]
# The generation facts script, as sshd receives it (words encoded, decoded by sh from stdin).
FACTS = shlex.split(remote.remote_command(generations.ARGV)[0])


class GoesDarkAfterOneMoreBootIdRead(SimHost):
    """Shuts down only once it has answered one more boot id read after the reboot request.

    A real machine may or may not still answer the gate's first round on its old boot id;
    this one always does, so the sequence below is exact instead of "zero or more".
    """

    _old_boot_id_read: asyncio.Event | None = None

    async def before_command(self, argv: list[str]) -> bool:
        if argv[-2:] == REBOOT:
            self._old_boot_id_read = asyncio.Event()
        elif argv == BOOT_ID and self._rebooting is not None and self._old_boot_id_read:
            self._old_boot_id_read.set()
        return True

    async def reboot(self) -> None:
        try:
            assert self._old_boot_id_read is not None
            await self._old_boot_id_read.wait()
            self._old_boot_id_read = None
            await self.go_dark()
            await asyncio.sleep(self.behaviour.boot_time)
            await self.boot()
        finally:
            self._rebooting = None


def rounds_of(commands: list[list[str]]) -> list[list[list[str]]]:
    """Split at each boot id read; sort what follows it within its round."""
    rounds: list[list[list[str]]] = []
    for argv in commands:
        if argv == BOOT_ID or not rounds:
            rounds.append([argv])
        else:
            rounds[-1].append(argv)
    return [[first, *sorted(rest)] for first, *rest in rounds]


def folded(rounds: list[list[list[str]]]) -> list[list[list[str]]]:
    return [r for i, r in enumerate(rounds) if i == 0 or rounds[i - 1] != r]


@pytest.mark.parametrize(("user", "reboot"), [("root", REBOOT), ("deploy", SUDO_REBOOT)])
def test_each_host_receives_exactly_this_argv_sequence_over_a_run(
    tmp_path: Path, make_lab, user: str, reboot: list[str]
):
    names = ["alpha", "bravo"]
    lab = make_lab(
        names,
        behaviour=Behaviour(boot_time=0.3, units={"nginx.service": "active"}),
        host_class=GoesDarkAfterOneMoreBootIdRead,
    )
    data = lab.lab.config(tmp_path / "state", ssh={"user": user})
    for machine in data["machines"].values():
        machine["checks"] = [{"type": "systemd", "units": ["nginx.service"]}]
    config = write_config(tmp_path / "lab.yaml", data)

    result = orchestrator(config, "run", timeout=90)

    assert result.returncode == 0, result.stderr
    assert latest_run(tmp_path / "state").state == "done"
    for name in names:
        commands = lab.lab.hosts[name].commands
        # The generation facts are read once, before the reboot: in rebooting, or (a machine
        # after the first) already during the stability window of the one before it, beside
        # that machine's rounds (Engine._start_early). The rest is exact either way.
        assert commands.count(FACTS) == 1, (name, commands)
        assert commands.index(FACTS) < next(i for i, c in enumerate(commands) if c == reboot)
        rounds = rounds_of([argv for argv in commands if argv != FACTS])
        assert folded(rounds) == [
            # preflight: one round, nothing touched (and, folded into it, the fleet
            # interlock's round before each machine ahead of this one is rebooted)
            [BOOT_ID, UNIT, STATE],
            # rebooting: the boot id to compare against (the generation facts, above: the
            # simulated hosts are not NixOS, so none are read after the reboot), the reboot
            [BOOT_ID, reboot],
            # verifying: the first round still sees the old boot id, so nothing else is asked
            [BOOT_ID],
            # ...then rounds on the new boot id until `stable_passes` in a row pass (and,
            # folded into them, the interlock's round before each machine after this one)
            [BOOT_ID, UNIT, STATE],
        ], (name, lab.lab.hosts[name].commands)
        at = rounds.index([BOOT_ID, reboot])
        before, after = rounds[:at], rounds[at + 2 :]
        position = names.index(name)
        assert before == [[BOOT_ID, UNIT, STATE]] * (1 + position)
        # The interlock before each later machine asks this one again; the one right after
        # it may have been asked during this one's stability window, this one proven by its
        # own gate and left out (Engine._start_early).
        interlock_after = max(0, len(names) - 2 - position)
        assert all(r == [BOOT_ID, UNIT, STATE] for r in after)
        assert len(after) - interlock_after >= data["reboot"]["stable_passes"]
