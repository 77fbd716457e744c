"""A stand-in for the owner's notification and heartbeat services: a real HTTP server that
records what apprise's ``json://`` target and the heartbeat really send, as it arrives.

The demo prints each arrival; tests judge the orchestrator by them, listening on loopback or
on the netlab bridge's root address (which the controller reaches like any LAN service). It
answers ``ok`` (200), ``error`` (500) or ``hang`` (reads the request, never answers)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass(frozen=True)
class Request:
    t: float
    method: str
    path: str
    query: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(
        self, server: ThreadingHTTPServer, mode: str, on_request: Callable[[Request], None]
    ) -> None:
        self.server = server
        self.mode = mode
        self.on_request = on_request
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # ends the `hang` answers at teardown

    @property
    def base(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host!s}:{port}"

    def url(self, path: str, scheme: str = "http") -> str:
        """A URL of this receiver; ``scheme`` ``json`` is apprise's JSON-over-HTTP target."""
        return f"{scheme}://{self.base}{path}"

    def received(self, path_prefix: str = "") -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith(path_prefix)]

    def wait_for(self, count: int, path_prefix: str = "", timeout: float = 60) -> list[Request]:
        deadline = time.monotonic() + timeout
        while len(got := self.received(path_prefix)) < count:
            assert time.monotonic() < deadline, f"only {len(got)} of {count} requests: {got}"
            time.sleep(0.05)
        return got


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            split = urlsplit(self.path)
            request = Request(
                time.time(), self.command, split.path, dict(parse_qsl(split.query)), body
            )
            with receiver.lock:
                receiver.requests.append(request)
            receiver.on_request(request)
            if receiver.mode == "hang":
                receiver.release.wait(300)
                return
            status = 200 if receiver.mode == "ok" else 500
            reply = b"OK" if status == 200 else b"broken"
            self.send_response(status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_GET = do_POST = do_HEAD = _record

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the demo prints arrivals its own way; tests read `requests`

    return Handler


@contextmanager
def receiver(
    address: str = "127.0.0.1",
    mode: str = "ok",
    on_request: Callable[[Request], None] = lambda request: None,
) -> Iterator[Receiver]:
    server = ThreadingHTTPServer((address, 0), BaseHTTPRequestHandler)
    got = Receiver(server, mode, on_request)
    server.RequestHandlerClass = _handler(got)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield got
    finally:
        got.release.set()
        server.shutdown()
        server.server_close()


def closed_port(address: str = "127.0.0.1") -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])
