"""HTTP health probes.

httpx pitfalls handled here (see STYLE.md): its timeout applies per phase, so the whole probe is
also bounded with ``asyncio.timeout``; ``trust_env=False`` keeps proxy variables away from LAN
probes; redirects are not followed, so a check sees exactly what the service answered.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx

from health_checks.gate import Probe

if TYPE_CHECKING:
    from orchestrator.config import HttpCheck


class HttpProber:
    """One pair of clients per run (connection pools are reused across polls)."""

    def __init__(self) -> None:
        self._clients: dict[bool, httpx.AsyncClient] = {}

    def _client(self, verify_tls: bool) -> httpx.AsyncClient:
        if verify_tls not in self._clients:
            self._clients[verify_tls] = httpx.AsyncClient(
                trust_env=False,
                follow_redirects=False,
                verify=verify_tls,
                # No keep-alive: after a reboot a pooled connection is dead, and a fresh
                # connection per probe is what proves the service is listening again.
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        return self._clients[verify_tls]

    async def probe(self, check: HttpCheck) -> Probe:
        name = f"http {check.url}"
        try:
            async with asyncio.timeout(check.timeout):
                response = await self._client(check.verify_tls).get(
                    check.url, timeout=httpx.Timeout(check.timeout)
                )
        except TimeoutError:
            return Probe(name, False, f"no answer within {check.timeout:g}s")
        except httpx.HTTPError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return Probe(name, False, reason)
        if response.status_code != check.status:
            return Probe(name, False, f"HTTP {response.status_code} (want {check.status})")
        if check.body_contains is not None and check.body_contains not in response.text:
            return Probe(name, False, f"body lacks {check.body_contains!r}")
        return Probe(name, True, f"HTTP {response.status_code}")

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
