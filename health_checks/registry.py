"""Check types by name: the only list of them. A new type is one module beside this one and
one line here; the config schema and the gate read this table and never name a type."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Discriminator, Tag

from health_checks.base import Check
from health_checks.command import CommandCheck
from health_checks.http import HttpCheck
from health_checks.systemd import SystemdCheck
from health_checks.tcp import TcpCheck

CHECK_TYPES: dict[str, type[Check]] = {
    "http": HttpCheck,
    "tcp": TcpCheck,
    "command": CommandCheck,
    "systemd": SystemdCheck,
}
DEFAULT_TYPE = "http"  # every config written before `type:` existed holds HTTP checks


def _type_of(value: Any) -> str:
    if isinstance(value, dict):
        kind = value.get("type", DEFAULT_TYPE)
        # An unknown name goes to pydantic as it is, which reports it with the known ones.
        return kind if isinstance(kind, str) else repr(kind)
    return str(getattr(value, "type", DEFAULT_TYPE))


def check_union() -> Any:
    """The pydantic type of one ``checks[]`` entry: a union tagged by ``type``."""
    from typing import Union

    members = tuple(Annotated[model, Tag(name)] for name, model in CHECK_TYPES.items())
    return Annotated[
        Union[members],  # noqa: UP007  (built from the table, so it cannot be written with |)
        Discriminator(
            _type_of,
            custom_error_type="unknown_check_type",
            custom_error_message="unknown check type (one of: " + ", ".join(CHECK_TYPES) + ")",
        ),
    ]


AnyCheck = check_union()
