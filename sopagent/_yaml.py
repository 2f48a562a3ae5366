"""Read YAML safely and remember where every value came from.

The loader is PyYAML's safe loader with two changes: only ``true``/``false`` are booleans
(YAML 1.1 turns ``yes``, ``no``, ``on`` and ``off`` into booleans, which mangles intent and state
ids), and documents are built from the node tree by hand so that every value keeps its
``line:column`` and duplicate keys and alias bombs are reported instead of silently accepted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from sopagent.errors import Location, PolicyLoadError, Problem

__all__ = ["Document", "read_yaml"]

Path_ = tuple[str | int, ...]

# Bounds that keep hostile files cheap to reject.
_MAX_BYTES = 8 * 1024 * 1024
_MAX_NODES = 500_000
_MAX_DEPTH = 64


_PLAIN = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


# libyaml's parser when PyYAML was built with it; the resolver below stays in Python either way.
_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """Safe loader whose booleans are YAML 1.2's ``true`` and ``false`` only."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


Mark = tuple[int, int]
"""A 1-based (line, column); Locations are made from them only when one is asked for."""


class Document:
    """A parsed YAML document: its data and the source location of every value in it."""

    def __init__(self, path: str, data: Any, marks: dict[Path_, Mark]) -> None:
        self.path = path
        self.data = data
        self._marks = marks

    def locate(self, path: Path_) -> Location:
        """Return the location of the value at ``path``, or of its nearest ancestor."""
        current = tuple(path)
        while current:
            mark = self._marks.get(current)
            if mark is not None:
                return Location(self.path, *mark)
            current = current[:-1]
        return Location(self.path, *self._marks.get((), (1, 1)))

    def locate_key(self, path: Path_) -> Location:
        """Return the location of the mapping key that leads to ``path``."""
        mark = self._marks.get((*path, "<key>"))
        return Location(self.path, *mark) if mark is not None else self.locate(path)


def _location(path: str, mark: yaml.Mark | None) -> Location:
    if mark is None:
        return Location(path, 1, 1)
    return Location(path, mark.line + 1, mark.column + 1)


def _mark(mark: yaml.Mark | None) -> Mark:
    return (1, 1) if mark is None else (mark.line + 1, mark.column + 1)


class _Builder:
    def __init__(self, path: str) -> None:
        self.path = path
        self.marks: dict[Path_, Mark] = {}
        self.problems: list[Problem] = []
        self.nodes = 0

    def build(self, node: yaml.Node, at: Path_, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise _LimitError(node)
        if depth > _MAX_DEPTH:
            raise _DepthError(node)
        self.marks[at] = _mark(node.start_mark)
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _PLAIN:
            self._problem(
                "SOP002",
                f"unsupported YAML tag {node.tag!r}",
                node,
                hint="only plain scalars, mappings and lists are allowed",
            )
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, at, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*at, i), depth + 1) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        return self._scalar(node)

    def _problem(self, code: str, message: str, node: yaml.Node, hint: str = "") -> None:
        self.problems.append(Problem(code, message, _location(self.path, node.start_mark), hint))

    def _mapping(self, node: yaml.MappingNode, at: Path_, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self._problem(
                    "SOP002",
                    "merge keys (<<) are not supported",
                    key_node,
                    hint="write the keys out",
                )
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._problem("SOP002", "mapping keys must be plain scalars", key_node)
                continue
            key = self._scalar(key_node)
            if isinstance(key, bool | float) or key is None:
                key = key_node.value
            if key in result:
                self._problem(
                    "SOP003",
                    f"duplicate key {key!r}",
                    key_node,
                    hint="each key may appear once in a mapping",
                )
                continue
            self.marks[(*at, key, "<key>")] = _mark(key_node.start_mark)
            result[key] = self.build(value_node, (*at, key), depth + 1)
        return result

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        tag = node.tag
        value = node.value
        if tag == "tag:yaml.org,2002:str":
            return value
        if tag == "tag:yaml.org,2002:null":
            return None
        if tag == "tag:yaml.org,2002:bool":
            return value.lower() == "true"
        if tag == "tag:yaml.org,2002:int":
            try:
                return int(value.replace("_", ""), 0)
            except ValueError:
                return value
        if tag == "tag:yaml.org,2002:float":
            try:
                return float(value.replace("_", ""))
            except ValueError:
                return value
        if tag in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:binary"):
            return value
        self._problem(
            "SOP002",
            f"unsupported YAML tag {tag!r}",
            node,
            hint="only plain scalars, mappings and lists are allowed",
        )
        return value


class _LimitError(Exception):
    def __init__(self, node: yaml.Node) -> None:
        self.node = node


class _DepthError(_LimitError):
    pass


def _failure(code: str, message: str, location: Location) -> PolicyLoadError:
    return PolicyLoadError([Problem(code, message, location)])


def read_yaml(path: str | Path, *, text: str | None = None) -> Document:
    """Parse one YAML document.

    Args:
        path: the file to read; also the name used in locations when ``text`` is given.
        text: the document's text, to parse without reading ``path``.

    Returns:
        The document with its data and the location of every value.

    Raises:
        PolicyLoadError: the file cannot be read, is not valid YAML, or breaks the limits.
    """
    name = str(path)
    if text is None:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise _failure("SOP001", f"cannot read file: {exc.strerror}", Location(name)) from exc
        if len(raw) > _MAX_BYTES:
            raise _failure("SOP001", f"file is larger than {_MAX_BYTES} bytes", Location(name))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
            where = Location(name, line, column)
            raise _failure("SOP001", "file is not valid UTF-8", where) from exc
    elif len(text) > _MAX_BYTES:
        raise _failure("SOP001", f"document is larger than {_MAX_BYTES} bytes", Location(name))
    too_deep = f"nesting deeper than {_MAX_DEPTH} levels"
    try:
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "invalid YAML"
        raise _failure("SOP001", f"invalid YAML: {message}", _location(name, mark)) from exc
    except yaml.YAMLError as exc:
        raise _failure("SOP001", f"invalid YAML: {exc}", Location(name, 1, 1)) from exc
    except RecursionError:
        raise _failure("SOP004", too_deep, Location(name, 1, 1)) from None
    if len(nodes) > 1:
        where = _location(name, nodes[1].start_mark)
        raise _failure("SOP001", "a file holds one YAML document", where)
    builder = _Builder(name)
    if not nodes:
        return Document(name, None, {(): (1, 1)})
    try:
        data = builder.build(nodes[0], (), 0)
    except _DepthError as exc:
        raise _failure("SOP004", too_deep, _location(name, exc.node.start_mark)) from None
    except _LimitError as exc:
        message = f"document expands to more than {_MAX_NODES} values (alias bomb?)"
        raise _failure("SOP004", message, _location(name, exc.node.start_mark)) from None
    if builder.problems:
        raise PolicyLoadError(builder.problems)
    return Document(name, data, builder.marks)
