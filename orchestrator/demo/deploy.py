"""``python -m orchestrator.demo.deploy [--controller NAME] LAB_DIR MACHINE``: the demo's
``deploy.machine_command``.

What ``nixos-rebuild boot --target-host MACHINE`` does, against the simulated lab: tonight's
build of the machine's system (``simlab.TONIGHT``; its closure copy is simulated by the host
knowing that build), then over SSH ``nix-env -p PROFILE --set SYSTEM`` and
``SYSTEM/bin/switch-to-configuration boot``: a new profile generation, booted by the next boot.
It reaches the host as the orchestrator does, with the lab's key and known_hosts. The
controller (``--controller``, the demo's ``local: true`` one) is this machine,
which the demo does not simulate: nothing is deployed to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from pathlib import Path

import asyncssh

from orchestrator.demo.simlab import PROFILE, TONIGHT, build


async def deploy(lab_dir: Path, machine: str, controller: str | None = None) -> int:
    if machine == controller:
        print(f"deploy: {machine}: this controller is not simulated: nothing to deploy")
        return 0
    ports = json.loads((lab_dir / "hosts.json").read_text())
    if machine not in ports:
        print(f"deploy: no machine {machine!r} in the lab", file=sys.stderr)
        return 2
    system = build(machine, TONIGHT).path
    print(f"deploy: {machine}: built {system}", file=sys.stderr)
    async with asyncssh.connect(
        "127.0.0.1",
        ports[machine],
        username="root",
        client_keys=[str(lab_dir / "id_ed25519")],
        known_hosts=str(lab_dir / "known_hosts"),
        connect_timeout=10,
    ) as conn:
        for argv in (
            ["nix-env", "-p", PROFILE, "--set", system],
            [f"{system}/bin/switch-to-configuration", "boot"],
        ):
            result = await conn.run(shlex.join(argv), check=False, timeout=30)
            for output in (result.stdout, result.stderr):
                if output:
                    print(str(output).rstrip("\n"), file=sys.stderr)
            if result.exit_status != 0:
                print(f"deploy: `{shlex.join(argv)}` exit {result.exit_status}", file=sys.stderr)
                return 1
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.demo.deploy")
    parser.add_argument("--controller", metavar="NAME", help="the controller's machine name")
    parser.add_argument("lab_dir", type=Path)
    parser.add_argument("machine")
    args = parser.parse_args(argv)
    return asyncio.run(deploy(args.lab_dir, args.machine, args.controller))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
