"""Check plug-ins: every registered type loads from YAML, and each probe maps what it sees
(a socket, an HTTP answer, a command's exit code and output) to the right verdict."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import yaml

from health_checks.base import Check, Probe, ProbeContext, Timeouts
from health_checks.clients import HttpClients
from health_checks.command import CommandCheck
from health_checks.http import HttpCheck
from health_checks.registry import CHECK_TYPES
from health_checks.systemd import SystemdCheck
from health_checks.tcp import TcpCheck
from orchestrator.config import parse_config
from orchestrator.errors import ConfigError
from orchestrator.process import Completed
from orchestrator.remote import ProbeFailed

PATH = Path("lab.yaml")

# One minimal entry per registered type; a type added without one here fails the first test.
EXAMPLES: dict[str, dict[str, object]] = {
    "http": {"type": "http", "url": "http://alpha.local:8080/health", "body_contains": "ok"},
    "tcp": {"type": "tcp", "port": 5432},
    "command": {"type": "command", "command": ["systemctl", "is-active", "--quiet", "nginx"]},
    "systemd": {"type": "systemd", "units": ["nginx.service", "postgresql.service"]},
}
DESCRIBED = {
    "http": "http http://alpha.local:8080/health",
    "tcp": "tcp 10.0.0.5:5432",
    "command": "command systemctl is-active --quiet nginx",
    "systemd": "systemd nginx.service postgresql.service",
}


def load_checks(checks: list[object], **top: object) -> list[Check]:
    data = {**top, "machines": {"alpha": {"host": "alpha.local", "checks": checks}}}
    config = parse_config(PATH, yaml.safe_dump(data, sort_keys=False))
    return list(config.settings.machines["alpha"].checks)


def config_error(checks: list[object], **top: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load_checks(checks, **top)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_every_registered_type_has_an_example_here():
    assert set(EXAMPLES) == set(CHECK_TYPES) == set(DESCRIBED)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_registered_type_parses_from_yaml(kind):
    (check,) = load_checks([EXAMPLES[kind]])
    assert type(check) is CHECK_TYPES[kind]
    assert check.type == kind
    assert check.timeout is None


def test_type_defaults_to_http():
    (check,) = load_checks([{"url": "http://alpha.local/", "status": 204}])
    assert isinstance(check, HttpCheck)
    assert (check.type, check.url, check.status) == ("http", "http://alpha.local/", 204)


def test_unknown_type_is_one_line_naming_the_key_and_the_known_types():
    message = config_error([{"type": "smtp", "port": 25}])
    known = ", ".join(CHECK_TYPES)
    assert message == (
        f"{PATH}: machines.alpha.checks[0].type: unknown check type 'smtp' (one of: {known})"
    )


def test_a_key_of_another_type_is_rejected_naming_it():
    message = config_error([{"type": "tcp", "port": 22, "url": "http://x/"}])
    assert message == f"{PATH}: machines.alpha.checks[0].url: unknown key"


def test_a_check_timeout_above_the_probe_timeout_is_rejected_naming_the_key():
    message = config_error(
        [EXAMPLES["tcp"], {**EXAMPLES["tcp"], "timeout": "5s"}], reboot={"probe_timeout": "3s"}
    )
    assert message.startswith(
        f"{PATH}: machines.alpha.checks[1].timeout: 5s does not fit in reboot.probe_timeout (3s)"
    )


def test_a_check_timeout_within_the_probe_timeout_is_its_budget():
    (check,) = load_checks([{**EXAMPLES["tcp"], "timeout": "3s"}], reboot={"probe_timeout": "3s"})
    assert check.budget(Timeouts(connect=5, probe=3)) == 3.0
    (default,) = load_checks([EXAMPLES["tcp"]])
    assert default.budget(Timeouts(connect=5, probe=2)) == 2.0


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_check_type_describes_itself(kind):
    (check,) = load_checks([EXAMPLES[kind]])
    assert check.describe("10.0.0.5") == DESCRIBED[kind]


def test_tcp_check_describes_its_own_host_over_the_machines_address():
    (check,) = load_checks([{"type": "tcp", "port": 5432, "host": "db.local"}])
    assert check.describe("10.0.0.5") == "tcp db.local:5432"


# -- probes -------------------------------------------------------------------------------------


class FakeCommandHost:
    """A CommandHost answering every command with one fixed result (or exception)."""

    name = "alpha"

    def __init__(self, answer: Completed | Exception) -> None:
        self.answer = answer
        self.calls: list[tuple[list[str], float, int]] = []

    async def run(self, argv: Sequence[str], timeout: float, max_output: int = 0) -> Completed:
        self.calls.append((list(argv), timeout, max_output))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def probe(check: Check, host: object = None, address: str = "127.0.0.1") -> Probe:
    http = HttpClients()
    ctx = ProbeContext(host, address, http, Timeouts(connect=2, probe=2), ProbeFailed)  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(10):
            return await check.probe(ctx)
    finally:
        await http.aclose()


def done(returncode: int, stdout: str = "", stderr: str = "") -> Completed:
    return Completed(("argv",), returncode, stdout, stderr)


async def test_tcp_probe_passes_against_a_listening_socket():
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        check = TcpCheck.model_validate({"type": "tcp", "port": port})
        assert await probe(check) == Probe(f"tcp 127.0.0.1:{port}", True, "connected")


async def test_tcp_probe_fails_against_a_closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
        check = TcpCheck.model_validate({"type": "tcp", "port": port})
        result = await probe(check)
    assert result.name == f"tcp 127.0.0.1:{port}"
    assert not result.ok and result.detail


async def test_command_probe_passes_on_exit_zero_and_sends_the_argv():
    host = FakeCommandHost(done(0, "fine\n"))
    check = CommandCheck.model_validate({"type": "command", "command": ["app", "--check"]})
    assert await probe(check, host) == Probe("command app --check", True, "exit 0")
    assert host.calls == [(["app", "--check"], 2.0, 4096)]


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        (done(3, "out\n", "warming up\n  still not ready  \n\n"), "exit 3: still not ready"),
        (done(1, "only stdout says why\n", ""), "exit 1: only stdout says why"),
        (done(2), "exit 2"),
        (ProbeFailed("ssh: connection lost during app"), "ssh: connection lost during app"),
    ],
    ids=["last-stderr-line", "stdout-when-no-stderr", "no-output", "transient"],
)
async def test_command_probe_failure_detail(answer, detail):
    check = CommandCheck.model_validate({"type": "command", "command": ["app"]})
    assert await probe(check, FakeCommandHost(answer)) == Probe("command app", False, detail)


async def test_command_probe_with_sudo_prefixes_sudo_n_and_uses_its_own_timeout():
    host = FakeCommandHost(done(0))
    check = CommandCheck.model_validate(
        {"type": "command", "command": ["app"], "sudo": True, "timeout": 1.5}
    )
    assert (await probe(check, host)).ok
    assert host.calls == [(["sudo", "-n", "app"], 1.5, 4096)]


SYSTEMD = {"type": "systemd", "units": ["a.service", "b.service"]}


@pytest.mark.parametrize(
    ("answer", "ok", "detail"),
    [
        (done(0, "active\nactive\n"), True, "2 active"),
        # systemctl exits 0 when ANY listed unit is active: each line must be read.
        (done(0, "inactive\nactive\n"), False, "a.service is inactive"),
        (done(3, "active\nfailed\n"), False, "b.service is failed"),
        (done(3, "activating\nfailed\n"), False, "a.service is activating (and 1 more)"),
        (done(0, "active\n"), False, "unexpected answer: 'active'"),
        (done(1, "", "Failed to connect to bus\n"), False, "exit 1: Failed to connect to bus"),
        (done(4, "active\nactive\n", "odd\n"), False, "exit 4: odd"),
        (ProbeFailed("ssh: timed out"), False, "ssh: timed out"),
    ],
    ids=[
        "all-active",
        "exit-0-but-one-inactive",
        "second-failed",
        "first-of-several",
        "too-few-lines",
        "no-states-exit-1",
        "all-active-but-exit-4",
        "transient",
    ],
)
async def test_systemd_probe_maps_each_units_state(answer, ok, detail):
    host = FakeCommandHost(answer)
    check = SystemdCheck.model_validate(SYSTEMD)
    assert await probe(check, host) == Probe("systemd a.service b.service", ok, detail)
    assert host.calls == [(["systemctl", "is-active", "a.service", "b.service"], 2.0, 4096)]


@pytest.mark.parametrize("units", [[], ["--all"], ["two words"], [""]])
def test_systemd_check_rejects_what_is_not_a_unit_name(units):
    message = config_error([{"type": "systemd", "units": units}])
    assert message.startswith(f"{PATH}: machines.alpha.checks[0].units")


# -- http ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def http_server(routes: dict[str, tuple[int, bytes]]) -> AsyncIterator[str]:
    """A tiny real HTTP/1.1 server on loopback: path -> (status, body); the body of a 3xx
    answer is its Location."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1].decode()
            status, body = routes.get(path, (404, b"no such path\n"))
            location = f"Location: {body.decode()}\r\n" if 300 <= status < 400 else ""
            writer.write(
                f"HTTP/1.1 {status} X\r\n{location}Content-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def http_check(url: str, **extra: object) -> HttpCheck:
    return HttpCheck.model_validate({"url": url, **extra})


async def test_http_probe_passes_on_the_expected_status():
    async with http_server({"/health": (200, b"all ok\n")}) as base:
        assert await probe(http_check(f"{base}/health", body_contains="ok")) == Probe(
            f"http {base}/health", True, "HTTP 200"
        )


async def test_http_probe_fails_on_another_status():
    async with http_server({"/health": (503, b"ok but down\n")}) as base:
        result = await probe(http_check(f"{base}/health"))
    assert result == Probe(f"http {base}/health", False, "HTTP 503 (want 200)")


async def test_http_probe_accepts_the_configured_status():
    async with http_server({"/gone": (410, b"")}) as base:
        assert (await probe(http_check(f"{base}/gone", status=410))).ok


async def test_http_probe_fails_when_the_body_lacks_the_string():
    async with http_server({"/health": (200, b"starting\n")}) as base:
        result = await probe(http_check(f"{base}/health", body_contains="ok"))
    assert result == Probe(f"http {base}/health", False, "body lacks 'ok'")


async def test_http_probe_does_not_follow_redirects():
    async with http_server({"/health": (302, b"/elsewhere"), "/elsewhere": (200, b"ok")}) as base:
        result = await probe(http_check(f"{base}/health"))
    assert result == Probe(f"http {base}/health", False, "HTTP 302 (want 200)")


async def test_http_probe_against_a_closed_port_fails_with_a_reason():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/health"
        result = await probe(http_check(url))
    assert result.name == f"http {url}" and not result.ok and result.detail
