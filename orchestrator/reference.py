"""The config reference and the example config, generated from the schema.

``orchestrator config-reference`` prints what these functions return, and ``--write config/``
refreshes ``config/REFERENCE.md`` and ``config/lab.example.yaml``; ``tests/test_docs.py`` fails
when the committed copies differ. Nothing here names a key: every table row, comment and
example value comes from the pydantic models (``Field(description=..., examples=[...])``),
their defaults from ``defaults``, and the check types from ``CHECK_TYPES``.
"""

from __future__ import annotations

import inspect
import json
import sys
import textwrap
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ValidationError
from pydantic.fields import FieldInfo

from health_checks.registry import CHECK_TYPES
from health_checks.schema import Duration
from orchestrator import defaults, report
from orchestrator.config import Config
from orchestrator.errors import ConfigError

REFERENCE_FILE = "REFERENCE.md"
EXAMPLE_FILE = "lab.example.yaml"
REGENERATE = "orchestrator config-reference --write config/"
WIDTH = 100

# Duration fields are floats of seconds in the model; they are recognised by the validator that
# parses `30s`/`10m`/`2h` (shared by Duration and PositiveDuration), not by their names.
_DURATION_MARKERS = typing.get_args(Duration)[1:]


@dataclass(frozen=True)
class Section:
    """One table of the reference: the keys of ``model`` found at ``path``."""

    path: str  # "" for the top level, e.g. "ssh", "machines.<name>", "machines.<name>.checks[]"
    model: type[BaseModel]
    intro: str  # the description of the field that holds the section
    tag: str | None = None  # the check type, for one member of a union of models
    defaults: BaseModel | None = None  # the section's value when it is omitted, if it may be
    partial: bool = False  # a partial section gets the omitted keys from ``defaults``
    examples: Any = None  # example values the parent field gives for this section's keys

    @property
    def title(self) -> str:
        if not self.path:
            return "Top level"
        return f"`{self.path}`" + (f", `type: {self.tag}`" if self.tag else "")


# --- walking the schema -------------------------------------------------------------------------


def fields(model: type[BaseModel]) -> list[tuple[str, FieldInfo]]:
    """The fields of ``model``: its own in declaration order, then the inherited ones."""
    names: list[str] = []
    for cls in model.__mro__:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            continue
        for name in inspect.get_annotations(cls):
            if name in model.model_fields and name not in names:
                names.append(name)
    return [(name, model.model_fields[name]) for name in names]


def _is_model(annotation: object) -> bool:
    return (
        typing.get_origin(annotation) is None
        and isinstance(annotation, type)
        and issubclass(annotation, BaseModel)
    )


def models_in(annotation: object) -> list[type[BaseModel]]:
    """Every model class an annotation mentions (``Machine`` in ``dict[str, Machine]``)."""
    if _is_model(annotation):
        return [typing.cast(type[BaseModel], annotation)]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        for model in models_in(arg):
            if model not in found:
                found.append(model)
    return found


def _has_duration_marker(annotation: object) -> bool:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Annotated:
        if any(meta in _DURATION_MARKERS for meta in args[1:]):
            return True
        return _has_duration_marker(args[0])
    return any(_has_duration_marker(arg) for arg in args)


def is_duration(field: FieldInfo) -> bool:
    return any(meta in _DURATION_MARKERS for meta in field.metadata) or _has_duration_marker(
        field.annotation
    )


def _accepts_empty(model: type[BaseModel], field: FieldInfo) -> bool:
    """Whether the field's section may be given as ``{}``: each key has its own default, or
    the field's before-validators fill them in (``update: {timeout: 5m}``)."""
    value: Any = {}
    for meta in field.metadata:
        if isinstance(meta, BeforeValidator):
            value = typing.cast(Callable[[Any], Any], meta.func)(value)
    try:
        model.model_validate(value)
    except ValidationError:
        return False
    return True


def _tags() -> dict[type[BaseModel], str]:
    return {model: name for name, model in CHECK_TYPES.items()}


def child_sections(path: str, field: FieldInfo) -> list[Section]:
    """The sections a field holds: a nested model, a mapping of them or a list of them."""
    annotation = field.annotation
    intro = field.description or ""
    example = field.examples[0] if field.examples else None
    if _is_model(annotation):
        model = typing.cast(type[BaseModel], annotation)
        default = field.get_default(call_default_factory=True)
        return [
            Section(
                path,
                model,
                intro,
                defaults=default if isinstance(default, BaseModel) else None,
                partial=_accepts_empty(model, field),
                examples=example,
            )
        ]
    models = models_in(annotation)
    if not models:
        return []
    origin = typing.get_origin(annotation)
    if origin is dict:
        path = f"{path}.<name>"
    elif origin is list:
        path = f"{path}[]"
    if len(models) == 1:
        return [Section(path, models[0], intro)]
    tags = _tags()
    return [Section(path, model, intro, tag=tags.get(model, model.__name__)) for model in models]


