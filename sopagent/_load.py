"""Load step: YAML files -> validated `Policy` and `Catalog`, every problem with its location."""

from __future__ import annotations

import difflib
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from sopagent._yaml import Document, read_yaml
from sopagent.errors import Location, PolicyLoadError, Problem
from sopagent.policy import _ID, Catalog, Policy, _Sourced

__all__ = [
    "collection_paused",
    "load_catalog",
    "load_document",
    "load_policy",
    "validation_problems",
]

M = TypeVar("M", bound=BaseModel)
S = TypeVar("S", bound=_Sourced)


@contextmanager
def collection_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a large document is built.

    Building a policy allocates hundreds of thousands of objects that all stay alive, and each
    collection the allocations trigger scans every one of them again: the cost grew with the
    square of the policy's size. What is built stays alive, so a collection in the middle
    would free nothing; the little garbage there is waits for the next one.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _field_names() -> set[str]:
    from sopagent import policy as fmt  # noqa: PLC0415 (the module defines the vocabulary)

    names: set[str] = set()
    for value in vars(fmt).values():
        if isinstance(value, type) and issubclass(value, BaseModel):
            for name, info in value.model_fields.items():
                names.add(info.alias or name)
    return names


_VOCABULARY: set[str] = set()


def _child(current: Any, element: str | int) -> tuple[bool, Any]:
    if isinstance(current, dict) and element in current:
        return True, current[element]
    if isinstance(current, list) and isinstance(element, int) and 0 <= element < len(current):
        return True, current[element]
    return False, None


def _walk(data: Any, loc: tuple[str | int, ...]) -> tuple[tuple[str | int, ...], bool]:
    """Follow a pydantic error location through the data, skipping union tags.

    Returns the path inside the document and whether the last element was a missing key.
    """
    path: list[str | int] = []
    current = data
    for index, element in enumerate(loc):
        found, child = _child(current, element)
        if found:
            path.append(element)
            current = child
        elif index == len(loc) - 1 and isinstance(current, dict):
            return tuple(path), True
    return tuple(path), False


def validation_problems(exc: ValidationError, document: Document) -> list[Problem]:
    """Turn a pydantic validation error into located problems."""
    if not _VOCABULARY:
        _VOCABULARY.update(_field_names())
    problems: list[Problem] = []
    seen: set[tuple[Location, str]] = set()
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        path, missing = _walk(document.data, loc)
        kind = error["type"]
        if kind == "extra_forbidden":
            key = str(loc[-1])
            location = document.locate_key(path)
            close = difflib.get_close_matches(key, sorted(_VOCABULARY), n=1)
            problem = Problem(
                "SOP011",
                f"unknown key {key!r}",
                location,
                hint=f"did you mean {close[0]!r}?" if close else "remove it",
            )
        elif kind == "missing":
            key = str(loc[-1])
            location = document.locate(path)
            where = ".".join(str(p) for p in path) or "the document"
            problem = Problem("SOP012", f"missing required key {key!r} in {where}", location)
        elif kind == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == _ID:
            location = document.locate(path)
            problem = Problem(
                "SOP010",
                f"{error['input']!r} is not a valid id",
                location,
                hint="ids are lower_snake_case: a letter, then letters, digits or underscores",
            )
        else:
            location = document.locate_key(path) if missing else document.locate(path)
            message = error["msg"].removeprefix("Value error, ")
            where = ".".join(str(p) for p in path)
            problem = Problem("SOP010", f"{where}: {message}" if where else message, location)
        marker = (problem.location, problem.message)
        if marker not in seen:
            seen.add(marker)
            problems.append(problem)
    return problems


def _load(path: str | Path, model: type[M], kind: str) -> tuple[M, Document]:
    with collection_paused():
        document = read_yaml(path)
        if not isinstance(document.data, dict):
            raise PolicyLoadError(
                [Problem("SOP010", f"a {kind} file is a mapping of keys", document.locate(()))]
            )
        try:
            value = model.model_validate(document.data)
        except ValidationError as exc:
            raise PolicyLoadError(validation_problems(exc, document)) from exc
    return value, document


def load_document(path: str | Path, model: type[S], kind: str) -> S:
    """Read and validate a YAML (or JSON) file into ``model``, remembering its locations.

    Raises:
        PolicyLoadError: as for `load_policy`.
    """
    value, document = _load(path, model, kind)
    value._document = document
    value._path = Path(path)
    return value


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy YAML file.

    Only the policy's own format is checked here; references to states, intents, responses and
    decision functions are checked by `check_policy` and `compile_policy`.

    Raises:
        PolicyLoadError: the file is unreadable, not YAML, or breaks the format; every problem
            of the file is reported, each at ``file:line:col``.
    """
    return load_document(path, Policy, "policy")


def load_catalog(path: str | Path) -> Catalog:
    """Read and validate an approved response catalog.

    Raises:
        PolicyLoadError: as for `load_policy`.
    """
    return load_document(path, Catalog, "catalog")
