"""A stand-in journald for one command, for tests/test_journal_fields.py.

Run as root inside a private mount namespace::

    unshare --mount --propagation private -- python tests/journal_listener.py -- CMD...

It mounts a tmpfs where ``/run/systemd/journal`` is (only this namespace sees it), listens on
``/run/systemd/journal/socket`` with journald's native protocol, and runs CMD the way systemd
runs a service: stderr is a stream socket and ``JOURNAL_STREAM`` names its device:inode. When
CMD has exited it prints one JSON object: CMD's return code, what reached its stderr stream
and its stdout, and every entry received (each field a list of its values, in order; an
entry that came as a memfd is marked ``"_MEMFD": ["1"]``).
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

SOCKET = Path("/run/systemd/journal/socket")


def parse_entry(data: bytes) -> dict[str, list[str]]:
    """One native-protocol message: ``KEY=value\\n``, or ``KEY\\n`` + 64-bit little-endian
    length + value + ``\\n`` for a value that may hold newlines or binary data."""
    fields: dict[str, list[str]] = {}
    at = 0
    while at < len(data):
        end = data.index(b"\n", at)
        line = data[at:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            at = end + 1
        else:
            key = line
            (size,) = struct.unpack_from("<Q", data, end + 1)
            start = end + 1 + 8
            value = data[start : start + size]
            if data[start + size : start + size + 1] != b"\n":
                raise ValueError(f"field {key!r}: no newline after its {size} bytes")
            at = start + size + 1
        fields.setdefault(key.decode(), []).append(value.decode(errors="replace"))
    return fields


def receive(sock: socket.socket) -> dict[str, list[str]]:
    """One entry from the journal socket, read from the passed memfd if it came as one."""
    fd_size = array.array("i").itemsize
    data, ancillary, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(4 * fd_size))
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fd_size])
    if not fds:
        return parse_entry(data)
    for fd in fds[1:]:
        os.close(fd)
    with os.fdopen(fds[0], "rb") as memfd:
        memfd.seek(0)
        entry = parse_entry(memfd.read())
    entry["_MEMFD"] = ["1"]
    return entry


def _private_run_systemd() -> None:
    # A tmpfs over the deepest existing directory of the socket's path, so nothing outside
    # this namespace changes (not even an empty directory left behind).
    for target in (SOCKET.parent, SOCKET.parent.parent, SOCKET.parent.parent.parent):
        if target.is_dir():
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(target)], check=True)
            break
    else:
        raise SystemExit("no /run to mount over")
    SOCKET.parent.mkdir(parents=True, exist_ok=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "--" or len(argv) < 2:
        raise SystemExit("usage: journal_listener.py -- CMD...")
    command = argv[1:]
    _private_run_systemd()
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(SOCKET))
    journal.settimeout(0.2)
    entries: list[dict[str, list[str]]] = []
    done = threading.Event()

    def collect() -> None:
        while True:
            try:
                entries.append(receive(journal))
            except TimeoutError:
                if done.is_set():
                    return

    # journald hands a service a stream socket as stdout/stderr; JOURNAL_STREAM names it.
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    stat = os.fstat(theirs.fileno())
    env = {**os.environ, "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
    stream: list[bytes] = []

    def read_stream() -> None:
        while chunk := ours.recv(65536):
            stream.append(chunk)

    readers = [threading.Thread(target=collect), threading.Thread(target=read_stream)]
    for reader in readers:
        reader.start()
    with tempfile.TemporaryFile() as stdout:
        try:
            child = subprocess.run(
                command, stdout=stdout, stderr=theirs, env=env, timeout=300, check=False
            )
        finally:
            theirs.close()
            done.set()
            for reader in readers:
                reader.join(30)
        stdout.seek(0)
        output = stdout.read().decode(errors="replace")
    json.dump(
        {
            "returncode": child.returncode,
            "stderr": b"".join(stream).decode(errors="replace"),
            "stdout": output,
            "entries": entries,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