def sections() -> list[Section]:
    """Every section of the schema, depth first, starting with the top level."""
    found: list[Section] = []

    def walk(section: Section) -> None:
        found.append(section)
        for name, field in fields(section.model):
            path = f"{section.path}.{name}" if section.path else name
            for child in child_sections(path, field):
                walk(child)

    walk(Section("", Config, ""))
    return found


# --- rendering values -----------------------------------------------------------------------


def _scalar(text: str) -> str:
    """A string as a YAML scalar: plain when it reads back the same in any context."""
    plain = bool(text) and text == text.strip() and "\n" not in text and " #" not in text
    try:
        in_list = yaml.safe_load(f"[{text}]") == [text]
        in_mapping = yaml.safe_load(f"k: {text}") == {"k": text}
    except yaml.YAMLError:
        in_list = in_mapping = False
    return text if plain and in_list and in_mapping else json.dumps(text, ensure_ascii=False)


def inline(value: Any, duration: bool = False) -> str:
    """A value as inline (flow) YAML: ``[systemctl, reboot]``, ``15m``, ``{a: 1}``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if duration:
            return report.exact_duration(float(value))
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, PurePath):
        return _scalar(str(value))
    if isinstance(value, str):
        return _scalar(value)
    if isinstance(value, dict):
        items = (f"{_scalar(str(key))}: {inline(item, duration)}" for key, item in value.items())
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(inline(item, duration) for item in value) + "]"
    raise TypeError(f"cannot render {value!r} as YAML")


def example_of(section: Section, name: str, field: FieldInfo) -> Any:
    """The example of a key: the one the parent field gives for it, else the field's own."""
    if isinstance(section.examples, dict) and name in section.examples:
        return section.examples[name]
    if field.examples:
        return field.examples[0]
    raise ValueError(f"{section.path or '(top level)'}.{name} has no example")


