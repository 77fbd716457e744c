"""The parts of a generation-aware rollout (issue 10) that need no host: the reboot reason,
the generation probe's verdicts, the target helper's answers, the new config keys, the status
of skipped and rolled-back machines, systemd's status line for every state, and schema 5."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from health_checks.base import Probe, ProbeContext, Timeouts
from health_checks.booted_system import BootedSystemCheck, is_wrong_generation
from orchestrator import report, sdstatus, target
from orchestrator.config import parse_config
from orchestrator.errors import ConfigError
from orchestrator.generations import GenerationFacts, SystemParts, reboot_need
from orchestrator.hooks import EventKind, RunEvent
from orchestrator.remote import ProbeFailed
from orchestrator.states import RunKind, all_states
from orchestrator.store import SCHEMA_VERSION, Store
from tests.unit.test_store_schema_v4 import BEFORE, machine_columns, make_v3_store

H = "0123456789abcdfghijklmnpqrsvwxyz"
G = H[::-1]
OLD = f"/nix/store/{H}-nixos-system-grey-area-25.05.142"
NEW = f"/nix/store/{G}-nixos-system-grey-area-25.05.143"
CONFIG = Path("/etc/lab-orchestrator/config.yaml")


def system(path: str, kernel: str, *, systemd: str = "257.5") -> SystemParts:
    digest = path.split("/")[3][:32]
    return SystemParts(
        system=path,
        kernel=f"/nix/store/{digest}-linux-{kernel}/bzImage",
        initrd=f"/nix/store/{digest}-initrd-linux-{kernel}/initrd",
        kernel_modules=f"/nix/store/{digest}-linux-{kernel}-modules",
        systemd=f"/nix/store/{H}-systemd-{systemd}",
    )


def facts(booted: SystemParts, profile: SystemParts) -> GenerationFacts:
    return GenerationFacts(booted, booted.system, profile, 143, 142)


# -- the reboot reason --------------------------------------------------------------------------


def test_a_changed_kernel_is_the_reason_as_old_to_new_store_names():
    need = reboot_need(
        facts(system(OLD, "6.12.1"), system(NEW, "6.12.3")), ["kernel", "initrd", "kernel-modules"]
    )
    assert need.needed
    assert need.reason == (
        "kernel: linux-6.12.1 → linux-6.12.3; initrd: initrd-linux-6.12.1 → "
        "initrd-linux-6.12.3; kernel-modules: linux-6.12.1-modules → linux-6.12.3-modules"
    )


def test_unchanged_boot_parts_skip_with_what_the_booted_system_already_runs():
    same_boot = replace(system(OLD, "6.12.3"), system=NEW)
    need = reboot_need(
        facts(system(OLD, "6.12.3"), same_boot), ["kernel", "initrd", "kernel-modules"]
    )
    assert not need.needed
    assert need.reason == (
        "booted system already runs kernel 6.12.3, initrd and modules of generation 143"
    )


def test_systemd_counts_only_when_listed_in_if_changed():
    booted = system(OLD, "6.12.3", systemd="257.5")
    profile = replace(system(OLD, "6.12.3", systemd="257.6"), system=NEW)
    assert not reboot_need(facts(booted, profile), ["kernel", "initrd", "kernel-modules"]).needed
    need = reboot_need(facts(booted, profile), ["kernel", "systemd"])
    assert need.needed and need.reason == "systemd: systemd-257.5 → systemd-257.6"
    quiet = reboot_need(facts(booted, replace(profile, systemd=booted.systemd)), ["systemd"])
    assert quiet.reason == "booted system already runs systemd 257.5 of generation 143"


# -- the generation probe ----------------------------------------------------------------------


@dataclass
class Answer:
    returncode: int
    stdout: str
    stderr: str = ""


class OneCommandHost:
    """Answers every command with ``answer`` (or raises it) and remembers what was run."""

    name = "grey-area"

    def __init__(self, answer: Answer | Exception) -> None:
        self.answer = answer
        self.ran: list[list[str]] = []

    async def run(self, argv: Sequence[str], timeout: float, max_output: int = 0) -> Answer:
        self.ran.append(list(argv))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def probe(answer: Answer | Exception, expected: str = NEW) -> tuple[Probe, OneCommandHost]:
    host = OneCommandHost(answer)
    ctx = ProbeContext(host, "grey-area", None, Timeouts(1, 1), ProbeFailed)  # type: ignore[arg-type]
    check = BootedSystemCheck(expected=expected, generations={OLD: 142, NEW: 143})
    return asyncio.run(check.probe(ctx)), host


def test_the_expected_booted_system_passes_and_names_its_generation():
    result, host = probe(Answer(0, NEW + "\n"))
    assert result == Probe("generation", True, "generation 143")
    assert host.ran == [["readlink", "-e", "/run/booted-system"]]
    assert not is_wrong_generation(result)


def test_an_older_booted_system_fails_naming_both_generations_and_is_final():
    result, _ = probe(Answer(0, OLD + "\n"))
    assert not result.ok
    assert result.detail == f"booted generation 142 ({OLD}), expected 143"
    assert is_wrong_generation(result)


@pytest.mark.parametrize(
    "answer",
    [Answer(1, ""), Answer(0, "/run/booted-system\n"), ProbeFailed("ssh: connection refused")],
)
def test_an_unreadable_booted_system_fails_but_is_not_taken_for_a_wrong_one(answer):
    result, _ = probe(answer)
    assert not result.ok and not is_wrong_generation(result)


# -- the target helper's answers ---------------------------------------------------------------


class HelperHost(OneCommandHost):
    def __init__(self, answer: Answer | Exception, user: str = "root") -> None:
        super().__init__(answer)
        self.user = user

    def as_root(self, argv: Sequence[str]) -> list[str]:
        return list(argv) if self.user == "root" else ["sudo", "-n", *argv]


def test_rollback_runs_the_helper_with_one_store_path_word_and_reads_the_generation():
    host = HelperHost(Answer(0, "generation=144\nbootloader=systemd-boot\nchanged=yes\n"), "lab")
    generation = asyncio.run(target.rollback(host, ["lab-orchestrator-target"], OLD))  # type: ignore[arg-type]
    assert generation == 144
    assert host.ran == [["sudo", "-n", "lab-orchestrator-target", "rollback", OLD]]


def test_exit_3_is_an_unsupported_bootloader_for_boot_once_but_a_failure_for_rollback():
    answer = Answer(3, "", "target-helper: neither systemd-boot nor GRUB\n")
    with pytest.raises(target.BootloaderUnsupported, match="neither systemd-boot nor GRUB"):
        asyncio.run(target.boot_once(HelperHost(answer), ["helper"], NEW))  # type: ignore[arg-type]
    with pytest.raises(target.HelperFailed, match="exit code 3"):
        asyncio.run(target.rollback(HelperHost(answer), ["helper"], OLD))  # type: ignore[arg-type]


def test_a_refusing_helper_is_one_line_with_its_last_word_escaped():
    answer = Answer(2, "", "noise\ntarget-helper: not in the profile's history\x1b[2J\n")
    with pytest.raises(target.HelperFailed) as caught:
        asyncio.run(target.make_default(HelperHost(answer), ["helper"], NEW))  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\x1b" not in message and "\n" not in message
    assert "failed with exit code 2: target-helper: not in the profile's history" in message


# -- the config keys ---------------------------------------------------------------------------


def load(text: str):
    return parse_config(Path("lab.yaml"), text + "\nmachines: {grey-area: {host: g}}\n")


def test_machine_command_puts_the_name_in_for_the_placeholder_word_only():
    config = load("deploy: {mode: per-machine, machine_command: [lab, deploy, '{machine}', x]}")
    assert config.settings.deploy.machine_argv("grey-area") == ["lab", "deploy", "grey-area", "x"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "deploy: {mode: per-machine, machine_command: [lab, deploy-all]}",
            "lab.yaml: deploy: machine_command must contain the word {machine} in per-machine mode",
        ),
        (
            "deploy: {machine_command: [nixos-rebuild, --flake, '.#{machine}']}",
            "lab.yaml: deploy.machine_command: '.#{machine}': the only placeholder is "
            "{machine}, as a whole word",
        ),
        (
            "deploy: {machine_command: [x, '{host}']}",
            "lab.yaml: deploy.machine_command: '{host}': the only placeholder is {machine}, "
            "as a whole word",
        ),
        (
            "reboot: {if_changed: [kernel, kernel]}",
            "lab.yaml: reboot.if_changed: kernel is listed twice",
        ),
        ("reboot: {if_changed: []}", "lab.yaml: reboot.if_changed: must not be empty"),
        (
            "reboot: {when: sometimes}",
            "lab.yaml: reboot.when: must be one of: 'always', 'if-needed'",
        ),
        ("on_failure: retry", "lab.yaml: on_failure: must be one of: 'stop', 'rollback'"),
        ("reboot: {power_cycle_after: 0s}", "lab.yaml: reboot.power_cycle_after: "),
    ],
)
def test_bad_rollout_keys_are_one_line_naming_the_key(text, message):
    with pytest.raises(ConfigError) as caught:
        load(text)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_defaults_keep_the_seeds_behaviour_and_roll_back_when_they_can():
    settings = load("").settings
    assert (settings.deploy.mode, settings.reboot.when, settings.reboot.boot_once) == (
        "all",
        "always",
        False,
    )
    assert settings.on_failure == "rollback"
    assert settings.target_helper == ["lab-orchestrator-target"]
    assert settings.machines["grey-area"].power_cycle is None


# -- status of skipped and rolled-back machines ---------------------------------------------------


def test_a_skipped_machine_is_skipped_with_its_reason_and_a_rolled_back_one_stopped_the_run(
    tmp_path,
):
    with Store.open(tmp_path / "state") as store:
        run = store.create_run(RunKind.NIGHTLY, [("a", False), ("b", False)], CONFIG)
        store.record_generation_before(run.run_id, "a", BEFORE)
        store.record_reboot_reason(run.run_id, "a", "booted system already runs …", skipped=True)
        store.record_generation_before(run.run_id, "b", BEFORE)
        store.record_reboot_reason(run.run_id, "b", "kernel: linux-1 → linux-2", skipped=False)
        store.record_reboot_intent(run.run_id, "b", "1" * 32, None)
        store.set_state(run.run_id, "verifying:b")
        assert report.machine_outcome(
            store.run(run.run_id), store.run(run.run_id).machine("a")
        ) == (report.Outcome.SKIPPED)
        store.record_rollback_start(run.run_id, "b", "generation 143 failed (last probe: x)")
        store.record_rollback_done(run.run_id, "b", 144)
        store.record_rollback_reboot_intent(run.run_id, "b", "2" * 32)
        store.record_rollback_healthy(run.run_id, "b", boot_id_after="3" * 32, probes=[])
        error = "b: generation 143 failed (last probe: x); rolled back to generation 142: healthy"
        store.record_machine_error(run.run_id, "b", error)
        store.set_state(run.run_id, "aborted", error=error)
        finished = store.run(run.run_id)
    summary = report.summarize(finished)
    outcomes = {m.name: m.outcome for m in summary.machines}
    assert outcomes == {"a": "skipped", "b": "rolled-back"}
    assert summary.failed_machine == "b"
    shown = {m["name"]: m for m in report.status_json(finished)["machines"]}
    assert shown["a"]["skipped"] is True and shown["a"]["reboot_reason"].startswith("booted")
    assert shown["b"]["rollback_generation"] == 144 and shown["b"]["rollback_healthy_at"]
    assert report.generation_change(shown["a"]) == "142"
    lines = report.summary_lines(summary)
    assert "a: skipped: booted system already runs …" in lines
    assert f"b: rolled-back: {error.removeprefix('b: ')}" in lines
    text = "\n".join(report.status_lines(finished, width=160))
    assert "skipped" in text and "rolled-back" in text


# -- systemd's status line knows every state -------------------------------------------------------


@pytest.mark.parametrize("per_machine", [False, True])
def test_every_state_of_the_table_has_a_status_line(tmp_path, per_machine):
    names = ["a", "b"]
    with Store.open(tmp_path / "state") as store:
        for state in all_states(RunKind.NIGHTLY, names, per_machine_deploy=per_machine):
            run = store.create_run(
                RunKind.NIGHTLY, [(n, False) for n in names], CONFIG, per_machine_deploy=per_machine
            )
            store.set_state(run.run_id, state)
            summary = report.summarize(store.run(run.run_id))
            text = sdstatus.status_text(RunEvent(EventKind.STATE_CHANGED, summary))
            assert text, state
    assert sdstatus.state_text(summary).startswith("aborted")  # the last of all_states


# -- schema 5 ----------------------------------------------------------------------------------


def make_v4_store(state_dir: Path) -> Path:
    """A version-4 store, as the previous release left it: v3 plus the generation columns."""
    path = make_v3_store(state_dir)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        for column in (
            "nixos INTEGER", "generation_before INTEGER", "generation_expected INTEGER",
            "generation_after INTEGER", "system_before TEXT", "system_expected TEXT",
            "system_after TEXT", "facts_before TEXT", "facts_after TEXT",
        ):  # fmt: skip
            db.execute(f"ALTER TABLE machines ADD COLUMN {column}")
        db.execute("UPDATE meta SET value='4' WHERE key='schema'")
    return path


def test_a_v4_store_is_read_without_migrating_and_migrated_to_5_by_a_run(tmp_path):
    path = make_v4_store(tmp_path / "state")
    before = path.read_bytes()
    with Store.open(tmp_path / "state", create=False) as store:
        active = store.active_run()
        assert active is not None and not active.per_machine_deploy
        assert all(m.reboot_reason is None and m.rollback_requests == 0 for m in active.machines)
    assert path.read_bytes() == before
    with Store.open(tmp_path / "state") as store:
        active = store.active_run()
        assert active is not None
        store.record_reboot_reason(active.run_id, "alpha", "kernel: a → b", skipped=False)
        assert store.run(active.run_id).machine("alpha").reboot_reason == "kernel: a → b"
    assert SCHEMA_VERSION >= 5
    assert {"reboot_reason", "rollback_healthy_at", "power_cycled_at"} <= set(machine_columns(path))


def test_a_per_machine_run_keeps_its_state_table_across_reopening(tmp_path):
    with Store.open(tmp_path / "state") as store:
        run = store.create_run(RunKind.NIGHTLY, [("a", False)], CONFIG, per_machine_deploy=True)
        store.set_state(run.run_id, "deploying:a")
    with Store.open(tmp_path / "state", create=False) as store:
        again = store.run(run.run_id)
    assert again.per_machine_deploy and again.state == "deploying:a"


# -- the controller's own helper -------------------------------------------------------------


def test_no_new_privileges_is_read_from_the_kernel():
    import shutil
    import subprocess
    import sys

    probe = "from orchestrator.process import no_new_privileges as n; print(n())"
    plain = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert plain.stdout.strip() == "False"
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "util-linux's setpriv is part of every Debian system"
    locked = subprocess.run(
        [setpriv, "--no-new-privs", sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
    )
    assert locked.stdout.strip() == "True"
