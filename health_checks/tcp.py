"""``type: tcp`` — a TCP connect from the controller to a port of the machine succeeds."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Literal

from pydantic import Field

from health_checks.base import Check, Probe, ProbeContext
from health_checks.schema import HostName, Port
from health_checks.text import from_host


class TcpCheck(Check):
    type: Literal["tcp"] = Field(
        description="Check type: a TCP port accepts a connection.", examples=["tcp"]
    )
    port: Port = Field(description="The port that must accept a connection.", examples=[5432])
    host: HostName | None = Field(
        default=None,
        description="Where to connect; the machine's own `host` when omitted.",
        examples=["db.grey-area.local"],
    )

    def describe(self, address: str) -> str:
        return from_host(f"tcp {self.host or address}:{self.port}", 300)

    async def probe(self, ctx: ProbeContext) -> Probe:
        name = self.describe(ctx.address)
        try:
            _, writer = await asyncio.open_connection(self.host or ctx.address, self.port)
        except ConnectionRefusedError:
            return Probe(name, False, "connection refused")
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
            return Probe(name, False, from_host(reason, 300))
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return Probe(name, True, "connected")
