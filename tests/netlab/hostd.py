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
import hashlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

MS_BIND = 4096
MS_REC = 16384
SSH_PORT = 22
HTTP_PORT = 8080
HUGE_BODY = 100 * 1000 * 1000  # Hostile.http == "huge"


def _mount_bind(source: str, target: str, recursive: bool = False) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    flags = MS_BIND | (MS_REC if recursive else 0)
    if libc.mount(source.encode(), target.encode(), None, flags, None) != 0:
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


# -- fake NixOS (Lab(nixos=...)) ------------------------------------------------------------

NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"
SYSTEM_PROFILE = "/nix/var/nix/profiles/system"
ENTRIES = "/boot/loader/entries"
ENTRY_PREFIX = "nixos-generation-"


def _store_hash(*parts: object) -> str:
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    return "".join(NIX_BASE32[b % 32] for b in digest)


def _entry_generation(entry: str) -> int | None:
    """N of `nixos-generation-N.conf`, else None."""
    if entry.startswith(ENTRY_PREFIX) and entry.endswith(".conf"):
        number = entry[len(ENTRY_PREFIX) : -len(".conf")]
        if number.isdigit() and not number.startswith("0"):
            return int(number)
    return None


def _store_name_ok(text: str) -> bool:
    """A version that can be part of a store path name (e.g. 6.12.7, 25.05.3-rc1)."""
    return (
        0 < len(text) <= 64
        and text[0].isalnum()
        and all(c.isascii() and (c.isalnum() or c in "._+-") for c in text)
    )


def _symlink_atomic(target: str, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, path)


class NixOSError(Exception):
    """A tool's error: its message goes to stderr, exit 1."""


