"""Where the config file is, reading its YAML, and the one key ``status`` and ``history`` need.

Kept apart from ``config`` so the read-only commands never import pydantic: ``status`` should
answer in well under 150 ms. They still refuse an invalid config (``config_is_valid``): the
full validation runs once per file content and its success is remembered in the user's cache.

``load_yaml`` is the one YAML reader of the config file, for ``config`` too: a duplicate key,
a value PyYAML cannot build (``2001-02-30``, ``!!float abc``, an int of 5000 digits), deep
nesting or an alias that expands without bound is one ``ConfigError`` line, never a traceback
and never "the last one wins".
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import defaults
from orchestrator.errors import ConfigError

if TYPE_CHECKING:  # yaml is imported when a file is parsed: a known-valid `status` needs none
    import yaml
    from yaml.nodes import MappingNode, Node

MAX_DEPTH = 64  # a real config nests ~6 levels (machines.<m>.checks[0].units[0])
MAX_VALUES = 100_000  # values after expanding aliases (a "billion laughs" file stops here)
MERGE_TAG = "tag:yaml.org,2002:merge"


class _Problem(Exception):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


@functools.cache
def _loaders() -> tuple[type[yaml.SafeLoader], type[yaml.SafeLoader]]:
    """(exact, fast): the pure-Python safe loader, whose error marks are the most exact, and
    the C one (a 40-machine file costs ~25 ms in the pure one). Both turn a value PyYAML
    cannot build (a ValueError outside yaml.YAMLError) into a marked YAML error;
    ``construct_object`` is Python code in both."""
    import yaml

    class Constructor:
        def construct_object(self, node: Node, deep: bool = False) -> Any:
            try:
                return super().construct_object(node, deep)  # type: ignore[misc]
            except (ValueError, OverflowError, TypeError) as exc:
                text = node.value if isinstance(node.value, str) else ""
                shown = text if len(text) <= 40 else text[:37] + "..."
                reason = str(exc).split(";")[0].splitlines()[0] if str(exc) else type(exc).__name__
                raise yaml.constructor.ConstructorError(
                    None, None, f"cannot read the value {shown!r}: {reason}", node.start_mark
                ) from None

    class ExactLoader(Constructor, yaml.SafeLoader):
        pass

    fast: type[yaml.SafeLoader] = ExactLoader
    if hasattr(yaml, "CSafeLoader"):

        class FastLoader(Constructor, yaml.CSafeLoader):
            pass

        fast = FastLoader  # type: ignore[assignment]
    return ExactLoader, fast


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _children(node: Node, path: str) -> list[tuple[Node, str]]:
    from yaml.nodes import MappingNode, ScalarNode, SequenceNode

    if isinstance(node, SequenceNode):
        return [(child, f"{path}[{index}]") for index, child in enumerate(node.value)]
    if isinstance(node, MappingNode):
        found: list[tuple[Node, str]] = []
        for key, value in node.value:
            name = key.value if isinstance(key, ScalarNode) else "?"
            found += [(key, _join(path, name)), (value, _join(path, name))]
        return found
    return []


def _check_duplicates(node: MappingNode, path: str, build: Callable[[Node], Any]) -> None:
    """Keys that build to the same value (``yes`` and ``true`` too) are duplicates."""
    from yaml.nodes import ScalarNode

    seen: dict[Any, int] = {}
    for key, _ in node.value:
        if not isinstance(key, ScalarNode) or key.tag == MERGE_TAG:
            continue
        line = key.start_mark.line + 1
        value = (type(built := build(key)), built)
        first = seen.get(value)
        if first is not None:
            raise _Problem(_join(path, key.value), f"duplicate key (lines {first} and {line})")
        seen[value] = line


BOOL_TAG = "tag:yaml.org,2002:bool"
STR_TAG = "tag:yaml.org,2002:str"


def _keys_are_names(node: MappingNode) -> None:
    """A plain ``on:``/``off:``/``yes:``/``no:`` key is that word, not a boolean.

    YAML 1.1 (PyYAML) reads them as booleans even as keys, so ``notify: {on: [done]}`` would
    become ``{True: [...]}``; every key of this schema is a name, and YAML 1.2 agrees that
    these words are plain strings."""
    from yaml.nodes import ScalarNode

    for key, _ in node.value:
        # A plain scalar's style is None in the Python parser and "" in the C one.
        if isinstance(key, ScalarNode) and key.tag == BOOL_TAG and not key.style:
            key.tag = STR_TAG


def _short(path: str) -> str:
    return path if len(path) <= 60 else path[:57] + "..."


def _check_tree(root: Node, build: Callable[[Node], Any]) -> None:
    """Duplicate keys, nesting depth and the size after aliases, without recursion."""
    from yaml.nodes import MappingNode

    size: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Node, str, int, bool]] = [(root, "", 1, False)]
    while stack:
        node, path, depth, finished = stack.pop()
        ident = id(node)
        if finished:
            open_nodes.discard(ident)
            total = 1 + sum(size[id(child)] for child, _ in _children(node, path))
            if total > MAX_VALUES:
                raise _Problem(path, f"more than {MAX_VALUES} values once aliases are expanded")
            size[ident] = total
            continue
        if ident in size:
            continue
        if ident in open_nodes:
            raise _Problem(path, "an alias refers to a value that contains it")
        if depth > MAX_DEPTH:
            raise _Problem(_short(path), f"nested deeper than {MAX_DEPTH} levels")
        open_nodes.add(ident)
        if isinstance(node, MappingNode):
            _keys_are_names(node)
            _check_duplicates(node, path, build)
        stack.append((node, path, depth, True))
        stack += [(child, where, depth + 1, False) for child, where in _children(node, path)]


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A PyYAML error as one line: ``line N: problem``."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None)
    if not problem:
        problem = str(exc).splitlines()[0] if str(exc) else "not valid YAML"
    return where + " ".join(str(problem).split())


def load_yaml(path: Path, text: str, *, exact: bool = False) -> object:
    """The config file's YAML, or ConfigError ``PATH: KEY: problem`` / ``PATH: line N: …``."""
    import yaml

    exact_loader, fast_loader = _loaders()
    try:
        loader = (exact_loader if exact else fast_loader)(text)
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise ConfigError(f"{path}: line {line}: {str(exc).splitlines()[0]}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_tree(node, loader.construct_object)
        return loader.construct_document(node)
    except _Problem as problem:
        raise ConfigError(f"{path}: {problem.key or '(top level)'}: {problem.problem}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise ConfigError(f"{path}: line {line}: {str(exc).splitlines()[0]}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: (top level): nested too deeply") from None
    finally:
        loader.dispose()


def config_path(option: str | None, environ: Mapping[str, str]) -> Path:
    if option:
        return Path(option)
    if environ.get("ORCHESTRATOR_CONFIG"):
        return Path(environ["ORCHESTRATOR_CONFIG"])
    return defaults.CONFIG_PATH


def read_config_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file (pass --config or set ORCHESTRATOR_CONFIG)"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read: not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None


def state_dir_of(path: Path, raw: object) -> Path:
    value = (
        raw.get("state_dir", defaults.STATE_DIR) if isinstance(raw, dict) else defaults.STATE_DIR
    )
    if not isinstance(value, str | Path) or "\0" in str(value) or not str(value):
        raise ConfigError(f"{path}: state_dir: must be a path")
    return Path(value).expanduser()


def read_state_dir(path: Path) -> Path:
    """``state_dir`` alone, fast; the rest of the file is not validated here."""
    text = read_config_text(path)
    return state_dir_of(path, load_yaml(path, text))


# --- remembering that a config file is valid -------------------------------------------------


def _schema_fingerprint() -> bytes:
    """What else decides validity: the schema's source files (path, size, mtime)."""
    here = Path(__file__).resolve().parent
    files = [here / "config.py", here / "defaults.py", here / "paths.py"]
    checks = here.parent / "health_checks"
    try:
        files += sorted(entry for entry in checks.iterdir() if entry.suffix == ".py")
        stats = [(str(file), file.stat()) for file in files]
    except OSError:
        return b"?"
    return repr([(name, st.st_size, st.st_mtime_ns) for name, st in stats]).encode()


def cache_file(text: str, environ: Mapping[str, str]) -> Path | None:
    """Per user (``$XDG_CACHE_HOME``, else ``~/.cache``): only that user can vouch for a file,
    and a service user with no home just validates every time."""
    base = environ.get("XDG_CACHE_HOME") or (
        f"{environ['HOME']}/.cache" if environ.get("HOME") else ""
    )
    if not base or not os.path.isabs(base):
        return None
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass"))
    digest.update(b"\0" + _schema_fingerprint())
    return Path(base) / "lab-orchestrator" / "valid" / digest.hexdigest()


_INVALID = "\0invalid\0"  # a marker's content for a file known invalid: then its problem


def cached_verdict(text: str, environ: Mapping[str, str]) -> Path | str | None:
    """What this user's cache knows of a file content: its ``state_dir`` (valid), the problem
    (``KEY: what is wrong``, invalid), or None (not seen: validate it)."""
    marker = cache_file(text, environ)
    if marker is None:
        return None
    try:
        recorded = marker.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if recorded.startswith(_INVALID):
        return recorded.removeprefix(_INVALID) or None
    return Path(recorded).expanduser() if recorded else None


def remember_valid(text: str, environ: Mapping[str, str], state_dir: Path) -> None:
    """Record that this content is valid, with its ``state_dir`` (as written, unexpanded)."""
    _remember(text, environ, str(state_dir))


def remember_invalid(text: str, environ: Mapping[str, str], problem: str) -> None:
    """Record that this content is invalid, and why, so ``status`` says so within its budget
    without validating the same broken file again."""
    _remember(text, environ, _INVALID + problem)


def _remember(text: str, environ: Mapping[str, str], content: str) -> None:
    marker = cache_file(text, environ)
    if marker is None:
        return
    temporary = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
    try:
        marker.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary.write_text(content, encoding="utf-8")
        temporary.replace(marker)  # never a half-written marker
    except OSError:
        temporary.unlink(missing_ok=True)  # a read-only home only costs speed
