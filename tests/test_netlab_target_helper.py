"""nix/target-helper.sh (installed as lab-orchestrator-target by nix/target.nix), run over real
ssh on the netlab's fake NixOS hosts and judged by ground truth: which generation each boot
ran and why (`chosen_by`), the system profile's links, the EFI variables."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fault_lab import ssh
from tests.netlab import Lab, fixtures

pytestmark = pytest.mark.netlab
netlab = fixtures.netlab  # also imported by tests/conftest.py; here so this file stands alone

HELPER = Path(__file__).resolve().parents[1] / "nix" / "target-helper.sh"
BOOT_TIMEOUT = 60
BOOT_TIME = 0.5


def helper(lab: Lab, host: str, *args: str, path: str | None = None) -> tuple[int, str, str]:
    """The helper as the orchestrator runs it: each argument one quoted word of the command
    line the remote shell runs (so the helper, not this shell, sees `$(...)` and the like)."""
    words = ["sh", shlex.quote(str(HELPER)), *(shlex.quote(a) for a in args)]
    prefix = f"PATH={shlex.quote(path)}:$PATH " if path else ""
    return ssh(lab, host, prefix + " ".join(words))


def helper_ok(lab: Lab, host: str, *args: str, path: str | None = None) -> dict[str, str]:
    rc, out, err = helper(lab, host, *args, path=path)
    assert rc == 0, f"{args}: exit {rc}: {err}"
    pairs = [line.split("=", 1) for line in out.splitlines()]
    assert all(len(pair) == 2 for pair in pairs), out
    return dict(pairs)  # type: ignore[arg-type]


def one_line(err: str) -> str:
    (line,) = err.splitlines()
    assert line.startswith("target-helper: "), line
    return line


def reboot(lab: Lab, host: str) -> dict[str, Any]:
    """`systemctl reboot` over ssh; the `booted` event once sshd is back."""
    t0 = time.time()
    rc, _, err = ssh(lab, host, "systemctl reboot")
    assert rc == 0, err
    booted = lab.wait_event(host, "booted", timeout=BOOT_TIMEOUT, since=t0)
    lab.wait_event(host, "ssh_up", timeout=BOOT_TIMEOUT, since=t0)
    return booted


def power_cycle(lab: Lab, host: str) -> dict[str, Any]:
    t0 = time.time()
    lab.power_cycle(host)
    booted = lab.wait_event(host, "booted", timeout=BOOT_TIMEOUT, since=t0)
    lab.wait_event(host, "ssh_up", timeout=BOOT_TIMEOUT, since=t0)
    return booted


def chosen(booted: dict[str, Any]) -> tuple[int, str]:
    return booted["nixos_generation"], booted["chosen_by"]


def test_boot_once_boots_the_new_generation_once_then_the_booted_one(netlab):
    lab = netlab(1, nixos=True, boot_time=BOOT_TIME)
    old = lab.nixos_state("h1")["profile"][1]
    new = lab.deploy_generation("h1")["system"]
    assert lab.nixos_state("h1")["loader_default"] == "nixos-generation-2.conf"

    out = helper_ok(lab, "h1", "boot-once", new)
    assert out == {"generation": "2", "default_generation": "1", "bootloader": "systemd-boot"}
    state = lab.nixos_state("h1")
    assert (state["efi_default"], state["oneshot"]) == (
        "nixos-generation-1.conf",
        "nixos-generation-2.conf",
    )
    # The default first: a hang between the two calls still comes back on the good one.
    verbs = [(e["verb"], e["entry"]) for e in lab.events("h1", "bootctl")]
    assert verbs == [
        ("set-default", "nixos-generation-1.conf"),
        ("set-oneshot", "nixos-generation-2.conf"),
    ]
    first = reboot(lab, "h1")
    assert chosen(first) == (2, "oneshot") and first["system"] == new
    # The new generation hangs or fails its gate: a power cycle is back on the booted one.
    second = power_cycle(lab, "h1")
    assert chosen(second) == (1, "default") and second["system"] == old
    assert lab.booted_generations("h1") == [1, 2, 1]
    assert lab.nixos_state("h1")["profile"] == {1: old, 2: new}  # no generation made


def test_make_default_after_the_gate_keeps_booting_it_and_pins_nothing(netlab):
    lab = netlab(1, nixos=True, boot_time=BOOT_TIME)
    old = lab.nixos_state("h1")["profile"][1]
    new = lab.deploy_generation("h1")["system"]
    helper_ok(lab, "h1", "boot-once", new)
    assert chosen(reboot(lab, "h1")) == (2, "oneshot")

    out = helper_ok(lab, "h1", "make-default", new)
    assert out == {"generation": "2", "bootloader": "systemd-boot"}
    state = lab.nixos_state("h1")
    # loader.conf already names generation 2: no EFI variable is left to outlive it.
    assert (state["loader_default"], state["efi_default"], state["oneshot"]) == (
        "nixos-generation-2.conf",
        None,
        None,
    )
    assert chosen(reboot(lab, "h1")) == (2, "loader.conf")
    assert chosen(power_cycle(lab, "h1")) == (2, "loader.conf")
    # A later deploy becomes the default as usual: nothing pinned generation 2.
    lab.deploy_generation("h1")
    assert chosen(reboot(lab, "h1")) == (3, "loader.conf")
    assert lab.booted_generations("h1") == [1, 2, 2, 2, 3]

    # make-default of a generation loader.conf does not name: an explicit EFI default.
    out = helper_ok(lab, "h1", "make-default", old)
    assert out == {"generation": "1", "bootloader": "systemd-boot"}
    state = lab.nixos_state("h1")
    assert (state["loader_default"], state["efi_default"]) == (
        "nixos-generation-3.conf",
        "nixos-generation-1.conf",
    )
    assert chosen(reboot(lab, "h1")) == (1, "default")


def test_rollback_makes_one_new_generation_of_the_good_system_and_boots_it(netlab):
    lab = netlab(1, nixos=True, boot_time=BOOT_TIME)
    old = lab.nixos_state("h1")["profile"][1]
    new = lab.deploy_generation("h1")["system"]
    helper_ok(lab, "h1", "boot-once", new)
    assert chosen(reboot(lab, "h1")) == (2, "oneshot")
    # The gate failed; say a second boot-once was pending as well.
    rc, _, err = ssh(lab, "h1", "bootctl set-oneshot nixos-generation-2.conf")
    assert rc == 0, err

    out = helper_ok(lab, "h1", "rollback", old)
    assert out == {"generation": "3", "bootloader": "systemd-boot", "changed": "yes"}
    state = lab.nixos_state("h1")
    assert state["profile"] == {1: old, 2: new, 3: old}
    assert state["current_generation"] == 3
    assert state["loader_default"] == "nixos-generation-3.conf"
    assert (state["efi_default"], state["oneshot"]) == (None, None)
    stc = lab.events("h1", "switch_to_configuration")[-1]
    assert (stc["action"], stc["system"], stc["via"]) == ("boot", old, "switch-to-configuration")

    # The orchestrator was SIGKILLed and calls it again: no generation 4.
    again = helper_ok(lab, "h1", "rollback", old)
    assert again == {"generation": "3", "bootloader": "systemd-boot", "changed": "no"}
    assert lab.nixos_state("h1")["profile"] == {1: old, 2: new, 3: old}
    assert [
        e["nixos_generation"] for e in lab.events("h1", "profile") if e["via"] == "nix-env"
    ] == [3]

    booted = reboot(lab, "h1")
    assert chosen(booted) == (3, "loader.conf") and booted["system"] == old
    assert chosen(power_cycle(lab, "h1")) == (3, "loader.conf")
    assert lab.booted_generations("h1") == [1, 2, 3, 3]


def test_refusals_change_nothing(netlab, tmp_path):
    lab = netlab(1, nixos=True, boot_time=BOOT_TIME)
    old = lab.nixos_state("h1")["profile"][1]
    new = lab.deploy_generation("h1")["system"]
    store = Path(old).parent
    hash_ = Path(old).name[:32]
    # A NixOS system in the store that was never in the profile, and a store link to a known
    # one: both exist, neither is a generation.
    stranger = f"/nix/store/{'1' * 32}-nixos-system-h1-25.05.9"
    alias = f"/nix/store/{'2' * 32}-nixos-system-h1-alias"
    kernel = lab.run_in(
        "h1", ["readlink", "-e", f"{old}/kernel-modules"], capture_output=True, text=True
    ).stdout.strip()
    marker = tmp_path / "pwned"
    rc = lab.run_in(
        "h1", ["sh", "-c", 'mkdir "$1" && ln -s "$2" "$3"', "sh", stranger, old, alias]
    ).returncode
    assert rc == 0
    before = (lab.nixos_state("h1"), len(lab.events("h1")))

    refused = [
        ("rollback", stranger),
        ("boot-once", alias),
        ("make-default", kernel),  # a store path, but no NixOS system
        ("boot-once", f"{old}/../{Path(new).name}"),
        ("boot-once", f"{store}/../store/{Path(new).name}"),
        ("rollback", f"{old}/"),
        ("rollback", f"/nix/store/{hash_}-nixos-system-"),
        ("rollback", f"/nix/store/..{old[len('/nix/store/') + 2 :]}"),
        ("rollback", old[1:]),
        ("rollback", f"{old}\n{new}"),
        ("make-default", f"$(touch {marker})"),
        ("make-default", f"{new}; touch {marker}"),
        ("make-default", f"{new}`touch {marker}`"),
        ("rollback", ""),
        ("rollback", old, new),
        ("rollback",),
        (),
        ("reboot", new),
        ("--help", new),
    ]
    for args in refused:
        rc, out, err = helper(lab, "h1", *args)
        assert (rc, out) == (2, ""), (args, rc, out, err)
        one_line(err)
    assert not marker.exists()
    assert "no generation" in helper(lab, "h1", "rollback", stranger)[2]
    assert "usage" in helper(lab, "h1")[2]
    # Nothing changed: profile, boot entries, loader.conf, EFI variables; no event at all.
    assert (lab.nixos_state("h1"), len(lab.events("h1"))) == before


def test_no_boot_loader_entries_means_no_one_shot_boot(netlab):
    lab = netlab(1, nixos=True, boot_time=BOOT_TIME)
    new = lab.deploy_generation("h1")["system"]
    entries = lab.hosts["h1"].dir / "nixos" / "boot" / "loader" / "entries"
    for entry in entries.iterdir():
        entry.unlink()
    before = lab.nixos_state("h1")
    for action in ("boot-once", "make-default"):
        rc, out, err = helper(lab, "h1", action, new)
        assert (rc, out) == (3, ""), (action, err)
        assert "systemd-boot" in one_line(err)
    assert lab.nixos_state("h1") == before
    assert lab.events("h1", "bootctl") == []


# --- GRUB ------------------------------------------------------------------------------------
# The fake NixOS boots with systemd-boot only. Here its entries are replaced by a grub.cfg laid
# out as NixOS's install-grub.pl writes it (nixos/modules/system/boot/loader/grub/), and
# grub-reboot / grub-set-default / grub-editenv by stand-ins that record their arguments: this
# checks which menu paths the helper names, not GRUB itself.

GRUB_HEADER = """# Automatically generated.  DO NOT EDIT THIS FILE!

    search --set=drive1 --fs-uuid 1234-ABCD
    if [ -s $prefix/grubenv ]; then
      load_env
    fi

    # 'grub-reboot' sets a one-time saved entry, which we process here and
    # then delete.
    if [ "${next_entry}" ]; then
      set default="${next_entry}"
      set next_entry=
      save_env next_entry
      set timeout=1
      set boot_once=true
    else
      set default=DEFAULT
      set timeout=5
    fi
    set timeout_style=menu

    function savedefault {
        if [ -z "${boot_once}"]; then
        saved_entry="${chosen}"
        save_env saved_entry
        fi
    }
