"""Notifications through apprise: the owner hears how a run ended where they already read.

apprise knows 100+ services behind one URL syntax (``ntfy://``, ``tgram://``, ``mailto://``,
``json://`` …), which homelab owners already configure for other tools. It is synchronous
and its plugins bound only each socket read, so a receiver that trickles bytes, or a plugin
that hangs, could hold a thread — and a thread the interpreter must join at exit. So the
sending happens in a child process (``python -m orchestrator.notify``) started by the process
runner: the timeout is a hard bound (TERM, then KILL), and the run's own process never waits
on a stranger's server.

The URLs carry tokens. Each reaches its own child on stdin (never argv, which other users can
read in ``/proc``), and every line we write names a URL only by its masked form
(``ntfy://***``), as borgmatic masks its monitoring URLs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator import process, report, secret_urls
from orchestrator.config import NotifySettings
from orchestrator.errors import OrchestratorError
from orchestrator.hooks import EventKind, Hook, RunEvent
from orchestrator.report import RunSummary

log = logging.getLogger("orchestrator")

TITLE_PREFIX = "lab-orchestrator"
# What the child may print: one JSON line; anything longer is not ours.
CHILD_OUTPUT_MAX = 64 * 1024


@dataclass(frozen=True)
class Message:
    title: str
    body: str


@dataclass(frozen=True)
class Delivery:
    """The result for one URL, named only by its masked form."""

    url: str  # masked
    ok: bool
    detail: str


def message(summary: RunSummary) -> Message:
    """Title: the outcome and the machine; body: the run summary, one line per machine."""
    if summary.state == "aborted":
        where = f"at {summary.failed_machine}" if summary.failed_machine else "before any reboot"
        title = f"{TITLE_PREFIX}: ABORTED {where}"
    else:
        count = len(summary.machines)
        noun = "machine" if count == 1 else "machines"
        title = f"{TITLE_PREFIX}: {summary.state}, {count} {noun} in "
        title += report.human_duration(summary.duration_s)
    return Message(title, "\n".join(report.summary_lines(summary)))


def read_urls(settings: NotifySettings) -> list[str]:
    """The configured URLs and those of ``urls_file`` (one per line, ``#`` comments).

    The file is read at each run: it is a systemd credential, present only inside the unit.
    A file that cannot be read is an OrchestratorError naming the file, never a URL."""
    urls = [url.get_secret_value() for url in settings.urls]
    if settings.urls_file is not None:
        urls += secret_urls.read_lines(settings.urls_file, "notify.urls_file")
    return urls


class NotifyHook:
    """Sends one notification per run ending listed in ``notify.on``."""

    name = "notify"

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings
        # The child's own bound, plus its start-up (importing apprise takes ~0.5 s).
        self.timeout = settings.timeout + 5.0

    def wants(self, event: RunEvent) -> bool:
        return event.kind is EventKind.RUN_FINISHED and event.summary.state in self.settings.on

    async def __call__(self, event: RunEvent) -> None:
        urls = read_urls(self.settings)
        if not urls:
            return
        deliveries = await send(urls, message(event.summary), self.timeout)
        for delivery in deliveries:
            if delivery.ok:
                log.info("notify: sent to %s", delivery.url)
            else:
                log.warning("warning: notify: %s: %s", delivery.url, delivery.detail)


def hooks(settings: NotifySettings) -> list[Hook]:
    if not settings.urls and settings.urls_file is None:
        return []
    return [NotifyHook(settings)]


async def send(urls: Sequence[str], note: Message, timeout: float) -> list[Delivery]:
    """Send ``note`` to every URL at once, each in its own child bounded by ``timeout``; one
    Delivery per URL, in order. A failing or silent service is a Delivery with ok=False."""
    return list(await asyncio.gather(*(_send_one(url, note, timeout) for url in urls)))


async def _send_one(url: str, note: Message, timeout: float) -> Delivery:
    masked = secret_urls.mask(url)
    request = {"url": url, "title": note.title, "body": note.body}
    try:
        result = await process.run(
            [sys.executable, "-m", "orchestrator.notify"],
            timeout=timeout,
            input=json.dumps(request).encode(),
            label="notify",
            max_output=CHILD_OUTPUT_MAX,
        )
    except process.ProcessFailed as exc:
        if exc.returncode is None and "within" in str(exc):
            return Delivery(masked, False, f"no answer within {timeout:g}s")
        return Delivery(masked, False, secret_urls.redact(str(exc), [url]))
    try:
        answer = json.loads(result.stdout.strip().splitlines()[-1])
        ok, detail = bool(answer["ok"]), str(answer["detail"])
    except (ValueError, KeyError, TypeError, IndexError):
        # Its error output may quote the URL (a traceback): only the exit code is shown.
        return Delivery(masked, False, f"the sender exited {result.returncode} without an answer")
    return Delivery(masked, ok, secret_urls.redact(detail, [url]))


# -- the child: python -m orchestrator.notify ---------------------------------------------------


def _child_send(url: str, title: str, body: str) -> tuple[bool, str]:
    import apprise

    messages: list[str] = []
    handler = _Collect(messages)
    apprise_log = logging.getLogger("apprise")
    apprise_log.addHandler(handler)
    try:
        notifier = apprise.Apprise()
        if not notifier.add(url):
            return False, "not a URL apprise knows (check the scheme and its fields)"
        if notifier.notify(title=title, body=body):
            return True, "sent"
        reason = next((m for m in reversed(messages) if m), "the service refused it")
        return False, reason
    finally:
        apprise_log.removeHandler(handler)


class _Collect(logging.Handler):
    """apprise says why a send failed only in its log: keep its warnings for the answer."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


def child_main() -> int:
    request = json.load(sys.stdin)
    # apprise's own log lines may quote the URL: they go nowhere but into the answer, which
    # the parent redacts.
    logging.getLogger("apprise").propagate = False
    try:
        ok, detail = _child_send(request["url"], request["title"], request["body"])
    except Exception as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    print(json.dumps({"ok": ok, "detail": " ".join(detail.split())[:500]}), flush=True)
    return 0


def notify_test(settings: NotifySettings, timeout: float | None = None) -> list[Delivery]:
    """``orchestrator notify-test``: one test message to every configured URL."""
    urls = read_urls(settings)
    if not urls:
        raise OrchestratorError(
            "notify: no URLs configured (notify.urls or notify.urls_file); nothing to test"
        )
    note = Message(
        f"{TITLE_PREFIX}: test notification",
        "This is a test from `orchestrator notify-test`. Run endings are sent for: "
        + ", ".join(settings.on),
    )
    return asyncio.run(send(urls, note, timeout or settings.timeout + 5.0))


if __name__ == "__main__":
    sys.exit(child_main())
