"""The real-host test lab: fake machines in network namespaces running real OpenSSH sshd.

A `Lab` owns, for its lifetime:
  - a bridge `olbXXXX` in the root namespace with address 10.213.K.1/24 (K chosen free);
  - per host a network namespace `olbXXXX-NAME` with a veth `eth0` on the bridge (10.213.K.N);
  - per host one `hostd` (see hostd.py) as PID 1 of a private PID + mount namespace, running the
    host's sshd and HTTP health endpoint and simulating reboots;
  - a directory with the client key, known_hosts, per-host files and the ground-truth log.

Everything the lab creates is named with its prefix, so `down()` can remove leftovers of a lab
whose owner died. Traffic only ever goes to the lab's own namespaces: hosts have no default
route, and the root namespace reaches them through the bridge's on-link route only.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

PREFIX = "olb"
REGISTRY = Path("/run/olb-netlab")
SUBNET_FIRST_OCTETS = "10.213"
SSHD = "/usr/sbin/sshd"
HOSTD = Path(__file__).with_name("hostd.py")
CONTROLLER = "controller"
HOST_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
LAB_PREFIX_RE = re.compile(rf"^{PREFIX}[0-9a-f]{{4}}")
# The PATH a systemd service gets (and sshd gives root sessions): shims come first.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Units every host has `active` after each boot (Fault.units is merged over them).
DEFAULT_UNITS = ("sshd.service", "netlab-health.service")
# What a unit name may be (systemd's characters); a name without a unit type gets `.service`.
UNIT_NAME_RE = re.compile(r"^[A-Za-z0-9:_@\\][A-Za-z0-9:_.@\\-]{0,246}$")  # + ".service" <= 255
UNIT_TYPES = (
    "service",
    "socket",
    "target",
    "device",
    "mount",
    "automount",
    "swap",
    "timer",
    "path",
    "slice",
    "scope",
)
UNIT_STATE_RE = re.compile(r"^[a-z][a-z-]{0,31}$")  # active, inactive, failed, activating, ...
# Fake NixOS hosts (Lab(nixos=...)): the installed system's kernel and release.
NIXOS_KERNEL = "6.12.1"
NIXOS_RELEASE = "25.05"
NIXOS_TOOLS = ("bootctl", "nix-env")  # shims in /usr/local/sbin of a fake NixOS host
EVENTS_IN_BOOT_ORDER = (
    "reboot_requested",
    "down",
    "booted",
    "link_up",
    "ssh_up",
    "http_up",
    "healthy",
)


class LabError(RuntimeError):
    pass


def unit_name(name: str) -> str:
    """A unit name as systemctl would use it (`nginx` -> `nginx.service`); LabError if bad."""
    if not isinstance(name, str) or not UNIT_NAME_RE.match(name):
        raise LabError(f"bad unit name {name!r}")
    return name if name.rpartition(".")[2] in UNIT_TYPES else f"{name}.service"


def unit_state(state: str) -> str:
    if not isinstance(state, str) or not UNIT_STATE_RE.match(state):
        raise LabError(f"bad unit state {state!r} (one word, e.g. active, failed, activating)")
    return state


class UnitStates(Mapping[str, str]):
    """An immutable unit name -> state mapping, hashable so a `Fault` stays hashable."""

    __slots__ = ("_states",)

    def __init__(self, states: Mapping[str, str]) -> None:
        checked = {unit_name(u): unit_state(s) for u, s in dict(states).items()}
        self._states = dict(sorted(checked.items()))

    def __getitem__(self, unit: str) -> str:
        return self._states[unit]

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def __hash__(self) -> int:
        return hash(tuple(self._states.items()))

    def __repr__(self) -> str:
        return repr(self._states)


@dataclass(frozen=True)
class Fault:
    """How a host behaves when it reboots (its first boot at lab start is always clean).

    Change it at runtime with `Lab.set_fault`; it applies from the next reboot on.
    """

    boot_time: float | None = None  # None: the lab's boot_time
    http_delay: float = 0.0  # HTTP comes up this long after SSH
    http: Literal["ok", "fail", "flap"] = "ok"  # fail: 503 forever; flap: 200/503 alternating
    state: Literal["running", "degraded"] = "running"  # what is-system-running says after boot
    never_returns: bool = False  # goes dark and stays dark (until Lab.power_cycle)
    noop_reboot: bool = False  # `systemctl reboot` returns 0 and nothing happens
    new_host_key: bool = False  # comes back with a freshly generated SSH host key
    refuse: bool = False  # link stays up while down: connections are refused, not timed out
    # unit name -> its state after a reboot (`systemctl is-active`), merged over DEFAULT_UNITS
    # (all `active`); at lab start every unit named here is `active`
    units: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        # Names are checked (and `nginx` becomes `nginx.service`) here, so a bad name fails in
        # the test that wrote it, not inside hostd.
        object.__setattr__(self, "units", UnitStates(self.units) if self.units else None)

    def as_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["units"] = dict(self.units) if self.units else None
        return out


# What a hostile host prints on every channel (issue 8): terminal control (clear screen,
# window title, colour, C1 CSI, a right-to-left override) and a forged log line.
HOSTILE_TEXT = "\x1b[2J\x1b]0;pwned\x07\x1b[31mred\x9b2J\u202eevil\n00:00:00 run 1: done FORGED\n"


@dataclass(frozen=True)
class Hostile:
    """A host that attacks whoever watches it (issue 8), from lab start on and after every
    reboot — unlike a `Fault`, which only applies from the next reboot. Each channel writes
    `HOSTILE_TEXT` (escape sequences and a forged log line):

    - `boot_id`: /proc/sys/kernel/random/boot_id is endless (a FIFO fed without end);
    - `state="forged"`: `systemctl is-system-running` prints `running`, then a forged log line
      and escapes, exit 0; `state="endless"`: it prints escape lines forever;
    - `reboot`: `systemctl reboot` prints escape lines forever and never reboots;
    - `http="endless"`: the health endpoint answers 200 with an endless body;
      `http="huge"`: 200 with a 100 MB body (Content-Length), `END` at its very end;
    - `ssh_disconnect`: port 22 is no sshd but a fake SSH server that sends its version and
      then a disconnect whose reason is `HOSTILE_TEXT` (nothing else works on that host).
    """

    boot_id: bool = False
    state: Literal["forged", "endless"] | None = None
    reboot: bool = False
    http: Literal["endless", "huge"] | None = None
    ssh_disconnect: bool = False


@dataclass(frozen=True)
class Host:
    name: str
    index: int
    address: str
    mac: str
    netns: str
    veth: str
    dir: Path
    known_hosts_path: Path
    controller: bool = False

    @property
    def boot_id_path(self) -> Path:
        return self.dir / "boot_id"

    @property
    def host_key_path(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def health_url(self) -> str:
        return f"http://{self.address}:8080/health"


def missing_prerequisites(nixos: bool = False) -> str | None:
    """Why a lab (with fake NixOS hosts: `nixos`) cannot run here, or None."""
    if os.geteuid() != 0:
        return "netlab needs root (network namespaces, bind mounts)"
    for tool in ("ip", "unshare", "nsenter", "ssh", "ssh-keygen", "timeout"):
        if shutil.which(tool) is None:
            return f"netlab needs `{tool}` (run tests/netlab/install-prereqs.sh)"
    if not os.access(SSHD, os.X_OK):
        return f"netlab needs OpenSSH sshd at {SSHD} (run tests/netlab/install-prereqs.sh)"
    if not Path("/proc/sys/kernel/random/boot_id").exists():
        return "netlab needs /proc/sys/kernel/random/boot_id"
    if nixos and not Path("/nix").is_dir():
        # A host's fake store is bind-mounted on /nix inside its mount namespace, which needs
        # the directory to exist; the machine's own /nix is never written.
        return "netlab's fake NixOS needs a /nix directory (run tests/netlab/install-prereqs.sh)"
    return None


def _run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _deep_merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _ns_inode(pid: int | str, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _pids_in_netns(netns: str) -> list[int]:
    try:
        ino = os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return []
    return [pid for pid in _all_pids() if _ns_inode(pid, "net") == ino]


def _process_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


# -- shims ------------------------------------------------------------------------------------

_SHIM = r"""#!/bin/sh
# netlab stand-in for systemctl/reboot on host {name}; talks to hostd (tests/netlab/hostd.py).
H={hostdir}
request() {{
    ack="$H/ack.$$"
    rm -f "$ack"
    printf '{{"cmd":"%s","via":"%s","ack":"%s"}}\n' "$1" "$2" "$ack" \
        | timeout 5 sh -c 'cat > "$1"' sh "$H/ctl.fifo" || {{
        echo "Failed to talk to init daemon: host is shutting down" >&2
        exit 1
    }}
    i=0
    while [ ! -e "$ack" ]; do
        i=$((i + 1))
        [ "$i" -gt 500 ] && {{ echo "Failed to talk to init daemon: timeout" >&2; exit 1; }}
        sleep 0.01
    done
    rm -f "$ack"
}}
case "${{0##*/}}" in
    reboot) request reboot reboot; exit 0 ;;
