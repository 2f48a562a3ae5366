"""Read YAML safely and remember where every value came from.

The loader is PyYAML's safe loader with two changes: only ``true``/``false`` are booleans
(YAML 1.1 turns ``yes``, ``no``, ``on`` and ``off`` into booleans, which mangles intent and state
ids), and documents are built from the parser's events by hand so that every value keeps its
``line:column`` and duplicate keys and alias bombs are reported instead of silently accepted.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from sopagent.errors import Location, PolicyLoadError, Problem

__all__ = ["Document", "read_source", "read_yaml"]

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


_SourceMark = Any  # a PyYAML mark (Python's or libyaml's class), or None
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


def _location(path: str, mark: _SourceMark) -> Location:
    if mark is None:
        return Location(path, 1, 1)
    return Location(path, mark.line + 1, mark.column + 1)


def _mark(mark: _SourceMark) -> Mark:
    return (1, 1) if mark is None else (mark.line + 1, mark.column + 1)


_UNSUPPORTED = "only plain scalars, mappings and lists are allowed"
_MAX_PROBLEMS = 100
_SKIP = object()  # the key of a mapping entry whose value is read and dropped
_DROPPED: Path_ = ("<dropped>",)


class _LimitError(Exception):
    def __init__(self, mark: _SourceMark) -> None:
        self.mark = mark


class _DepthError(_LimitError):
    pass


class _RecursiveAliasError(_LimitError):
    pass


class _Frame:
    """A mapping or list being read, with where it is and what is pending in it."""

    __slots__ = ("anchor", "at", "container", "height", "key", "nodes", "start")

    def __init__(
        self,
        container: dict[Any, Any] | list[Any],
        at: Path_,
        anchor: str | None,
        start: _SourceMark,
    ) -> None:
        self.container = container
        self.at = at
        self.anchor = anchor
        self.start = start
        self.height = 1
        self.nodes = 1
        self.key: Any = None  # for mappings: None while a key is expected


class _Builder:
    """Build plain data from the parser's events, with the mark of every value.

    Documents are read event by event instead of through PyYAML's node tree, so a hostile
    document is refused as soon as it passes a limit, before it is held in memory. An alias
    reuses the value its anchor built (nothing is copied) and counts as every value in it.
    """

    def __init__(self, path: str, loader: yaml.SafeLoader) -> None:
        self.path = path
        self.loader = loader
        self.marks: dict[Path_, Mark] = {}
        self.problems: list[Problem] = []
        self.nodes = 0
        self.anchors: dict[str, tuple[Any, int, int]] = {}  # value, values in it, height
        self.open_anchors: set[str] = set()

    def problem(self, code: str, message: str, mark: _SourceMark, hint: str = "") -> None:
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(Problem(code, message, _location(self.path, mark), hint))

    def read(self) -> Any:
        """Read the stream's one document and return its data (None for an empty stream)."""
        loader = self.loader
        stack: list[_Frame] = []
        documents = 0
        result: Any = None
        while loader.check_event():
            event = loader.get_event()  # type: ignore[no-untyped-call]
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise _failure(
                        "SOP001",
                        "a file holds one YAML document",
                        _location(self.path, event.start_mark),
                    )
                continue
            if isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                frame = stack.pop()
                value, nodes, height = frame.container, frame.nodes, frame.height
                if frame.anchor is not None:
                    self.anchors[frame.anchor] = (value, nodes, height)
                    self.open_anchors.discard(frame.anchor)
                if not stack:
                    result = value
                else:
                    self._place(stack, value, nodes, height, frame.start, scalar=False)
                continue
            if not isinstance(event, yaml.NodeEvent):
                continue  # stream start and end, document end
            at, depth = self._slot(stack)
            self.nodes += 1
            if self.nodes > _MAX_NODES:
                raise _LimitError(event.start_mark)
            if depth > _MAX_DEPTH:
                raise _DepthError(event.start_mark)
            if isinstance(event, yaml.AliasEvent):
                value, nodes, height = self._alias(event, depth)
                is_key_scalar = isinstance(value, str)
            elif isinstance(event, yaml.ScalarEvent):
                value, nodes, height = self._scalar(event), 1, 0
                if event.anchor is not None:
                    self.anchors[event.anchor] = (value, 1, 0)
                is_key_scalar = True
            else:
                assert isinstance(event, yaml.CollectionStartEvent)
                self._collection_tag(event)
                container: dict[Any, Any] | list[Any] = (
                    {} if isinstance(event, yaml.MappingStartEvent) else []
                )
                if at is None:
                    at = _DROPPED  # a key or a dropped value: its marks are never asked for
                self.marks[at] = _mark(event.start_mark)
                if event.anchor is not None:
                    self.open_anchors.add(event.anchor)
                stack.append(_Frame(container, at, event.anchor, event.start_mark))
                continue
            if not stack:
                self.marks[()] = _mark(event.start_mark)
                result = value
                continue
            if at is not None:
                self.marks[at] = _mark(event.start_mark)
            self._place(stack, value, nodes, height, event.start_mark, is_key_scalar, event)
        return result

    def _slot(self, stack: list[_Frame]) -> tuple[Path_ | None, int]:
        """Where the next value goes (None: nowhere kept), and its depth."""
        if not stack:
            return (), 0
        parent = stack[-1]
        depth = len(stack)
        if isinstance(parent.container, list):
            return (*parent.at, len(parent.container)), depth
        if parent.key is None or parent.key is _SKIP:
            return None, depth  # a key, or a value that is dropped
        return (*parent.at, parent.key), depth

    def _place(
        self,
        stack: list[_Frame],
        value: Any,
        nodes: int,
        height: int,
        mark: _SourceMark,
        scalar: bool,
        event: yaml.NodeEvent | None = None,
    ) -> None:
        """Put a finished value into the mapping or list being read."""
        parent = stack[-1]
        parent.nodes += nodes
        parent.height = max(parent.height, height + 1)
        container = parent.container
        if isinstance(container, list):
            container.append(value)
            return
        if parent.key is None:
            self._key(parent, value, scalar, event, mark)
            return
        if parent.key is not _SKIP:
            container[parent.key] = value
        parent.key = None

    def _key(
        self,
        parent: _Frame,
        value: Any,
        scalar: bool,
        event: yaml.NodeEvent | None,
        mark: _SourceMark,
    ) -> None:
        if event is None or not scalar:
            self.problem("SOP002", "mapping keys must be plain scalars", mark)
            parent.key = _SKIP
            return
        start = event.start_mark
        if isinstance(event, yaml.ScalarEvent) and self._tag(event) == "tag:yaml.org,2002:merge":
            self.problem("SOP002", "merge keys (<<) are not supported", start, "write the keys out")
            parent.key = _SKIP
            return
        key = value
        if isinstance(key, bool | float) or key is None:
            key = event.value if isinstance(event, yaml.ScalarEvent) else str(key)
        if key in parent.container:
            self.problem(
                "SOP003",
                f"duplicate key {key!r}",
                start,
                hint="each key may appear once in a mapping",
            )
            parent.key = _SKIP
            return
        self.marks[(*parent.at, key, "<key>")] = _mark(start)
        parent.key = key

    def _alias(self, event: yaml.AliasEvent, depth: int) -> tuple[Any, int, int]:
        name = event.anchor or ""
        if name in self.open_anchors:
            raise _RecursiveAliasError(event.start_mark)
        found = self.anchors.get(name)
        if found is None:
            raise _failure(
                "SOP001",
                f"invalid YAML: found undefined alias {name!r}",
                _location(self.path, event.start_mark),
            )
        value, nodes, height = found
        self.nodes += nodes - 1
        if self.nodes > _MAX_NODES:
            raise _LimitError(event.start_mark)
        if depth + height > _MAX_DEPTH:
            raise _DepthError(event.start_mark)
        return value, nodes, height

    def _collection_tag(self, event: yaml.CollectionStartEvent) -> None:
        tag = event.tag
        if tag is None or tag == "!":
            return
        if tag not in _PLAIN:
            self.problem("SOP002", f"unsupported YAML tag {tag!r}", event.start_mark, _UNSUPPORTED)

    def _tag(self, event: yaml.ScalarEvent) -> str:
        tag = event.tag
        if tag is None or tag == "!":
            resolved: str = self.loader.resolve(  # type: ignore[no-untyped-call]
                yaml.ScalarNode, event.value, event.implicit
            )
            return resolved
        return tag

    def _scalar(self, event: yaml.ScalarEvent) -> Any:
        tag = self._tag(event)
        value = event.value
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
        if tag == "tag:yaml.org,2002:merge":
            return value  # reported where it is used as a key
        self.problem("SOP002", f"unsupported YAML tag {tag!r}", event.start_mark, _UNSUPPORTED)
        return value