def default_text(section: Section, name: str, field: FieldInfo) -> str | None:
    """The default of a key as inline YAML in backticks, ``required``, or None when unset."""
    if section.defaults is not None:
        value = getattr(section.defaults, name)
        required = field.is_required() and not section.partial
        suffix = f" (required when `{section.path}` is set)" if required else ""
    elif field.is_required():
        return "required"
    else:
        value = field.get_default(call_default_factory=True)
        suffix = ""
    if value is None:
        return None
    return f"`{inline(value, is_duration(field))}`{suffix}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _wrap(text: str, width: int, prefix: str = "") -> list[str]:
    """Words of ``text`` in lines of at most ``width`` (a long path or URL is not broken)."""
    return textwrap.wrap(
        _one_line(text),
        width,
        initial_indent=prefix,
        subsequent_indent=prefix,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _cell(text: str) -> str:
    return _one_line(text).replace("|", "\\|")


def _doc_summary(model: type[BaseModel]) -> str | None:
    """The first paragraph of a model's own docstring, else of its module's."""
    doc = model.__doc__ or getattr(sys.modules.get(model.__module__), "__doc__", None)
    if not doc:
        return None
    return _one_line(doc.strip().split("\n\n")[0]).replace("``", "`")


# --- the reference ----------------------------------------------------------------------------


def _intro() -> list[str]:
    first = (
        f"The orchestrator reads one YAML file: `{defaults.CONFIG_PATH}`, or the path given with "
        f"`--config` or `ORCHESTRATOR_CONFIG`. [`{EXAMPLE_FILE}`]({EXAMPLE_FILE}) is a complete, "
        "commented example with every key."
    )
    errors = (
        "Every problem is one line naming the file, the key and what is wrong, and the exit "
        f"code is {ConfigError.exit_code} (`orchestrator validate-config` checks a file without "
        "running anything):"
    )
    return [
        *_wrap(first, WIDTH),
        "",
        "- Durations: `30s`, `10m`, `2h`, `1h30m`, or a plain number of seconds; at most 7 days.",
        "- Unknown keys and duplicate keys are errors: a typo must never silently drop a health "
        "check.",
        *_bullet(errors),
        "",
        "  ```",
        "  error: FILE: KEY: problem",
        "  ```",
    ]


def _bullet(text: str) -> list[str]:
    lines = _wrap(text, WIDTH, "  ")
    return ["- " + lines[0][2:], *lines[1:]]


def _row(section: Section, name: str, field: FieldInfo) -> str:
    path = f"{section.path}.{name}" if section.path else name
    nested = child_sections(path, field)
    holds_models = bool(nested) and not (
        typing.get_origin(field.annotation) is list and len(nested) > 1
    )
    if holds_models:
        below = ", ".join(f"`{child.path}`" for child in nested)
        default = "required" if field.is_required() else "see below"
        example = f"see {below} below"
    else:
        default = default_text(section, name, field) or "unset"
        example = f"`{inline(example_of(section, name, field), is_duration(field))}`"
    return f"| `{name}` | {_cell(default)} | {_cell(example)} | {_cell(field.description or '')} |"


def reference_markdown() -> str:
    """``config/REFERENCE.md``: one table per section of the schema."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from the schema (orchestrator/config.py, health_checks/) by",
        f"     `{REGENERATE}`; do not edit by hand. -->",
        "",
        *_intro(),
    ]
    for section in sections():
        lines += ["", f"## {section.title}", ""]
        summary = _doc_summary(section.model) if section.tag else None
        intro = summary or section.intro
        if intro:
            lines += [*_wrap(intro, WIDTH), ""]
        lines += ["| key | default | example | description |", "|---|---|---|---|"]
        lines += [_row(section, name, field) for name, field in fields(section.model)]
    return "\n".join(lines) + "\n"


# --- the example config -----------------------------------------------------------------------


def _comment(text: str, indent: int) -> list[str]:
    return _wrap(text, WIDTH, " " * indent + "# ")


def _field_comment(section: Section, name: str, field: FieldInfo) -> str:
    text = _one_line(field.description or "")
    if _is_model(field.annotation):
        return text  # a section: its keys below have their own defaults
    default = default_text(section, name, field)
    if default == "required":
        return f"{text} Required."
    if default is not None:
        return f"{text} Default: {default}."
    return text


def _commented_out(field: FieldInfo) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("example_commented_out") is True


def _model_for(models: list[type[BaseModel]], value: Any) -> type[BaseModel] | None:
    """The model an example entry is an instance of (for a union: the one that accepts it)."""
    for model in models:
        try:
            model.model_validate(value)
        except ValidationError:
            continue
        return model
    return None


class _ExampleWriter:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.seen: set[type[BaseModel]] = set()

    def section(self, section: Section, data: dict[str, Any], indent: int, full: bool) -> None:
        """Write the keys of one instance; ``full``: every key, each with its comment."""
        for name, field in fields(section.model):
            if name in data:
                value = data[name]
            elif full:
                value = {} if _is_model(field.annotation) else example_of(section, name, field)
            else:
                continue
            if full:
                if indent == 0:
                    self.lines.append("")
                self.lines += _comment(_field_comment(section, name, field), indent)
            start = len(self.lines)
            self.value(section, name, field, value, indent, full)
            if _commented_out(field) and name not in data:
                # An alternative to the key beside it (`url` or `url_file`): shown, not set.
                pad = " " * indent
                for index in range(start, len(self.lines)):
                    self.lines[index] = pad + "# " + self.lines[index][indent:]

    def value(
        self, section: Section, name: str, field: FieldInfo, value: Any, indent: int, full: bool
    ) -> None:
        pad = " " * indent
        path = f"{section.path}.{name}" if section.path else name
        children = child_sections(path, field)
        if children and _is_model(field.annotation):
            child = children[0]
            data = value if isinstance(value, dict) else {}
            self.lines.append(f"{pad}{name}:")
            self.section(child, data, indent + 2, full=True)
        elif children and isinstance(value, dict) and value:
            self.lines.append(f"{pad}{name}:")
            for key, item in value.items():
                self.lines.append(f"{pad}  {_scalar(str(key))}:")
                self.entry(children, item, indent + 4)
        elif children and isinstance(value, list) and value:
            self.lines.append(f"{pad}{name}:")
            dash = pad + "  "
            for item in value:
                start = len(self.lines)
                self.entry(children, item, indent + 4)
                # The item's first key goes on the `- ` line; comments above it align with the
                # dash, the rest of the item stays under its first key.
                for index in range(start, len(self.lines)):
                    line = self.lines[index][indent + 4 :]
                    if line.startswith("#"):
                        self.lines[index] = dash + line
                    else:
                        self.lines[index] = f"{dash}- {line}"
                        break
        else:
            self.lines.append(f"{pad}{name}: {inline(value, is_duration(field))}")

    def entry(self, children: list[Section], item: Any, indent: int) -> None:
        model = _model_for([child.model for child in children], item)
        if model is None or not isinstance(item, dict):
            raise ValueError(f"example entry {item!r} fits none of {children[0].path}")
        section = next(child for child in children if child.model is model)
        first = model not in self.seen
        self.seen.add(model)
        self.section(section, item, indent, full=first)


def _example_header() -> list[str]:
    return [
        "# lab-orchestrator configuration: every key, each with its description and an example.",
        f"# Generated from the schema by `{REGENERATE}`; do not edit by hand.",
        f"# The defaults of every key: {REFERENCE_FILE} beside this file.",
        f"# Copy to {defaults.CONFIG_PATH} (or pass --config / set ORCHESTRATOR_CONFIG).",
        "# Durations: 30s, 10m, 2h, 1h30m, or a plain number of seconds (at most 7 days).",
        "# Unknown keys and duplicate keys are errors.",
        "# Within `machines`, the first entry of each kind shows every key with its comment.",
    ]


def example_yaml() -> str:
    """``config/lab.example.yaml``: a valid config with every key, each commented."""
    writer = _ExampleWriter()
    writer.section(Section("", Config, ""), {}, 0, full=True)
    return "\n".join([*_example_header(), *writer.lines]) + "\n"


def outputs() -> Iterator[tuple[str, str]]:
    """The generated files: (file name, text)."""
    yield REFERENCE_FILE, reference_markdown()
    yield EXAMPLE_FILE, example_yaml()
