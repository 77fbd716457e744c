"""Notification and heartbeat plumbing without a lab: secret URLs masked and scrubbed, the
credential files, each protocol's requests as a real loopback receiver gets them, and the
notification text."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from orchestrator import heartbeat, notify, secret_urls
from orchestrator.config import HeartbeatSettings, NotifySettings, parse_config
from orchestrator.demo.receiver import closed_port, receiver
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.hooks import EventKind, RunEvent
from orchestrator.report import MachineSummary, RunSummary


def machine(name: str, outcome: str, error: str | None = None) -> MachineSummary:
    return MachineSummary(
        name=name,
        local=False,
        outcome=outcome,
        boot_id_before="0" * 32 if outcome != "untouched" else None,
        boot_id_after="1" * 32 if outcome == "healthy" else None,
        reboot_requested_at=None,
        healthy_at=None,
        reboot_to_healthy_s=41.0 if outcome == "healthy" else None,
        error=error,
        last_failing_probe=None,
    )


ABORTED = RunSummary(
    run_id=7,
    kind="nightly",
    state="aborted",
    started_at=None,
    finished_at=None,
    duration_s=372.0,
    error="grey-area did not pass the health gate within 900s",
    failed_machine="grey-area",
    machines=(
        machine("sleeper-service", "healthy"),
        machine("grey-area", "failed", "grey-area did not pass the health gate within 900s"),
        machine("reverse-proxy", "untouched"),
    ),
)
DONE = RunSummary(
    run_id=8,
    kind="nightly",
    state="done",
    started_at=None,
    finished_at=None,
    duration_s=372.0,
    error=None,
    failed_machine=None,
    machines=tuple(machine(n, "healthy") for n in ("a", "b", "c", "d")),
)


# -- masking ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hc-ping.com/0d2b4f4e-5a4c-4a8e-9a56-2a6c2f3b9b10", "https://hc-ping.com/***"),
        ("json://user:pw@10.0.0.5:8080/hook", "json://10.0.0.5/***"),
        ("tgram://123456:AAEsecretbottoken/987654", "tgram://***"),
        ("ntfy://ntfy.sh/my-secret-topic", "ntfy://***"),
        ("mailto://me:app-password@gmail.com", "mailto://***"),
    ],
)
def test_a_url_is_shown_by_its_scheme_and_only_an_address_host(url, shown):
    assert secret_urls.mask(url) == shown


def test_redact_scrubs_every_token_sized_part_of_every_url():
    urls = [
        "tgram://123456:AAEsecretbottoken/987654321",
        "https://kuma.lan/api/push/Xy12Ab34Cd?status=up&msg=OK",
    ]
    text = (
        "failed for 123456:AAEsecretbottoken chat 987654321 and "
        "https://kuma.lan/api/push/Xy12Ab34Cd?status=up&msg=OK (token Xy12Ab34Cd)"
    )
    scrubbed = secret_urls.redact(text, urls)
    for part in ("AAEsecretbottoken", "987654321", "Xy12Ab34Cd", "kuma.lan/api"):
        assert part not in scrubbed
    assert scrubbed.startswith("failed for ***")


def test_credential_file_errors_name_the_key_and_file_never_a_url(tmp_path):
    missing = tmp_path / "absent"
    with pytest.raises(OrchestratorError, match=rf"notify.urls_file: cannot read {missing}: "):
        secret_urls.read_lines(missing, "notify.urls_file")
    bad = tmp_path / "bad"
    bad.write_text("# comment\njson://ok/one\nnot a url with-secret-xyz\n")
    with pytest.raises(OrchestratorError) as error:
        secret_urls.read_lines(bad, "notify.urls_file")
    assert "URL 2 is not of the form" in str(error.value)
    assert "with-secret-xyz" not in str(error.value)
    empty = tmp_path / "empty"
    empty.write_text("\n# nothing\n")
    with pytest.raises(OrchestratorError, match="holds no URL"):
        secret_urls.read_first(empty, "heartbeat.url_file")


def test_urls_file_adds_to_the_configured_urls_skipping_blanks_and_comments(tmp_path):
    urls_file = tmp_path / "urls"
    urls_file.write_text("# phone\n  ntfy://ntfy.sh/a-topic  \n\njson://127.0.0.1/x\n")
    settings = NotifySettings.model_validate(
        {"urls": ["mailto://me:pw@example.org"], "urls_file": str(urls_file)}
    )
    assert notify.read_urls(settings) == [
        "mailto://me:pw@example.org",
        "ntfy://ntfy.sh/a-topic",
        "json://127.0.0.1/x",
    ]


# -- the notification -------------------------------------------------------------------------


def test_the_title_names_the_outcome_and_the_machine_and_the_body_is_the_summary():
    aborted = notify.message(ABORTED)
    assert aborted.title == "lab-orchestrator: ABORTED at grey-area"
    assert "grey-area: failed" in aborted.body
    assert "sleeper-service: healthy" in aborted.body
    assert "reverse-proxy: untouched" in aborted.body
    done = notify.message(DONE)
    assert done.title == "lab-orchestrator: done, 4 machines in 6m12s"


def test_notify_sends_only_the_endings_listed_in_on():
    hook = notify.NotifyHook(NotifySettings.model_validate({"urls": ["json://x/y"]}))
    assert hook.wants(RunEvent(EventKind.RUN_FINISHED, ABORTED))
    assert not hook.wants(RunEvent(EventKind.RUN_FINISHED, DONE))
    assert not hook.wants(RunEvent(EventKind.RUN_STARTED, ABORTED))
    both = notify.NotifyHook(
        NotifySettings.model_validate({"urls": ["json://x/y"], "on": ["done"]})
    )
    assert both.wants(RunEvent(EventKind.RUN_FINISHED, DONE))
    assert not both.wants(RunEvent(EventKind.RUN_FINISHED, ABORTED))


def test_a_json_notification_arrives_and_a_dead_receiver_is_one_failed_delivery():
    with receiver() as got:
        good = got.url("/hook/secret-token-1", "json")
        dead = f"json://127.0.0.1:{closed_port()}/hook/secret-token-2"
        deliveries = asyncio.run(notify.send([good, dead], notify.message(ABORTED), timeout=30))
        [arrived] = got.received("/hook/")
    assert arrived.json()["title"] == "lab-orchestrator: ABORTED at grey-area"
    assert [(d.url, d.ok) for d in deliveries] == [
        ("json://127.0.0.1/***", True),
        ("json://127.0.0.1/***", False),
    ]
    assert "secret-token" not in deliveries[1].detail


# -- the heartbeat ----------------------------------------------------------------------------


def ping(settings: dict[str, object], event: RunEvent) -> None:
    asyncio.run(heartbeat.HeartbeatHook(HeartbeatSettings.model_validate(settings))(event))


def test_healthchecks_protocol_start_success_and_fail_with_the_summary_as_body():
    with receiver() as got:
        check = str(uuid.uuid4())
        settings = {"url": got.url(f"/{check}")}
        ping(settings, RunEvent(EventKind.RUN_STARTED, DONE))
        ping(settings, RunEvent(EventKind.RUN_FINISHED, DONE))
        ping(settings, RunEvent(EventKind.RUN_STARTED, ABORTED, resumed=True))
        ping(settings, RunEvent(EventKind.RUN_FINISHED, ABORTED))
        requests = got.received()
    assert [(r.method, r.path) for r in requests] == [
        ("POST", f"/{check}/start"),
        ("POST", f"/{check}"),
        ("POST", f"/{check}/start"),
        ("POST", f"/{check}/fail"),
    ]
    assert b"grey-area: failed" in requests[3].body


def test_uptime_kuma_push_gets_status_up_or_down_and_a_message(tmp_path):
    with receiver() as got:
        url_file = tmp_path / "heartbeat-url"
        url_file.write_text(got.url("/api/push/Xy12Ab34Cd?status=up&msg=OK&ping=") + "\n")
        settings = {"url_file": str(url_file)}
        ping(settings, RunEvent(EventKind.RUN_STARTED, ABORTED))
        ping(settings, RunEvent(EventKind.RUN_FINISHED, ABORTED))
        ping(settings, RunEvent(EventKind.RUN_FINISHED, DONE))
        requests = got.received("/api/push/Xy12Ab34Cd")
    assert [(r.method, r.query["status"]) for r in requests] == [
        ("GET", "up"),
        ("GET", "down"),
        ("GET", "up"),
    ]
    assert requests[0].query["msg"] == "run 7 started"
    assert requests[1].query["msg"] == "lab-orchestrator: ABORTED at grey-area"


@pytest.mark.parametrize("mode", ["error", "hang"])
def test_a_failing_ping_raises_one_masked_line(mode):
    with receiver(mode=mode) as got:
        url = got.url(f"/{uuid.uuid4()}")
        settings = {"url": url, "timeout": "1s"}
        with pytest.raises(OrchestratorError) as error:
            ping(settings, RunEvent(EventKind.RUN_STARTED, DONE))
    message = str(error.value)
    assert message.startswith("http://127.0.0.1/***: ")
    assert ("HTTP 500" if mode == "error" else "no answer within 1s") in message
    assert url.rsplit("/", 1)[1] not in message


def test_heartbeat_url_and_url_file_together_are_refused():
    text = "heartbeat: {url: 'https://hc-ping.com/x', url_file: /run/x}\nmachines: {a: {host: a}}\n"
    with pytest.raises(ConfigError, match="heartbeat: set url or url_file, not both"):
        parse_config(Path("lab.yaml"), text)


def test_notify_on_is_a_key_not_a_yaml_boolean():
    text = "notify: {urls: ['json://x/y'], on: [aborted, done]}\nmachines: {a: {host: a}}\n"
    assert parse_config(Path("lab.yaml"), text).settings.notify.on == ["aborted", "done"]


@pytest.mark.parametrize("exact", [True, False])
def test_plain_on_off_yes_no_keys_are_names_in_both_yaml_loaders(exact):
    from orchestrator.paths import load_yaml

    text = "notify: {on: [done], off: 1, yes: 2, no: 3, 'true': 4}\nvalues: [on, yes]\n"
    loaded = load_yaml(Path("lab.yaml"), text, exact=exact)
    assert loaded == {
        "notify": {"on": ["done"], "off": 1, "yes": 2, "no": 3, "true": 4},
        "values": [True, True],  # values keep YAML 1.1's booleans
    }