def _failure(code: str, message: str, location: Location) -> PolicyLoadError:
    return PolicyLoadError([Problem(code, message, location)])


def read_source(path: str | Path, what: str = "file") -> bytes:
    """Read a source file whole, refusing what is not a regular file or is too large.

    The file is opened without blocking and checked before anything is read: a directory, a
    FIFO, a device such as ``/dev/zero`` or a symbolic link to one is refused at once instead
    of blocking or reading forever.

    Raises:
        PolicyLoadError: SOP001 naming the file.
    """
    name = str(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        handle = os.open(path, flags)
    except OSError as exc:
        raise _failure("SOP001", f"cannot read {what}: {exc.strerror}", Location(name)) from exc
    try:
        info = os.fstat(handle)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise _failure("SOP001", f"cannot read {what}: {kind}", Location(name))
        if info.st_size > _MAX_BYTES:
            raise _failure("SOP001", f"{what} is larger than {_MAX_BYTES} bytes", Location(name))
        chunks: list[bytes] = []
        size = 0
        while size <= _MAX_BYTES:
            chunk = os.read(handle, min(1 << 20, _MAX_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise _failure("SOP001", f"cannot read {what}: {exc.strerror}", Location(name)) from exc
    finally:
        os.close(handle)
    if size > _MAX_BYTES:  # it grew while it was read
        raise _failure("SOP001", f"{what} is larger than {_MAX_BYTES} bytes", Location(name))
    return b"".join(chunks)


def _reader_location(name: str, text: str, exc: yaml.reader.ReaderError) -> Location:
    """The line and column of a character the reader refused (its position is in bytes)."""
    before = text.encode("utf-8", "surrogatepass")[: exc.position].decode("utf-8", "ignore")
    line = before.count("\n") + 1
    return Location(name, line, len(before) - (before.rfind("\n") + 1) + 1)


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
        raw = read_source(path)
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
    loader = _Loader(text)
    builder = _Builder(name, loader)
    try:
        data = builder.read()
    except _RecursiveAliasError as exc:
        message = "an alias inside its own anchor (a recursive alias)"
        raise _failure("SOP004", message, _location(name, exc.mark)) from None
    except _DepthError as exc:
        raise _failure("SOP004", too_deep, _location(name, exc.mark)) from None
    except _LimitError as exc:
        message = f"document expands to more than {_MAX_NODES} values (alias bomb?)"
        raise _failure("SOP004", message, _location(name, exc.mark)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "invalid YAML"
        raise _failure("SOP001", f"invalid YAML: {message}", _location(name, mark)) from exc
    except yaml.reader.ReaderError as exc:
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        message = f"invalid YAML: character U+{code:04X} is not allowed ({exc.reason})"
        raise _failure("SOP001", message, _reader_location(name, text, exc)) from exc
    except yaml.YAMLError as exc:
        raise _failure("SOP001", f"invalid YAML: {exc}", Location(name, 1, 1)) from exc
    except RecursionError:
        raise _failure("SOP004", too_deep, Location(name, 1, 1)) from None
    finally:
        loader.dispose()
    if builder.problems:
        raise PolicyLoadError(builder.problems)
    builder.marks.setdefault((), (1, 1))
    return Document(name, data, builder.marks)
