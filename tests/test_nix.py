"""The Nix side: every .nix file parses, and the NixOS modules evaluate to what issue 4 asks for.

Two tiers:

* Parsing needs only ``nix-instantiate`` (Debian/Ubuntu: ``apt-get install nix-bin``). Missing, the
  tests are skipped locally and fail when ``CI`` is set.
* Evaluation also needs nixpkgs' ``lib``: ``NIXPKGS_LIB=/path/to/nixpkgs/lib``, e.g. the ``lib``
  directory of a checkout of github:nix-community/nixpkgs.lib (never commit it). Without it those
  tests are skipped with that reason (``../shared/nixpkgs-lib/lib`` is used when it exists).
  ``tests/nix_eval/eval.nix`` (``HARNESS``) runs ``lib.evalModules`` on the flake's
  ``nixosModules`` with declarations of every NixOS option they set or read, each with nixpkgs'
  own type and default (a stub that defaulted differently, as polkit's once did here, hides real
  failures), and a stand-in ``pkgs``; the generated config files are then loaded by the real
  ``orchestrator validate-config``, and the build-time checks' scripts are run as written, the
  schedule check with this machine's ``systemd-analyze``.

``--store dummy://`` makes nix-instantiate work without a Nix store, daemon or ``/nix``, as any
user: nothing here builds or writes store paths.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.prereqs import missing

pytestmark = pytest.mark.nix

REPO = Path(__file__).resolve().parents[1]
NIX_INSTANTIATE = shutil.which("nix-instantiate")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
NIX_FLAGS = ["--store", "dummy://"]

# Directories whose .nix files are not ours (virtualenvs, caches, `nix build` results).
SKIP_DIRS = {".git", ".venv", "node_modules", "result", "build"}


def _nix_files() -> list[Path]:
    files = []
    for path in sorted(REPO.rglob("*.nix")):
        parts = path.relative_to(REPO).parts[:-1]
        if any(part in SKIP_DIRS or part.startswith(".") for part in parts):
            continue
        files.append(path)
    return files


def _require_nix_instantiate() -> str:
    if NIX_INSTANTIATE is None:
        missing("nix-instantiate not found", "apt-get install nix-bin")
    return NIX_INSTANTIATE


# The project's pinned copy of nixpkgs' lib, beside the checkout (see its SOURCE file).
SHARED_NIXPKGS_LIB = Path(__file__).resolve().parents[2] / "shared" / "nixpkgs-lib" / "lib"


def _require_nixpkgs_lib() -> Path:
    value = os.environ.get("NIXPKGS_LIB")
    if not value and SHARED_NIXPKGS_LIB.is_dir():
        value = str(SHARED_NIXPKGS_LIB)
    if not value:
        missing(
            "NIXPKGS_LIB is not set: point it at nixpkgs' lib directory (e.g. lib/ of a "
            "checkout of github:nix-community/nixpkgs.lib) to evaluate the modules",
            ".ci/run takes ../shared/nixpkgs-lib/lib",
        )
    _require_nix_instantiate()
    lib = Path(value)
    if not (lib / "default.nix").is_file() or not (lib / "modules.nix").is_file():
        pytest.fail(
            f"NIXPKGS_LIB={value} is not nixpkgs' lib directory (no default.nix/modules.nix)"
        )
    return lib


def _orchestrator() -> Path:
    beside_python = Path(sys.executable).parent / "orchestrator"
    if beside_python.exists():
        return beside_python
    found = shutil.which("orchestrator")
    if found is None:
        pytest.fail("the orchestrator console script is not installed")
    return Path(found)


# Evaluates the flake and the NixOS modules against stubs of every NixOS option they read.
HARNESS = REPO / "tests" / "nix_eval" / "eval.nix"

# The stand-in pkgs.systemd of HARNESS (config.systemd.package).
SYSTEMD_STUB = "/nix/store/00000000000000000000000000000000-systemd"


def _nix_eval(lib: Path, inputs: dict[str, str]) -> subprocess.CompletedProcess[str]:
    args = [
        "nixpkgsLib",
        str(lib),
        "repo",
        str(REPO),
        "packageOut",
        str(_orchestrator().parent.parent),
    ]
    for name, value in inputs.items():
        args += [name, value]
    argstrs = [
        arg for pair in zip(args[::2], args[1::2], strict=True) for arg in ("--argstr", *pair)
    ]
    return subprocess.run(
        [
            _require_nix_instantiate(),
            *NIX_FLAGS,
            "--eval",
            "--strict",
            "--json",
            str(HARNESS),
            *argstrs,
        ],
        capture_output=True,
        text=True,
        check=False,
    )


@functools.cache
def _evaluate(lib: Path, inputs: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    result = _nix_eval(lib, dict(inputs))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _inputs(**hosts: Any) -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted((name, json.dumps(host)) for name, host in hosts.items() if host is not None)
    )


def evaluate(
    controller: dict[str, Any] | None = None,
    target: dict[str, Any] | None = None,
    both: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate hosts whose ``services`` are ``controller`` (with nixosModules.default),
    ``target`` (nixosModules.target) and ``both`` (both modules on one host).

    Top-level ``users``, ``_security`` and ``_boot`` keys become ``users``, ``security`` and
    ``boot`` instead, to declare e.g. the seed's login user, turn polkit off or GRUB on.
    """
    lib = _require_nixpkgs_lib()
    return _evaluate(lib, _inputs(controller=controller, target=target, both=both))


def evaluation_error(**hosts: Any) -> str:
    """The error of an evaluation that must fail (e.g. conflicting definitions)."""
    result = _nix_eval(_require_nixpkgs_lib(), dict(_inputs(**hosts)))
    assert result.returncode != 0, "the evaluation succeeded"
    return result.stderr


def evaluate_module_file(path: Path) -> dict[str, Any]:
    """Evaluate nixosModules.default on a host whose whole configuration is the module at path."""
    lib = _require_nixpkgs_lib()
    return _evaluate(lib, (("controllerFile", str(path)),))["controller"]


def controller(**options: Any) -> dict[str, Any]:
    users = options.pop("users", None)
    config: dict[str, Any] = {"lab-orchestrator": {"enable": True, **options}}
    if users is not None:
        config["users"] = {"users": users}
    return evaluate(controller=config)["controller"]


