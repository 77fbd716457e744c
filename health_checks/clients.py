"""Clients a run's probes share, created on first use and closed at the end of the run."""

from __future__ import annotations

import httpx


class HttpClients:
    """One httpx client per TLS setting for the whole run (httpx pitfalls, STYLE.md)."""

    def __init__(self) -> None:
        self._clients: dict[bool, httpx.AsyncClient] = {}

    def get(self, verify_tls: bool) -> httpx.AsyncClient:
        if verify_tls not in self._clients:
            self._clients[verify_tls] = httpx.AsyncClient(
                trust_env=False,  # proxy variables must not apply to LAN probes
                follow_redirects=False,  # a check sees exactly what the service answered
                verify=verify_tls,
                # No keep-alive: after a reboot a pooled connection is dead, and a fresh
                # connection per probe is what proves the service is listening again.
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        return self._clients[verify_tls]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