class FakeNixOS:
    """One host's fake NixOS: a store, the system profile, boot entries, the booted system.

    Everything lives in HOSTDIR/nixos and is bind-mounted at the real paths inside the host
    (HOSTDIR/nixos/nix on /nix, .../boot on /boot, .../run on /run). Paths in links and
    messages are the in-host ones (/nix/store/...); `real()` maps them to HOSTDIR/nixos."""

    def __init__(self, host: Hostd, cfg: dict) -> None:
        self.host = host
        self.cfg = cfg
        self.root = os.path.join(host.dir, "nixos")
        self.deploy_defaults: dict = {}
        self.booted_entry: str | None = None  # the entry of this boot (bootctl's "selected")

    def real(self, path: str) -> str:
        """The HOSTDIR path of an in-host path under /nix, /boot, /run or /efivars."""
        return os.path.join(self.root, path.lstrip("/"))

    # -- setup and boot ------------------------------------------------------------------------
    def mount(self) -> None:
        _mount_bind(self.real("/nix"), "/nix")
        if self.cfg.get("mount_boot"):
            _mount_bind(self.real("/boot"), "/boot")
        # /run: a directory of the host dir with a link to each entry of the machine's /run
        # (reached through a bind of it), so sshd's /run/sshd and the rest stay as they were.
        hostrun = os.path.join(self.root, "hostrun")
        _mount_bind("/run", hostrun, recursive=True)
        run = self.real("/run")
        for name in os.listdir(hostrun):
            if name not in ("booted-system", "current-system"):
                _symlink_atomic(os.path.join(hostrun, name), os.path.join(run, name))
        _mount_bind(run, "/run")

    def install(self) -> None:
        """The machine as installed: generation 1, its boot entry the default."""
        if self.profile_generations():
            return
        system = self.build(self.cfg["kernel"], f"{self.cfg['release']}.1", True, False)
        self.add_generation(system, via="install")
        self.install_bootloader(system)

    def choose_boot(self) -> dict:
        """What the firmware boots: the one-shot entry (consumed), else the default entry
        (bootctl set-default), else loader.conf's default, else the latest entry."""
        efi = self.real("/efivars")
        candidates = []
        oneshot = self._read(os.path.join(efi, "LoaderEntryOneShot"))
        if oneshot is not None:
            os.unlink(os.path.join(efi, "LoaderEntryOneShot"))
            candidates.append((oneshot, "oneshot"))
        default = self._read(os.path.join(efi, "LoaderEntryDefault"))
        if default:
            candidates.append((default, "default"))
        conf = self.loader_conf_default()
        if conf:
            candidates.append((conf, "loader.conf"))
        entries = self.entries()
        if entries:
            candidates.append((f"{ENTRY_PREFIX}{max(entries)}.conf", "latest"))
        for entry, how in candidates:
            system = self.entry_system(entry)
            if system is not None:
                return {
                    "entry": entry,
                    "chosen_by": how,
                    "nixos_generation": _entry_generation(entry),
                    "system": system,
                    **({"oneshot": oneshot} if oneshot is not None else {}),
                }
        current = self.profile_current()
        system = self.profile_generations().get(current) if current else None
        if system is None:
            raise RuntimeError("nothing to boot: no boot entry and no system profile")
        return {
            "entry": None,
            "chosen_by": "profile",
            "nixos_generation": current,
            "system": system,
        }

    def set_booted(self, system: str) -> None:
        run = self.real("/run")
        _symlink_atomic(system, os.path.join(run, "booted-system"))
        _symlink_atomic(system, os.path.join(run, "current-system"))

    def meta(self, system: str) -> dict:
        try:
            with open(os.path.join(self.root, "systems", os.path.basename(system) + ".json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    # -- the store -----------------------------------------------------------------------------
    def build(self, kernel: str, version: str, healthy: bool, hangs_at_boot: bool) -> str:
        """A system in the store (and its kernel, initrd, modules); the same inputs give the
        same path, as in Nix."""
        name = self.host.name
        kdir = f"/nix/store/{_store_hash('linux', kernel)}-linux-{kernel}"
        mdir = f"/nix/store/{_store_hash('modules', kernel)}-linux-{kernel}-modules"
        idir = f"/nix/store/{_store_hash('initrd', name, kernel)}-initrd-linux-{kernel}"
        h = _store_hash("system", name, version, kernel, healthy, hangs_at_boot)
        system = f"/nix/store/{h}-nixos-system-{name}-{version}"
        for path, content in (
            (kdir + "/bzImage", f"fake Linux {kernel} kernel\n"),
            (idir + "/initrd", f"fake initrd for Linux {kernel}\n"),
            (f"{mdir}/lib/modules/{kernel}/modules.dep", ""),
        ):
            if not os.path.exists(self.real(path)):
                os.makedirs(os.path.dirname(self.real(path)), exist_ok=True)
                _write_atomic(self.real(path), content)
        if not os.path.isdir(self.real(system)):
            tmp = self.real(system) + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(os.path.join(tmp, "bin"))
            os.symlink(kdir + "/bzImage", os.path.join(tmp, "kernel"))
            os.symlink(idir + "/initrd", os.path.join(tmp, "initrd"))
            os.symlink(mdir, os.path.join(tmp, "kernel-modules"))
            with open(os.path.join(tmp, "nixos-version"), "w") as f:
                f.write(version)
            with open(os.path.join(tmp, "kernel-params"), "w") as f:
                f.write("loglevel=4")
            with open(os.path.join(tmp, "init"), "w") as f:
                f.write("#!/bin/sh\n# netlab: a fake NixOS stage 2\n")
            stc = os.path.join(tmp, "bin", "switch-to-configuration")
            with open(stc, "w") as f:
                f.write(
                    "#!/bin/sh\n# netlab stand-in: see tests/netlab/README.md (Fake NixOS)\n"
                    f'exec {self.cfg["tool"]} switch-to-configuration {system} "$@"\n'
                )
            os.chmod(stc, 0o755)
            os.chmod(os.path.join(tmp, "init"), 0o755)
            os.makedirs(os.path.join(self.root, "systems"), exist_ok=True)
            meta = {
                "system": system,
                "kernel": kernel,
                "version": version,
                "healthy": healthy,
                "hangs_at_boot": hangs_at_boot,
            }
            _write_atomic(
                os.path.join(self.root, "systems", os.path.basename(system) + ".json"),
                json.dumps(meta),
            )
            os.rename(tmp, self.real(system))
            self.host.log("system_built", **meta)
        return system

    def is_system(self, path: str) -> bool:
        return (
            path.startswith("/nix/store/")
            and "/" not in path[len("/nix/store/") :]
            and ".." not in path
            and os.path.isfile(self.real(path) + "/nixos-version")
        )

    # -- the system profile --------------------------------------------------------------------
    def profile_generations(self) -> dict[int, str]:
        profiles = self.real("/nix/var/nix/profiles")
        out = {}
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(profiles):
                if name.startswith("system-") and name.endswith("-link"):
                    number = name[len("system-") : -len("-link")]
                    if number.isdigit():
                        out[int(number)] = os.readlink(os.path.join(profiles, name))
        return dict(sorted(out.items()))

    def profile_current(self) -> int | None:
        try:
            link = os.readlink(self.real(SYSTEM_PROFILE))
        except OSError:
            return None
        number = link[len("system-") : -len("-link")]
        return int(number) if number.isdigit() else None

    def add_generation(self, system: str, via: str) -> int:
        gens = self.profile_generations()
        number = max(gens, default=0) + 1
        profiles = self.real("/nix/var/nix/profiles")
        os.makedirs(profiles, exist_ok=True)
        os.symlink(system, os.path.join(profiles, f"system-{number}-link"))
        _symlink_atomic(f"system-{number}-link", os.path.join(profiles, "system"))
        self.host.log("profile", nixos_generation=number, system=system, via=via)
        return number

    def switch_profile(self, number: int, via: str) -> None:
        system = self.profile_generations()[number]
        profiles = self.real("/nix/var/nix/profiles")
        _symlink_atomic(f"system-{number}-link", os.path.join(profiles, "system"))
        self.host.log("profile", nixos_generation=number, system=system, via=via)

    # -- boot loader ---------------------------------------------------------------------------
    def entries(self) -> dict[int, str]:
        """Boot entries: generation -> entry file name."""
        out = {}
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.real(ENTRIES)):
                number = _entry_generation(name)
                if number is not None:
                    out[number] = name
        return dict(sorted(out.items()))

    def entry_system(self, entry: str) -> str | None:
        if "/" in entry or entry.startswith("."):
            return None
        text = self._read(os.path.join(self.real(ENTRIES), entry))
        for line in (text or "").splitlines():
            if line.startswith("options "):
                for word in line.split()[1:]:
                    if word.startswith("init=") and word.endswith("/init"):
                        return word[len("init=") : -len("/init")]
        return None

    def loader_conf_default(self) -> str | None:
        text = self._read(self.real("/boot/loader/loader.conf")) or ""
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "default" and value.strip():
                return value.strip()
        return None

    def install_bootloader(self, system: str) -> str | None:
        """What `switch-to-configuration boot` does with systemd-boot: an entry per profile
        generation (others removed), and loader.conf's default = the latest generation that
        is `system`. Returns that entry (None: no generation is `system`, default unchanged)."""
        entries_dir = self.real(ENTRIES)
        os.makedirs(entries_dir, exist_ok=True)
        gens = self.profile_generations()
        for number, name in self.entries().items():
            if number not in gens:
                os.unlink(os.path.join(entries_dir, name))
        default = None
        for number, gen_system in gens.items():
            meta = self.meta(gen_system)
            kernel = meta.get("kernel", "?")
            k = os.path.basename(os.readlink(self.real(gen_system) + "/kernel"))
            _write_atomic(
                os.path.join(entries_dir, f"{ENTRY_PREFIX}{number}.conf"),
                f"title NixOS\n"
                f"version Generation {number} NixOS {meta.get('version', '?')}, "
                f"Linux Kernel {kernel}\n"
                f"linux /EFI/nixos/{_store_hash('linux', kernel)}-linux-{kernel}-{k}.efi\n"
                f"initrd /EFI/nixos/{_store_hash('initrd', kernel)}-initrd-linux-{kernel}.efi\n"
                f"options init={gen_system}/init loglevel=4\n"
                f"sort-key nixos\n",
            )
            if gen_system == system:
                default = f"{ENTRY_PREFIX}{number}.conf"
        if default is not None:
            _write_atomic(self.real("/boot/loader/loader.conf"), f"timeout 5\ndefault {default}\n")
        return default

    # -- requests ------------------------------------------------------------------------------
    def deploy(self, request: dict) -> dict:
        """`nixos-rebuild boot` (or switch) of a new system: built, generation N+1, then its
        switch-to-configuration. Unset settings: the host's deploy defaults (set_deploy),
        else the current profile's kernel and healthy."""
        settings = {**self.deploy_defaults}
        settings.update({k: v for k, v in request.items() if v is not None})
        for key in ("kernel_version", "version"):
            value = settings.get(key)
            if value is not None and not _store_name_ok(str(value)):
                raise ValueError(f"bad {key} {value!r}")
        gens = self.profile_generations()
        current = gens.get(self.profile_current() or 0) or next(reversed(gens.values()))
        kernel = str(settings.get("kernel_version") or self.meta(current).get("kernel"))
        number = max(gens, default=0) + 1
        version = str(settings.get("version") or f"{self.cfg['release']}.{number}")
        action = settings.get("action") or "boot"
        if action not in ("boot", "switch", "none"):
            raise ValueError(f"bad deploy action {action!r}")
        system = self.build(
            kernel,
            version,
            bool(settings.get("healthy", True)),
            bool(settings.get("hangs_at_boot")),
        )
        number = self.add_generation(system, via="deploy")
        if action != "none":
            self.switch_to_configuration(system, action, via="deploy")
        return {"nixos_generation": number, "system": system}

    def switch_to_configuration(self, system: str, action: str, via: str) -> str:
        out = ""
        if action in ("boot", "switch"):
            default = self.install_bootloader(system)
            if default is None:
                out = f"warning: no generation of {SYSTEM_PROFILE} is {system}; default unchanged\n"
            self.host.log(
                "switch_to_configuration",
                action=action,
                system=system,
                default=default,
                nixos_generation=_entry_generation(default) if default else None,
                via=via,
            )
        if action in ("switch", "test"):
            if action == "test":
                self.host.log("switch_to_configuration", action=action, system=system, via=via)
            _symlink_atomic(system, os.path.join(self.real("/run"), "current-system"))
            healthy = self.meta(system).get("healthy", True)
            with self.host.lock:
                self.host.http_mode = self.host.fault.get("http", "ok") if healthy else "fail"
                self.host.log("http_mode", mode=self.host.http_mode, via="activation")
            self.host.check_healthy()
        return out

    def tool(self, tool: str, args: list[str]) -> tuple[int, str, str]:
        try:
            if tool == "bootctl":
                return 0, self.bootctl(args), ""
            if tool == "nix-env":
                return 0, self.nix_env(args), ""
            if tool == "switch-to-configuration":
                system, action = args[0], args[1] if len(args) > 1 else ""
                if not self.is_system(system):
                    raise NixOSError(f"switch-to-configuration: {system} is no system")
                if action not in ("boot", "switch", "test", "dry-activate"):
                    raise NixOSError(
                        "Usage: switch-to-configuration [switch|boot|test|dry-activate]"
                    )
                if action == "dry-activate":
                    return 0, "", ""
                return 0, "", self.switch_to_configuration(system, action, via=tool)
            raise NixOSError(f"netlab: unknown tool {tool!r}")
        except NixOSError as e:
            return 1, "", f"{e}\n"

    def bootctl(self, args: list[str]) -> str:
        words = [a for a in args if not a.startswith("-")]
        json_out = any(a.startswith("--json") and a != "--json=off" for a in args)
        verb = words[0] if words else "status"
        efi = self.real("/efivars")
        if verb in ("set-default", "set-oneshot"):
            if len(words) != 2:
                raise NixOSError(f"bootctl {verb}: expects one entry id")
            entry = words[1]
            if entry and (
                "/" in entry or entry.startswith(".") or len(entry) > 255 or not entry.isprintable()
            ):
                raise NixOSError(f"bootctl {verb}: bad entry id {entry!r}")
            var = "LoaderEntryDefault" if verb == "set-default" else "LoaderEntryOneShot"
            os.makedirs(efi, exist_ok=True)
            if entry:
                _write_atomic(os.path.join(efi, var), entry)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(efi, var))
            self.host.log("bootctl", verb=verb, entry=entry or None)
            return ""
        if verb == "list":
            return self.bootctl_list(json_out)
        if verb == "status":
            effective = self.effective_default()
            return (
                "System:\n      Firmware: netlab\n"
                f"  Current Entry: {self.booted_entry or ''}\n"
                f"  Default Entry: {effective or ''}\n"
                f"  OneShot Entry: {self._read(os.path.join(efi, 'LoaderEntryOneShot')) or ''}\n"
            )
        raise NixOSError(f"netlab bootctl: unsupported: {' '.join(args)}")

    def effective_default(self) -> str | None:
        efi = self._read(os.path.join(self.real("/efivars"), "LoaderEntryDefault"))
        for entry in (efi, self.loader_conf_default()):
            if entry and self.entry_system(entry) is not None:
                return entry
        entries = self.entries()
        return entries[max(entries)] if entries else None

    def bootctl_list(self, json_out: bool) -> str:
        default = self.effective_default()
        items = []
        for number, name in sorted(self.entries().items(), reverse=True):
            system = self.entry_system(name)
            items.append(
                {
                    "type": "type1",
                    "id": name,
                    "path": f"{ENTRIES}/{name}",
                    "title": "NixOS",
                    "showTitle": f"NixOS (Generation {number})",
                    "version": f"Generation {number}",
                    "options": f"init={system}/init loglevel=4",
                    "isDefault": name == default,
                    "isSelected": name == self.booted_entry,
                }
            )
        if json_out:
            return json.dumps(items) + "\n"
        out = ["Boot Loader Entries:"]
        for item in items:
            marks = (" (default)" if item["isDefault"] else "") + (
                " (selected)" if item["isSelected"] else ""
            )
            out += [
                "         type: Boot Loader Specification Type #1 (.conf)",
                f"        title: {item['showTitle']}{marks}",
                f"           id: {item['id']}",
                f"       source: {item['path']}",
                f"      version: {item['version']}",
                f"      options: {item['options']}",
                "",
            ]
        return "\n".join(out) + "\n"

    def nix_env(self, args: list[str]) -> str:
        profile = None
        rest = []
        i = 0
        while i < len(args):
            if args[i] in ("-p", "--profile") and i + 1 < len(args):
                profile = args[i + 1]
                i += 2
                continue
            rest.append(args[i])
            i += 1
        if profile not in (SYSTEM_PROFILE, "/nix/var/nix/profiles/system/"):
            raise NixOSError(f"netlab nix-env: only `-p {SYSTEM_PROFILE}` is supported")
        if rest[:1] == ["--set"] and len(rest) == 2:
            path = rest[1].rstrip("/")
            if not self.is_system(path):
                raise NixOSError(f"error: path '{path}' is not a valid system in the store")
            self.add_generation(path, via="nix-env")
            return ""
        if rest == ["--list-generations"]:
            current = self.profile_current()
            lines = []
            for number in self.profile_generations():
                link = self.real(f"/nix/var/nix/profiles/system-{number}-link")
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.lstat(link).st_mtime))
                lines.append(
                    f"{number:4}   {stamp}   " + ("(current)" if number == current else "")
                )
            return "\n".join(lines) + "\n"
        if rest == ["--rollback"]:
            older = [n for n in self.profile_generations() if n < (self.profile_current() or 0)]
            if not older:
                raise NixOSError("error: no generation older than the current generation")
            self.switch_profile(max(older), via="nix-env")
            return ""
        if len(rest) == 2 and rest[0] in ("--switch-generation", "-G") and rest[1].isdigit():
            if int(rest[1]) not in self.profile_generations():
                raise NixOSError(f"error: generation {rest[1]} does not exist")
            self.switch_profile(int(rest[1]), via="nix-env")
            return ""
        raise NixOSError(f"netlab nix-env: unsupported: {' '.join(args)}")

    @staticmethod
    def _read(path: str) -> str | None:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return None


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
        self.reboots: queue.Queue[str] = queue.Queue()  # "reboot" | "power_cycle"
        self.resume_count = 0
        self.dark = False  # down (after `down`, until `booted`): a power cycle skips shutdown
        self.nixos = FakeNixOS(self, cfg["nixos"]) if cfg.get("nixos") else None

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
        if self.nixos is not None:
            self.nixos.mount()

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
        details: dict[str, object] = {}
        if self.nixos is not None:
            self.nixos.install()
            details = self.boot_nixos()
        boot_id = self.write_boot_id()
        self.write_units(self.fault, None)
        self.start_sshd()
        self.ssh_up = True
        self.http.start(self.address)
        self.http_listening = True
        self.set_state("running")
        self.log("ready", boot_id=boot_id, address=self.address, **details)
        _write_atomic(os.path.join(self.dir, "ready"), boot_id + "\n")

    def boot_nixos(self) -> dict[str, object]:
        """The fake firmware's choice of boot entry; /run/booted-system and current-system."""
        assert self.nixos is not None
        choice = self.nixos.choose_boot()
        self.nixos.set_booted(str(choice["system"]))
        self.nixos.booted_entry = choice["entry"]
        return choice

    def reboot(self, power_cycle: bool = False) -> None:
        """`systemctl reboot` (shutdown_delay, then a clean shutdown), or a power cycle (hard
        reset at once; on a host that is down, just the boot)."""
        with self.lock:
            fault = dict(self.fault)
        if power_cycle and self.dark:
            with self.lock:
                self.generation += 1
                generation = self.generation
        else:
            if not power_cycle:
                time.sleep(self.cfg["shutdown_delay"])
            with self.lock:
                self.generation += 1
                generation = self.generation
                self.ssh_up = False
                self.http_listening = False
                self.healthy_logged = False
            self.kill_everything(0.0 if power_cycle else self.cfg["kill_grace"])
            self.http.stop()
            refuse = bool(fault.get("refuse"))
            if not refuse:
                self.link(False)
            self.dark = True
            extra = {"power_cycle": True} if power_cycle else {}
            self.log("down", link="up" if refuse else "down", generation=generation, **extra)
            if fault.get("never_returns") and not power_cycle:
                return  # stays dark (or refusing) until a power cycle; rebooting stays True
        refuse = bool(fault.get("refuse"))
        http_mode = fault.get("http", "ok")
        details: dict[str, object] = {}
        if self.nixos is not None:
            choice = self.nixos.choose_boot()
            if self.nixos.meta(str(choice["system"])).get("hangs_at_boot"):
                self.log("boot_hung", generation=generation, **choice)
                return  # dark until a power cycle; rebooting stays True
            if not self.nixos.meta(str(choice["system"])).get("healthy", True):
                http_mode = "fail"
        boot_time = fault.get("boot_time")
        time.sleep(self.cfg["boot_time"] if boot_time is None else boot_time)
        if fault.get("new_host_key"):
            details["host_key"] = self.new_host_key()
        if self.nixos is not None:
            self.nixos.set_booted(str(choice["system"]))
            self.nixos.booted_entry = choice["entry"]
            details.update(choice)
        boot_id = self.write_boot_id()
        self.dark = False
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
            self.http_mode = http_mode
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
                    self.reboots.put("reboot")
            return {"ok": True}
        if cmd == "power_cycle":
            with self.lock:
                self.log("power_cycle", dark=self.dark)
                self.rebooting = True
                if not self.dark:
                    self.set_state("stopping")
                self.reboots.put("power_cycle")
            return {"ok": True}
        if cmd in ("nixos_tool", "deploy", "set_deploy") and self.nixos is None:
            return {"ok": False, "error": f"{self.name} is no fake NixOS host (Lab(nixos=...))"}
        if cmd == "nixos_tool":
            return self.nixos_tool(request)
        if cmd == "deploy":
            with self.lock:
                return {"ok": True, **self.nixos.deploy(request.get("settings") or {})}
        if cmd == "set_deploy":
            with self.lock:
                self.nixos.deploy_defaults = dict(request.get("settings") or {})
                self.log("deploy_settings", settings=self.nixos.deploy_defaults)
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

    def nixos_tool(self, request: dict) -> dict:
        """A run of the bootctl / nix-env / switch-to-configuration shim: NUL-separated
        arguments in a file; stdout and stderr written to files; the exit code in the reply."""
        assert self.nixos is not None
        tool = str(request.get("tool"))
        with open(request["args"], "rb") as f:
            raw = f.read()
        os.unlink(request["args"])
        args = [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]
        with self.lock:
            code, out, err = self.nixos.tool(tool, args)
        _write_atomic(request["out"], out)
        _write_atomic(request["err"], err)
        return {"ok": True, "code": code}

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
            kind = self.reboots.get()
            try:
                self.reboot(power_cycle=kind == "power_cycle")
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