def validate(
    tmp_path: Path, text: str, name: str = "config.yaml"
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return subprocess.run(
        [str(_orchestrator()), "--config", str(path), "validate-config"],
        capture_output=True,
        text=True,
        check=False,
    )


# The seed's `services.lab-orchestrator = { enable = true; schedule = "02:00"; user = "geir"; }`,
# with its hard-coded labPath, lab tool and reboot sequence made explicit.
SEED = {
    "schedule": "02:00",
    "user": "geir",
    "users": {"geir": {"isNormalUser": True, "group": "users"}},
    "flake": "/home/geir/Home-lab",
    "path": ["/home/geir/Home-lab/result"],
    "machines": {
        "sleeper-service": {"host": "sleeper-service.local"},
        "grey-area": {
            "host": "grey-area.local",
            "checks": [{"url": "http://grey-area.local:3000/", "status": 200}],
        },
        "reverse-proxy": {"host": "reverse-proxy.local"},
        "self": {"local": True},
    },
    "rebootOrder": ["sleeper-service", "grey-area", "reverse-proxy", "self"],
    "settings": {"reboot": {"settle": "10m"}},
}

DEDICATED = {
    "schedule": "Mon..Fri *-*-* 03:30:00",
    "randomizedDelay": "15min",
    "flake": "/var/lib/lab-orchestrator/lab",
    "sshKeyFile": "/etc/ssh/ssh_host_ed25519_key",
    "machines": {
        "self": {"local": True},
        "zeta": {"host": "zeta.local", "user": "lab-orchestrator"},
        "alpha": {"host": "alpha.local", "port": 2222},
    },
}


# --- parsing ---------------------------------------------------------------------------------


def test_the_nix_files_of_the_issue_exist() -> None:
    names = {path.relative_to(REPO).as_posix() for path in _nix_files()}
    assert {"flake.nix", "nix/module.nix", "nix/target.nix", "nix/package.nix"} <= names


@pytest.mark.parametrize("path", _nix_files(), ids=lambda path: path.relative_to(REPO).as_posix())
def test_every_nix_file_parses(path: Path) -> None:
    result = subprocess.run(
        [_require_nix_instantiate(), *NIX_FLAGS, "--parse", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# --- flake and package -----------------------------------------------------------------------


def test_flake_has_one_overridable_input_and_the_outputs_for_both_systems() -> None:
    flake = evaluate()["flake"]
    assert flake["inputs"] == {"nixpkgs": {"url": "github:NixOS/nixpkgs/nixos-unstable"}}
    for system in ("x86_64-linux", "aarch64-linux"):
        assert "default" in flake["packages"][system]
        # module: both modules on one host; module-seed: the seed's own lines (issue 8).
        assert {"package", "module", "module-seed"} <= set(flake["checks"][system])
        assert flake["devShells"][system] == ["default"]
    assert {"default", "target"} <= set(flake["nixosModules"])
    assert flake["overlay"] == ["lab-orchestrator"]


def test_package_builds_the_orchestrator_with_the_dependencies_of_pyproject() -> None:
    package = evaluate()["package"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted: list[str] = []
    for requirement in project["dependencies"]:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()
        # An extra (asyncssh[bcrypt]) is one more package in nixpkgs.
        extras = re.search(r"\[([^\]]*)\]", requirement)
        wanted += [name, *(e.strip() for e in extras.group(1).split(","))] if extras else [name]
    wanted.sort()
    assert sorted(package["dependencies"]) == wanted
    assert package["version"] == project["version"]
    assert package["pyproject"] is True
    assert package["build-system"] == ["setuptools"]
    assert package["mainProgram"] == "orchestrator"


# --- the controller module: units --------------------------------------------------------------


def test_run_unit_is_a_oneshot_that_a_deploy_of_the_controller_does_not_stop() -> None:
    result = controller(**SEED)
    assert result["failedAssertions"] == []
    run = result["services"]["run"]
    config_path = result["configFiles"]["run"]["path"]
    assert run["serviceConfig"]["ExecStart"] == (f"{_orchestrator()} --config {config_path} run")
    assert run["serviceConfig"]["Type"] == "oneshot"
    assert run["serviceConfig"]["TimeoutStartSec"] == "4h"
    assert run["restartIfChanged"] is False
    assert run["unitConfig"]["X-StopOnRemoval"] is False
    assert "network-online.target" in run["after"]
    assert "network-online.target" in run["wants"]
    assert run["serviceConfig"]["StateDirectory"] == "lab-orchestrator"
    assert run["wantedBy"] == []  # started by the timer only


def test_timer_accepts_the_seeds_hh_mm_form() -> None:
    timer = controller(**SEED)["timer"]
    assert timer["timerConfig"] == {
        "OnCalendar": "*-*-* 02:00:00",
        "Persistent": True,
        "RandomizedDelaySec": "0",
    }
    assert timer["wantedBy"] == ["timers.target"]


def test_timer_passes_a_full_oncalendar_expression_through() -> None:
    timer = controller(**DEDICATED, persistent=False)["timer"]
    assert timer["timerConfig"] == {
        "OnCalendar": "Mon..Fri *-*-* 03:30:00",
        "Persistent": False,
        "RandomizedDelaySec": "15min",
    }


def test_default_schedule_is_two_in_the_morning() -> None:
    timer = controller(flake="/srv/lab", machines={"a": {"host": "a"}})["timer"]
    assert timer["timerConfig"]["OnCalendar"] == "*-*-* 02:00:00"


def test_resume_unit_runs_at_boot_without_holding_up_the_boot_transaction() -> None:
    result = controller(**SEED)
    resume = result["services"]["resume"]
    config_path = result["configFiles"]["resume"]["path"]
    assert resume["serviceConfig"]["ExecStart"] == (
        f"{_orchestrator()} --config {config_path} resume"
    )
    # Not oneshot: the local verify gate waits for `systemctl is-system-running` == running.
    assert resume["serviceConfig"]["Type"] == "exec"
    assert resume["wantedBy"] == ["multi-user.target"]
    assert "network-online.target" in resume["after"]
    assert "network-online.target" in resume["wants"]
    assert resume["restartIfChanged"] is False
    assert resume["unitConfig"]["X-StopOnRemoval"] is False
    # Stays active after it ran, so switching the controller does not start it again mid-run.
    assert resume["serviceConfig"]["RemainAfterExit"] is True
    run = result["services"]["run"]
    for key in ("User", "Group", "StateDirectory", "NoNewPrivileges"):
        assert resume["serviceConfig"][key] == run["serviceConfig"][key]


def test_dedicated_user_gets_the_strict_sandbox_and_the_key_as_a_credential() -> None:
    result = controller(**DEDICATED)
    assert result["failedAssertions"] == []
    for unit in ("run", "resume"):
        service = result["services"][unit]["serviceConfig"]
        assert service["User"] == "lab-orchestrator"
        assert service["Group"] == "lab-orchestrator"
        assert service["NoNewPrivileges"] is True
        assert service["ProtectSystem"] == "strict"
        assert service["ProtectHome"] is True
        assert service["ReadWritePaths"] == ["-/var/lib/lab-orchestrator/lab"]
        assert service["PrivateTmp"] is True
        assert service["CapabilityBoundingSet"] == ""
        assert service["LoadCredential"] == ["ssh-key:/etc/ssh/ssh_host_ed25519_key"]
        assert "/run/wrappers" not in result["services"][unit]["path"]
    user = result["users"]["lab-orchestrator"]
    assert user["isSystemUser"] is True
    assert user["home"] == "/var/lib/lab-orchestrator"
    assert result["groups"] == ["lab-orchestrator"]


def test_each_unit_reads_the_key_from_its_own_credentials_directory() -> None:
    files = controller(**DEDICATED)["configFiles"]
    for unit, name in (("run", "lab-orchestrator"), ("resume", "lab-orchestrator-resume")):
        config = json.loads(files[unit]["text"])
        assert config["ssh"]["identity_file"] == f"/run/credentials/{name}.service/ssh-key"
        assert config["ssh"]["known_hosts"] == ["/etc/ssh/ssh_known_hosts"]
        assert "/etc/ssh/ssh_host_ed25519_key" not in files[unit]["text"]
    # Commands typed by hand have no credentials directory: they name the key file.
    cli = json.loads(files["cli"]["text"])
    assert cli["ssh"]["identity_file"] == "/etc/ssh/ssh_host_ed25519_key"
    assert {**cli, "ssh": None} == {**json.loads(files["run"]["text"]), "ssh": None}


def test_the_key_passphrase_is_a_credential_of_each_unit_too(tmp_path: Path) -> None:
    passphrase = "/etc/lab-orchestrator/ssh-key-passphrase"
    result = controller(**{**DEDICATED, "sshKeyPassphraseFile": passphrase})
    assert result["failedAssertions"] == []
    files = result["configFiles"]
    for unit, name in (("run", "lab-orchestrator"), ("resume", "lab-orchestrator-resume")):
        assert result["services"][unit]["serviceConfig"]["LoadCredential"] == [
            "ssh-key:/etc/ssh/ssh_host_ed25519_key",
            f"ssh-key-passphrase:{passphrase}",
        ]
        config = json.loads(files[unit]["text"])
        assert config["ssh"]["passphrase_file"] == (
            f"/run/credentials/{name}.service/ssh-key-passphrase"
        )
        result_of_validation = validate(tmp_path, files[unit]["text"])
        assert result_of_validation.returncode == 0, result_of_validation.stderr
    assert json.loads(files["cli"]["text"])["ssh"]["passphrase_file"] == passphrase


def test_a_key_passphrase_without_a_key_fails_an_assertion() -> None:
    result = controller(**{**SEED, "sshKeyPassphraseFile": "/etc/lab-orchestrator/passphrase"})
    assert any("sshKeyPassphraseFile needs" in m for m in result["failedAssertions"])


def test_flake_under_home_stays_reachable_read_only_except_itself() -> None:
    result = controller(**{**DEDICATED, "flake": "/home/geir/Home-lab"})
    service = result["services"]["run"]["serviceConfig"]
    assert service["ProtectHome"] == "read-only"
    assert service["ReadWritePaths"] == ["-/home/geir/Home-lab"]


def test_login_user_relaxes_exactly_what_sudo_and_the_deploy_need() -> None:
    result = controller(**SEED)
    run = result["services"]["run"]
    service = run["serviceConfig"]
    assert service["User"] == "geir"
    assert service["Group"] == "users"
    assert service["NoNewPrivileges"] is False
    assert "/run/wrappers" in run["path"]
    assert "/home/geir/Home-lab/result" in run["path"]
    for relaxed in ("ProtectSystem", "ProtectHome", "CapabilityBoundingSet", "RestrictNamespaces"):
        assert relaxed not in service
    assert service["PrivateTmp"] is True
    assert "lab-orchestrator" not in result["users"]
    assert result["groups"] == []


def test_polkit_allows_the_service_user_to_reboot_and_nothing_else() -> None:
    rules = controller(**DEDICATED)["polkit"]
    assert 'subject.user == "lab-orchestrator"' in rules
    assert set(re.findall(r'"(org\.freedesktop\.[^"]+)"', rules)) == {
        "org.freedesktop.login1.reboot",
        "org.freedesktop.login1.reboot-multiple-sessions",
    }
    assert 'subject.user == "geir"' in controller(**SEED)["polkit"]


def test_no_polkit_rule_without_a_local_machine() -> None:
    machines = {name: m for name, m in DEDICATED["machines"].items() if name != "self"}
    assert controller(**{**DEDICATED, "machines": machines})["polkit"] == ""


def test_a_local_machine_turns_polkit_on_which_nixos_leaves_off() -> None:
    # Issue 8, item 15: security.polkit.enable defaults to false (nixpkgs#156858).
    assert controller(**DEDICATED)["polkitEnable"] is True
    assert controller(**SEED)["polkitEnable"] is True
    machines = {name: m for name, m in DEDICATED["machines"].items() if name != "self"}
    assert controller(**{**DEDICATED, "machines": machines})["polkitEnable"] is False
    assert evaluate(controller={"lab-orchestrator": {}})["controller"]["polkitEnable"] is False


def test_polkit_turned_off_by_hand_with_a_local_machine_is_a_conflict() -> None:
    config = {
        "lab-orchestrator": {"enable": True, **DEDICATED},
        "_security": {"polkit": {"enable": False}},
    }
    error = evaluation_error(controller=config)
    assert "security.polkit.enable' has conflicting definition values" in error, error


# The seed's own lines, as its hosts/controller/configuration.nix would have them with the local
# machine declared (issue 8, item 15): nothing else is needed.
SEED_LINES = """\
{
  services.lab-orchestrator = {
    enable = true;
    schedule = "02:00";
    user = "geir";
    machines.self.local = true;
  };
}
"""


def test_the_seeds_six_lines_give_a_valid_config_and_build(tmp_path: Path) -> None:
    module = tmp_path / "configuration.nix"
    module.write_text(SEED_LINES, encoding="utf-8")
    result = evaluate_module_file(module)
    assert result["failedAssertions"] == []
    assert result["polkitEnable"] is True
    assert 'subject.user == "geir"' in result["polkit"]
    assert result["timer"]["timerConfig"]["OnCalendar"] == "*-*-* 02:00:00"
    assert result["services"]["run"]["serviceConfig"]["User"] == "geir"
    for unit in ("run", "resume", "cli"):
        checked = validate(tmp_path, result["configFiles"][unit]["text"], f"{unit}.yaml")
        assert checked.returncode == 0, checked.stderr
        assert "self" in checked.stdout
    config = json.loads(result["configFiles"]["run"]["text"])
    assert config["flake"] == "/var/lib/lab-orchestrator/lab"
    assert config["order"] == ["self"]
    for name in ("lab-orchestrator-validate-config", "lab-orchestrator-validate-schedule"):
        out = tmp_path / name
        assert _run_check(tmp_path, result, name, out).returncode == 0
        assert out.exists()


def test_config_is_validated_at_build_time_and_installed_for_the_cli() -> None:
    result = controller(**SEED)
    assert [check["name"] for check in result["checks"]] == [
        "lab-orchestrator-validate-schedule",
        "lab-orchestrator-validate-config",
    ]
    check = _check(result, "lab-orchestrator-validate-config")
    assert set(result["configFiles"]) == {"run", "resume", "cli"}
    for file in result["configFiles"].values():
        assert f"{_orchestrator()} --config {file['path']} validate-config" in check["buildCommand"]
    assert result["etc"]["lab-orchestrator/config.yaml"] == result["configFiles"]["cli"]["path"]
    assert result["systemPackages"] == [str(_orchestrator().parent.parent)]


def test_disabled_module_defines_nothing() -> None:
    result = evaluate(controller={"lab-orchestrator": {"flake": "/srv/lab"}})["controller"]
    assert result["services"] == {"run": None, "resume": None}
    assert result["timer"] is None
    assert result["checks"] == []
    assert result["polkit"] == ""
    assert result["polkitEnable"] is False


def test_every_visible_option_is_described() -> None:
    docs = controller(**SEED)["docs"] + evaluate()["target"]["docs"]
    assert len(docs) > 20
    for option in docs:
        assert option["description"].strip(), option["name"]


# --- the generated config file in the orchestrator's own config model -----------------------


def test_generated_config_loads_in_the_orchestrator_in_reboot_order(tmp_path: Path) -> None:
    files = controller(**SEED)["configFiles"]
    for unit in ("run", "resume", "cli"):
        # Compact as builtins.toJSON writes it, and indented as the real pkgs.formats.json does
        # (through `jq .`).
        compact = files[unit]["text"]
        indented = json.dumps(json.loads(compact), indent=2, ensure_ascii=False)
        for text in (compact, indented):
            result = validate(tmp_path, text, f"{unit}.yaml")
            assert result.returncode == 0, result.stderr
            assert "sleeper-service -> grey-area -> reverse-proxy -> self" in result.stdout
    config = json.loads(files["run"]["text"])
    assert config["flake"] == "/home/geir/Home-lab"
    assert config["state_dir"] == "/var/lib/lab-orchestrator"
    assert config["reboot"] == {"settle": "10m"}
    assert config["machines"]["grey-area"]["checks"] == [
        {"url": "http://grey-area.local:3000/", "status": 200}
    ]
    # No key, no known_hosts: a login user keeps the SSH client defaults.
    assert "ssh" not in config


def test_every_check_type_can_be_declared_through_the_module(tmp_path: Path) -> None:
    checks = [
        {"url": "http://grey-area.local:3000/"},
        {"type": "tcp", "port": 5432},
        {"type": "command", "command": ["systemctl", "is-active", "--quiet", "nginx"]},
        {"type": "systemd", "units": ["nginx.service", "postgresql.service"]},
    ]
    machines = {**SEED["machines"], "grey-area": {"host": "grey-area.local", "checks": checks}}
    files = controller(**{**SEED, "machines": machines})["configFiles"]
    assert json.loads(files["run"]["text"])["machines"]["grey-area"]["checks"] == checks
    result = validate(tmp_path, files["run"]["text"])
    assert result.returncode == 0, result.stderr


def test_default_order_is_alphabetical_with_the_local_machine_last(tmp_path: Path) -> None:
    files = controller(**DEDICATED)["configFiles"]
    assert json.loads(files["run"]["text"])["order"] == ["alpha", "zeta", "self"]
    result = validate(tmp_path, files["run"]["text"])
    assert result.returncode == 0, result.stderr
    assert "alpha -> zeta -> self" in result.stdout


def test_build_time_check_script_passes_on_a_good_config(tmp_path: Path) -> None:
    assert _run_check(tmp_path, controller(**SEED)).returncode == 0
    assert (tmp_path / "out").exists()


def test_build_time_check_script_fails_on_a_bad_setting(tmp_path: Path) -> None:
    bad = controller(**{**SEED, "settings": {"reboot": {"stable_passes": 0}}})
    assert bad["failedAssertions"] == []  # only the orchestrator knows the key
    result = _run_check(tmp_path, bad)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ")
    assert "reboot.stable_passes" in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_unknown_setting_fails_validation(tmp_path: Path) -> None:
    files = controller(**{**SEED, "settings": {"reboots": {"settle": "10m"}}})["configFiles"]
    result = validate(tmp_path, files["run"]["text"])
    assert result.returncode == 2
    assert "reboots" in result.stderr


def test_an_invalid_machine_name_fails_validation(tmp_path: Path) -> None:
    machines = {**SEED["machines"], "Grey_Area": {"host": "grey-area.local"}}
    order = [*SEED["rebootOrder"][:-1], "Grey_Area", "self"]
    files = controller(**{**SEED, "machines": machines, "rebootOrder": order})["configFiles"]
    result = validate(tmp_path, files["run"]["text"])
    assert result.returncode == 2
    assert "Grey_Area" in result.stderr


def _check(result: dict[str, Any], name: str) -> dict[str, Any]:
    (check,) = [check for check in result["checks"] if check["name"] == name]
    return check


def _require_systemd_analyze() -> str:
    if SYSTEMD_ANALYZE is None:
        missing("systemd-analyze not found", "apt-get install systemd")
    return SYSTEMD_ANALYZE


def _run_check(
    tmp_path: Path,
    result: dict[str, Any],
    name: str = "lab-orchestrator-validate-config",
    out: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a system.checks script as the build would, with its store paths made real files.

    The stand-in systemd's programs are this machine's: the schedule check runs the real
    ``systemd-analyze calendar``.
    """
    script = _check(result, name)["buildCommand"]
    for unit, file in result["configFiles"].items():
        real = tmp_path / f"{unit}.yaml"
        real.write_text(file["text"], encoding="utf-8")
        script = script.replace(file["path"], str(real))
    if f"{SYSTEMD_STUB}/bin/" in script:
        systemd_bin = Path(_require_systemd_analyze()).parent
        script = script.replace(f"{SYSTEMD_STUB}/bin/", f"{systemd_bin}/")
    assert "/nix/store" not in script
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env={**os.environ, "out": str(out or tmp_path / "out")},
        capture_output=True,
        text=True,
        check=False,
    )


# --- the controller module: assertions ---------------------------------------------------------


def test_two_local_machines_fail_an_assertion() -> None:
    machines = {**DEDICATED["machines"], "other": {"local": True}}
    failed = controller(**{**DEDICATED, "machines": machines})["failedAssertions"]
    assert any(
        message.startswith("services.lab-orchestrator.machines: at most one machine")
        for message in failed
    ), failed


def test_a_reboot_order_missing_a_machine_fails_an_assertion() -> None:
    failed = controller(**{**DEDICATED, "rebootOrder": ["alpha", "self"]})["failedAssertions"]
    assert any(message.startswith("services.lab-orchestrator.rebootOrder") for message in failed)


def test_the_local_machine_not_last_fails_an_assertion() -> None:
    order = ["self", "alpha", "zeta"]
    failed = controller(**{**DEDICATED, "rebootOrder": order})["failedAssertions"]
    assert any("must come last" in message for message in failed), failed


def test_a_remote_machine_without_host_fails_an_assertion() -> None:
    machines = {**DEDICATED["machines"], "nohost": {}}
    failed = controller(**{**DEDICATED, "machines": machines})["failedAssertions"]
    assert "services.lab-orchestrator.machines.nohost.host must be set (or local = true)." in failed


def test_a_key_in_the_store_fails_an_assertion() -> None:
    failed = controller(**{**DEDICATED, "sshKeyFile": "/nix/store/abc-key"})["failedAssertions"]
    assert any(message.startswith("services.lab-orchestrator.sshKeyFile") for message in failed)


def test_dedicated_user_without_known_hosts_is_warned() -> None:
    warnings = controller(**DEDICATED)["warnings"]
    assert any("programs.ssh.knownHosts" in warning for warning in warnings)
    assert controller(**SEED)["warnings"] == []


# --- the target module -----------------------------------------------------------------------


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBx+d3BtC5jvUBMgNLWq5/sLIp3+XBbiCm+leD+8LWR1 ctl"


TARGET = {
    "lab-orchestrator-target": {"enable": True, "authorizedKeys": [KEY]},
    "openssh": {"enable": True},
}
# nix/target-helper.sh, installed by the target module as this command.
TARGET_HELPER = REPO / "nix" / "target-helper.sh"
HELPER_NAME = "lab-orchestrator-target"
# The stand-in pkgs' store paths (tests/nix_eval/eval.nix).
STUB_STORE = "/nix/store/00000000000000000000000000000000"


def _systemctl_commands() -> set[str]:
    systemctls = (f"{SYSTEMD_STUB}/bin/systemctl", "/run/current-system/sw/bin/systemctl")
    return {
        f"{systemctl} {verb}"
        for systemctl in systemctls
        for verb in ("reboot", "is-system-running")
    }


def test_target_creates_a_login_user_allowed_to_reboot_and_nothing_else() -> None:
    target = evaluate(target=TARGET)["target"]
    assert target["failedAssertions"] == []
    user = target["users"]["lab-orchestrator"]
    assert user["openssh"]["authorizedKeys"]["keys"] == [f"restrict {KEY}"]
    assert user["useDefaultShell"] is True
    assert user["isSystemUser"] is True
    assert user["group"] == "lab-orchestrator"
    (rule,) = target["sudoRules"]
    assert rule["users"] == ["lab-orchestrator"]
    # Issue 8, item 17: as root only, not the nixpkgs default ALL:ALL.
    assert rule["runAs"] == "root"
    commands = {entry["command"] for entry in rule["commands"]}
    # Issue 10: and the helper that chooses which generation boots, by its store path and the
    # path a login shell finds; its arguments are its own to check.
    helper = f"{target['helper']['storePath']}/bin/{HELPER_NAME}"
    assert helper.startswith("/nix/store/")
    assert commands == _systemctl_commands() | {
        helper,
        f"/run/current-system/sw/bin/{HELPER_NAME}",
    }
    # No other command may take arbitrary arguments, nor any a wildcard.
    assert not any(c.endswith("systemctl") or "*" in c or "ALL" in c for c in commands)
    assert all(entry["options"] == ["NOPASSWD"] for entry in rule["commands"])


def _helper_path(*tools: str) -> str:
    return ":".join(f"{STUB_STORE}-{tool}/bin" for tool in tools)


def test_target_installs_the_helper_with_exactly_its_tools() -> None:
    target = evaluate(target=TARGET)["target"]
    assert HELPER_NAME in target["systemPackages"]
    helper = target["helper"]
    assert helper["name"] == helper["mainProgram"] == HELPER_NAME
    script = TARGET_HELPER.read_text(encoding="utf-8")
    assert script.startswith("#!/bin/sh\n")
    # PATH set, not prefixed (no runtimeInputs): sudo passes the SSH user's PATH on. GRUB's
    # tools: nixpkgs enables GRUB unless the machine is a container or uses systemd-boot.
    assert helper["otherArgs"] == []
    assert helper["text"] == (
        f"PATH={_helper_path('coreutils', 'nix', 'systemd', 'grub')}\nexport PATH\n"
        + script.removeprefix("#!/bin/sh\n")
    )
    no_grub = evaluate(target={**TARGET, "_boot": {"loader": {"grub": {"enable": False}}}})
    assert no_grub["target"]["helper"]["text"].startswith(
        f"PATH={_helper_path('coreutils', 'nix', 'systemd')}\nexport PATH\n"
    )
    container = evaluate(target={**TARGET, "_boot": {"isContainer": True}})
    assert "-grub/bin" not in container["target"]["helper"]["text"].splitlines()[0]


def test_the_helper_builds_as_writeshellapplication_checks_it(tmp_path: Path) -> None:
    """nixpkgs' writeShellApplication puts bash and its options first and runs shellcheck on
    the result: so does this, and the script then refuses a bad argument under bash too."""
    text = evaluate(target=TARGET)["target"]["helper"]["text"]
    built = tmp_path / HELPER_NAME
    built.write_text(
        "#!/bin/bash\nset -o errexit\nset -o nounset\nset -o pipefail\n\n" + text,
        encoding="utf-8",
    )
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        missing("shellcheck not found", "apt-get install shellcheck")
    for program in (built, TARGET_HELPER):
        checked = subprocess.run(
            [shellcheck, str(program)], capture_output=True, text=True, check=False
        )
        assert checked.returncode == 0, checked.stdout
    marker = tmp_path / "ran"
    for args in (["boot-once", f"$(touch {marker})"], ["boot-once"], ["make-default", "/etc"]):
        refused = subprocess.run(
            ["bash", str(built), *args], capture_output=True, text=True, check=False
        )
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith("target-helper: ") and refused.stdout == ""
    assert not marker.exists()


@pytest.mark.parametrize(
    ("boot", "warned"),
    [
        ({}, True),
        ({"loader": {"grub": {"default": 2}}}, True),
        ({"loader": {"grub": {"default": "saved"}}}, False),
        ({"loader": {"grub": {"enable": False}}}, False),
    ],
    ids=["grub-default-0", "grub-default-2", "grub-saved", "no-grub"],
)
def test_grub_without_a_saved_default_is_warned_about(boot: dict[str, Any], warned: bool) -> None:
    target = evaluate(target={**TARGET, "_boot": boot})["target"]
    assert target["failedAssertions"] == []
    if warned:
        (warning,) = target["warnings"]
        assert warning.startswith("services.lab-orchestrator-target: with GRUB, set ")
        assert 'boot.loader.grub.default = "saved"' in warning
    else:
        assert target["warnings"] == []


def test_target_without_a_key_or_sshd_fails_assertions() -> None:
    failed = evaluate(target={"lab-orchestrator-target": {"enable": True}})["target"][
        "failedAssertions"
    ]
    assert any(m.startswith("services.lab-orchestrator-target.authorizedKeys") for m in failed)
    assert any("services.openssh.enable" in m for m in failed)


def test_a_key_with_options_keeps_them_after_restrict() -> None:
    keyed = f'from="10.0.0.0/8" {KEY}'
    target = evaluate(
        target={
            "lab-orchestrator-target": {"enable": True, "authorizedKeys": [keyed, KEY]},
            "openssh": {"enable": True},
        }
    )["target"]
    keys = target["users"]["lab-orchestrator"]["openssh"]["authorizedKeys"]["keys"]
    assert keys == [f"restrict,{keyed}", f"restrict {KEY}"]


# --- controller and target on one host (issue 8, item 16) -----------------------------------


def test_controller_and_target_on_one_host_share_the_user(tmp_path: Path) -> None:
    result = evaluate(
        both={
            "lab-orchestrator": {"enable": True, **DEDICATED},
            "lab-orchestrator-target": {"enable": True, "authorizedKeys": [KEY]},
            "openssh": {"enable": True},
        }
    )["both"]
    assert result["controller"]["failedAssertions"] == []
    assert result["target"]["failedAssertions"] == []
    user = result["controller"]["users"]["lab-orchestrator"]
    # The controller's definitions win over the target's defaults.
    assert user["description"] == "lab-orchestrator service user"
    assert user["home"] == "/var/lib/lab-orchestrator"
    assert user["group"] == "lab-orchestrator"
    assert user["isSystemUser"] is True
    assert user["useDefaultShell"] is True
    assert user["openssh"]["authorizedKeys"]["keys"] == [f"restrict {KEY}"]
    assert result["controller"]["groups"] == ["lab-orchestrator"]
    (rule,) = result["target"]["sudoRules"]
    assert rule["users"] == ["lab-orchestrator"]
    assert 'subject.user == "lab-orchestrator"' in result["controller"]["polkit"]
    checked = validate(tmp_path, result["controller"]["configFiles"]["run"]["text"])
    assert checked.returncode == 0, checked.stderr


def test_controller_and_target_on_one_host_with_a_login_user_controller() -> None:
    seed = {key: value for key, value in SEED.items() if key != "users"}
    result = evaluate(
        both={
            "lab-orchestrator": {"enable": True, **seed},
            "lab-orchestrator-target": {"enable": True, "authorizedKeys": [KEY]},
            "openssh": {"enable": True},
            "users": {"users": SEED["users"]},
        }
    )["both"]
    assert result["controller"]["failedAssertions"] == []
    assert result["target"]["failedAssertions"] == []
    target_user = result["target"]["users"]["lab-orchestrator"]
    assert target_user["description"] == "lab-orchestrator controller access"
    assert result["controller"]["services"]["run"]["serviceConfig"]["User"] == "geir"


# --- schedule, configFile and the rest of issue 8, item 17 ----------------------------------


@pytest.mark.parametrize("schedule", ["24:00", "02:60", "99:99"])
def test_an_hh_mm_schedule_out_of_range_fails_an_assertion(schedule: str) -> None:
    failed = controller(**{**DEDICATED, "schedule": schedule})["failedAssertions"]
    assert f'services.lab-orchestrator.schedule = "{schedule}" is not a time of day' in "".join(
        failed
    ), failed


@pytest.mark.parametrize("schedule", ["2am", "24:00", "Mon..Fri 25:00", "*-*-* 02:00:00 Nowhere/X"])
def test_the_build_fails_on_a_schedule_systemd_refuses(tmp_path: Path, schedule: str) -> None:
    result = controller(**{**DEDICATED, "schedule": schedule})
    checked = _run_check(tmp_path, result, "lab-orchestrator-validate-schedule")
    assert checked.returncode == 1, checked
    assert f'error: services.lab-orchestrator.schedule = "{schedule}"' in checked.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("schedule", ["02:00", "2:00", "23:59", "Mon..Fri *-*-* 03:30:00", "daily"])
def test_the_build_passes_on_a_schedule_systemd_accepts(tmp_path: Path, schedule: str) -> None:
    result = controller(**{**DEDICATED, "schedule": schedule})
    assert result["failedAssertions"] == []
    checked = _run_check(tmp_path, result, "lab-orchestrator-validate-schedule")
    assert checked.returncode == 0, checked.stderr
    assert (tmp_path / "out").exists()


def test_the_units_create_files_for_the_service_user_only() -> None:
    for options in (SEED, DEDICATED):
        services = controller(**options)["services"]
        for unit in ("run", "resume"):
            assert services[unit]["serviceConfig"]["UMask"] == "0077"


def test_a_config_file_outside_the_store_is_used_as_it_is() -> None:
    path = "/etc/lab-orchestrator/lab.yaml"
    result = controller(configFile=path)
    assert result["failedAssertions"] == []
    for unit in ("run", "resume", "cli"):
        assert result["configFiles"][unit] == {"path": path, "text": None}
    run = result["services"]["run"]["serviceConfig"]["ExecStart"]
    resume = result["services"]["resume"]["serviceConfig"]["ExecStart"]
    assert run == f"{_orchestrator()} --config {path} run"
    assert resume == f"{_orchestrator()} --config {path} resume"
    # Not readable by the build, and not linked where it might itself be.
    assert [check["name"] for check in result["checks"]] == ["lab-orchestrator-validate-schedule"]
    assert "lab-orchestrator/config.yaml" not in result["etc"]
    # It may have a local machine: the controller may reboot itself.
    assert result["polkitEnable"] is True
    assert "org.freedesktop.login1.reboot" in result["polkit"]


def test_a_config_file_in_the_store_is_validated_at_build_time(tmp_path: Path) -> None:
    path = "/nix/store/11111111111111111111111111111111-lab.yaml"
    result = controller(configFile=path)
    assert result["etc"]["lab-orchestrator/config.yaml"] == path
    check = _check(result, "lab-orchestrator-validate-config")
    assert f"--config {path} validate-config" in check["buildCommand"]
    # The check, run on the seed's generated config standing in for the file.
    seed_text = controller(**SEED)["configFiles"]["run"]["text"]
    files = {unit: {"path": path, "text": seed_text} for unit in ("run", "resume", "cli")}
    assert _run_check(tmp_path, {**result, "configFiles": files}).returncode == 0
    bad_text = json.dumps({**json.loads(seed_text), "reboots": {}})
    files = {unit: {"path": path, "text": bad_text} for unit in ("run", "resume", "cli")}
    assert _run_check(tmp_path, {**result, "configFiles": files}).returncode == 2


def test_a_config_file_with_an_ssh_key_file_fails_an_assertion() -> None:
    failed = controller(configFile="/etc/lab.yaml", sshKeyFile="/etc/ssh/key")["failedAssertions"]
    assert any(m.startswith("services.lab-orchestrator.sshKeyFile cannot") for m in failed), failed


def test_package_option_is_a_package_option_and_prose_defaults_are_markdown() -> None:
    docs = {option["name"]: option for option in controller(**SEED)["docs"]}
    package = docs["services.lab-orchestrator.package"]
    assert package["default"] == {"_type": "literalExpression", "text": "pkgs.lab-orchestrator"}
    assert package["description"].startswith("The lab-orchestrator package to use. ")
    for name in ("group", "rebootOrder"):
        assert docs[f"services.lab-orchestrator.{name}"]["default"]["_type"] == "literalMD"
    for option in docs.values():
        default = option["default"]
        if isinstance(default, dict) and default.get("_type") == "literalExpression":
            # An expression, not prose: no sentence in it.
            assert not re.search(r"\b(the|if|else|otherwise)\b", default["text"]), option


# --- notifications, heartbeat, metrics and sd_notify status (issue 9) -----------------------

# option, its LoadCredential= name, and the config key it sets.
SECRET_FILES = [
    ("notify", "urlsFile", "/etc/lab-orchestrator/notify-urls", "notify-urls", "urls_file"),
    ("heartbeat", "urlFile", "/etc/lab-orchestrator/heartbeat-url", "heartbeat-url", "url_file"),
]
UNIT_NAMES = (("run", "lab-orchestrator"), ("resume", "lab-orchestrator-resume"))


@pytest.mark.parametrize(
    ("section", "option", "path", "credential", "key"),
    SECRET_FILES,
    ids=[f"{s}.{o}" for s, o, *_ in SECRET_FILES],
)
def test_a_url_file_is_a_credential_of_each_unit_and_never_in_the_store(
    tmp_path: Path, section: str, option: str, path: str, credential: str, key: str
) -> None:
    result = controller(**{**DEDICATED, section: {option: path}})
    assert result["failedAssertions"] == []
    files = result["configFiles"]
    for unit, name in UNIT_NAMES:
        assert result["services"][unit]["serviceConfig"]["LoadCredential"] == [
            "ssh-key:/etc/ssh/ssh_host_ed25519_key",
            f"{credential}:{path}",
        ]
        config = json.loads(files[unit]["text"])
        assert config[section] == {key: f"/run/credentials/{name}.service/{credential}"}
        # The unit reads the credential, not the file itself, so the store holds no trace of it.
        assert path not in files[unit]["text"]
        checked = validate(tmp_path, files[unit]["text"], f"{unit}.yaml")
        assert checked.returncode == 0, checked.stderr
    # Commands typed by hand have no credentials directory: they name the file.
    assert json.loads(files["cli"]["text"])[section] == {key: path}
    # A login user without an SSH key passes this credential alone.
    seed = controller(**{**SEED, section: {option: path}})
    assert seed["failedAssertions"] == []
    for unit, name in UNIT_NAMES:
        assert seed["services"][unit]["serviceConfig"]["LoadCredential"] == [f"{credential}:{path}"]
        config = json.loads(seed["configFiles"][unit]["text"])
        assert config[section][key] == f"/run/credentials/{name}.service/{credential}"


def test_both_url_files_and_the_settings_of_their_sections_go_together(tmp_path: Path) -> None:
    options = {
        **SEED,
        "notify": {"urlsFile": "/run/secrets/notify-urls"},
        "heartbeat": {"urlFile": "/run/secrets/heartbeat-url"},
        "settings": {
            "reboot": {"settle": "10m"},
            "notify": {"on": ["aborted"], "timeout": "20s"},
            "heartbeat": {"timeout": "5s"},
        },
    }
    result = controller(**options)
    assert result["failedAssertions"] == []
    assert result["warnings"] == []
    run = json.loads(result["configFiles"]["run"]["text"])
    assert run["notify"] == {
        "on": ["aborted"],
        "timeout": "20s",
        "urls_file": "/run/credentials/lab-orchestrator.service/notify-urls",
    }
    assert run["heartbeat"] == {
        "timeout": "5s",
        "url_file": "/run/credentials/lab-orchestrator.service/heartbeat-url",
    }
    assert run["reboot"] == {"settle": "10m"}
    for unit in ("run", "resume"):
        assert result["services"][unit]["serviceConfig"]["LoadCredential"] == [
            "notify-urls:/run/secrets/notify-urls",
            "heartbeat-url:/run/secrets/heartbeat-url",
        ]
    assert _run_check(tmp_path, result).returncode == 0


@pytest.mark.parametrize(
    ("section", "option"), [(s, o) for s, o, *_ in SECRET_FILES], ids=lambda v: str(v)
)
@pytest.mark.parametrize("path", ["/nix/store/abc-notify-urls", "secrets/urls"])
def test_a_url_file_in_the_store_or_relative_fails_an_assertion(
    section: str, option: str, path: str
) -> None:
    failed = controller(**{**DEDICATED, section: {option: path}})["failedAssertions"]
    assert failed == [
        f"services.lab-orchestrator.{section}.{option} must be an absolute path outside the "
        f'Nix store, got "{path}".'
    ]


@pytest.mark.parametrize(
    ("section", "option"), [(s, o) for s, o, *_ in SECRET_FILES], ids=lambda v: str(v)
)
def test_a_url_file_with_a_config_file_fails_an_assertion(section: str, option: str) -> None:
    failed = controller(configFile="/etc/lab.yaml", **{section: {option: "/etc/secret"}})[
        "failedAssertions"
    ]
    assert any(
        m.startswith(f"services.lab-orchestrator.{section}.{option} cannot be used with")
        for m in failed
    ), failed


def test_urls_in_plain_settings_are_warned_about() -> None:
    notify = controller(**{**SEED, "settings": {"notify": {"urls": ["ntfy://ntfy.sh/t0ken"]}}})
    assert notify["failedAssertions"] == []
    (warning,) = notify["warnings"]
    assert "settings.notify.urls" in warning
    assert "services.lab-orchestrator.notify.urlsFile" in warning
    heartbeat = controller(
        **{**SEED, "settings": {"heartbeat": {"url": "https://hc-ping.com/0d2b4f4e"}}}
    )
    (warning,) = heartbeat["warnings"]
    assert "settings.heartbeat.url" in warning
    assert "services.lab-orchestrator.heartbeat.urlFile" in warning
    # Sections without URLs are no secret.
    quiet = controller(**{**SEED, "settings": {"notify": {"on": ["done"]}, "heartbeat": {}}})
    assert quiet["warnings"] == []


TEXTFILE_DIR = "/var/lib/prometheus-node-exporter-text-files"


def _with_node_exporter(options: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    users = options.get("users")
    config: dict[str, Any] = {
        "lab-orchestrator": {
            "enable": True,
            **{k: v for k, v in options.items() if k != "users"},
        },
        "prometheus": {"exporters": {"node": node}},
    }
    if users is not None:
        config["users"] = {"users": users}
    result: dict[str, Any] = evaluate(controller=config)["controller"]
    return result


def test_metrics_go_to_the_textfile_collector_of_node_exporter(tmp_path: Path) -> None:
    result = _with_node_exporter({**DEDICATED, "metrics": {"enable": True}}, {"enable": True})
    assert result["failedAssertions"] == []
    node = result["nodeExporter"]
    assert node["enabledCollectors"] == ["textfile"]
    (flag,) = node["extraFlags"]
    assert flag == f"--collector.textfile.directory={TEXTFILE_DIR}"
    directory = flag.split("=", 1)[1]
    for unit in ("run", "resume", "cli"):
        text = result["configFiles"][unit]["text"]
        textfile = Path(json.loads(text)["metrics"]["textfile"])
        # The collector reads *.prom files directly in its directory.
        assert str(textfile.parent) == directory
        assert textfile.suffix == ".prom"
        checked = validate(tmp_path, text, f"{unit}.yaml")
        assert checked.returncode == 0, checked.stderr
    # Made at boot, writable by the service user, readable by node_exporter's own user.
    assert result["tmpfiles"] == [f"d {directory} 0755 lab-orchestrator lab-orchestrator -"]
    for unit in ("run", "resume"):
        service = result["services"][unit]["serviceConfig"]
        assert service["ProtectSystem"] == "strict"
        assert service["ReadWritePaths"] == [
            "-/var/lib/lab-orchestrator/lab",
            f"-{directory}",
        ]
    assert _run_check(tmp_path, result).returncode == 0


def test_metrics_keep_the_node_exporter_settings_of_the_host() -> None:
    node = {
        "enable": True,
        "enabledCollectors": ["systemd"],
        "extraFlags": ["--collector.ethtool"],
    }
    result = _with_node_exporter({**DEDICATED, "metrics": {"enable": True}}, node)
    exporter = result["nodeExporter"]
    assert sorted(exporter["enabledCollectors"]) == ["systemd", "textfile"]
    assert sorted(exporter["extraFlags"]) == [
        "--collector.ethtool",
        f"--collector.textfile.directory={TEXTFILE_DIR}",
    ]


def test_metrics_directory_can_be_chosen(tmp_path: Path) -> None:
    result = _with_node_exporter(
        {**SEED, "metrics": {"enable": True, "directory": "/srv/textfiles"}}, {"enable": True}
    )
    assert result["failedAssertions"] == []
    assert result["nodeExporter"]["extraFlags"] == ["--collector.textfile.directory=/srv/textfiles"]
    config = json.loads(result["configFiles"]["run"]["text"])
    assert config["metrics"] == {"textfile": "/srv/textfiles/lab_orchestrator.prom"}
    # A login user owns it; its relaxed sandbox has no read-only file system to open up.
    assert result["tmpfiles"] == ["d /srv/textfiles 0755 geir users -"]
    assert "ReadWritePaths" not in result["services"]["run"]["serviceConfig"]
    failed = controller(**{**SEED, "metrics": {"enable": True, "directory": "/nix/store/x"}})[
        "failedAssertions"
    ]
    assert any(m.startswith("services.lab-orchestrator.metrics.directory must be") for m in failed)


def test_metrics_without_node_exporter_still_write_the_file(tmp_path: Path) -> None:
    result = _with_node_exporter({**DEDICATED, "metrics": {"enable": True}}, {})
    assert result["failedAssertions"] == []
    # node_exporter is not turned on or configured by this module.
    assert result["nodeExporter"] == {"enable": False, "enabledCollectors": [], "extraFlags": []}
    config = json.loads(result["configFiles"]["run"]["text"])
    assert config["metrics"] == {"textfile": f"{TEXTFILE_DIR}/lab_orchestrator.prom"}
    assert result["tmpfiles"] == [f"d {TEXTFILE_DIR} 0755 lab-orchestrator lab-orchestrator -"]
    assert f"-{TEXTFILE_DIR}" in result["services"]["run"]["serviceConfig"]["ReadWritePaths"]


def test_no_metrics_unless_enabled() -> None:
    result = _with_node_exporter(DEDICATED, {"enable": True})
    assert result["nodeExporter"] == {"enable": True, "enabledCollectors": [], "extraFlags": []}
    assert "metrics" not in json.loads(result["configFiles"]["run"]["text"])
    assert result["tmpfiles"] == []
    assert result["services"]["run"]["serviceConfig"]["ReadWritePaths"] == [
        "-/var/lib/lab-orchestrator/lab"
    ]


def test_both_units_accept_status_lines_from_the_orchestrator() -> None:
    for options in (SEED, DEDICATED):
        services = controller(**options)["services"]
        for unit in ("run", "resume"):
            assert services[unit]["serviceConfig"]["NotifyAccess"] == "main"


def test_the_seeds_six_lines_need_nothing_of_issue_9(tmp_path: Path) -> None:
    module = tmp_path / "configuration.nix"
    module.write_text(SEED_LINES, encoding="utf-8")
    result = evaluate_module_file(module)
    assert result["failedAssertions"] == []
    assert result["warnings"] == []
    config = json.loads(result["configFiles"]["run"]["text"])
    assert not {"notify", "heartbeat", "metrics"} & set(config)
    for unit in ("run", "resume"):
        service = result["services"][unit]["serviceConfig"]
        assert service["NotifyAccess"] == "main"
        assert "LoadCredential" not in service
    assert result["tmpfiles"] == []
    assert result["nodeExporter"]["extraFlags"] == []


def test_metrics_with_a_config_file_prepare_the_directory_the_file_names() -> None:
    result = _with_node_exporter(
        {"configFile": "/etc/lab-orchestrator/lab.yaml", "metrics": {"enable": True}},
        {"enable": True},
    )
    assert result["failedAssertions"] == []
    assert result["configFiles"]["run"] == {"path": "/etc/lab-orchestrator/lab.yaml", "text": None}
    assert result["tmpfiles"] == [f"d {TEXTFILE_DIR} 0755 lab-orchestrator lab-orchestrator -"]
    assert result["nodeExporter"]["extraFlags"] == [
        f"--collector.textfile.directory={TEXTFILE_DIR}"
    ]
    assert f"-{TEXTFILE_DIR}" in result["services"]["run"]["serviceConfig"]["ReadWritePaths"]


# --- NixOS generations (issue 10): power_cycle, credentials, the new settings ---------------

IPMI = [
    "/bin/sh",
    "-c",
    'exec ipmitool -I lanplus -H grey-area-bmc.local -U admin -f "$CREDENTIALS_DIRECTORY/ipmi"'
    " chassis power cycle",
]
# Every key issue 10 added to the config file, through `settings` (freeform, as the other keys).
GENERATION_SETTINGS = {
    "deploy": {"mode": "per-machine", "machine_command": ["lab-deploy-boot", "{machine}"]},
    "reboot": {
        "settle": "10m",
        "when": "if-needed",
        "if_changed": ["kernel", "initrd", "kernel-modules", "systemd"],
        "boot_once": True,
        "power_cycle_after": "5m",
    },
    "on_failure": "rollback",
    "target_helper": ["lab-orchestrator-target"],
}


def _with_power_cycle(**extra: Any) -> dict[str, Any]:
    machines = {**SEED["machines"], "grey-area": {"host": "grey-area.local", "power_cycle": IPMI}}
    return {**SEED, "machines": machines, **extra}


def test_power_cycle_is_a_typed_machine_option_that_points_to_the_reference() -> None:
    docs = {option["name"]: option for option in controller(**SEED)["docs"]}
    option = docs["services.lab-orchestrator.machines.<name>.power_cycle"]
    assert option["type"] == "null or (list of string)"
    assert option["default"] == {"_type": "literalExpression", "text": "null"}
    assert "config/REFERENCE.md" in option["description"]
    assert "{option}`path`" in option["description"]
    assert "{option}`credentials`" in option["description"]
    # The settings' example and description name the new keys (they stay freeform).
    settings = docs["services.lab-orchestrator.settings"]
    for key in ("per-machine", "machine_command", "if-needed", "boot_once", "on_failure"):
        assert key in settings["example"]["text"] + settings["description"], key
    for key in ("reboot.power_cycle_after", "target_helper", "reboot.if_changed"):
        assert key in settings["description"], key


def test_power_cycle_renders_into_the_config_of_its_machine_only(tmp_path: Path) -> None:
    result = controller(**_with_power_cycle(settings=GENERATION_SETTINGS))
    assert result["failedAssertions"] == []
    for unit in ("run", "resume", "cli"):
        text = result["configFiles"][unit]["text"]
        config = json.loads(text)
        assert config["machines"]["grey-area"] == {
            "host": "grey-area.local",
            "local": False,
            "power_cycle": IPMI,
        }
        assert "power_cycle" not in config["machines"]["sleeper-service"]
        assert config["machines"]["self"] == {"local": True}
        checked = validate(tmp_path, text, f"{unit}.yaml")
        assert checked.returncode == 0, checked.stderr
    assert _run_check(tmp_path, result).returncode == 0


def test_power_cycle_must_be_an_argv_list() -> None:
    machines = {
        **SEED["machines"],
        "grey-area": {"host": "grey-area.local", "power_cycle": "ipmitool chassis power cycle"},
    }
    error = evaluation_error(
        controller={"lab-orchestrator": {"enable": True, **DEDICATED, "machines": machines}}
    )
    assert "machines.grey-area.power_cycle" in error, error


def test_the_generation_settings_render_as_given_and_validate(tmp_path: Path) -> None:
    result = controller(**{**SEED, "settings": GENERATION_SETTINGS})
    config = json.loads(result["configFiles"]["run"]["text"])
    assert {key: config[key] for key in GENERATION_SETTINGS} == GENERATION_SETTINGS
    checked = validate(tmp_path, result["configFiles"]["run"]["text"])
    assert checked.returncode == 0, checked.stderr
    assert _run_check(tmp_path, result).returncode == 0


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"reboot": {"when": "sometimes"}}, "reboot.when"),
        ({"deploy": {"mode": "per-machine", "machine_command": ["lab", "deploy"]}}, "deploy"),
        ({"on_failure": "panic"}, "on_failure"),
        ({"reboot": {"if_changed": ["kernel", "firmware"]}}, "reboot.if_changed"),
    ],
    ids=["when", "no-placeholder", "on_failure", "if_changed"],
)
def test_a_bad_generation_setting_fails_the_build(
    tmp_path: Path, settings: dict[str, Any], key: str
) -> None:
    result = controller(**{**SEED, "settings": settings})
    checked = _run_check(tmp_path, result)
    assert checked.returncode == 2, checked
    assert checked.stderr.startswith("error: ") and key in checked.stderr, checked.stderr


def test_credentials_are_loaded_by_both_units_and_never_in_the_config() -> None:
    secrets = {"ipmi": "/run/secrets/ipmi-password", "ha-token": "/run/secrets/ha-token"}
    result = controller(**_with_power_cycle(credentials=secrets, sshKeyFile="/etc/ssh/key"))
    assert result["failedAssertions"] == []
    for unit in ("run", "resume"):
        assert result["services"][unit]["serviceConfig"]["LoadCredential"] == [
            "ssh-key:/etc/ssh/key",
            "ha-token:/run/secrets/ha-token",
            "ipmi:/run/secrets/ipmi-password",
        ]
    for file in result["configFiles"].values():
        assert not any(path in file["text"] for path in secrets.values())
    # Alone, without any of the module's own credentials.
    alone = controller(**_with_power_cycle(credentials={"ipmi": "/run/secrets/ipmi"}))
    assert alone["services"]["run"]["serviceConfig"]["LoadCredential"] == ["ipmi:/run/secrets/ipmi"]
    assert "LoadCredential" not in controller(**SEED)["services"]["run"]["serviceConfig"]


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("ssh-key", "/run/secrets/x"),
        ("notify-urls", "/run/secrets/x"),
        ("../x", "/run/secrets/x"),
        ("a:b", "/run/secrets/x"),
        ("ipmi", "/nix/store/abc-ipmi"),
        ("ipmi", "secrets/ipmi"),
    ],
)
def test_a_bad_credential_fails_an_assertion(name: str, path: str) -> None:
    failed = controller(**{**SEED, "credentials": {name: path}})["failedAssertions"]
    assert [m for m in failed if m.startswith(f"services.lab-orchestrator.credentials.{name}:")]


def _readme_block(first_line: str) -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```nix\n(.*?)```", readme, flags=re.S)
    (block,) = [b for b in blocks if b.startswith(first_line)]
    return block


def test_the_readmes_per_machine_controller_evaluates_and_validates(tmp_path: Path) -> None:
    """The README's recommended controller for the seed's lab, as written there."""
    module = tmp_path / "configuration.nix"
    module.write_text(
        _readme_block("# hosts/congenital-optimist/configuration.nix"), encoding="utf-8"
    )
    result = evaluate_module_file(module)
    assert result["failedAssertions"] == []
    run = result["services"]["run"]
    assert run["serviceConfig"]["LoadCredential"] == [
        "ssh-key:/run/secrets/lab-orchestrator-ssh-key",
        "ipmi-password:/run/secrets/grey-area-ipmi-password",
    ]
    assert "/run/current-system/sw" in run["path"]
    config = json.loads(result["configFiles"]["run"]["text"])
    assert config["order"] == [
        "sleeper-service",
        "grey-area",
        "reverse-proxy",
        "congenital-optimist",
    ]
    assert config["deploy"] == {
        "mode": "per-machine",
        "machine_command": ["lab-deploy-boot", "{machine}"],
    }
    assert config["reboot"] == {"when": "if-needed", "boot_once": True, "power_cycle_after": "5m"}
    power_cycle = config["machines"]["grey-area"]["power_cycle"]
    assert power_cycle[:2] == ["/bin/sh", "-c"] and "$CREDENTIALS_DIRECTORY/" in power_cycle[2]
    for unit in ("run", "resume", "cli"):
        checked = validate(tmp_path, result["configFiles"][unit]["text"], f"{unit}.yaml")
        assert checked.returncode == 0, checked.stderr
