"""A fuzz of the config loader (issue 8): a valid skeleton of the real schema, mutated (wrong
types, huge numbers, deep nesting, odd YAML tags, duplicate keys, control characters, NaN and
infinities), must either load or give one ConfigError line naming the file; nothing else.

FUZZ_EXAMPLES sets the number of examples in all, shared by the three strategies (default
2100); FUZZ_REPORT=1 (with ``pytest -s``) prints the counts: accepted, rejected, and by class.
"""

from __future__ import annotations

import collections
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from health_checks.schema import MAX_DURATION
from orchestrator.config import parse_config
from orchestrator.errors import ConfigError
from tests.conftest import REPO

PATH = Path("/etc/lab-orchestrator/fuzz.yaml")
EXAMPLES = max(1, int(os.environ.get("FUZZ_EXAMPLES", "2100")) // 3)
COUNTS: collections.Counter[str] = collections.Counter()

SKELETON = """\
state_dir: /tmp/fuzz-state
update:
  command: [lab, update]
  timeout: 15m
deploy:
  timeout: 45m
ssh:
  user: root
  port: 22
  connect_timeout: 5s
reboot:
  timeout: 15m
  poll_interval: 1s
  probe_timeout: 2s
  stable_passes: 2
  settle: 0s
hooks:
  on_done: [[/bin/true]]
  timeout: 1m
machines:
  grey-area:
    host: grey-area.local
    user: root
    checks:
      - url: http://grey-area.local:8080/health
        status: 200
      - type: tcp
        port: 5432
      - type: command
        command: [systemctl, is-active, nginx]
      - type: systemd
        units: [nginx.service]
  self:
    local: true
"""
LINES = SKELETON.splitlines()

ODD_VALUES = [
    ".nan", ".inf", "-.inf", "9" * 400, "1" * 5000, "2001-02-30", "!!float abc", "!!int 0xZZ",
    "!!binary abc", "!!timestamp 2001-13-01", "!!python/object:os.system x", "!!set {a}",
    "!!omap [a: 1]", "[" * 200 + "]" * 200, "{" * 50 + "}" * 50, "~", "null", "true", "yes",
    "''", '"\\0"', '"\\r\\n"', '"\\t"', '"a\\x85b"', "-1", "0", "1e400", "0x10", "0o7", "1_000",
    "&a [*a]", "*undefined", "http://xn--/", "http://a:70000/", '"http://a/\\r\\nX: y"',
    "-oProxyCommand=x", "99999999999999999999h", "1:30", "1h30m", "[true]", "{}", "[]",
    "'x' 'y'", "|\n  block", ">", "@", "`", "%", "!", "&", "*", "? a", "- - -",
]  # fmt: skip
KEYS = ["timeout", "port", "user", "host", "url", "checks", "command", "state_dir", "log_file",
        "settle", "poll_interval", "machines", "order", "local", "type", "units", "status",
        "identity_file", "passphrase_file", "known_hosts", "xn--", "<<", "? [a]", "1",
        "yes"]  # fmt: skip

scalar = st.one_of(
    st.sampled_from(ODD_VALUES),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=20).map(lambda text: yaml.safe_dump(text).removesuffix("\n...\n")),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
)


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    lines = list(LINES)
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        index = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        line = lines[index]
        indent = line[: len(line) - len(line.lstrip())]
        action = draw(st.sampled_from(["value", "duplicate", "key", "insert", "delete", "tab",
                                       "nest", "char"]))  # fmt: skip
        if action == "value" and ":" in line:
            key = line.split(":", 1)[0]
            lines[index] = f"{key}: {draw(scalar)}"
        elif action == "duplicate":
            lines.insert(index + 1, line)
        elif action == "key":
            lines.insert(index, f"{indent}{draw(st.sampled_from(KEYS))}: {draw(scalar)}")
        elif action == "insert":
            lines.insert(index, f"{indent}{draw(scalar)}")
        elif action == "delete":
            del lines[index]
        elif action == "tab":
            lines[index] = "\t" + line.lstrip()
        elif action == "nest":
            depth = draw(st.integers(min_value=1, max_value=1200))
            lines[index] = f"{indent}order: " + "[" * depth + "]" * depth
        else:
            position = draw(st.integers(min_value=0, max_value=len(line)))
            char = draw(st.characters(codec="utf-8"))
            lines[index] = line[:position] + char + line[position:]
    return "\n".join(lines) + "\n"


structure = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def mutated_structure(draw: st.DrawFn) -> str:
    data = yaml.safe_load(SKELETON)
    node = data
    path = draw(st.sampled_from([["reboot"], ["ssh"], ["machines", "grey-area"], [],
                                 ["machines", "grey-area", "checks", 0], ["update"],
                                 ["hooks"]]))  # fmt: skip
    for part in path:
        node = node[part]
    node[draw(st.sampled_from(KEYS))] = draw(structure)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=draw(st.booleans()))


