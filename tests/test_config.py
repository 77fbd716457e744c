"""Config loading: the seed's file loads unchanged, and every bad file gets one clear line
naming the file and the key, with exit code 2 and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.config import load_config, parse_config
from orchestrator.errors import ConfigError
from tests.conftest import REPO, orchestrator

SEED_LAB_YAML = """\
machines:
  sleeper-service:
    host: sleeper-service.local
    user: root
  grey-area:
    host: grey-area.local
    user: root
  reverse-proxy:
    host: reverse-proxy.local
    user: root
"""

GOOD = {
    "machines": {
        "grey-area": {"host": "grey-area.local", "checks": [{"url": "http://grey-area.local/"}]},
        "self": {"local": True},
    }
}


def test_seed_lab_yaml_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(SEED_LAB_YAML)
    config = load_config(path)
    assert config.machine_order == ("sleeper-service", "grey-area", "reverse-proxy")
    assert config.ssh_target("grey-area") == ("grey-area.local", 22, "root")
    assert config.flake_dir == tmp_path  # the seed keeps lab.yaml in the flake itself
    assert config.settings.reboot.timeout == 900


def test_example_config_documents_a_valid_file() -> None:
    config = load_config(REPO / "config" / "lab.example.yaml")
    assert config.machine_order[-1] == "self"
    assert config.settings.machines["self"].local


def test_durations_accept_units_and_plain_seconds() -> None:
    config = parse_config(
        Path("lab.yaml"),
        yaml.safe_dump(
            {**GOOD, "reboot": {"timeout": "1h30m", "settle": "10m", "poll_interval": 0.5}}
        ),
    )
    assert (config.settings.reboot.timeout, config.settings.reboot.settle) == (5400, 600)
    assert config.settings.reboot.poll_interval == 0.5


def test_order_key_overrides_mapping_order() -> None:
    config = parse_config(
        Path("lab.yaml"),
        yaml.safe_dump({**GOOD, "order": ["grey-area", "self"]}, sort_keys=True),
    )
    assert config.machine_order == ("grey-area", "self")


def _with(path: str, value: object) -> dict:
    """GOOD with one key (dotted path, [i] for list items) replaced."""
    config = yaml.safe_load(yaml.safe_dump(GOOD))
    node = config
    parts = path.replace("[", ".").replace("]", "").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[parts[-1]] = value
    return config


BAD_INPUTS = [
    ("not yaml", "machines: [unclosed", "line 1"),
    ("empty file", "", "(top level): must be a mapping"),
    ("top level list", "- a\n- b\n", "(top level): must be a mapping"),
    ("no machines", yaml.safe_dump({"state_dir": "/tmp/x"}), "machines: required key is missing"),
    ("empty machines", yaml.safe_dump({"machines": {}}), "machines: at least one machine"),
    ("typo in a check key", _with("machines.grey-area.checks[0].statuss", 200),
     "machines.grey-area.checks[0].statuss: unknown key"),
    ("unknown top-level key", _with("reboot_order", ["a"]), "reboot_order: unknown key"),
    ("bad check url", _with("machines.grey-area.checks[0].url", "grey-area:8080/health"),
     "machines.grey-area.checks[0].url: not a valid http(s) URL"),
    ("ftp check url", _with("machines.grey-area.checks[0].url", "ftp://grey-area/"),
     "machines.grey-area.checks[0].url: not a valid http(s) URL"),
    ("bad duration", _with("reboot.timeout", "ten minutes"), "reboot.timeout: not a duration"),
    ("zero timeout", _with("reboot.timeout", "0s"), "reboot.timeout: must be longer than 0s"),
    ("negative settle", _with("reboot.settle", -5), "reboot.settle: must not be negative"),
    ("stable_passes 0", _with("reboot.stable_passes", 0), "reboot.stable_passes: input should be greater"),
    ("port out of range", _with("ssh.port", 70000), "ssh.port: input should be less"),
    ("port not a number", _with("machines.grey-area.port", "ssh"), "machines.grey-area.port: must be a whole number"),
    ("command as a shell string", _with("update.command", "lab update && reboot"), "update.command: must be a list"),
    ("empty command", _with("deploy.command", []), "deploy.command: must be a non-empty list"),
    ("machine name with a shell metacharacter", {"machines": {"grey;area": {"host": "x"}}},
     "machines.grey;area: not a valid machine name"),
    ("uppercase machine name", {"machines": {"Grey-Area": {"host": "x"}}}, "machines.Grey-Area: not a valid"),
    ("remote machine without host", {"machines": {"grey-area": {"user": "root"}}},
     "machines.grey-area.host: required key is missing"),
    ("host that looks like an option", {"machines": {"grey-area": {"host": "-oProxyCommand=x"}}},
     "machines.grey-area.host: not a valid host name"),
    ("two local machines", {"machines": {"a": {"local": True}, "b": {"local": True}}},
     "machines.b.local: only one machine can be local"),
    ("local machine not last", {"machines": {"self": {"local": True}, "b": {"host": "b"}}},
     "machines.self.local: the local machine reboots the orchestrator itself and must be listed last"),
    ("allow_degraded not a bool", _with("reboot.allow_degraded", "sometimes"), "reboot.allow_degraded: must be true or false"),
    ("checks not a list", _with("machines.grey-area.checks", "http://x/"), "machines.grey-area.checks: must be a list"),
    ("order names an unknown machine", _with("order", ["grey-area", "nope"]), "order: 'nope' is not a machine"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "content", "expected"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_config_gives_one_line_naming_file_and_key_and_exits_2(
    tmp_path: Path, case: str, content: object, expected: str
) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(
        content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    )
    result = orchestrator(path, "validate-config")
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_bad_config_stops_run_before_anything_happens(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(_with("machines.grey-area.checks[0].url", "nope")))
    result = orchestrator(path, "run")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {path}: machines.grey-area.checks[0].url: not a valid http(s) URL"
    )
    assert not (tmp_path / "state").exists()


def test_missing_config_file_is_a_usage_error(tmp_path: Path) -> None:
    result = orchestrator(tmp_path / "absent.yaml", "run")
    assert result.returncode == 2
    assert "absent.yaml: no such file" in result.stderr


def test_config_path_comes_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text(SEED_LAB_YAML)
    import os

    result = orchestrator(
        None, "validate-config", env={**os.environ, "ORCHESTRATOR_CONFIG": str(path)}
    )
    assert result.returncode == 0, result.stderr
    assert "sleeper-service -> grey-area -> reverse-proxy" in result.stdout


def test_parse_config_raises_config_error_not_validation_error() -> None:
    with pytest.raises(ConfigError, match=r"ssh\.user: must be a string"):
        parse_config(Path("x.yaml"), yaml.safe_dump(_with("ssh.user", ["root"])))


# --- issue 8: inputs that used to crash, or were silently accepted -------------------------------

SEED_WITH = "machines:\n  grey-area:\n    host: grey-area.local\n"
GOOD_TEXT = yaml.safe_dump(GOOD, sort_keys=False)

NEWLY_REJECTED = [
    # item 4: tracebacks from PyYAML and from durations
    ("nesting of 1000 levels", "machines: " + "[" * 1000 + "]" * 1000 + "\n", "nest"),
    ("nesting of 100 levels", "order: " + "[" * 100 + "]" * 100 + "\n", "nested deeper than 64 levels"),
    ("400-digit duration", SEED_WITH + "reboot:\n  timeout: " + "9" * 400 + "\n", "reboot.timeout: must be at most 7 days"),
    ("400-digit duration string", SEED_WITH + "reboot:\n  timeout: " + "9" * 400 + "s\n", "reboot.timeout: must be at most 7 days"),
    ("impossible date as a port", SEED_WITH + "ssh:\n  port: 2001-02-30\n", "line 5: cannot read the value '2001-02-30'"),
    ("int of 5000 digits", SEED_WITH + "ssh:\n  port: " + "1" * 5000 + "\n", "line 5: cannot read the value"),
    ("!!float abc", SEED_WITH + "reboot:\n  timeout: !!float abc\n", "line 5: cannot read the value 'abc'"),
    ("!!int 0xZZ", SEED_WITH + "ssh:\n  port: !!int 0xZZ\n", "line 5: cannot read the value '0xZZ'"),
    ("alias bomb", "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\norder: [*e, *e]\n", "once aliases are expanded"),
    # item 5: duplicate keys, at any level
    ("duplicate machine", SEED_WITH + "  grey-area:\n    host: other.local\n", "machines.grey-area: duplicate key (lines 2 and 4)"),
    ("duplicate checks", SEED_WITH + "    checks: [{url: 'http://a/'}]\n    checks: []\n", "machines.grey-area.checks: duplicate key (lines 4 and 5)"),
    ("duplicate top-level section", "reboot: {timeout: 5m}\n" + SEED_WITH + "reboot: {settle: 1m}\n", "reboot: duplicate key (lines 1 and 5)"),
    ("duplicate key in a check", SEED_WITH + "    checks:\n      - url: http://a/\n        url: http://b/\n", "machines.grey-area.checks[0].url: duplicate key (lines 5 and 6)"),
    # item 6: accepted, then a traceback at run time
    ("URL port above 65535", _with("machines.grey-area.checks[0].url", "http://grey-area.local:70000/"), "port 70000 is not in 1-65535"),
    ("bad IDNA host in a URL", _with("machines.grey-area.checks[0].url", "http://xn--/"), "checks[0].url: not a valid http(s) URL"),
    ("bad IDNA host", _with("machines.grey-area.host", "xn--zz.local"), "machines.grey-area.host: not a valid host name"),
    ("label of 64 characters", _with("machines.grey-area.host", "a" * 64 + ".local"), "machines.grey-area.host: not a valid host name"),
    ("CR/LF in a URL", _with("machines.grey-area.checks[0].url", "http://grey-area.local/\r\nX-Evil: 1"), "control character"),
    ("NUL in state_dir", _with("state_dir", "/var/lib/x\0y"), "state_dir: must not contain a NUL byte"),
    ("NUL in log_file", _with("log_file", "/var/log/x\0y"), "log_file: must not contain a NUL byte"),
    ("NUL in identity_file", _with("ssh.identity_file", "/k\0"), "ssh.identity_file: must not contain a NUL byte"),
    ("NUL in a command", _with("update.command", ["lab\0", "update"]), "update.command: must not contain a NUL byte"),
    ("empty state_dir", _with("state_dir", ""), "state_dir: must be a path"),
    ("poll_interval .inf", SEED_WITH + "reboot:\n  poll_interval: .inf\n", "reboot.poll_interval: must be at most 7 days"),
    ("reboot.timeout .nan", SEED_WITH + "reboot:\n  timeout: .nan\n", "reboot.timeout: not a duration"),
    ("settle .inf", SEED_WITH + "reboot:\n  settle: .inf\n", "reboot.settle: must be at most 7 days"),
    ("settle of 8 days", _with("reboot.settle", "8d"), "reboot.settle: must be at most 7 days"),
    ("ssh.user with a space", _with("ssh.user", "ro ot"), "ssh.user: not a valid user name"),
    ("machine user like an option", _with("machines.grey-area.user", "-oProxyCommand=x"), "machines.grey-area.user: not a valid user name"),
    ("machine user with a newline", _with("machines.grey-area.user", "root\nx"), "machines.grey-area.user: not a valid user name"),
    # item 7: the README's old tip
    ("command: [true]", SEED_WITH + "update:\n  command: [true]\n", 'update.command[0]: must be a string (YAML reads true'),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "content", "expected"), NEWLY_REJECTED, ids=[c[0] for c in NEWLY_REJECTED]
)
def test_inputs_that_crashed_or_slipped_through_are_one_line_and_exit_2(
    tmp_path: Path, case: str, content: object, expected: str
) -> None:
    test_bad_config_gives_one_line_naming_file_and_key_and_exits_2(
        tmp_path, case, content, expected
    )


@pytest.mark.parametrize(
    ("section", "given", "expected"),
    [
        ("update", {"timeout": "5m"}, (["lab", "update"], 300.0)),
        ("update", {"command": ["nix", "flake", "update"]}, (["nix", "flake", "update"], 900.0)),
        ("deploy", {"timeout": "1h"}, (["lab", "deploy-all"], 3600.0)),
        ("deploy", {}, (["lab", "deploy-all"], 2700.0)),
        ("update", {"command": ["true"]}, (["true"], 900.0)),
    ],
)
def test_a_partial_step_section_keeps_the_default_of_every_other_key(section, given, expected):
    settings = parse_config(Path("lab.yaml"), yaml.safe_dump({**GOOD, section: given})).settings
    step = getattr(settings, section)
    assert (step.command, step.timeout) == expected


def test_the_readme_nix_deploy_timeout_example_validates(tmp_path: Path) -> None:
    # `settings.deploy.timeout = "1h";` renders to exactly this section.
    path = tmp_path / "lab.yaml"
    path.write_text(GOOD_TEXT + "deploy:\n  timeout: 1h\n")
    result = orchestrator(path, "validate-config")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "url",
    ["http://grey-area.local:8080/health", "https://[::1]:8443/", "http://10.0.0.1/",
     "http://xn--bcher-kva.example/", "http://bücher.example/", "https://a_b.local/x?y=1#z"],
)  # fmt: skip
def test_good_urls_stay_accepted(url: str) -> None:
    parse_config(Path("lab.yaml"), yaml.safe_dump(_with("machines.grey-area.checks[0].url", url)))


@pytest.mark.parametrize("user", ["root", "lab-orchestrator", "geir", "svc_backup", "a.b", "_x"])
def test_posix_user_names_stay_accepted(user: str) -> None:
    parse_config(Path("lab.yaml"), yaml.safe_dump(_with("ssh.user", user)))


def test_yes_and_true_keys_are_names_not_booleans(tmp_path: Path) -> None:
    # YAML 1.1 would read both as the boolean True; every key of this schema is a name.
    with pytest.raises(ConfigError, match=r"^x.yaml: yes: unknown key$"):
        parse_config(Path("x.yaml"), "yes: 1\ntrue: 2\n" + SEED_WITH)
    with pytest.raises(ConfigError, match=r"notify.on: duplicate key \(lines 2 and 3\)"):
        parse_config(Path("x.yaml"), "notify:\n  on: [done]\n  on: [aborted]\n" + SEED_WITH)


def test_merge_keys_may_override_what_they_merge() -> None:
    text = "base: &b {host: a.local}\n"  # not a key of the schema: only the YAML is checked
    from orchestrator.paths import load_yaml

    assert load_yaml(Path("x.yaml"), text + "c:\n  <<: *b\n  host: c.local\n") == {
        "base": {"host": "a.local"},
        "c": {"host": "c.local"},
    }