"""


def grub_entry(title: str, options: str, system: str) -> str:
    return (
        f'menuentry "{title}" {options} {{\n'
        "  savedefault\n"
        "search --set=drive1 --fs-uuid 1234-ABCD\n"
        f"  linux ($drive1)//kernels/x-linux-bzImage init={system}/init loglevel=4\n"
        "  initrd ($drive1)//kernels/x-initrd-initrd\n"
        "}\n\n"
    )


def grub_cfg(profile: dict[int, str], top: str, saved: bool) -> str:
    default = '"${saved_entry}"' if saved else "0"
    conf = GRUB_HEADER.replace("DEFAULT", default) + "\n\n"
    conf += grub_entry("NixOS", "--class nixos --unrestricted", top)
    conf += 'menuentry "Memtest86+" {\n  linux @bootRoot@/memtest.bin\n}\n\n'
    conf += 'submenu "NixOS - All configurations" --class submenu {\n'
    for number in sorted(profile, reverse=True):
        title = f"NixOS - Configuration {number} (2025-06-0{number} - 25.05.{number})"
        conf += grub_entry(title, "--class nixos", profile[number])
    return conf + "}\n"


def test_grub_boot_once_and_make_default_name_install_grub_entries(netlab, tmp_path):
    lab = netlab(1, nixos=True, boot_time=BOOT_TIME)
    old = lab.nixos_state("h1")["profile"][1]
    new = lab.deploy_generation("h1")["system"]
    boot = lab.hosts["h1"].dir / "nixos" / "boot"
    for entry in (boot / "loader" / "entries").iterdir():
        entry.unlink()
    (boot / "grub").mkdir()
    cfg = boot / "grub" / "grub.cfg"
    log = tmp_path / "grub.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("grub-reboot", "grub-set-default", "grub-editenv"):
        (bin_dir / tool).write_text(
            "#!/bin/sh\n"
            "{ printf '%s' \"${0##*/}\"; for a; do printf '\\t%s' \"$a\"; done; echo; } >> "
            f"{shlex.quote(str(log))}\n"
        )
        (bin_dir / tool).chmod(0o755)
    path = str(bin_dir)

    def calls() -> list[list[str]]:
        lines = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return [line.split("\t") for line in lines]

    all_configurations = "NixOS - All configurations>NixOS - Configuration"
    # boot.loader.grub.default left at 0: grub-set-default would change nothing.
    cfg.write_text(grub_cfg({1: old, 2: new}, new, saved=False))
    for action in ("boot-once", "make-default"):
        rc, out, err = helper(lab, "h1", action, new, path=path)
        assert (rc, out) == (3, ""), err
        assert '"saved"' in one_line(err)
    assert calls() == []

    cfg.write_text(grub_cfg({1: old, 2: new}, new, saved=True))
    out = helper_ok(lab, "h1", "boot-once", new, path=path)
    assert out == {"generation": "2", "default_generation": "1", "bootloader": "grub"}
    assert calls() == [
        ["grub-set-default", f"{all_configurations} 1 (2025-06-01 - 25.05.1)"],
        ["grub-reboot", f"{all_configurations} 2 (2025-06-02 - 25.05.2)"],
    ]
    # After the gate: the top entry, whose title stays "NixOS" across later deploys.
    assert helper_ok(lab, "h1", "make-default", new, path=path) == {
        "generation": "2",
        "bootloader": "grub",
    }
    assert calls() == [["grub-set-default", "NixOS"]]
    # A generation that is not the top entry: its own path.
    helper_ok(lab, "h1", "make-default", old, path=path)
    assert calls() == [["grub-set-default", f"{all_configurations} 1 (2025-06-01 - 25.05.1)"]]

    # Without the tools, GRUB is not there for the helper.
    rc, _, err = helper(lab, "h1", "boot-once", new)
    assert rc == 3, err
    assert lab.events("h1", "bootctl") == []
