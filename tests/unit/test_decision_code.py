"""Decision modules read as source: effects of outcomes, reads, imports and calls (SOP055-057)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import MINI_DECISIONS

from sopagent import MemorySink, ScriptedBackend, decision, load_agent
from sopagent._analysis import check_paths
from sopagent._decision_code import Effects, scan_module, summarize
from sopagent.decisions import DecisionFunction, import_decision_module
from sopagent.errors import Problem

Writer = Callable[..., Path]

_count = itertools.count()


def load(tmp_path: Path, source: str, name: str = "judge") -> DecisionFunction:
    """Write a decision module, import it, and return its function ``name``."""
    path = tmp_path / f"module{next(_count)}.py"
    path.write_text("from sopagent import Outcome, decision\n\n\n" + source, encoding="utf-8")
    module = import_decision_module(path.name, tmp_path)
    function: DecisionFunction = getattr(module, name)
    return function


def test_plain_returns_write_nothing(tmp_path: Path) -> None:
    """Returning outcome names (also through a conditional) writes no value."""
    function = load(
        tmp_path,
        '@decision(outcomes=["yes", "no"])\n'
        "def judge(ctx):\n"
        '    return "yes" if ctx.facts.get("ok") else "no"\n',
    )
    summary = summarize(function)
    assert summary.outcomes == {"yes": Effects(), "no": Effects()}
    assert summary.reads == ()


def test_outcome_dictionaries_give_sets_and_writes(tmp_path: Path) -> None:
    """Constants set, None clears, anything else may do either; per outcome."""
    function = load(
        tmp_path,
        '@decision(outcomes=["found", "missing"])\n'
        "def judge(ctx):\n"
        '    if ctx.slots["order"]:\n'
        '        return Outcome("found", facts={"total": ctx.slots["order"], "seen": True})\n'
        '    return Outcome("missing", slots={"order": None})\n',
    )
    summary = summarize(function)
    assert summary.effects("found") == Effects(frozenset({"seen"}), frozenset({"total", "seen"}))
    assert summary.effects("found").clears == frozenset({"total"})
    assert summary.effects("missing") == Effects(
        frozenset(), frozenset({"order"}), frozenset({"order"})
    )
    assert summary.effects("missing").may_set == frozenset()
    assert summary.effects("found").may_set == frozenset({"total", "seen"})
    assert [(r.name, r.kind, r.line) for r in summary.reads] == [
        ("order", "slots", 6),
        ("order", "slots", 7),
    ]


def test_outcome_name_and_dictionary_through_local_names(tmp_path: Path) -> None:
    """A local name holding the outcome or the dictionary is followed to its assignment."""
    function = load(
        tmp_path,
        '@decision(outcomes=["locked", "retry", "fine"])\n'
        "def judge(ctx):\n"
        '    facts = {"tries": 3, "note": f"x{1}"}\n'
        '    outcome = "locked" if ctx.facts.get("tries") else "retry"\n'
        "    return Outcome(outcome, facts=facts)\n",
    )
    summary = summarize(function)
    both = Effects(frozenset({"tries", "note"}), frozenset({"tries", "note"}))
    assert summary.effects("locked") == both
    assert summary.effects("retry") == both
    # An outcome no return statement gives: nothing is known to be set, nothing written.
    assert summary.effects("fine") == Effects()


def test_opaque_returns_may_write_anything(tmp_path: Path) -> None:
    """A returned outcome built elsewhere, or ** unpacking, may write any value."""
    function = load(
        tmp_path,
        "def helper(ctx):\n"
        '    return Outcome("a")\n\n\n'
        '@decision(outcomes=["a", "b"])\n'
        "def judge(ctx):\n"
        '    if ctx.facts.get("x"):\n'
        "        return helper(ctx)\n"
        '    return Outcome("b", facts={**{"k": 1}})\n',
    )
    summary = summarize(function)
    assert summary.effects("a").writes is None
    assert summary.effects("b").writes is None
    assert summary.effects("a").clears is None


def test_declared_sets_count_as_certain(tmp_path: Path) -> None:
    """@decision(sets=...) is added to what the source shows."""
    function = load(
        tmp_path,
        '@decision(outcomes=["a", "b"], sets={"a": ["total"]})\n'
        "def judge(ctx):\n"
        "    return helper(ctx)\n",
    )
    summary = summarize(function)
    assert summary.effects("a").sets == frozenset({"total"})
    assert summary.effects("b").sets == frozenset()
    assert summary.declared == {"a": ("total",)}


def test_decision_rejects_sets_of_undeclared_outcomes() -> None:
    """Declaring sets for an outcome the function does not have fails at decoration."""
    with pytest.raises(ValueError, match="'c'"):
        decision(outcomes=["a", "b"], sets={"c": ["x"]})
    with pytest.raises(TypeError, match="list of names"):
        decision(outcomes=["a"], sets={"a": "total"})  # type: ignore[dict-item]


def test_scan_finds_imports_and_calls_but_not_type_checking_ones(tmp_path: Path) -> None:
    """Imports anywhere in the module count, except under `if TYPE_CHECKING:`."""
    path = tmp_path / "scanned.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "import os, json\n"
        "if TYPE_CHECKING:\n"
        "    import socket\n"
        "def f():\n"
        "    from urllib import request\n"
        "    eval('1')\n"
        "    return open('x')\n",
        encoding="utf-8",
    )
    scan = scan_module(path)
    assert scan is not None
    assert [(u.name, u.line) for u in scan.imports] == [
        ("typing", 1),
        ("os", 2),
        ("json", 2),
        ("urllib", 6),
    ]
    assert [(u.name, u.line, u.column) for u in scan.calls] == [("eval", 7, 5), ("open", 8, 12)]


# --- SOP055-SOP057 through sopagent check -------------------------------------------------------


def codes_of(path: Path) -> list[Problem]:
    """The decision-module findings of `sopagent check` on one policy."""
    report = check_paths([path])
    return [p for p in report.findings if p.code in ("SOP055", "SOP056", "SOP057")]


def test_sop055_import_outside_the_allowed_modules(write_policy: Writer) -> None:
    """Importing a module the policy does not allow is SOP055 at the import, in the module."""
    path = write_policy(decisions="import os\n" + MINI_DECISIONS)
    (problem,) = codes_of(path)
    assert (problem.code, problem.severity) == ("SOP055", "error")
    assert problem.location.file.endswith("decisions.py")
    assert (problem.location.line, problem.location.column) == (1, 1)
    assert "'os'" in problem.message
    assert check_paths([path]).exit_code() == 1


def test_sop055_passes_with_allow_imports(write_policy: Writer) -> None:
    """Listing the module under allow_imports clears it; standard in-process modules pass."""
    path = write_policy(
        policy=lambda t: t.replace(
            "decisions: [decisions.py]\n", "decisions: [decisions.py]\nallow_imports: [os.path]\n"
        ),
        decisions="import os.path\nimport decimal, json\n" + MINI_DECISIONS,
    )
    assert codes_of(path) == []
    # A parent module is not allowed by allowing one inside it.
    broader = write_policy(
        policy=lambda t: t.replace(
            "decisions: [decisions.py]\n", "decisions: [decisions.py]\nallow_imports: [os.path]\n"
        ),
        decisions="import os\n" + MINI_DECISIONS,
    )
    assert [p.code for p in codes_of(broader)] == ["SOP055"]


def test_sop055_dotted_decision_module_may_import_its_declared_peers(
    tmp_path: Path, write_policy: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package's decision module may import another declared module; others are reported."""
    package = tmp_path / f"pkg{next(_count)}"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "rules.py").write_text("LIMIT = 50\n", encoding="utf-8")
    (package / "helpers.py").write_text("X = 1\n", encoding="utf-8")
    (package / "main.py").write_text(
        "from . import helpers\nfrom . import rules\nfrom .rules import LIMIT\n" + MINI_DECISIONS,
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    name = package.name
    path = write_policy(
        policy=lambda t: t.replace(
            "decisions: [decisions.py]", f"decisions: [{name}.main, {name}.rules]"
        )
    )
    try:
        problems = codes_of(path)
    finally:
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[module]
    assert [(p.code, p.location.line) for p in problems] == [("SOP055", 1)]
    assert f"'{name}.helpers'" in problems[0].message


def test_sop056_code_run_by_name(write_policy: Writer) -> None:
    """exec, eval, compile and __import__ are SOP056 errors at the call."""
    path = write_policy(decisions=MINI_DECISIONS + "\n\nRULE = eval('50')\n")
    (problem,) = codes_of(path)
    assert (problem.code, problem.severity) == ("SOP056", "error")
    assert problem.location.line == MINI_DECISIONS.count("\n") + 3


def test_sop057_console_or_file_access(write_policy: Writer) -> None:
    """open, input and breakpoint are SOP057 warnings."""
    path = write_policy(decisions=MINI_DECISIONS + "\n\ndef _load():\n    return open('x')\n")
    (problem,) = codes_of(path)
    assert (problem.code, problem.severity) == ("SOP057", "warning")
    assert check_paths([path]).exit_code() == 0
    assert check_paths([path]).exit_code(strict=True) == 1


def test_sop056_passes_when_the_name_is_the_modules_own(write_policy: Writer) -> None:
    """A module-level function called `compile` is the module's own, not the builtin."""
    path = write_policy(
        decisions=MINI_DECISIONS + "\n\ndef compile(x):\n    return x\n\n\nVALUE = compile(1)\n"
    )
    assert codes_of(path) == []


# --- the run time holds functions to their declared sets ---------------------------------------


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("    return 'small'\n", True),
        ("    return Outcome('small', facts={'verdict': 'x'})\n", False),
    ],
)
def test_declared_sets_are_enforced_at_run_time(
    write_policy: Writer, body: str, error: bool
) -> None:
    """An outcome returned without a value it declares it sets takes the error route."""
    decisions = (
        "from sopagent import Outcome, decision\n\n\n"
        '@decision(outcomes=["small", "big"], sets={"small": ["verdict"]})\n'
        "def judge(ctx):\n" + body
    )
    agent = load_agent(
        write_policy(decisions=decisions), backend=ScriptedBackend(), audit=MemorySink()
    )
    session = agent.new_session()
    agent.start(session)
    turn = agent.respond(session, "my number is 7")
    if error:
        assert turn.response_ids == ("oops",)
        assert turn.error is not None
        assert "without a value for verdict" in turn.error
        assert session.state == "start"
    else:
        assert turn.error is None
        assert turn.response_ids == ("small", "bye")
        assert session.facts["verdict"] == "x"
