"""Backend specs: the small expression language of ``sopagent --backend``.

A spec names a backend, or wraps backends in the wrappers of `sopagent.backends`, with Python
call syntax (read with `ast`, never evaluated)::

    embedded
    openai
    scripted
    nearest                                  # nearest example, lexical ranker
    nearest(minilm, reject_below=0.5)        # with all-MiniLM-L6-v2 embeddings
    shortlist(embedded, k=8)                 # the model chooses among the 8 best ranked
    shortlist(embedded, minilm, k=5)
    cascade(nearest, embedded, threshold=0.7)
    resilient(openai, retries=2, timeout=5, breaker_failures=5)

Base backends (``embedded``, ``openai``, ``scripted``) are made by the caller's factories, each
at most once per `SpecBuilder`, so several specs compared side by side share one model.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sopagent.backends import Backend

__all__ = ["SpecBuilder", "SpecError", "base_names", "parse_spec"]

_BASES = ("embedded", "openai", "scripted")
_RANKERS = ("lexical", "minilm")
_WRAPPERS: dict[str, tuple[tuple[str, ...], dict[str, type]]] = {
    # name: (positional parameters, keyword parameters with their types)
    "nearest": (
        ("ranker",),
        {"reject_below": float, "temperature": float, "rejection_score": float},
    ),
    "shortlist": (("backend", "ranker"), {"k": int}),
    "cascade": (("first", "second"), {"threshold": float}),
    "resilient": (
        ("backend",),
        {
            "retries": int,
            "backoff": float,
            "max_backoff": float,
            "timeout": float,
            "breaker_failures": int,
            "breaker_reset": float,
        },
    ),
}


class SpecError(ValueError):
    """A backend spec that cannot be read or built; the message says why."""


@dataclass(frozen=True)
class Call:
    """One node of a spec: a name, and its arguments when it is a call."""

    name: str
    args: tuple[Call | float | int | str, ...] = ()
    kwargs: Mapping[str, Call | float | int | str] = field(default_factory=dict)


def _known() -> str:
    return ", ".join((*_BASES, *_WRAPPERS))


def _node(node: ast.expr, spec: str) -> Call | float | int | str:
    if isinstance(node, ast.Name):
        return Call(node.id)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str):
        if isinstance(node.value, bool):
            raise SpecError(f"{spec!r}: booleans are not parameters of any backend")
        return node.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        args = tuple(_node(arg, spec) for arg in node.args)
        kwargs: dict[str, Call | float | int | str] = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise SpecError(f"{spec!r}: ** is not allowed")
            kwargs[keyword.arg] = _node(keyword.value, spec)
        return Call(node.func.id, args, kwargs)
    raise SpecError(f"{spec!r}: expected a backend name or call such as cascade(nearest, embedded)")


def parse_spec(spec: str) -> Call:
    """Read a spec into its call tree.

    Raises:
        SpecError: the text is not a name or a call of names and numbers.
    """
    try:
        tree = ast.parse(spec.strip(), mode="eval")
    except SyntaxError as exc:
        raise SpecError(f"{spec!r} is not a backend spec: {exc.msg}") from None
    parsed = _node(tree.body, spec)
    if not isinstance(parsed, Call):
        raise SpecError(f"{spec!r}: expected a backend, got {parsed!r}")
    return parsed


def base_names(spec: str) -> set[str]:
    """The base backends a spec uses (``embedded``, ``openai``, ``scripted``).

    Raises:
        SpecError: as for `parse_spec`.
    """
    found: set[str] = set()
    stack: list[Call | float | int | str] = [parse_spec(spec)]
    while stack:
        node = stack.pop()
        if isinstance(node, Call):
            if node.name in _BASES:
                found.add(node.name)
            stack += [*node.args, *node.kwargs.values()]
    return found


class SpecBuilder:
    """Builds backends from specs, sharing each base backend between them.

    Args:
        bases: a factory per base backend name the caller supports (``embedded``,
            ``openai``, ``scripted``); each is called at most once.
    """

    def __init__(self, bases: Mapping[str, Callable[[], Backend]]) -> None:
        self._bases = dict(bases)
        self._made: dict[str, Backend] = {}
        self._rankers: dict[str, Any] = {}

    def uses(self, name: str) -> bool:
        """Whether a spec built so far used the base backend ``name``."""
        return name in self._made

    def build(self, spec: str) -> Backend:
        """Build the backend ``spec`` describes.

        Raises:
            SpecError: unknown names, wrong arguments, or values out of range.
        """
        return self._backend(parse_spec(spec), spec)

    def _backend(self, node: Call | float | int | str, spec: str) -> Backend:
        if not isinstance(node, Call):
            raise SpecError(f"{spec!r}: {node!r} is not a backend")
        if node.name in _BASES:
            if node.args or node.kwargs:
                raise SpecError(f"{spec!r}: {node.name} takes no arguments")
            return self._base(node.name, spec)
        if node.name not in _WRAPPERS:
            raise SpecError(f"{spec!r}: unknown backend {node.name!r} (known: {_known()})")
        values = self._arguments(node, spec)
        try:
            return self._wrap(node.name, values, spec)
        except ValueError as exc:
            raise SpecError(f"{spec!r}: {exc}") from None

    def _base(self, name: str, spec: str) -> Backend:
        made = self._made.get(name)
        if made is None:
            factory = self._bases.get(name)
            if factory is None:
                raise SpecError(f"{spec!r}: backend {name!r} is not available here")
            made = self._made[name] = factory()
        return made

    def _arguments(self, node: Call, spec: str) -> dict[str, Any]:
        positional, keywords = _WRAPPERS[node.name]
        if len(node.args) > len(positional):
            raise SpecError(f"{spec!r}: {node.name} takes at most {len(positional)} backends")
        values: dict[str, Any] = dict(zip(positional, node.args, strict=False))
        for key, value in node.kwargs.items():
            if key in values:
                raise SpecError(f"{spec!r}: {node.name} got {key} twice")
            if key not in keywords and key not in positional:
                allowed = ", ".join((*positional, *keywords))
                raise SpecError(f"{spec!r}: {node.name} has no parameter {key!r} ({allowed})")
            values[key] = value
        for key, kind in keywords.items():
            if key in values:
                value = values[key]
                if isinstance(value, Call | str) or (kind is int and not isinstance(value, int)):
                    raise SpecError(f"{spec!r}: {node.name}({key}=...) must be a number")
                values[key] = kind(value)
        return values

    def _ranker(self, node: Any, spec: str) -> Any:
        from sopagent.backends import shortlist as retrieval  # noqa: PLC0415

        name = "lexical" if node is None else getattr(node, "name", None)
        if not isinstance(node, Call | None) or name not in _RANKERS or (node and node.args):
            raise SpecError(f"{spec!r}: a ranker is lexical or minilm, not {node!r}")
        ranker = self._rankers.get(name)
        if ranker is None:
            ranker = (
                retrieval.LexicalRanker()
                if name == "lexical"
                else retrieval.from_sentence_transformers()
            )
            self._rankers[name] = ranker
        return ranker

    def _wrap(self, name: str, values: dict[str, Any], spec: str) -> Backend:
        from sopagent.backends import shortlist as retrieval  # noqa: PLC0415

        if name == "nearest":
            ranker = self._ranker(values.pop("ranker", None), spec)
            return retrieval.nearest(ranker, **values)
        if name == "shortlist":
            if "backend" not in values:
                raise SpecError(f"{spec!r}: shortlist needs the backend that decides")
            inner = self._backend(values.pop("backend"), spec)
            ranker = self._ranker(values.pop("ranker", None), spec)
            return retrieval.shortlist(inner, ranker, **values)
        if name == "cascade":
            from sopagent.backends.cascade import cascade  # noqa: PLC0415

            if "first" not in values or "second" not in values:
                raise SpecError(f"{spec!r}: cascade needs two backends")
            first = self._backend(values.pop("first"), spec)
            second = self._backend(values.pop("second"), spec)
            return cascade(first, second, **values)
        from sopagent.backends.resilient import resilient  # noqa: PLC0415

        if "backend" not in values:
            raise SpecError(f"{spec!r}: resilient needs the backend it protects")
        inner = self._backend(values.pop("backend"), spec)
        return resilient(inner, **values)