def check_one(text: str, strategy: str) -> None:
    try:
        loaded = parse_config(PATH, text)
    except ConfigError as error:
        message = str(error)
        assert "\n" not in message and "\r" not in message, repr(message)
        assert message.startswith(f"{PATH}: "), message
        COUNTS["rejected"] += 1
        COUNTS[f"{strategy}: rejected"] += 1
        COUNTS["rejected: " + _kind(message.removeprefix(f"{PATH}: "))] += 1
    else:
        COUNTS["accepted"] += 1
        COUNTS[f"{strategy}: accepted"] += 1
        assert not _has_duplicate_keys(text), text
        _check_accepted(loaded.settings)


KINDS = {
    "duplicate key": "duplicate key",
    "unknown key": "unknown key",
    "cannot read the value": "value PyYAML cannot build",
    "nested": "nesting too deep",
    "aliases": "alias expansion",
    "alias refers": "recursive alias",
    "at most 7 days": "duration out of range",
    "must not be negative": "duration out of range",
    "longer than 0s": "duration out of range",
    "not a duration": "not a duration",
    "http(s) URL": "bad URL",
    "host name": "bad host name",
    "user name": "bad user name",
    "NUL byte": "NUL byte",
    "required key is missing": "missing key",
    "machine name": "bad machine name",
    "can be local": "local machine rules",
    "listed last": "local machine rules",
    "order": "order",
    "must be a mapping": "wrong type",
    "must be a list": "wrong type",
    "must be a string": "wrong type",
    "must be a whole number": "wrong type",
    "must be true or false": "wrong type",
    "must be a path": "wrong type",
    "input should be": "number out of range",
    "does not fit": "check timeout too long",
    "check type": "check type",
}


def _kind(problem: str) -> str:
    for needle, kind in KINDS.items():
        if needle in problem:
            return kind
    if problem.startswith("line "):
        return "YAML syntax"
    return "other: " + problem.split(": ", 1)[-1][:40]


def _check_accepted(config: Any) -> None:
    """What the run relies on, for every accepted file: finite, bounded durations; ports in
    range; URLs httpx can request."""
    durations = [config.update.timeout, config.deploy.timeout, config.ssh.connect_timeout,
                 config.reboot.timeout, config.reboot.poll_interval, config.reboot.probe_timeout,
                 config.reboot.settle, config.hooks.timeout]  # fmt: skip
    assert all(math.isfinite(value) and 0 <= value <= MAX_DURATION for value in durations)
    assert 1 <= config.ssh.port <= 65535
    for machine in config.machines.values():
        for check in machine.checks:
            url = getattr(check, "url", None)
            if url is not None:
                parsed = httpx.URL(url)
                assert parsed.port is None or 1 <= parsed.port <= 65535
                assert parsed.host


plausible = {
    "duration": st.one_of(
        st.sampled_from(["30s", "10m", "2h", "1h30m", "1:30", "0s", "7d", "8d", "1.5s", "-1s"]),
        st.floats(min_value=-10, max_value=10**6, allow_nan=False).map(repr),
        st.integers(min_value=0, max_value=700_000).map(str),
    ),
    "port": st.one_of(st.integers(min_value=-5, max_value=70_000).map(str), st.just("ssh")),
    "user": st.one_of(
        st.sampled_from(["root", "geir", "lab-orchestrator", "_svc", "a.b", "-x", "ro ot"]),
        st.from_regex(r"[a-z_][a-z0-9_-]{0,40}", fullmatch=True),
    ),
    "host": st.one_of(
        st.sampled_from(
            [
                "grey-area.local",
                "10.0.0.1",
                "::1",
                "[::1]",
                "xn--bcher-kva.de",
                "xn--zz.de",
                "-bad",
                "a..b",
                "localhost",
            ]
        ),
        st.from_regex(r"[a-z0-9][a-z0-9-]{0,70}(\.[a-z0-9-]{1,10}){0,3}", fullmatch=True),
    ),
    "url": st.builds(
        "{}://{}{}/{}".format,
        st.sampled_from(["http", "https", "ftp"]),
        st.sampled_from(["grey-area.local", "10.0.0.1", "[::1]", "xn--", "bücher.de", "a b"]),
        st.sampled_from(["", ":80", ":8080", ":0", ":65535", ":65536", ":99999"]),
        st.sampled_from(["", "health", "a?b=c", "%zz"]),
    ),
}


