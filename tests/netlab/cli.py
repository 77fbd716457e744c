"""`python -m tests.netlab`: bring a lab up by hand, poke at it, tear it down.

python -m tests.netlab up 4 --controller          # runs until Ctrl-C, prints events
python -m tests.netlab up 4 --detach              # leaves it running; prints its dir
python -m tests.netlab config DIR                 # orchestrator config for it (YAML)
python -m tests.netlab ssh DIR h1 systemctl is-system-running
python -m tests.netlab reboot DIR h1              # as `systemctl reboot` on h1
python -m tests.netlab fault DIR h2 http=fail boot_time=3
python -m tests.netlab state DIR h2 degraded      # what is-system-running says now
python -m tests.netlab http DIR h2 flap           # health endpoint mode now
python -m tests.netlab power-cycle DIR h1         # hard reset (or boot a dark host)
python -m tests.netlab deploy DIR h1 --kernel-version 6.12.9   # fake NixOS: generation N+1
python -m tests.netlab events DIR [--host h1] [--follow]
python -m tests.netlab down [--prefix olbXXXX] [--stale]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from tests.netlab.lab import Fault, Lab, LabError, down


def _parse_fault(pairs: list[str]) -> dict[str, object]:
    types = {f.name: f.type for f in dataclasses.fields(Fault)}
    changes: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"error: fault settings are KEY=VALUE with KEY in {sorted(types)}")
        kind = str(types[key])
        if "bool" in kind:
            changes[key] = raw.lower() in ("1", "true", "yes", "on")
        elif "float" in kind:
            changes[key] = None if raw.lower() == "none" else float(raw)
        else:
            changes[key] = raw
    return changes


def _print_event(e: dict[str, object]) -> None:
    details = {k: v for k, v in e.items() if k not in ("t", "host", "event")}
    t = float(e["t"])  # type: ignore[arg-type]
    stamp = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
    print(f"{stamp} {e['host']:<12} {e['event']:<17} {json.dumps(details)}", flush=True)


def _follow(lab: Lab, host: str | None) -> None:
    seen = 0
    while True:
        events = lab.events(host)
        for e in events[seen:]:
            _print_event(e)
        seen = len(events)
        time.sleep(0.2)


def cmd_up(args: argparse.Namespace) -> int:
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="netlab-"))
    faults = {}
    for spec in args.fault or []:
        host, _, settings = spec.partition(":")
        faults[host] = Fault(**_parse_fault(settings.split(",")))  # type: ignore[arg-type]
    lab = Lab(
        workdir,
        args.hosts,
        controller=args.controller,
        faults=faults,
        boot_time=args.boot_time,
        lifeline=not args.detach,
        nixos=args.nixos,
    )
    started = time.monotonic()
    lab.start()
    config = lab.write_config(workdir / "orchestrator.yaml", workdir / "state")
    print(f"lab {lab.prefix} up in {time.monotonic() - started:.2f}s: {workdir}")
    for h in lab.hosts.values():
        print(f"  {h.name:<12} {h.address:<15} netns {h.netns}")
    print(f"  config: {config}")
    print(f"  ssh:    python -m tests.netlab ssh {workdir} {next(iter(lab.hosts))} uptime")
    if args.detach:
        lab.detach()
        print(f"  stop:   python -m tests.netlab down --prefix {lab.prefix}")
        return 0
    print("events (Ctrl-C stops the lab):", flush=True)
    try:
        _follow(lab, None)
    except KeyboardInterrupt:
        pass
    finally:
        lab.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.netlab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start a lab")
    up.add_argument("hosts", type=int, nargs="?", default=4)
    up.add_argument("--controller", action="store_true", help="add the `controller` host")
    up.add_argument("--dir", help="lab directory (default: a new temp dir)")
    up.add_argument("--boot-time", type=float, default=1.5)
    up.add_argument("--fault", action="append", metavar="HOST:K=V[,K=V]")
    up.add_argument("--detach", action="store_true", help="leave it running and return")
    up.add_argument("--nixos", action="store_true", help="fake NixOS on every host but controller")

    config = sub.add_parser("config", help="print an orchestrator config for a lab")
    config.add_argument("dir")
    config.add_argument("--state-dir")

    ssh = sub.add_parser("ssh", help="ssh into a host with the lab's key and known_hosts")
    ssh.add_argument("dir")
    ssh.add_argument("host")
    ssh.add_argument("remote", nargs=argparse.REMAINDER, metavar="COMMAND")

    reboot = sub.add_parser("reboot", help="reboot a host as `systemctl reboot` on it would")
    reboot.add_argument("dir")
    reboot.add_argument("host")

    cycle = sub.add_parser("power-cycle", help="hard reset a host (or boot a dark one)")
    cycle.add_argument("dir")
    cycle.add_argument("host")

    deploy = sub.add_parser("deploy", help="fake NixOS: deploy generation N+1 (nixos-rebuild boot)")
    deploy.add_argument("dir")
    deploy.add_argument("host")
    deploy.add_argument("--kernel-version")
    deploy.add_argument("--unhealthy", action="store_true")
    deploy.add_argument("--hangs-at-boot", action="store_true")
    deploy.add_argument("--action", choices=["boot", "switch", "none"])

    fault = sub.add_parser("fault", help="change a host's fault (applies from its next reboot)")
    fault.add_argument("dir")
    fault.add_argument("host")
    fault.add_argument("settings", nargs="+", metavar="KEY=VALUE")

    state = sub.add_parser("state", help="set what `systemctl is-system-running` says")
    state.add_argument("dir")
    state.add_argument("host")
    state.add_argument("state")

    http = sub.add_parser("http", help="set the health endpoint's mode: ok | fail | flap")
    http.add_argument("dir")
    http.add_argument("host")
    http.add_argument("mode", choices=["ok", "fail", "flap"])

    events = sub.add_parser("events", help="print the ground-truth log")
    events.add_argument("dir")
    events.add_argument("--host")
    events.add_argument("--follow", "-f", action="store_true")

    dn = sub.add_parser("down", help="remove labs (all `olb*` leftovers by default)")
    dn.add_argument("--prefix")
    dn.add_argument("--stale", action="store_true", help="only labs whose owner process died")

    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return cmd_up(args)
        if args.command == "down":
            removed = down(args.prefix, stale_only=args.stale)
            print("removed: " + (" ".join(removed) if removed else "nothing"))
            return 0
        lab = Lab.attach(args.dir)
        if args.command == "config":
            import yaml

            state_dir = args.state_dir or str(Path(args.dir) / "state")
            print(yaml.safe_dump(lab.orchestrator_config(state_dir), sort_keys=False), end="")
        elif args.command == "ssh":
            argv_ssh = lab.ssh_argv(args.host, *args.remote)
            os.execvp(argv_ssh[0], argv_ssh)
        elif args.command == "reboot":
            lab.reboot(args.host)
        elif args.command == "power-cycle":
            lab.power_cycle(args.host)
        elif args.command == "deploy":
            print(
                lab.deploy_generation(
                    args.host,
                    kernel_version=args.kernel_version,
                    healthy=False if args.unhealthy else None,
                    hangs_at_boot=True if args.hangs_at_boot else None,
                    action=args.action,
                )
            )
        elif args.command == "fault":
            print(lab.set_fault(args.host, **_parse_fault(args.settings)))
        elif args.command == "state":
            lab.set_system_state(args.host, args.state)
        elif args.command == "http":
            lab.set_http(args.host, args.mode)
        elif args.command == "events":
            if args.follow:
                with contextlib.suppress(KeyboardInterrupt):
                    _follow(lab, args.host)
            else:
                for e in lab.events(args.host):
                    _print_event(e)
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