esac
quiet=0
verb=
for arg in "$@"; do
    case "$arg" in
        -q|--quiet) quiet=1 ;;
        -*) ;;
        *) [ -z "$verb" ] && verb=$arg ;;
    esac
done
case "$verb" in
    is-active)
        # One state per unit, in order; exit 0 if at least one is active (or reloading,
        # refreshing), else 3 -- as systemd's systemctl does. Names are data: never evaluated,
        # and one with a / or a leading dot never becomes a path.
        skip=1
        n=0
        ok=0
        for unit in "$@"; do
            case "$unit" in -*) continue ;; esac
            [ "$skip" = 1 ] && {{ skip=0; continue; }}  # the verb
            n=$((n + 1))
            case "$unit" in
                {unit_types}) ;;
                *) unit=$unit.service ;;
            esac
            state=inactive
            case "$unit" in
                */*|.*) ;;
                *)
                    s=
                    if [ -f "$H/units/$unit" ]; then
                        {{ read -r s < "$H/units/$unit"; }} 2>/dev/null
                    fi
                    [ -n "$s" ] && state=$s ;;
            esac
            [ "$quiet" = 1 ] || printf '%s\n' "$state"
            case "$state" in active|reloading|refreshing) ok=1 ;; esac
        done
        [ "$n" -gt 0 ] || {{ echo "Too few arguments." >&2; exit 1; }}
        [ "$ok" = 1 ] && exit 0
        exit 3 ;;
    is-system-running)
        [ -f "$H/hostile/state-endless" ] && exec yes "$(cat "$H/hostile/state-endless")"
        [ -f "$H/hostile/state" ] && exec cat "$H/hostile/state"
        read -r state < "$H/state"
        [ "$quiet" = 1 ] || echo "$state"
        [ "$state" = running ]
        exit $? ;;
    reboot)
        [ -f "$H/hostile/reboot" ] && exec yes "$(cat "$H/hostile/reboot")"
        request reboot systemctl
        exit 0 ;;
    *)
        echo "netlab systemctl shim: unsupported: $*" >&2
        exit 1 ;;
esac
"""

_NIXOS_SHIM = r"""#!/bin/sh
# netlab stand-in for NixOS tools on host {name}: `netlab-nixos TOOL ARGS...` with TOOL
# bootctl, nix-env or switch-to-configuration; hostd (tests/netlab/hostd.py) does the work.
H={hostdir}
tool=$1
shift
req="$H/nixos-req.$$"
rm -f "$req.args" "$req.out" "$req.err" "$req.ack"
for a in "$@"; do printf '%s\000' "$a"; done > "$req.args"
printf '{{"cmd":"nixos_tool","tool":"%s","args":"%s","out":"%s","err":"%s","ack":"%s"}}\n' \
    "$tool" "$req.args" "$req.out" "$req.err" "$req.ack" \
    | timeout 10 sh -c 'cat > "$1"' sh "$H/ctl.fifo" || {{
    echo "$tool: host is shutting down" >&2
    rm -f "$req.args"
    exit 1
}}
i=0
while [ ! -e "$req.ack" ]; do
    i=$((i + 1))
    [ "$i" -gt 3000 ] && {{ echo "$tool: no answer from the netlab host" >&2; exit 1; }}
    sleep 0.01
done
code=$(sed -n 's/.*"code": *\([0-9][0-9]*\).*/\1/p' "$req.ack")
[ -f "$req.out" ] && cat "$req.out"
[ -f "$req.err" ] && cat "$req.err" >&2
rm -f "$req.ack" "$req.out" "$req.err"
exit "${{code:-1}}"
"""

_SSHD_CONFIG = """\
# generated by tests/netlab for host {name}
ListenAddress {address}:22
HostKey {hostdir}/ssh_host_ed25519_key
PidFile {hostdir}/sshd.pid
AuthorizedKeysFile {labdir}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 200
MaxSessions 64
LoginGraceTime 10
LogLevel INFO
Subsystem sftp internal-sftp
"""


class NsPopen(subprocess.Popen):  # type: ignore[type-arg]
    """A process started in a host's namespaces through `nsenter`.

    `pid` is nsenter's; signals go to the process itself (nsenter's child), so `kill()`
    really SIGKILLs the program, and nsenter then exits the way its child did."""

    def inner_pid(self, timeout: float = 2.0) -> int | None:
        deadline = time.monotonic() + timeout
        while True:
            children = _children(self.pid)
            if children:
                return children[0]
            if self.poll() is not None or time.monotonic() > deadline:
                return None
            time.sleep(0.002)

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        inner = self.inner_pid()
        if inner is None:
            super().send_signal(sig)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(inner, sig)


@dataclass
class _Proc:
    outer_pid: int
    ns_pid: int
    argv: list[str] = field(default_factory=list)


class Lab:
    """N fake hosts (plus optionally the controller) on a private bridge. See module doc."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        hosts: int | Sequence[str] = 4,
        *,
        controller: bool = False,
        faults: Mapping[str, Fault] | None = None,
        boot_time: float = 1.5,
        shutdown_delay: float = 0.2,
        kill_grace: float = 1.0,
        resume_argv: Sequence[str] | None = None,
        resume_env: Mapping[str, str] | None = None,
        resume_cwd: str | os.PathLike[str] | None = None,
        lifeline: bool = True,
        login_shells: Mapping[str, str] | None = None,
        hostile: Mapping[str, Hostile] | None = None,
        nixos: bool | Iterable[str] = False,
        nixos_kernel: str = NIXOS_KERNEL,
    ) -> None:
        names = [f"h{i}" for i in range(1, hosts + 1)] if isinstance(hosts, int) else list(hosts)
        if controller:
            names.append(CONTROLLER)
        if len(set(names)) != len(names):
            raise LabError(f"duplicate host names: {names}")
        if not 0 < len(names) <= 250:
            raise LabError("a lab has 1..250 hosts")
        for name in names:
            if not HOST_NAME_RE.match(name):
                raise LabError(f"bad host name {name!r}")
        unknown = set(faults or {}) - set(names)
        if unknown:
            raise LabError(f"faults for unknown hosts: {sorted(unknown)}")
        unknown = set(login_shells or {}) - set(names)
        if unknown:
            raise LabError(f"login shells for unknown hosts: {sorted(unknown)}")
        for shell in (login_shells or {}).values():
            if not os.path.isabs(shell) or not os.access(shell, os.X_OK):
                raise LabError(f"login shell {shell!r} is not an executable absolute path")
        # root's login shell per host (sshd runs every command through it); default: the
        # build machine's own (normally /bin/bash)
        self.login_shells = dict(login_shells or {})
        unknown = set(hostile or {}) - set(names)
        if unknown:
            raise LabError(f"hostile settings for unknown hosts: {sorted(unknown)}")
        self.hostile: dict[str, Hostile] = dict(hostile or {})
        # Fake NixOS hosts: True = every host but the controller; or the names (may include
        # the controller). See "Fake NixOS" in README.md.
        if nixos is True:
            self.nixos_hosts = {n for n in names if n != CONTROLLER}
        elif nixos is False:
            self.nixos_hosts = set()
        else:
            self.nixos_hosts = set(nixos)
            unknown = self.nixos_hosts - set(names)
            if unknown:
                raise LabError(f"nixos for unknown hosts: {sorted(unknown)}")
        self.nixos_kernel = nixos_kernel
        self.dir = Path(workdir).absolute()
        self.names = names
        self.with_controller = controller
        self.faults: dict[str, Fault] = {n: (faults or {}).get(n, Fault()) for n in names}
        self.boot_time = boot_time
        self.shutdown_delay = shutdown_delay
        self.kill_grace = kill_grace
        self.resume_argv = list(resume_argv) if resume_argv else None
        self.resume_env = dict(resume_env or {})
        self.resume_cwd = str(resume_cwd) if resume_cwd else None
        self.use_lifeline = lifeline
        self.prefix = ""
        self.subnet: ipaddress.IPv4Network | None = None
        self.hosts: dict[str, Host] = {}
        self._hostd: dict[str, subprocess.Popen[bytes]] = {}
        self._init_pids: dict[str, int] = {}
        self._lifeline_w: int | None = None
        self._started = False
        self._network_up = False

    # -- paths --------------------------------------------------------------------------------
    @property
    def client_key_path(self) -> Path:
        return self.dir / "client_ed25519"

    @property
    def known_hosts_path(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def truth_path(self) -> Path:
        return self.dir / "truth.jsonl"

    @property
    def root_address(self) -> str:
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    @property
    def controller(self) -> Host | None:
        return self.hosts.get(CONTROLLER) if self.with_controller else None

    def _host(self, host: str | Host) -> Host:
        return host if isinstance(host, Host) else self.hosts[host]

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 60.0) -> Lab:
        if self._started:
            return self
        reason = missing_prerequisites(nixos=bool(self.nixos_hosts))
        if reason:
            raise LabError(reason)
        self._started = True
        atexit.register(self.stop)
        try:
            down(stale_only=True)
            self.dir.mkdir(parents=True, exist_ok=True)
            self._generate_keys()
            self._setup_network()
            self._write_host_files()
            self._spawn_hostds()
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        atexit.unregister(self.stop)
        for name, proc in self._hostd.items():
            # Killing a PID namespace's init makes the kernel kill every process in it (sshd,
            # sessions, the orchestrator, resume); unshare, its parent, reaps it and exits.
            # (unshare's --kill-child covers the case where unshare dies first.)
            target = self._init_pids.get(name)
            with contextlib.suppress(ProcessLookupError):
                if target:
                    os.kill(target, signal.SIGKILL)
                else:
                    proc.kill()
        for proc in self._hostd.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._lifeline_w is not None:
            os.close(self._lifeline_w)
            self._lifeline_w = None
        if self._network_up:
            _teardown_prefix(self.prefix)
            self._network_up = False
        self._hostd.clear()
        self._init_pids.clear()

    def detach(self) -> None:
        """Leave the lab running after this process exits (CLI `up --detach`); `down` ends it."""
        if self.use_lifeline:
            raise LabError("only a lab created with lifeline=False can outlive its process")
        atexit.unregister(self.stop)
        self._started = False

    # -- setup steps --------------------------------------------------------------------------
    def _generate_keys(self) -> None:
        jobs = []
        targets = [(self.client_key_path, "netlab-client")]
        for name in self.names:
            hostdir = self.dir / "hosts" / name
            hostdir.mkdir(parents=True, exist_ok=True)
            targets.append((hostdir / "ssh_host_ed25519_key", name))
        for path, comment in targets:
            for p in (path, path.with_name(path.name + ".pub")):
                p.unlink(missing_ok=True)
            jobs.append(
                subprocess.Popen(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        for job in jobs:
            _, err = job.communicate()
            if job.returncode != 0:
                raise LabError(f"ssh-keygen failed: {err.decode().strip()}")
        pub = self.client_key_path.with_name(self.client_key_path.name + ".pub").read_text()
        (self.dir / "authorized_keys").write_text(pub)

    def _setup_network(self) -> None:
        REGISTRY.mkdir(mode=0o700, exist_ok=True)
        with open(REGISTRY / "lock", "w") as lock:
            # Choosing a free prefix and subnet and claiming them must be atomic across labs.
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.prefix = self._free_prefix()
            self.subnet = self._free_subnet()
            self._network_up = True
            self._register()
            self.hosts = {}
            for index, name in enumerate(self.names, start=2):
                hostdir = self.dir / "hosts" / name
                self.hosts[name] = Host(
                    name=name,
                    index=index,
                    address=str(self.subnet.network_address + index),
                    mac="02:{}:{}:{}:{:02x}:{:02x}".format(
                        self.prefix[3:5],
                        self.prefix[5:7],
                        "6c",
                        self.subnet.network_address.packed[2],
                        index,
                    ),
                    netns=f"{self.prefix}-{name}",
                    veth=f"{self.prefix}v{index}",
                    dir=hostdir,
                    known_hosts_path=self.known_hosts_path,
                    controller=name == CONTROLLER,
                )
            bridge = self.prefix
            lines = [
                f"link add {bridge} type bridge",
                f"addr add {self.root_address}/{self.subnet.prefixlen} dev {bridge}",
                f"link set {bridge} up",
            ]
            for h in self.hosts.values():
                lines += [
                    f"netns add {h.netns}",
                    f"link add {h.veth} type veth peer name eth0 address {h.mac} netns {h.netns}",
                    f"link set {h.veth} master {bridge}",
                    f"link set {h.veth} up",
                    # Permanent neighbour entries: a host whose link is down is dark (SYNs vanish
                    # and connects time out) instead of failing ARP with EHOSTUNREACH after 3 s.
                    f"neigh replace {h.address} lladdr {h.mac} dev {bridge} nud permanent",
                ]
            _run(["ip", "-batch", "-"], stdin="\n".join(lines) + "\n")
        jobs = []
        for h in self.hosts.values():
            lines = [
                "link set lo up",
                f"addr add {h.address}/{self.subnet.prefixlen} dev eth0",
                "link set eth0 up",
            ]
            if h.controller:
                lines += [
                    f"neigh replace {o.address} lladdr {o.mac} dev eth0 nud permanent"
                    for o in self.hosts.values()
                    if o is not h
                ]
            jobs.append(
                (
                    h,
                    subprocess.Popen(
                        ["ip", "-n", h.netns, "-batch", "-"],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        text=True,
                    ),
                    "\n".join(lines) + "\n",
                )
            )
        for h, job, script in jobs:
            _, err = job.communicate(script)
            if job.returncode != 0:
                raise LabError(f"network setup of {h.name} failed: {err.strip()}")

    def _free_prefix(self) -> str:
        taken = set(_lab_prefixes())
        while True:
            prefix = f"{PREFIX}{secrets.token_hex(2)}"
            if prefix not in taken:
                return prefix

    def _free_subnet(self) -> ipaddress.IPv4Network:
        used: list[ipaddress.IPv4Network] = []
        for route in json.loads(_run(["ip", "-j", "-4", "route", "show", "table", "all"])):
            dst = route.get("dst")
            if dst and dst != "default":
                with contextlib.suppress(ValueError):
                    used.append(ipaddress.ip_network(dst, strict=False))
        for addr in json.loads(_run(["ip", "-j", "-4", "addr"])):
            for info in addr.get("addr_info", []):
                with contextlib.suppress(ValueError, KeyError):
                    used.append(
                        ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False)
                    )
        start = secrets.randbelow(256)
        for k in range(256):
            candidate = ipaddress.ip_network(f"{SUBNET_FIRST_OCTETS}.{(start + k) % 256}.0/24")
            if not any(candidate.overlaps(u) for u in used):
                return candidate
        raise LabError(f"no free /24 in {SUBNET_FIRST_OCTETS}.0.0/16")

    def _register(self) -> None:
        info = {
            "prefix": self.prefix,
            "dir": str(self.dir),
            "owner_pid": os.getpid() if self.use_lifeline else None,
            "owner_start": _process_start_time(os.getpid()) if self.use_lifeline else None,
        }
        (REGISTRY / f"{self.prefix}.json").write_text(json.dumps(info))

    def _write_host_files(self) -> None:
        assert self.subnet is not None
        self.truth_path.write_text("")  # a reused directory starts a fresh ground truth
        known = []
        binds = _systemctl_bind_targets()
        passwd = Path("/etc/passwd").read_text().splitlines()
        for h in self.hosts.values():
            d = h.dir
            key_pub = (d / "ssh_host_ed25519_key.pub").read_text().split()
            known.append(f"{h.address} {key_pub[0]} {key_pub[1]}")
            (d / "sshd_config").write_text(
                _SSHD_CONFIG.format(name=h.name, address=h.address, hostdir=d, labdir=self.dir)
            )
            (d / "boot_id").write_text(str(uuid.uuid4()) + "\n")
            home = d / "home"
            home.mkdir(exist_ok=True)
            shell = self.login_shells.get(h.name)
            (d / "passwd").write_text("\n".join(_with_root_home(passwd, home, shell)) + "\n")
            (d / "state").write_text("starting\n")
            self._write_hostile(h)
            (d / "ready").unlink(missing_ok=True)
            fifo = d / "ctl.fifo"
            fifo.unlink(missing_ok=True)
            os.mkfifo(fifo, 0o600)
            sbin = d / "sbin"
            sbin.mkdir(exist_ok=True)
            for shim in ("systemctl", "reboot"):
                path = sbin / shim
                path.write_text(
                    _SHIM.format(
                        name=h.name,
                        hostdir=shlex.quote(str(d)),
                        unit_types="|".join(f"*.{t}" for t in UNIT_TYPES),
                    )
                )
                path.chmod(0o755)
            nixos = self._write_nixos(h)
            env = {"PATH": SERVICE_PATH, "HOME": str(home), "LANG": "C.UTF-8"}
            env.update(self.resume_env)
            config = {
                "name": h.name,
                "address": h.address,
                "iface": "eth0",
                "truth": str(self.truth_path),
                "sshd": SSHD,
                "fault": self.faults[h.name].as_json(),
                "controller": h.controller,
                "boot_time": self.boot_time,
                "shutdown_delay": self.shutdown_delay,
                # Only the controller runs programs that a shutdown should let exit cleanly.
                "kill_grace": self.kill_grace if h.controller else 0.0,
                "bind_systemctl": binds,
                "default_units": list(DEFAULT_UNITS),
                "resume_argv": self.resume_argv if h.controller else None,
                "resume_env": env,
                "resume_cwd": self.resume_cwd,
                "hostile": asdict(self.hostile.get(h.name, Hostile())),
                "hostile_text": HOSTILE_TEXT,
                "nixos": nixos,
            }
            (d / "host.json").write_text(json.dumps(config, indent=1))
        self.known_hosts_path.write_text("\n".join(known) + "\n")
        # The privilege separation directory OpenSSH insists on (the mount namespaces share /run).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self._save_description()

    def _write_nixos(self, h: Host) -> dict[str, Any] | None:
        """A fake NixOS host's directories and tool shims (hostd installs generation 1 at its
        first boot); on any other host, none of it (a reused lab dir included)."""
        sbin = h.dir / "sbin"
        shutil.rmtree(h.dir / "nixos", ignore_errors=True)
        for leftover in h.dir.glob("nixos-req.*"):
            leftover.unlink()
        if h.name not in self.nixos_hosts:
            for tool in (*NIXOS_TOOLS, "netlab-nixos"):
                (sbin / tool).unlink(missing_ok=True)
            return None
        root = h.dir / "nixos"
        for sub in ("nix/store", "nix/var/nix/profiles", "boot/loader/entries", "run", "hostrun"):
            (root / sub).mkdir(parents=True)
        (root / "efivars").mkdir()
        tool = sbin / "netlab-nixos"
        tool.write_text(_NIXOS_SHIM.format(name=h.name, hostdir=shlex.quote(str(h.dir))))
        tool.chmod(0o755)
        for name in NIXOS_TOOLS:
            wrapper = sbin / name
            wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(str(tool))} {name} "$@"\n')
            wrapper.chmod(0o755)
        return {
            "kernel": self.nixos_kernel,
            "release": NIXOS_RELEASE,
            "tool": shlex.quote(str(tool)),
            "mount_boot": Path("/boot").is_dir(),
        }

    def _write_hostile(self, h: Host) -> None:
        """The files the systemctl shim answers from on a hostile host (see `Hostile`)."""
        hostile = self.hostile.get(h.name, Hostile())
        d = h.dir / "hostile"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        # A command substitution in the shim drops the trailing newline; `yes` adds one back.
        if hostile.state == "forged":
            (d / "state").write_text("running\n" + HOSTILE_TEXT)
        elif hostile.state == "endless":
            (d / "state-endless").write_text(HOSTILE_TEXT)
        if hostile.reboot:
            (d / "reboot").write_text(HOSTILE_TEXT)

    def _save_description(self) -> None:
        desc = {
            "prefix": self.prefix,
            "subnet": str(self.subnet),
            "root_address": self.root_address,
            "client_key": str(self.client_key_path),
            "known_hosts": str(self.known_hosts_path),
            "truth": str(self.truth_path),
            "with_controller": self.with_controller,
            "nixos": sorted(self.nixos_hosts),
            "hosts": [
                {**asdict(h), "dir": str(h.dir), "known_hosts_path": str(h.known_hosts_path)}
                for h in self.hosts.values()
            ],
        }
        (self.dir / "lab.json").write_text(json.dumps(desc, indent=1))

    def _spawn_hostds(self) -> None:
        pass_fds: tuple[int, ...] = ()
        lifeline_args: list[str] = []
        if self.use_lifeline:
            r, self._lifeline_w = os.pipe()
            pass_fds = (r,)
            lifeline_args = ["--lifeline-fd", str(r)]
        try:
            for h in self.hosts.values():
                with open(h.dir / "hostd.log", "ab") as logf:
                    self._hostd[h.name] = subprocess.Popen(
                        [
                            "ip",
                            "netns",
                            "exec",
                            h.netns,
                            "unshare",
                            "--mount",
                            "--pid",
                            "--fork",
                            "--mount-proc",
                            "--kill-child",
                            sys.executable,
                            "-I",
                            "-S",
                            str(HOSTD),
                            str(h.dir),
                            *lifeline_args,
                        ],
                        stdin=subprocess.DEVNULL,
                        stdout=logf,
                        stderr=logf,
                        pass_fds=pass_fds,
                    )
        finally:
            if pass_fds:
                os.close(pass_fds[0])

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = dict(self.hosts)
        while pending:
            for name, h in list(pending.items()):
                if (h.dir / "ready").exists():
                    del pending[name]
                elif self._hostd[name].poll() is not None:
                    raise LabError(f"hostd of {name} died at start: {self._hostd_log_tail(h)}")
            if pending and time.monotonic() > deadline:
                raise LabError(f"hosts not ready after {timeout}s: {sorted(pending)}")
            time.sleep(0.01)
        for name, proc in self._hostd.items():
            children = _children(proc.pid)
            if children:
                self._init_pids[name] = children[0]

    def _hostd_log_tail(self, h: Host) -> str:
        text = ""
        for log in ("hostd.log", "sshd.log"):
            with contextlib.suppress(OSError):
                text += (h.dir / log).read_text()[-2000:]
        return text.strip() or "(no output)"

    # -- talking to hosts ---------------------------------------------------------------------
    def _request(self, host: str | Host, request: dict[str, Any], timeout: float = 5.0) -> Any:
        h = self._host(host)
        ack = h.dir / f"lab-ack.{uuid.uuid4().hex}"
        line = json.dumps({**request, "ack": str(ack)}) + "\n"
        try:
            fd = os.open(h.dir / "ctl.fifo", os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            raise LabError(f"hostd of {h.name} is not running: {e}") from e
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        deadline = time.monotonic() + timeout
        while not ack.exists():
            if time.monotonic() > deadline:
                raise LabError(f"hostd of {h.name} did not answer {request}")
            time.sleep(0.002)
        reply = json.loads(ack.read_text())
        ack.unlink()
        if not reply.get("ok"):
            raise LabError(f"hostd of {h.name}: {reply.get('error')}")
        return reply

    def reboot(self, host: str | Host) -> None:
        """Ask the host to reboot, as `systemctl reboot` on it would."""
        self._request(host, {"cmd": "reboot", "via": "lab"})

    def set_fault(self, host: str | Host, fault: Fault | None = None, **changes: Any) -> Fault:
        """Replace (or change fields of) the host's fault; applies from its next reboot."""
        h = self._host(host)
        new = replace(fault or self.faults[h.name], **changes)
        self.faults[h.name] = new
        if self._started:
            self._request(h, {"cmd": "set_fault", "fault": new.as_json()})
        return new

    def power_cycle(self, host: str | Host) -> None:
        """Press the power button: a host that is up goes down at once (no shutdown_delay,
        everything SIGKILLed) and boots; a dark one (hung at boot, `never_returns`, between
        `down` and `booted`) boots. On a fake NixOS host the boot chooses its entry again
        (a one-shot entry was used up by the boot before). Logs `power_cycle`."""
        self._request(host, {"cmd": "power_cycle"})

    def power_cycle_command(self, host: str | Host) -> list[str]:
        """argv of `power-cycle DIR HOST` for the orchestrator's `machines.<m>.power_cycle`:
        runs from any working directory (the orchestrator runs it in `flake`), because it
        finds this repository by path rather than through `python -m` and the cwd."""
        repo = str(Path(__file__).resolve().parents[2])
        code = (
            "import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from tests.netlab.cli import main; sys.exit(main(sys.argv[1:]))"
        )
        name = self._host(host).name
        return [sys.executable, "-c", code, repo, "power-cycle", str(self.dir), name]

    # -- fake NixOS ---------------------------------------------------------------------------
    def is_nixos(self, host: str | Host) -> bool:
        return self._host(host).name in self.nixos_hosts

    def deploy_command(
        self,
        *,
        kernel_version: str | None = None,
        healthy: bool | None = None,
        hangs_at_boot: bool | None = None,
        action: Literal["boot", "switch", "none"] | None = None,
        machine: str = "{machine}",
    ) -> list[str]:
        """argv of a per-machine deploy: `nixos-rebuild boot` of generation N+1 on one fake
        NixOS host (store path, profile link, switch-to-configuration ACTION). Runs anywhere
        on this machine (root namespace or the controller); prints a JSON object with
        `machine`, `nixos_generation`, `system`. `machine` stays `{machine}` for the
        orchestrator's `deploy.machine_command`. Unset options: the host's `set_deploy`
        settings, else its current kernel, healthy, not hanging, action boot."""
        argv = [sys.executable, "-I", "-S", str(HOSTD), "deploy", str(self.dir), machine]
        if kernel_version is not None:
            argv += ["--kernel-version", kernel_version]
        if healthy is not None:
            argv += ["--healthy", "yes" if healthy else "no"]
        if hangs_at_boot is not None:
            argv += ["--hangs-at-boot", "yes" if hangs_at_boot else "no"]
        if action is not None:
            argv += ["--action", action]
        return argv

    def deploy_generation(
        self,
        host: str | Host,
        *,
        kernel_version: str | None = None,
        healthy: bool | None = None,
        hangs_at_boot: bool | None = None,
        action: Literal["boot", "switch", "none"] | None = None,
        version: str | None = None,
    ) -> dict[str, Any]:
        """What `deploy_command` does, from the test: returns {nixos_generation, system}."""
        settings = {
            "kernel_version": kernel_version,
            "healthy": healthy,
            "hangs_at_boot": hangs_at_boot,
            "action": action,
            "version": version,
        }
        reply = self._request(
            host,
            {"cmd": "deploy", "settings": {k: v for k, v in settings.items() if v is not None}},
        )
        return {"nixos_generation": reply["nixos_generation"], "system": reply["system"]}

    def set_deploy(
        self,
        host: str | Host,
        *,
        kernel_version: str | None = None,
        healthy: bool | None = None,
        hangs_at_boot: bool | None = None,
        action: Literal["boot", "switch", "none"] | None = None,
    ) -> None:
        """What the host's next deploys build when the deploy does not say (replaces the
        earlier settings), e.g. `set_deploy("h2", healthy=False)`: h2's new generations fail
        their health check, whoever runs the deploy command."""
        settings = {
            "kernel_version": kernel_version,
            "healthy": healthy,
            "hangs_at_boot": hangs_at_boot,
            "action": action,
        }
        self._request(
            host,
            {"cmd": "set_deploy", "settings": {k: v for k, v in settings.items() if v is not None}},
        )

    def nixos_state(self, host: str | Host) -> dict[str, Any]:
        """A fake NixOS host's boot state, read from its files (in-host paths):
        `profile` {N: system}, `current_generation` (the profile's), `booted_system`,
        `current_system`, `entries` {N: entry}, `loader_default` (loader.conf),
        `efi_default` (bootctl set-default), `oneshot` (bootctl set-oneshot, not used yet)."""
        h = self._host(host)
        if h.name not in self.nixos_hosts:
            raise LabError(f"{h.name} is no fake NixOS host")
        root = h.dir / "nixos"
        profiles = root / "nix/var/nix/profiles"
        profile = {}
        for link in profiles.glob("system-*-link"):
            number = link.name[len("system-") : -len("-link")]
            if number.isdigit():
                profile[int(number)] = os.readlink(link)
        current = None
        with contextlib.suppress(OSError):
            current = int(os.readlink(profiles / "system")[len("system-") : -len("-link")])
        entries = {}
        for entry in (root / "boot/loader/entries").glob("nixos-generation-*.conf"):
            number = entry.name[len("nixos-generation-") : -len(".conf")]
            if number.isdigit():
                entries[int(number)] = entry.name

        def read(path: Path) -> str | None:
            try:
                return path.read_text().strip()
            except OSError:
                return None

        def link(path: Path) -> str | None:
            try:
                return os.readlink(path)
            except OSError:
                return None

        loader_default = None
        for line in (read(root / "boot/loader/loader.conf") or "").splitlines():
            if line.startswith("default "):
                loader_default = line.split(None, 1)[1].strip()
        return {
            "profile": dict(sorted(profile.items())),
            "current_generation": current,
            "booted_system": link(root / "run/booted-system"),
            "current_system": link(root / "run/current-system"),
            "entries": dict(sorted(entries.items())),
            "loader_default": loader_default,
            "efi_default": read(root / "efivars/LoaderEntryDefault"),
            "oneshot": read(root / "efivars/LoaderEntryOneShot"),
        }

    def booted_generations(self, host: str | Host) -> list[int | None]:
        """The profile generation each boot of a fake NixOS host ran, lab start first (from
        the `ready` and `booted` events); boots that hung (`boot_hung`) are not boots."""
        return [e.get("nixos_generation") for e in self.events(host, ("ready", "booted"))]

    def set_system_state(self, host: str | Host, state: str) -> None:
        """What `systemctl is-system-running` says from now on (e.g. degraded)."""
        self._request(host, {"cmd": "set_state", "state": state})

    def set_http(self, host: str | Host, mode: Literal["ok", "fail", "flap"]) -> None:
        """The health endpoint's mode from now on (while it is up)."""
        self._request(host, {"cmd": "set_http", "mode": mode})

    def set_unit(self, host: str | Host, unit: str, state: str) -> None:
        """What `systemctl is-active UNIT` says from now on, until the host's next boot.

        `nginx` means `nginx.service`, as with systemctl. Logs a `unit` event (via: lab)."""
        self._request(
            host, {"cmd": "set_unit", "unit": unit_name(unit), "state": unit_state(state)}
        )

    def boot_id(self, host: str | Host) -> str:
        return self._host(host).boot_id_path.read_text().strip()

    def ssh_argv(self, host: str | Host, *command: str, connect_timeout: float = 2.0) -> list[str]:
        """Plain OpenSSH client argv with strict host key checking against the lab's file."""
        h = self._host(host)
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.client_key_path),
            "-o",
            f"UserKnownHostsFile={self.known_hosts_path}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={max(1, round(connect_timeout))}",
            "-o",
            "LogLevel=ERROR",
            f"root@{h.address}",
            *command,
        ]

    # -- running programs inside a host ------------------------------------------------------
    def init_pid(self, host: str | Host) -> int:
        """The root-namespace pid of the host's PID 1 (hostd's init)."""
        h = self._host(host)
        pid = self._init_pids.get(h.name)
        if pid is not None and Path(f"/proc/{pid}").exists():
            return pid
        for pid in _pids_in_netns(h.netns):
            if _ns_pids(pid)[-1:] == [1] and len(_ns_pids(pid)) >= 2:
                self._init_pids[h.name] = pid
                return pid
        raise LabError(f"host {h.name} is not running")

    def enter_argv(
        self, host: str | Host, argv: Sequence[str], cwd: str | None = None
    ) -> list[str]:
        return [
            "nsenter",
            "-t",
            str(self.init_pid(host)),
            "-n",
            "-m",
            "-p",
            f"--wd={cwd or os.getcwd()}",
            "--",
            *argv,
        ]

    def _env_in(self, env: Mapping[str, str] | None) -> dict[str, str]:
        merged = dict(os.environ if env is None else env)
        merged["PATH"] = "/usr/local/sbin:" + merged.get("PATH", SERVICE_PATH)
        return merged

    def spawn_in(
        self,
        host: str | Host,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        **popen_kwargs: Any,
    ) -> NsPopen:
        """Start argv inside the host (its network, mount and PID namespaces).

        Its `systemctl`, `reboot` and boot_id are the host's; on the controller, a simulated
        reboot SIGTERMs (then SIGKILLs) it like a real shutdown would."""
        return NsPopen(
            self.enter_argv(host, argv, str(cwd) if cwd else None),
            env=self._env_in(env),
            **popen_kwargs,
        )

    def run_in(
        self,
        host: str | Host,
        argv: Sequence[str],
        *,
        check: bool = False,
        input: Any = None,
        timeout: float | None = None,
        capture_output: bool = False,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        **popen_kwargs: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """subprocess.run inside the host; a timeout kills the program itself, not just nsenter."""
        if capture_output:
            popen_kwargs.setdefault("stdout", subprocess.PIPE)
            popen_kwargs.setdefault("stderr", subprocess.PIPE)
        if input is not None:
            popen_kwargs.setdefault("stdin", subprocess.PIPE)
        with self.spawn_in(host, argv, cwd=cwd, env=env, **popen_kwargs) as proc:
            try:
                out, err = proc.communicate(input, timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise
            result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check:
            result.check_returncode()
        return result

    def processes_in(self, host: str | Host) -> list[_Proc]:
        """Processes in the host's PID namespace other than its init and hostd."""
        ino = _ns_inode(self.init_pid(host), "pid")
        procs = []
        for pid in _all_pids():
            if _ns_inode(pid, "pid") != ino:
                continue
            ns = _ns_pids(pid)
            if not ns or ns[-1] in (1, 2):
                continue
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
            except OSError:
                continue
            procs.append(_Proc(pid, ns[-1], [a.decode(errors="replace") for a in argv]))
        return procs

    def kill_in(self, host: str | Host, match: str, sig: int = signal.SIGKILL) -> list[int]:
        """Signal every process in the host whose command line contains `match`."""
        killed = []
        for proc in self.processes_in(host):
            if match in " ".join(proc.argv):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.outer_pid, sig)
                    killed.append(proc.outer_pid)
        return killed

    # -- orchestrator config ------------------------------------------------------------------
    def orchestrator_config(
        self, state_dir: str | os.PathLike[str], **overrides: Any
    ) -> dict[str, Any]:
        """A config per /tmp/interface.md for these hosts (controller last, as `local: true`).

        Keyword overrides are deep-merged, e.g. `reboot={"allow_degraded": True}`."""
        machines: dict[str, Any] = {}
        for h in self.hosts.values():
            if h.controller:
                machines[h.name] = {"local": True}
            else:
                machines[h.name] = {
                    "host": h.address,
                    "checks": [{"url": h.health_url, "status": 200, "timeout": 2}],
                }
        config: dict[str, Any] = {
            "flake": str(self.dir),
            "state_dir": str(state_dir),
            "update": {"command": ["true"], "timeout": 60},
            "deploy": {"command": ["true"], "timeout": 60},
            "ssh": {
                "user": "root",
                "port": 22,
                "identity_file": str(self.client_key_path),
                "known_hosts": str(self.known_hosts_path),
                # Sized for a busy 2-core CI machine, not an idle one: a 1 s connect and 1 s
                # probe timed out in preflight beside two CPU hogs and a pip install.
                "connect_timeout": 3,
            },
            "reboot": {
                "command": ["systemctl", "reboot"],
                "timeout": 30,
                "poll_interval": 0.25,
                "probe_timeout": 2,
                "stable_passes": 2,
                "settle": 0,
                "allow_degraded": False,
            },
            "preflight": True,
            "machines": machines,
        }
        return _deep_merge(config, overrides)

    def write_config(
        self, path: str | os.PathLike[str], state_dir: str | os.PathLike[str], **overrides: Any
    ) -> Path:
        import yaml  # the venv has it (a dependency of the product)

        out = Path(path)
        out.write_text(
            yaml.safe_dump(self.orchestrator_config(state_dir, **overrides), sort_keys=False)
        )
        return out

    # -- ground truth -------------------------------------------------------------------------
    def events(
        self,
        host: str | Host | None = None,
        event: str | Iterable[str] | None = None,
        since: float | None = None,
    ) -> list[dict[str, Any]]:
        """Ground-truth events in time order, optionally filtered."""
        name = self._host(host).name if host is not None else None
        wanted = {event} if isinstance(event, str) else set(event) if event else None
        out = []
        with open(self.truth_path) as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # a line being written right now
                e = json.loads(line)
                if name is not None and e["host"] != name:
                    continue
                if wanted is not None and e["event"] not in wanted:
                    continue
                if since is not None and e["t"] < since:
                    continue
                out.append(e)
        out.sort(key=lambda e: e["t"])
        return out

    def reboot_count(self, host: str | Host) -> int:
        """How many times the host really rebooted (new boot id written)."""
        return len(self.events(host, "booted"))

    def healthy_times(self, host: str | Host) -> list[float]:
        return [e["t"] for e in self.events(host, "healthy")]

    def reboot_order(self) -> list[str]:
        """Hosts in the order their reboots were requested (accepted or not)."""
        return [e["host"] for e in self.events(event="reboot_requested")]

    def wait_event(
        self,
        host: str | Host | None,
        event: str,
        timeout: float = 10.0,
        since: float | None = None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(host, event, since)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                who = self._host(host).name if host is not None else "any host"
                raise LabError(f"no {event!r} event from {who} within {timeout}s")
            time.sleep(0.01)

    @classmethod
    def attach(cls, workdir: str | os.PathLike[str]) -> Lab:
        """A handle on a lab started elsewhere (e.g. `python -m tests.netlab up`)."""
        desc = json.loads((Path(workdir) / "lab.json").read_text())
        names = [h["name"] for h in desc["hosts"] if not h["controller"]]
        lab = cls(
            workdir,
            names,
            controller=desc["with_controller"],
            lifeline=False,
            nixos=desc.get("nixos", ()),
        )
        lab._started = False  # stop() on a handle does nothing; `down()` removes the lab
        lab.prefix = desc["prefix"]
        lab.subnet = ipaddress.ip_network(desc["subnet"])
        for h in desc["hosts"]:
            h["dir"] = Path(h["dir"])
            h["known_hosts_path"] = Path(h["known_hosts_path"])
            host = lab.hosts[h["name"]] = Host(**h)
            with contextlib.suppress(OSError, ValueError, TypeError):
                fault = json.loads((host.dir / "host.json").read_text())["fault"]
                lab.faults[host.name] = Fault(**fault)
        return lab


def _ns_pids(pid: int) -> list[int]:
    """The pid of a process in each nested PID namespace, outermost first (NSpid)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(p) for p in line.split()[1:]]
    except OSError:
        pass
    return []


def _with_root_home(passwd: list[str], home: Path, shell: str | None = None) -> list[str]:
    out = []
    for line in passwd:
        fields = line.split(":")
        if len(fields) == 7 and fields[0] == "root":
            fields[5] = str(home)
            if shell is not None:
                fields[6] = shell
            line = ":".join(fields)
        out.append(line)
    return out


def _systemctl_bind_targets() -> list[list[str]]:
    """Real files to cover with a shim inside each host: [shim name, target path]."""
    binds: list[list[str]] = []
    seen: set[str] = set()
    for shim, candidates in (
        ("systemctl", ("/usr/bin/systemctl", "/bin/systemctl")),
        ("reboot", ("/usr/sbin/reboot", "/sbin/reboot")),
    ):
        for path in candidates:
            if not os.path.exists(path):
                continue
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            binds.append([shim, real])
    return binds


def _lab_prefixes() -> set[str]:
    prefixes = set()
    with contextlib.suppress(OSError):
        for name in os.listdir("/run/netns"):
            m = LAB_PREFIX_RE.match(name)
            if m:
                prefixes.add(m.group(0))
    for link in json.loads(_run(["ip", "-j", "link"]) or "[]"):
        m = LAB_PREFIX_RE.match(link.get("ifname", ""))
        if m:
            prefixes.add(m.group(0))
    with contextlib.suppress(OSError):
        for entry in REGISTRY.glob(f"{PREFIX}*.json"):
            prefixes.add(entry.stem)
    return prefixes


def _teardown_prefix(prefix: str) -> None:
    """Remove every process, namespace and link of one lab. Only touches names with its prefix."""
    netnses = []
    with contextlib.suppress(OSError):
        netnses = [n for n in os.listdir("/run/netns") if n.startswith(prefix + "-")]
    for ns in netnses:
        for pid in _pids_in_netns(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    links = [
        link["ifname"]
        for link in json.loads(_run(["ip", "-j", "link"]) or "[]")
        if link.get("ifname", "").startswith(prefix)
    ]
    # veths first (each takes its peer along), the bridge last
    lines = [f"link del {name}" for name in sorted(links, key=lambda n: n == prefix)]
    lines += [f"netns del {ns}" for ns in netnses]
    if lines:
        _run(["ip", "-force", "-batch", "-"], stdin="\n".join(lines) + "\n", check=False)
    (REGISTRY / f"{prefix}.json").unlink(missing_ok=True)


def down(prefix: str | None = None, *, stale_only: bool = False) -> list[str]:
    """Remove labs: one prefix, all `olb*` leftovers, or (stale_only) those whose owner died.

    Returns the prefixes removed."""
    removed = []
    for p in sorted(_lab_prefixes()):
        if prefix is not None and p != prefix:
            continue
        if stale_only:
            try:
                info = json.loads((REGISTRY / f"{p}.json").read_text())
            except (OSError, ValueError):
                continue  # not registered: being set up right now, or not ours to judge
            owner = info.get("owner_pid")
            if owner is None:
                continue  # detached on purpose (CLI `up --detach`)
            if _process_start_time(owner) == info.get("owner_start"):
                continue  # owner alive
        _teardown_prefix(p)
        removed.append(p)
    return removed
