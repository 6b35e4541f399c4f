"""The YAML loader: duplicate keys refused, line numbers kept (see the package docstring)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

#: The YAML merge key: repeating keys through it is YAML's documented override, not a mistake.
_MERGE = "<<"


class ConfigFileError(ValueError):
    """A config file cannot be read or is not the YAML mapping it must be.

    ``path`` and ``line`` (1-based, None when unknown) say where; ``what`` says what is wrong.
    ``str()`` is ``path:line: what``.
    """

    def __init__(self, path: str | Path, line: int | None, what: str) -> None:
        self.path = str(path)
        self.line = line
        self.what = what
        super().__init__(f"{self.where}: {what}")

    @property
    def where(self) -> str:
        """``path:line`` (or just the path when the line is unknown)."""
        return self.path if self.line is None else f"{self.path}:{self.line}"


@dataclass(frozen=True)
class YamlDoc:
    """A loaded YAML mapping and the line of each key path (tuples of ``str`` keys/indices)."""

    path: Path
    data: dict[str, Any]
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)

    def line(self, keys: Sequence[object]) -> int | None:
        """Line of the deepest existing prefix of the key path ``keys`` (None if none)."""
        parts = tuple(str(k) for k in keys)
        while parts:
            if parts in self.lines:
                return self.lines[parts]
            parts = parts[:-1]
        return None

    def where(self, keys: Sequence[object] = ()) -> str:
        """``path:line`` for the key path ``keys`` (the path alone when no line is known)."""
        line = self.line(keys)
        return str(self.path) if line is None else f"{self.path}:{line}"


def load_mapping(path: str | Path, what: str = "config") -> YamlDoc:
    """Read a YAML file whose top level is a mapping (an empty file is an empty mapping).

    Raises ConfigFileError naming the file (and line) when it cannot be read, is not valid
    YAML, repeats a key in one mapping, or is not a mapping at the top level.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(p, None, f"cannot read the {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigFileError(p, None, f"the {what} is not UTF-8 text: {exc.reason}") from None
    loader = yaml.SafeLoader(text)
    loader.name = str(p)
    try:
        node = loader.get_single_node()
        lines: dict[tuple[str, ...], int] = {}
        if node is not None:
            _walk(p, node, (), lines)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        what = exc.problem or str(exc)
        if exc.context and exc.context_mark is not None:
            what = f"{what} ({exc.context} that starts on line {exc.context_mark.line + 1})"
        raise ConfigFileError(p, line, f"not valid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigFileError(p, None, f"not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigFileError(
            p, 1, f"expected a mapping (key: value) at the top level, got {type(data).__name__}"
        )
    return YamlDoc(p, data, lines)


def _walk(
    path: Path,
    node: Node,
    prefix: tuple[str, ...],
    lines: dict[tuple[str, ...], int],
    seen_nodes: set[int] | None = None,
) -> None:
    """Record each key's line under ``prefix`` and refuse a key repeated in one mapping.

    A node reached again through an alias is walked once (recursive anchors terminate).
    """
    seen_nodes = set() if seen_nodes is None else seen_nodes
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                _walk(path, value_node, prefix, lines, seen_nodes)
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key == _MERGE:
                continue
            if key in seen:
                where = ".".join((*prefix, key))
                raise ConfigFileError(
                    path,
                    line,
                    f"duplicate key {where!r} (first given on line {seen[key]}); "
                    "a repeated key would silently replace the first: keep one",
                )
            seen[key] = line
            lines[(*prefix, key)] = line
            _walk(path, value_node, (*prefix, key), lines, seen_nodes)
    elif isinstance(node, SequenceNode):
        for k, item in enumerate(node.value):
            lines.setdefault((*prefix, str(k)), item.start_mark.line + 1)
            _walk(path, item, (*prefix, str(k)), lines, seen_nodes)


def nearest(word: str, choices: Iterable[str]) -> str | None:
    """The valid name closest to a misspelt ``word`` (difflib), or None if none is close."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None
