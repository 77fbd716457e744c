"""``type: http`` — an HTTP(S) request from the controller answers with the expected status.

httpx pitfalls handled here (see STYLE.md): its timeout applies per phase, so the gate also
bounds the whole probe; redirects are not followed; proxies from the environment are ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

import httpx
from pydantic import Field

from health_checks.base import Check, Probe, ProbeContext
from health_checks.schema import HttpUrl


class HttpCheck(Check):
    type: Literal["http"] = Field(
        default="http",
        description="Check type: an HTTP(S) request answers as expected; `http` when omitted.",
        examples=["http"],
    )
    url: HttpUrl = Field(
        description="URL fetched from the controller with GET; redirects are not followed.",
        examples=["http://grey-area.local:8080/health"],
    )
    status: Annotated[int, Field(ge=100, le=599)] = Field(
        200, description="The status code that counts as healthy.", examples=[200]
    )
    body_contains: str | None = Field(
        None, description="A string the response body must contain.", examples=["ok"]
    )
    verify_tls: bool = Field(
        True, description="Verify the certificate of an https URL.", examples=[True]
    )

    def describe(self, address: str) -> str:
        return f"http {self.url}"

    async def probe(self, ctx: ProbeContext) -> Probe:
        name = self.describe(ctx.address)
        budget = self.budget(ctx.timeouts)
        try:
            response = await ctx.http.get(self.verify_tls).get(
                self.url, timeout=httpx.Timeout(budget)
            )
        except httpx.HTTPError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return Probe(name, False, reason)
        if response.status_code != self.status:
            return Probe(name, False, f"HTTP {response.status_code} (want {self.status})")
        if self.body_contains is not None and self.body_contains not in response.text:
            return Probe(name, False, f"body lacks {self.body_contains!r}")
        return Probe(name, True, f"HTTP {response.status_code}")