def request(hostdir: str, req: dict, timeout: float = 30.0) -> dict:
    """Send one control request to a host's hostd (as the shims do) and return its reply."""
    ack = os.path.join(hostdir, f"client-ack.{uuid.uuid4().hex}")
    line = json.dumps({**req, "ack": ack}) + "\n"
    try:
        fd = os.open(os.path.join(hostdir, "ctl.fifo"), os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        raise RuntimeError(f"host is not running ({e})") from e
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    deadline = time.monotonic() + timeout
    while not os.path.exists(ack):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no answer within {timeout}s")
        time.sleep(0.005)
    with open(ack) as f:
        reply = json.load(f)
    os.unlink(ack)
    return reply


DEPLOY_USAGE = (
    "usage: hostd.py deploy LABDIR MACHINE [--kernel-version V] [--version V] "
    "[--healthy yes|no] [--hangs-at-boot yes|no] [--action boot|switch|none]"
)


def deploy_main(argv: list[str]) -> int:
    """`nixos-rebuild boot` of a new generation on one fake NixOS host of a lab: prints
    {"machine", "nixos_generation", "system"} as JSON. Unset options: the host's deploy
    settings (Lab.set_deploy), else its current kernel, healthy, not hanging, action boot."""
    if len(argv) < 2 or len(argv) % 2:
        print(DEPLOY_USAGE, file=sys.stderr)
        return 2
    labdir, machine = argv[0], argv[1]
    if not machine or not all(c.isalnum() or c in ".-" for c in machine) or machine[0] == ".":
        print(f"deploy: bad machine name {machine!r}", file=sys.stderr)
        return 2
    settings: dict[str, object] = {}
    flags = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
    for key, value in zip(argv[2::2], argv[3::2], strict=True):
        name = key[2:].replace("-", "_") if key.startswith("--") else ""
        if name in ("kernel_version", "version", "action"):
            settings[name] = value
        elif name in ("healthy", "hangs_at_boot") and value.lower() in flags:
            settings[name] = flags[value.lower()]
        else:
            print(DEPLOY_USAGE, file=sys.stderr)
            return 2
    hostdir = os.path.join(labdir, "hosts", machine)
    try:
        reply = request(hostdir, {"cmd": "deploy", "settings": settings})
    except RuntimeError as e:
        print(f"deploy to {machine} failed: {e}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"deploy to {machine} failed: {reply.get('error')}", file=sys.stderr)
        return 1
    out = {"machine": machine, **{k: v for k, v in reply.items() if k != "ok"}}
    print(json.dumps(out))
    return 0


def main(argv: list[str]) -> None:
    if argv[:1] == ["deploy"]:
        sys.exit(deploy_main(argv[1:]))
    hostdir = argv[0]
    lifeline = None
    if len(argv) >= 3 and argv[1] == "--lifeline-fd":
        lifeline = int(argv[2])
    if os.getpid() != 1:
        sys.exit("hostd must run as PID 1 of its own PID namespace (see Lab)")
    init_main(hostdir, lifeline)


if __name__ == "__main__":
    main(sys.argv[1:])
