"""Backend specs: the call syntax of ``--backend`` is parsed, never evaluated."""

from __future__ import annotations

import pytest
from conftest import FixedBackend

from sopagent.backends import Backend
from sopagent.backends._spec import Call, SpecBuilder, SpecError, parse_spec
from sopagent.backends.cascade import CascadeBackend
from sopagent.backends.resilient import ResilientBackend
from sopagent.backends.shortlist import LexicalRanker, NearestBackend, ShortlistBackend


def builder(made: list[str] | None = None) -> SpecBuilder:
    """A builder whose base backends are fixed test doubles, recording what it made."""
    log = made if made is not None else []

    def factory(name: str) -> Backend:
        log.append(name)
        backend = FixedBackend("out_of_scope", 0.5)
        backend.name = name
        return backend

    return SpecBuilder({name: (lambda n=name: factory(n)) for name in ("embedded", "openai")})


def test_names_and_calls_parse_into_a_tree() -> None:
    """Names, calls, numbers and keywords become a plain call tree."""
    assert parse_spec("embedded") == Call("embedded")
    assert parse_spec("cascade(nearest(minilm), embedded, threshold=0.7)") == Call(
        "cascade", (Call("nearest", (Call("minilm"),)), Call("embedded")), {"threshold": 0.7}
    )


@pytest.mark.parametrize(
    "spec",
    ["", "embedded(", "__import__('os')", "embedded.llm", "cascade(*x)", "[embedded]", "1"],
)
def test_anything_but_names_and_calls_is_rejected(spec: str) -> None:
    """Attribute access, strings called as functions, lists and syntax errors are errors."""
    with pytest.raises(SpecError):
        builder().build(spec)


def test_wrappers_compose_and_base_backends_are_shared() -> None:
    """Each base backend is made once however many specs use it."""
    made: list[str] = []
    build = builder(made)
    first = build.build("cascade(nearest, shortlist(embedded, k=3), threshold=0.6)")
    second = build.build("resilient(embedded, retries=1, timeout=2.5)")
    assert isinstance(first, CascadeBackend)
    assert isinstance(first.first, NearestBackend)
    assert isinstance(first.first.ranker, LexicalRanker)
    assert isinstance(first.second, ShortlistBackend)
    assert first.second.k == 3
    assert first.threshold == 0.6
    assert isinstance(second, ResilientBackend)
    assert second.backend is first.second.backend
    assert made == ["embedded"]
    assert build.uses("embedded")
    assert not build.uses("openai")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpt5", "unknown backend 'gpt5'"),
        ("shortlist(k=3)", "needs the backend"),
        ("cascade(embedded)", "needs two backends"),
        ("shortlist(embedded, k=0)", "at least one"),
        ("shortlist(embedded, k=2.5)", "must be a number"),
        ("cascade(embedded, openai, threshold=2)", "threshold"),
        ("resilient(embedded, tries=3)", "no parameter 'tries'"),
        ("embedded(k=1)", "takes no arguments"),
        ("nearest(embedded)", "a ranker is lexical or minilm"),
        ("scripted", "not available here"),
    ],
)
def test_mistakes_say_what_is_wrong(spec: str, message: str) -> None:
    """Every mistake in a spec is a SpecError that names the problem."""
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        builder().build(spec)