@st.composite
def valid_variation(draw: st.DrawFn) -> str:
    """The skeleton with plausible values drawn for the keys the issue names."""
    text = SKELETON
    for old, kind in [("  timeout: 15m", "duration"), ("settle: 0s", "duration"),
                      ("poll_interval: 1s", "duration"), ("port: 22", "port"),
                      ("  user: root\n  port", "user"), ("host: grey-area.local", "host"),
                      ("url: http://grey-area.local:8080/health", "url")]:  # fmt: skip
        if draw(st.booleans()):
            key = old.strip().split(":")[0]
            drawn = draw(plausible[kind])
            value = drawn if kind in ("duration", "port") else json.dumps(drawn)
            new = f"{key}: {value}" + ("\n  port" if old.endswith("port") else "")
            text = text.replace(old.strip(), new, 1)
    return text


def _has_duplicate_keys(text: str) -> bool:
    """An independent check: PyYAML's plain composer, keys compared as plain text."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return False
    todo = [root] if root is not None else []
    seen_nodes: set[int] = set()
    while todo:
        node = todo.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys = [
                k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode) and k.value != "<<"
            ]
            if len(keys) != len(set(keys)):
                return True
            todo += [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            todo += node.value
    return False


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@FUZZ
@given(mutated_text())
def test_fuzz_mutated_text_loads_or_is_one_config_error_line(text: str) -> None:
    check_one(text, "mutated text")


@FUZZ
@given(valid_variation())
def test_fuzz_plausible_values_load_or_are_one_config_error_line(text: str) -> None:
    check_one(text, "plausible values")


@FUZZ
@given(mutated_structure())
def test_fuzz_mutated_structures_load_or_are_one_config_error_line(text: str) -> None:
    check_one(text, "mutated structure")


def test_fuzz_counts_report() -> None:
    if os.environ.get("FUZZ_REPORT"):
        for key, count in sorted(COUNTS.items()):
            print(f"{key}: {count}", file=sys.stderr)


# --- the real CLI, on a sample --------------------------------------------------------------

SAMPLE = [
    SKELETON,
    SKELETON.replace("  timeout: 15m", "  timeout: .inf", 1),
    SKELETON.replace("port: 22", "port: 2001-02-30"),
    SKELETON.replace("port: 22", "port: " + "1" * 5000),
    SKELETON.replace("settle: 0s", "settle: !!float abc"),
    SKELETON.replace("port: 22", "port: !!int 0xZZ"),
    SKELETON.replace("settle: 0s", "settle: " + "9" * 400),
    SKELETON.replace("  self:", "  grey-area:\n    host: x\n  self:"),
    SKELETON.replace("    user: root\n", "    user: root\n    user: geir\n"),
    SKELETON.replace("    checks:", "    checks: []\n    checks:"),
    SKELETON.replace("ssh:", "order: " + "[" * 1000 + "]" * 1000 + "\nssh:"),
    SKELETON.replace(":8080/health", ":70000/health"),
    SKELETON.replace("grey-area.local:8080", "xn--"),
    SKELETON.replace("state_dir: /tmp/fuzz-state", 'state_dir: "/tmp/a\\0b"'),
    SKELETON.replace("  poll_interval: 1s", "  poll_interval: .nan"),
    SKELETON.replace("  user: root\n  port", "  user: 'ro ot'\n  port"),
    SKELETON.replace("update:\n  command: [lab, update]\n", "update:\n  command: [true]\n"),
    SKELETON.replace("machines:\n  grey", "machines:\n\tgrey"),
    SKELETON.replace("deploy:\n  timeout: 45m", "deploy: {timeout: 1h}"),
    SKELETON + "\x00",
    SKELETON.replace("checks:", "chekcs:"),
    SKELETON.replace("stable_passes: 2", "stable_passes: .inf"),
    SKELETON.replace("status: 200", "status: 1e400"),
    "a: &a [*a]\n",
    "",
    "- just\n- a list\n",
    "machines: {a: {host: a}}\n" * 2,
    SKELETON.replace("  self:\n    local: true\n", ""),
    "\ufeff" + SKELETON,
    SKELETON.replace("host: grey-area.local", "host: " + "a" * 300),
]


def test_the_real_cli_exits_0_or_2_on_a_sample(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    codes: collections.Counter[int] = collections.Counter()
    for index, text in enumerate(SAMPLE):
        path = tmp_path / f"sample-{index}.yaml"
        path.write_text(text.replace("/tmp/fuzz-state", str(tmp_path / "state")), encoding="utf-8")
        for command in ("validate-config", "status"):
            result = subprocess.run(
                [sys.executable, "-m", "orchestrator", "--config", str(path), command],
                capture_output=True,
                text=True,
                cwd=REPO,
                env=env,
                timeout=60,
                check=False,
            )
            assert result.returncode in (0, 2), (index, command, result.stderr)
            assert "Traceback" not in result.stderr, (index, command, result.stderr)
            if result.returncode == 2:
                lines = result.stderr.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), result.stderr
            codes[result.returncode] += 1
    assert codes[0] and codes[2]
