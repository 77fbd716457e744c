"""The per-host daemon of the netlab: one fake machine's "init", boot sequence and services.

Started by `Lab` as
    ip netns exec NS unshare --mount --pid --fork --mount-proc --kill-child \
        python -I -S hostd.py HOSTDIR [--lifeline-fd N]
so it runs inside the host's network namespace, a private mount namespace and a private PID
namespace. It is stdlib-only and started with `-S` (no site-packages) so 40 of them start fast.

Process layout inside the PID namespace:
  pid 1   `init`: reaps orphans (sshd sessions whose sshd was killed, children of a killed
          orchestrator) and exits when the lifeline pipe from the Lab closes; when pid 1 exits
          the kernel kills everything else in the namespace, so no process can outlive the lab.
  pid 2   `hostd`: mounts, sshd, HTTP, the reboot sequence, the control FIFO.
  others  sshd and its sessions; on the controller the orchestrator (entered with nsenter) and
          the `resume` process started on boot.

Control: the `systemctl`/`reboot` shims and the Lab write one JSON line per request to
HOSTDIR/ctl.fifo, e.g. {"cmd": "reboot", "ack": PATH}; hostd handles it and creates PATH.
The current `systemctl is-system-running` answer lives in HOSTDIR/state, and each unit's
`systemctl is-active` answer in HOSTDIR/units/UNIT (all replaced atomically; no file: inactive).

Ground truth: one JSON line per event appended to the lab's truth.jsonl:
  ready, reboot_requested, reboot_ignored, down, booted, link_up, ssh_up, http_up, healthy,
  state, unit, fault, http_mode, resume_started, resume_exited, error.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

MS_BIND = 4096
SSH_PORT = 22
HTTP_PORT = 8080
HUGE_BODY = 100 * 1000 * 1000  # Hostile.http == "huge"


def _mount_bind(source: str, target: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind mount {source} -> {target}: {os.strerror(err)}")


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _safe_unit(unit: object) -> str:
    """A unit name that is a plain file name in HOSTDIR/units (the Lab checks more)."""
    if (
        not isinstance(unit, str)
        or not unit
        or "/" in unit
        or "\0" in unit
        or unit.startswith(".")
        or len(unit) > 255
    ):
        raise ValueError(f"bad unit name {unit!r}")
    return unit


def _proc_state(pid: int) -> str | None:
    """The one-letter state of a process in this PID namespace, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3].decode()


