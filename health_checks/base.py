"""What every check type shares: the probe result, the host a check may run commands on,
the context a probe gets, the base model of a check, and the timeout model of the gate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pydantic import Field

from health_checks.schema import ConfigModel, PositiveDuration

if TYPE_CHECKING:
    from health_checks.clients import HttpClients

# Scheduling slack on a busy controller: a probe that uses its whole budget reports its own
# failure ("no answer within 2s") rather than the round's "timed out".
ROUND_SLACK = 0.5


@dataclass(frozen=True)
class Timeouts:
    """The one timeout model of every probe and round; everything else derives from it.

    - ``connect`` (``ssh.connect_timeout``) bounds one connect: TCP, SSH handshake and login.
    - ``probe`` (``reboot.probe_timeout``) bounds one probe once connected: one command over
      the open connection, one HTTP request, one TCP connect. A check's own ``timeout`` is its
      probe bound and must fit in ``probe`` (the config loader rejects one that does not).
    - ``command`` = connect + probe is the single deadline of one remote command, connecting
      first when the connection is not open (``SshHost.run``).
    - ``round`` = connect + 2 x probe (+ slack) bounds one gate round: connect and read the
      boot id, then the system state and every check at once.
    """

    connect: float
    probe: float

    @property
    def command(self) -> float:
        return self.connect + self.probe

    @property
    def round(self) -> float:
        return self.connect + 2 * self.probe + ROUND_SLACK


@dataclass(frozen=True)
class Probe:
    name: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {self.detail}"


class CommandResult(Protocol):
    @property
    def returncode(self) -> int: ...
    @property
    def stdout(self) -> str: ...
    @property
    def stderr(self) -> str: ...


class CommandHost(Protocol):
    """A machine the gate can run a command on: over SSH, or the controller itself."""

    @property
    def name(self) -> str: ...

    async def run(
        self, argv: Sequence[str], timeout: float, max_output: int = ...
    ) -> CommandResult: ...


@dataclass(frozen=True)
class ProbeContext:
    """What one probe may use. ``address`` is how the controller reaches the machine (its
    ``host``, or ``localhost`` for the controller itself); ``transient`` is the exception type
    of "not reachable yet" that a probe turns into a failed ``Probe``."""

    host: CommandHost
    address: str
    http: HttpClients
    timeouts: Timeouts
    transient: type[Exception]


class Check(ConfigModel):
    """The base of every check type. A type is one module under ``health_checks/`` holding a
    subclass with ``type: Literal["<name>"]`` and its ``probe``, registered in ``registry``."""

    type: str
    timeout: PositiveDuration | None = Field(
        default=None,
        description="Bound on this probe; at most `reboot.probe_timeout`, which is the default.",
        examples=["2s"],
    )

    def budget(self, timeouts: Timeouts) -> float:
        return self.timeout if self.timeout is not None else timeouts.probe

    def describe(self, address: str) -> str:
        """The probe's name in status and logs, e.g. ``tcp 10.0.0.5:5432``."""
        raise NotImplementedError

    async def probe(self, ctx: ProbeContext) -> Probe:
        raise NotImplementedError
