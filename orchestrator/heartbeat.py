"""A dead-man heartbeat: the external service alerts when a run's success ping is missing.

Nothing inside the controller can report a controller that lost power mid-run; a service
that expects a ping and alerts when it does not come can. Two protocols:

- healthchecks.io (and self-hosted Healthchecks): ``<url>/start`` when a run starts or
  resumes, ``<url>`` when it ends ``done`` and ``<url>/fail`` when it ends ``aborted``, both
  with the run summary as the POST body (shown in its event log).
- Uptime Kuma push monitors (``…/api/push/<token>``): ``status=up`` when a run starts or ends
  done, ``status=down`` when it aborts, with a one-line ``msg``.

The URL carries the check's token: it is shown masked and scrubbed from every message.
A failing or hanging ping is a warning; it never changes the run.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx

from orchestrator import report, secret_urls
from orchestrator.config import HeartbeatSettings
from orchestrator.errors import OrchestratorError
from orchestrator.hooks import EventKind, Hook, RunEvent
from orchestrator.notify import message

KUMA_PATH = "/api/push/"
KUMA_MSG_MAX = 250  # Uptime Kuma stores msg in a short column


@dataclass(frozen=True)
class Ping:
    method: str
    url: str
    params: dict[str, str] = field(default_factory=dict)
    body: str | None = None


def ping_for(url: str, event: RunEvent) -> Ping:
    """The request that tells the service what ``event`` means, in its protocol."""
    summary = event.summary
    started = event.kind is EventKind.RUN_STARTED
    ok = started or summary.state == "done"
    if KUMA_PATH in httpx.URL(url).path:
        if started:
            text = f"run {summary.run_id} {'resumed' if event.resumed else 'started'}"
        else:
            text = message(summary).title
        params = {"status": "up" if ok else "down", "msg": text[:KUMA_MSG_MAX], "ping": ""}
        return Ping("GET", url, params)
    base = url.rstrip("/")
    if started:
        return Ping("POST", f"{base}/start", body=f"run {summary.run_id} {summary.kind}")
    body = "\n".join(report.summary_lines(summary))
    return Ping("POST", base if ok else f"{base}/fail", body=body)


class HeartbeatHook:
    name = "heartbeat"

    def __init__(self, settings: HeartbeatSettings) -> None:
        self.settings = settings
        self.timeout = settings.timeout

    def wants(self, event: RunEvent) -> bool:
        return event.kind in (EventKind.RUN_STARTED, EventKind.RUN_FINISHED)

    def url(self) -> str:
        if self.settings.url is not None:
            return self.settings.url.get_secret_value()
        assert self.settings.url_file is not None  # hooks() builds no hook otherwise
        return secret_urls.read_first(self.settings.url_file, "heartbeat.url_file")

    async def __call__(self, event: RunEvent) -> None:
        url = self.url()
        ping = ping_for(url, event)
        try:
            await send(ping, self.timeout)
        except OrchestratorError as exc:
            raise OrchestratorError(secret_urls.redact(str(exc), [url])) from None


async def send(ping: Ping, timeout: float) -> int:
    """Send one ping within ``timeout`` (a hard bound: a server that trickles its answer is
    cut off too); returns the HTTP status, raises OrchestratorError on failure."""
    shown = secret_urls.mask(ping.url)
    params = httpx.URL(ping.url).params.merge(ping.params)
    try:
        async with asyncio.timeout(timeout), httpx.AsyncClient(timeout=timeout) as client:
            response = await client.request(
                ping.method,
                httpx.URL(ping.url).copy_with(params=params),
                content=None if ping.body is None else ping.body.encode(),
            )
    except TimeoutError:
        raise OrchestratorError(f"{shown}: no answer within {timeout:g}s") from None
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise OrchestratorError(f"{shown}: {reason}") from None
    if response.status_code >= 400:
        raise OrchestratorError(f"{shown}: HTTP {response.status_code}")
    return response.status_code


def hooks(settings: HeartbeatSettings) -> list[Hook]:
    if settings.url is None and settings.url_file is None:
        return []
    return [HeartbeatHook(settings)]