class HealthServer:
    """A minimal HTTP/1.0 server for GET /health; modes ok | fail | flap."""

    def __init__(self, host: Hostd) -> None:
        self.host = host
        self.sock: socket.socket | None = None
        self._flap_next_ok = True
        self._lock = threading.Lock()

    def start(self, address: str) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, HTTP_PORT))
        sock.listen(128)
        self.sock = sock
        threading.Thread(target=self._accept_loop, args=(sock,), daemon=True).start()

    def stop(self) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        sock.close()

    def _accept_loop(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _status(self) -> int:
        mode = self.host.http_mode
        if mode == "ok":
            return 200
        if mode == "flap":
            with self._lock:
                ok, self._flap_next_ok = self._flap_next_ok, not self._flap_next_ok
            return 200 if ok else 503
        return 503

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 16384:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            parts = data.split(b"\r\n", 1)[0].split()
            path = parts[1].decode(errors="replace") if len(parts) > 1 else "/"
            hostile = self.host.hostile.get("http")
            if hostile and path.split("?", 1)[0] == "/health":
                self._serve_hostile(conn, hostile)
                return
            if path.split("?", 1)[0] == "/health":
                status = self._status()
                body = b"ok\n" if status == 200 else b"unhealthy\n"
            else:
                status, body = 404, b"not found\n"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            head = (
                f"HTTP/1.0 {status} {reason}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            conn.sendall(head.encode() + body)
        except OSError:
            pass
        finally:
            conn.close()

    def _serve_hostile(self, conn: socket.socket, mode: str) -> None:
        """200 with an endless body, or a 100 MB one ending in END (Hostile.http)."""
        chunk = (self.host.hostile_text.encode() * 1024)[:65536]
        conn.settimeout(30)
        if mode == "endless":
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
            while True:
                conn.sendall(chunk)  # until the client goes away (OSError)
        size = HUGE_BODY
        head = f"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {size}\r\n\r\n"
        conn.sendall(head.encode())
        left = size - 3
        while left > 0:
            part = chunk[: min(left, len(chunk))]
            conn.sendall(part)
            left -= len(part)
        conn.sendall(b"END")


class Hostd:
    def __init__(self, hostdir: str) -> None:
        self.dir = hostdir
        with open(os.path.join(hostdir, "host.json")) as f:
            cfg = json.load(f)
        self.cfg = cfg
        self.name: str = cfg["name"]
        self.address: str = cfg["address"]
        self.iface: str = cfg["iface"]
        self.fault: dict = dict(cfg["fault"])
        self.controller: bool = cfg["controller"]
        self.hostile: dict = dict(cfg.get("hostile") or {})
        self.hostile_text: str = cfg.get("hostile_text", "")
        self.fake_ssh: socket.socket | None = None
        self.lock = threading.RLock()
        self.truth_fd = os.open(cfg["truth"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.state = "starting"
        self.http_mode = "ok"
        self.generation = 0  # boot counter; stale timers of an earlier boot do nothing
        self.rebooting = False
        self.ssh_up = False
        self.http_listening = False
        self.healthy_logged = True
        self.sshd: subprocess.Popen[bytes] | None = None
        self.http = HealthServer(self)
        self.reboots: queue.Queue[None] = queue.Queue()
        self.resume_count = 0

    # -- ground truth -------------------------------------------------------------------------
    def log(self, event: str, **details: object) -> None:
        line = json.dumps({"t": time.time(), "host": self.name, "event": event, **details})
        os.write(self.truth_fd, (line + "\n").encode())  # one write, O_APPEND: lines never mix

    # -- state --------------------------------------------------------------------------------
    def set_state(self, state: str) -> None:
        with self.lock:
            self.state = state
            _write_atomic(os.path.join(self.dir, "state"), state + "\n")

    def write_units(self, fault: dict, generation: int | None) -> None:
        """The unit states of a boot: the defaults and the fault's units, all `active` at the
        first boot (generation None), the fault's states after a reboot. Any other unit file
        (a `set_unit` of the last boot) goes."""
        states = dict.fromkeys(self.cfg["default_units"], "active")
        for unit, state in (fault.get("units") or {}).items():
            states[_safe_unit(unit)] = "active" if generation is None else state
        units = os.path.join(self.dir, "units")
        os.makedirs(units, exist_ok=True)
        with self.lock:
            for old in os.listdir(units):
                if old not in states:
                    os.unlink(os.path.join(units, old))
            for unit, state in states.items():
                _write_atomic(os.path.join(units, unit), state + "\n")
        if generation is not None:
            for unit, state in states.items():
                if state != "active":
                    self.log("unit", unit=unit, state=state, generation=generation)

    def set_unit(self, unit: str, state: str) -> None:
        if not state or not state.isascii() or not state.replace("-", "").isalpha():
            raise ValueError(f"bad unit state {state!r}")
        units = os.path.join(self.dir, "units")
        with self.lock:
            os.makedirs(units, exist_ok=True)
            _write_atomic(os.path.join(units, _safe_unit(unit)), state + "\n")
            self.log("unit", unit=unit, state=state, via="lab")

    def check_healthy(self) -> None:
        with self.lock:
            if (
                not self.healthy_logged
                and self.ssh_up
                and self.http_listening
                and self.state == "running"
                and self.http_mode == "ok"
            ):
                self.healthy_logged = True
                self.log("healthy", generation=self.generation)

    # -- setup --------------------------------------------------------------------------------
    def mount_overrides(self) -> None:
        if self.hostile.get("boot_id"):
            _mount_bind(self.endless_fifo("boot_id.endless"), "/proc/sys/kernel/random/boot_id")
        else:
            _mount_bind(os.path.join(self.dir, "boot_id"), "/proc/sys/kernel/random/boot_id")
        # root's home is a per-host empty dir: SSH sessions must not run the build machine's
        # dotfiles (a pyenv rehash in ~/.bashrc killed mid-reboot leaves a lock that stalls
        # every later shell for 60 s), and a fake host should not write to the real /root.
        _mount_bind(os.path.join(self.dir, "passwd"), "/etc/passwd")
        shims = os.path.join(self.dir, "sbin")
        # sshd (UsePAM no) gives root sessions PATH=/usr/local/sbin:...; sudo's secure_path
        # starts there too. Binding over the real systemctl also covers absolute paths and the
        # /sbin/reboot -> systemctl symlink.
        _mount_bind(shims, "/usr/local/sbin")
        for shim, target in self.cfg["bind_systemctl"]:
            _mount_bind(os.path.join(shims, shim), target)

    def endless_fifo(self, name: str) -> str:
        """A FIFO that every reader finds full of the hostile text, without end."""
        path = os.path.join(self.dir, name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.mkfifo(path, 0o644)
        chunk = (self.hostile_text.encode() * 1024)[:65536]

        def feed() -> None:
            while True:
                fd = os.open(path, os.O_WRONLY)  # blocks until a reader opens it
                try:
                    while True:
                        os.write(fd, chunk)
                except OSError:
                    pass  # the reader went away (EPIPE): wait for the next one
                finally:
                    os.close(fd)

        threading.Thread(target=feed, daemon=True).start()
        return path

    def write_boot_id(self) -> str:
        boot_id = str(uuid.uuid4())
        # Rewrite in place: the bind mount pins this inode, a rename would not be seen.
        fd = os.open(os.path.join(self.dir, "boot_id"), os.O_WRONLY)
        try:
            os.pwrite(fd, (boot_id + "\n").encode(), 0)
        finally:
            os.close(fd)
        return boot_id

    def new_host_key(self) -> str:
        key = os.path.join(self.dir, "ssh_host_ed25519_key")
        for path in (key, key + ".pub"):
            if os.path.exists(path):
                os.unlink(path)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.name, "-f", key],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        with open(key + ".pub") as f:
            return f.read().split()[1]

    def link(self, up: bool) -> None:
        subprocess.run(
            ["ip", "link", "set", self.iface, "up" if up else "down"],
            check=True,
            stdin=subprocess.DEVNULL,
        )

    # -- services -----------------------------------------------------------------------------
    def start_fake_ssh(self) -> None:
        """Port 22 speaks just enough SSH to disconnect with a hostile reason: version line,
        then an unencrypted SSH_MSG_DISCONNECT (allowed before key exchange, RFC 4253)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.address, SSH_PORT))
        sock.listen(128)
        self.fake_ssh = sock
        reason = self.hostile_text.encode()
        payload = (
            bytes([1])  # SSH_MSG_DISCONNECT
            + (11).to_bytes(4, "big")  # SSH_DISCONNECT_BY_APPLICATION
            + len(reason).to_bytes(4, "big")
            + reason
            + (0).to_bytes(4, "big")  # language tag
        )
        padding = 8 - (5 + len(payload)) % 8
        padding += 8 if padding < 4 else 0
        packet = (
            (1 + len(payload) + padding).to_bytes(4, "big")
            + bytes([padding])
            + payload
            + bytes(padding)
        )

        def serve(conn: socket.socket) -> None:
            with conn:
                try:
                    conn.settimeout(10)
                    conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 netlab-hostile\r\n")
                    data = b""
                    while b"\n" not in data and len(data) < 4096:
                        more = conn.recv(4096)
                        if not more:
                            return
                        data += more
                    conn.sendall(packet)
                    time.sleep(0.5)
                except OSError:
                    pass

        def accept() -> None:
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()

    def start_sshd(self) -> None:
        if self.hostile.get("ssh_disconnect"):
            if self.fake_ssh is None:
                self.start_fake_ssh()
            return
        with open(os.path.join(self.dir, "sshd.log"), "ab") as logf:
            self.sshd = subprocess.Popen(
                [self.cfg["sshd"], "-D", "-e", "-f", os.path.join(self.dir, "sshd_config")],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
            )
        # "Up" means the kernel accepts connections on the port: poll the socket table of this
        # network namespace instead of connecting (no noise in sshd's log, no preauth child).
        want = f"{socket.inet_aton(self.address)[::-1].hex().upper()}:{SSH_PORT:04X}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open("/proc/net/tcp") as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    if fields[1] == want and fields[3] == "0A":  # 0A = LISTEN
                        return
            if self.sshd.poll() is not None:
                break
            time.sleep(0.005)
        raise RuntimeError(f"sshd did not start listening (exit {self.sshd.poll()}), see sshd.log")

    def start_http_later(self, delay: float, generation: int) -> None:
        def run() -> None:
            if delay > 0:
                time.sleep(delay)
            with self.lock:
                if generation != self.generation or self.rebooting:
                    return
                self.http.start(self.address)
                self.http_listening = True
                self.log("http_up", mode=self.http_mode, generation=generation)
                self.check_healthy()

        threading.Thread(target=run, daemon=True).start()

    def start_resume(self) -> None:
        argv = self.cfg.get("resume_argv")
        if not argv:
            return
        self.resume_count += 1
        logpath = os.path.join(self.dir, f"resume-{self.resume_count}.log")
        env = dict(self.cfg["resume_env"])
        with open(logpath, "ab") as logf:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                env=env,
                cwd=self.cfg.get("resume_cwd") or self.dir,
            )
        self.log("resume_started", pid=proc.pid, argv=argv, log=logpath)

        def wait() -> None:
            self.log("resume_exited", pid=proc.pid, code=proc.wait(), log=logpath)

        threading.Thread(target=wait, daemon=True).start()

    # -- shutdown -----------------------------------------------------------------------------
    def kill_everything(self, grace: float) -> None:
        """What a shutdown does to every process but init and us: SIGTERM, wait, SIGKILL.

        With grace 0 it is SIGKILL at once (sshd and its sessions die together; their TCP
        connections are closed by the kernel)."""
        me = os.getpid()

        def others() -> list[int]:
            pids = []
            for entry in os.listdir("/proc"):
                if entry.isdigit() and int(entry) not in (1, me):
                    state = _proc_state(int(entry))
                    if state is not None and state not in ("Z", "X"):
                        pids.append(int(entry))
            return pids

        def signal_all(sig: int) -> None:
            for pid in others():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

        if grace > 0:
            signal_all(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while others() and time.monotonic() < deadline:
                time.sleep(0.02)
        deadline = time.monotonic() + 5
        while others() and time.monotonic() < deadline:
            signal_all(signal.SIGKILL)
            time.sleep(0.01)
        if self.sshd is not None:
            self.sshd.wait()
            self.sshd = None

    # -- boot ---------------------------------------------------------------------------------
    def first_boot(self) -> None:
        self.mount_overrides()
        boot_id = self.write_boot_id()
        self.write_units(self.fault, None)
        self.start_sshd()
        self.ssh_up = True
        self.http.start(self.address)
        self.http_listening = True
        self.set_state("running")
        self.log("ready", boot_id=boot_id, address=self.address)
        _write_atomic(os.path.join(self.dir, "ready"), boot_id + "\n")

    def reboot(self) -> None:
        with self.lock:
            fault = dict(self.fault)
        time.sleep(self.cfg["shutdown_delay"])
        with self.lock:
            self.generation += 1
            generation = self.generation
            self.ssh_up = False
            self.http_listening = False
            self.healthy_logged = False
        self.kill_everything(self.cfg["kill_grace"])
        self.http.stop()
        refuse = bool(fault.get("refuse"))
        if not refuse:
            self.link(False)
        self.log("down", link="up" if refuse else "down", generation=generation)
        if fault.get("never_returns"):
            return  # stays dark (or refusing) until the lab is stopped; rebooting stays True
        boot_time = fault.get("boot_time")
        time.sleep(self.cfg["boot_time"] if boot_time is None else boot_time)
        details: dict[str, object] = {}
        if fault.get("new_host_key"):
            details["host_key"] = self.new_host_key()
        boot_id = self.write_boot_id()
        self.log("booted", boot_id=boot_id, generation=generation, **details)
        if not refuse:
            self.link(True)
        self.log("link_up", generation=generation)
        self.set_state("starting")
        # Units are final before sshd listens: whoever sees the host back sees this boot's units.
        self.write_units(fault, generation)
        self.start_sshd()
        with self.lock:
            self.ssh_up = True
            self.rebooting = False
            self.http_mode = fault.get("http", "ok")
        self.log("ssh_up", generation=generation)
        state = fault.get("state", "running")
        self.set_state(state)
        self.log("state", state=state, generation=generation)
        if self.controller:
            self.start_resume()
        self.start_http_later(float(fault.get("http_delay") or 0), generation)

    # -- control ------------------------------------------------------------------------------
    def handle(self, request: dict) -> dict:
        cmd = request.get("cmd")
        if cmd == "reboot":
            with self.lock:
                self.log("reboot_requested", via=request.get("via", "systemctl"))
                if self.rebooting:
                    self.log("reboot_ignored", reason="already rebooting")
                elif self.fault.get("noop_reboot"):
                    self.log("reboot_ignored", reason="noop_reboot fault")
                else:
                    self.rebooting = True
                    self.set_state("stopping")
                    self.reboots.put(None)
            return {"ok": True}
        if cmd == "set_fault":
            with self.lock:
                self.fault = dict(request["fault"])
                self.log("fault", fault=self.fault)
            return {"ok": True}
        if cmd == "set_state":
            self.set_state(request["state"])
            self.log("state", state=request["state"], via="lab")
            self.check_healthy()
            return {"ok": True}
        if cmd == "set_unit":
            self.set_unit(request["unit"], request["state"])
            return {"ok": True}
        if cmd == "set_http":
            with self.lock:
                self.http_mode = request["mode"]
                self.log("http_mode", mode=self.http_mode)
            self.check_healthy()
            return {"ok": True}
        if cmd == "ping":
            return {"ok": True, "state": self.state}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    def control_loop(self) -> None:
        # O_RDWR keeps a writer end open here, so a reader never sees EOF between requests.
        fd = os.open(os.path.join(self.dir, "ctl.fifo"), os.O_RDWR)
        with os.fdopen(fd, "rb", buffering=0) as raw:
            buf = b""
            while True:
                chunk = raw.read(4096)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self._handle_line(line)

    def _handle_line(self, line: bytes) -> None:
        try:
            request = json.loads(line)
        except ValueError:
            self.log("error", error=f"bad control line {line[:200]!r}")
            return
        try:
            reply = self.handle(request)
        except Exception as e:  # a bad request must not kill the host
            reply = {"ok": False, "error": repr(e)}
            self.log("error", error=repr(e), request=request)
        ack = request.get("ack")
        if ack:
            _write_atomic(ack, json.dumps(reply))

    def main(self) -> None:
        threading.Thread(target=self.control_loop, daemon=True).start()
        try:
            self.first_boot()
        except Exception as e:
            self.log("error", error=f"first boot failed: {e!r}")
            raise
        while True:
            self.reboots.get()
            try:
                self.reboot()
            except Exception as e:
                self.log("error", error=f"reboot failed: {e!r}")
                raise


def init_main(hostdir: str, lifeline_fd: int | None) -> None:
    """PID 1 of the host: fork hostd, reap everything, die with the lab."""
    child = os.fork()
    if child == 0:
        if lifeline_fd is not None:
            os.close(lifeline_fd)
        try:
            Hostd(hostdir).main()
        except BaseException:
            import traceback

            traceback.print_exc()
            os._exit(1)
        os._exit(0)

    if lifeline_fd is not None:

        def watch() -> None:
            while os.read(lifeline_fd, 1):
                pass
            os._exit(0)  # the Lab process is gone: take the whole PID namespace down

        threading.Thread(target=watch, daemon=True).start()

    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            time.sleep(0.1)
            continue
        if pid == child:
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def main(argv: list[str]) -> None:
    hostdir = argv[0]
    lifeline = None
    if len(argv) >= 3 and argv[1] == "--lifeline-fd":
        lifeline = int(argv[2])
    if os.getpid() != 1:
        sys.exit("hostd must run as PID 1 of its own PID namespace (see Lab)")
    init_main(hostdir, lifeline)


if __name__ == "__main__":
    main(sys.argv[1:])
