"""``type: http`` — an HTTP(S) request from the controller answers with the expected status.

httpx pitfalls handled here (see STYLE.md): its timeout applies per phase, so the gate also
bounds the whole probe; redirects are not followed; proxies from the environment are ignored.

The body is streamed, never loaded: without ``body_contains`` it is not read at all, and with
it at most ``BODY_LIMIT`` bytes are read (stopping as soon as the text is found), so a huge or
endless body costs neither memory nor more than that much reading. The body is asked for
uncompressed (``Accept-Encoding: identity``) and searched as sent: a compression bomb is never
expanded.
"""

from __future__ import annotations

import codecs
from typing import Annotated, Literal

import httpx
from pydantic import Field

from health_checks.base import Check, Probe, ProbeContext
from health_checks.schema import HttpUrl
from health_checks.text import from_host

# The most of a body read for `body_contains`.
BODY_LIMIT = 64 * 1024


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
        None,
        description="A string the response body must contain, wholly within its first 64 KiB "
        "(the rest of the body is never read).",
        examples=["ok"],
    )
    verify_tls: bool = Field(
        True, description="Verify the certificate of an https URL.", examples=[True]
    )

    def describe(self, address: str) -> str:
        return from_host(f"http {self.url}")

    async def probe(self, ctx: ProbeContext) -> Probe:
        name = self.describe(ctx.address)
        budget = self.budget(ctx.timeouts)
        client = ctx.http.get(self.verify_tls)
        try:
            async with client.stream(
                "GET",
                self.url,
                timeout=httpx.Timeout(budget),
                headers={"Accept-Encoding": "identity"},
            ) as response:
                if response.status_code != self.status:
                    return Probe(name, False, f"HTTP {response.status_code} (want {self.status})")
                if self.body_contains is not None:
                    missing = await _body_lacks(response, self.body_contains)
                    if missing is not None:
                        return Probe(name, False, missing)
                return Probe(name, True, f"HTTP {response.status_code}")
        except httpx.HTTPError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return Probe(name, False, from_host(reason, 300))


async def _body_lacks(response: httpx.Response, wanted: str) -> str | None:
    """None when ``wanted`` is in the first ``BODY_LIMIT`` bytes of the body, else why not."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return from_host(f"body is {encoding}-encoded although identity was asked", 200)
    try:
        decoder = codecs.getincrementaldecoder(response.encoding or "utf-8")(errors="replace")
    except LookupError:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = ""
    read = 0
    async for chunk in response.aiter_raw():
        chunk = chunk[: BODY_LIMIT - read]
        read += len(chunk)
        start = max(0, len(text) - len(wanted) + 1)
        text += decoder.decode(chunk, final=read >= BODY_LIMIT)
        if wanted in text[start:]:
            return None
        if read >= BODY_LIMIT:
            return f"body lacks {wanted!r} in its first {BODY_LIMIT} bytes"
    text += decoder.decode(b"", final=True)
    if wanted in text:
        return None
    return f"body lacks {wanted!r}"
