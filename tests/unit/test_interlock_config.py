"""The fleet interlock's config (issue 11, item 2): `interlock:` and its defaults, and the rules
`machines.<m>.depends_on` must keep (another machine, earlier in the reboot order — which
also rules out cycles), each broken one a single line naming the file, the key and why."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator import defaults
from orchestrator.config import LoadedConfig, parse_config
from orchestrator.errors import ConfigError

PATH = Path("lab.yaml")


def seed(**machines_extra: dict[str, object]) -> dict[str, object]:
    """The seed's three remote machines, in reboot order, with per-machine extras."""
    names = ("sleeper-service", "grey-area", "reverse-proxy")
    return {
        "machines": {
            name: {"host": f"{name}.local", **machines_extra.get(name.replace("-", "_"), {})}
            for name in names
        }
    }


def load(raw: dict[str, object]) -> LoadedConfig:
    return parse_config(PATH, yaml.safe_dump(raw, sort_keys=False))


def error(raw: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as caught:
        load(raw)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_the_interlock_is_on_by_default_with_ten_minutes():
    settings = load(seed()).settings
    assert settings.interlock.enabled is defaults.INTERLOCK_ENABLED is True
    assert settings.interlock.timeout == defaults.INTERLOCK_TIMEOUT == 600.0
    assert all(machine.depends_on == [] for machine in settings.machines.values())


def test_interlock_settings_load():
    settings = load({**seed(), "interlock": {"enabled": False, "timeout": "90s"}}).settings
    assert settings.interlock.enabled is False and settings.interlock.timeout == 90.0


@pytest.mark.parametrize(
    ("timeout", "problem"),
    [
        ("0s", "interlock.timeout: must be longer than 0s"),
        ("soon", "interlock.timeout: not a duration: 'soon'"),
        ("8d", "interlock.timeout: must be at most 7 days"),
        (-5, "interlock.timeout: must not be negative"),
    ],
)
def test_a_bad_interlock_timeout_is_one_line(timeout, problem):
    message = error({**seed(), "interlock": {"timeout": timeout}})
    assert message.startswith(f"lab.yaml: {problem}"), message


def test_an_unknown_interlock_key_is_an_error():
    message = error({**seed(), "interlock": {"timout": "5m"}})
    assert message == "lab.yaml: interlock.timout: unknown key"


def test_a_dependency_that_comes_earlier_loads():
    raw = seed(
        grey_area={"depends_on": ["sleeper-service"]},
        reverse_proxy={"depends_on": ["sleeper-service", "grey-area"]},
    )
    machines = load(raw).settings.machines
    assert machines["reverse-proxy"].depends_on == ["sleeper-service", "grey-area"]


def test_a_dependency_that_comes_later_is_refused():
    message = error(seed(grey_area={"depends_on": ["reverse-proxy"]}))
    assert message == (
        "lab.yaml: machines.grey-area.depends_on: 'reverse-proxy' comes after grey-area in the "
        "reboot order; a dependency must be rebooted first"
    )


def test_the_order_list_decides_what_comes_earlier():
    raw = {
        **seed(sleeper_service={"depends_on": ["reverse-proxy"]}),
        "order": ["reverse-proxy", "sleeper-service", "grey-area"],
    }
    assert load(raw).machine_order[0] == "reverse-proxy"
    raw["order"] = ["sleeper-service", "reverse-proxy", "grey-area"]
    message = error(raw)
    assert message.startswith("lab.yaml: machines.sleeper-service.depends_on: 'reverse-proxy' ")


def test_a_cycle_is_refused_as_a_later_dependency():
    raw = seed(
        sleeper_service={"depends_on": ["grey-area"]},
        grey_area={"depends_on": ["sleeper-service"]},
    )
    message = error(raw)
    assert message.startswith("lab.yaml: machines.sleeper-service.depends_on: 'grey-area' comes")


def test_an_unknown_dependency_is_refused():
    message = error(seed(grey_area={"depends_on": ["database"]}))
    assert message == "lab.yaml: machines.grey-area.depends_on: 'database' is not a machine"


def test_a_machine_cannot_depend_on_itself():
    message = error(seed(grey_area={"depends_on": ["grey-area"]}))
    assert message == "lab.yaml: machines.grey-area.depends_on: grey-area cannot depend on itself"


def test_a_dependency_listed_twice_is_refused():
    message = error(seed(grey_area={"depends_on": ["sleeper-service", "sleeper-service"]}))
    assert message == (
        "lab.yaml: machines.grey-area.depends_on[1]: 'sleeper-service' is listed twice"
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [("sleeper-service", "must be a list"), ([1], "must be a string")],
)
def test_depends_on_must_be_a_list_of_names(value, problem):
    message = error(seed(grey_area={"depends_on": value}))
    assert message.startswith("lab.yaml: machines.grey-area.depends_on"), message
    assert problem in message, message
