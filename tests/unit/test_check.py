"""The check step: every cross-reference error code, a failing policy and the passing one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import MINI_DECISIONS, REFUND_POLICY

from sopagent import PolicyError, compile_policy, load_catalog, load_policy
from sopagent._check import check_policy, resolve_decisions
from sopagent.errors import Problem
from sopagent.policy import content_hash

Writer = Callable[..., Path]


def line_of(text: str, needle: str) -> int:
    """Return the 1-based line of the only line containing ``needle``."""
    lines = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(lines) == 1, f"{needle!r} on lines {lines}"
    return lines[0]


def problems_of(path: Path) -> list[Problem]:
    """Every problem (errors and warnings) the check finds in the policy at ``path``."""
    policy = load_policy(path)
    catalog = load_catalog(path.parent / policy.catalog)
    functions, problems = resolve_decisions(policy)
    return sorted(problems + check_policy(policy, catalog, functions), key=Problem.sort_key)


def errors_of(path: Path) -> tuple[Problem, ...]:
    """The errors compile_policy raises for the policy at ``path`` (warnings ride along)."""
    with pytest.raises(PolicyError) as info:
        compile_policy(load_policy(path))
    assert any(p.severity == "error" for p in info.value.problems)
    return tuple(p for p in info.value.problems if p.severity == "error")


def codes(problems: tuple[Problem, ...] | list[Problem]) -> list[str]:
    return [p.code for p in problems]


def test_mini_policy_passes(write_policy: Writer) -> None:
    """The unmodified mini policy has no problems at all and compiles."""
    path = write_policy()
    assert problems_of(path) == []
    assert compile_policy(load_policy(path)).warnings == ()


def test_refund_example_passes() -> None:
    """The worked example has no errors and no warnings."""
    assert problems_of(REFUND_POLICY) == []


# --- SOP020 unknown state -------------------------------------------------------------------


def test_sop020_route_to_unknown_state(write_policy: Writer) -> None:
    """A route to an undeclared state is SOP020 at the route."""
    path = write_policy(policy=lambda t: t.replace("{to: judge, require", "{to: judg, require"))
    (problem,) = errors_of(path)
    assert problem.code == "SOP020"
    assert "'judg'" in problem.message
    assert problem.location.line == line_of(path.read_text(), "{to: judg,")


def test_sop020_unknown_initial_state(write_policy: Writer) -> None:
    """An initial state that is not declared is SOP020 at `initial`."""
    path = write_policy(
        policy=lambda t: t.replace("initial: start", "initial: begin").replace(
            "stop: done", "stop: start"
        )
    )
    problems = errors_of(path)
    assert codes(problems) == ["SOP020"]
    assert problems[0].location.line == line_of(path.read_text(), "initial: begin")


# --- SOP021 unknown intent ------------------------------------------------------------------


def test_sop021_unknown_intent_in_state(write_policy: Writer) -> None:
    """An `on` route for an undeclared intent is SOP021."""
    path = write_policy(
        policy=lambda t: t.replace("      greet: {say: welcome}", "      greeting: {say: welcome}")
    )
    (problem,) = errors_of(path)
    assert problem.code == "SOP021"
    assert problem.location.line == line_of(path.read_text(), "greeting: {say")
    # `greet` is now accepted nowhere, which is only a warning.
    assert codes(problems_of(path)) == ["SOP031", "SOP021"]


def test_sop021_unknown_global_intent(write_policy: Writer) -> None:
    """A global route for an undeclared intent is SOP021 too."""
    path = write_policy(
        policy=lambda t: t.replace("    stop: done", "    stop: done\n    quit: done")
    )
    (problem,) = errors_of(path)
    assert problem.code == "SOP021"
    assert problem.location.line == line_of(path.read_text(), "quit: done")


def test_out_of_scope_may_be_routed(write_policy: Writer) -> None:
    """The built-in `out_of_scope` intent may have a route without being declared."""
    path = write_policy(
        policy=lambda t: t.replace(
            "      greet: {say: welcome}",
            "      greet: {say: welcome}\n      out_of_scope: {say: sorry}",
        )
    )
    assert problems_of(path) == []


# --- SOP022 unknown response ----------------------------------------------------------------


def test_sop022_unknown_response(write_policy: Writer) -> None:
    """Saying a response the catalog lacks is SOP022 at that item."""
    path = write_policy(
        policy=lambda t: t.replace("      greet: {say: welcome}", "      greet: {say: welcom}")
    )
    (problem,) = errors_of(path)
    assert problem.code == "SOP022"
    assert "'welcom'" in problem.message
    assert problem.location.line == line_of(path.read_text(), "{say: welcom}")


def test_sop022_unknown_slot_ask_response(write_policy: Writer) -> None:
    """A slot's `ask` response must be in the catalog."""
    path = write_policy(policy=lambda t: t.replace("ask: ask_number", "ask: ask_numbr"))
    assert codes(errors_of(path)) == ["SOP022"]


# --- SOP023 unknown slot --------------------------------------------------------------------


def test_sop023_unknown_required_slot(write_policy: Writer) -> None:
    """Requiring an undeclared slot is SOP023."""
    path = write_policy(policy=lambda t: t.replace("require: [number]", "require: [numbr]"))
    (problem,) = errors_of(path)
    assert problem.code == "SOP023"
    assert problem.location.line == line_of(path.read_text(), "require: [numbr]")


def test_sop023_unknown_collected_slot(write_policy: Writer) -> None:
    """Collecting an undeclared slot is SOP023."""
    path = write_policy(
        policy=lambda t: t.replace("    say: welcome\n", "    say: welcome\n    collect: [size]\n")
    )
    assert codes(errors_of(path)) == ["SOP023"]


def test_sop023_name_both_slot_and_fact(write_policy: Writer) -> None:
    """A name declared both as a slot and as a fact is SOP023."""
    path = write_policy(
        policy=lambda t: t.replace(
            "  verdict: {type: string", "  number: {type: integer}\n  verdict: {type: string"
        )
    )
    (problem,) = errors_of(path)
    assert problem.code == "SOP023"
    assert "both as a slot and a fact" in problem.message


# --- SOP024 decision functions --------------------------------------------------------------


def test_sop024_unknown_decision_function(write_policy: Writer) -> None:
    """Deciding with a function the modules do not define is SOP024 at `decide`."""
    path = write_policy(policy=lambda t: t.replace("decide: judge", "decide: judge_it"))
    (problem,) = errors_of(path)
    assert problem.code == "SOP024"
    assert problem.location.line == line_of(path.read_text(), "decide: judge_it")


def test_sop024_function_without_decorator(write_policy: Writer) -> None:
    """A plain function of the right name is not usable: it lacks @decision."""
    path = write_policy(decisions="def judge(ctx):\n    return 'small'\n")
    assert codes(errors_of(path)) == ["SOP024"]


def test_sop024_function_imported_from_elsewhere(write_policy: Writer) -> None:
    """A @decision function imported into a declared module from another one is not usable."""
    loader = (
        "import importlib.util\n"
        "import pathlib\n"
        "_spec = importlib.util.spec_from_file_location(\n"
        "    'mini_other_module', pathlib.Path(__file__).with_name('other.py')\n"
        ")\n"
        "_module = importlib.util.module_from_spec(_spec)\n"
        "_spec.loader.exec_module(_module)\n"
        "judge = _module.judge\n"
    )
    path = write_policy(decisions=loader, files={"other.py": MINI_DECISIONS})
    (problem,) = errors_of(path)
    assert problem.code == "SOP024"
    # The same function is fine when its own module is declared.
    declared = write_policy(
        policy=lambda t: t.replace("decisions: [decisions.py]", "decisions: [other.py]"),
        decisions=loader,
        files={"other.py": MINI_DECISIONS},
    )
    assert problems_of(declared) == []


# --- SOP025 / SOP026 outcomes ---------------------------------------------------------------


def test_sop025_outcome_not_routed(write_policy: Writer) -> None:
    """An outcome the function declares but the state does not route is SOP025."""
    path = write_policy(
        decisions=lambda t: t.replace('["small", "big"]', '["small", "big", "huge"]')
    )
    (problem,) = errors_of(path)
    assert problem.code == "SOP025"
    assert "'huge'" in problem.message
    assert problem.location.line == line_of(path.read_text(), "small: {to: done")


def test_sop026_route_for_undeclared_outcome(write_policy: Writer) -> None:
    """Routing an outcome the function never returns is SOP026 at that outcome."""
    path = write_policy(
        policy=lambda t: t.replace(
            "      big: {to: done, say: big}", "      big: {to: done, say: big}\n      medium: done"
        )
    )
    (problem,) = errors_of(path)
    assert problem.code == "SOP026"
    assert "'medium'" in problem.message
    assert problem.location.line == line_of(path.read_text(), "medium: done")


# --- SOP027 placeholders --------------------------------------------------------------------


def test_sop027_placeholder_not_a_slot_or_fact(write_policy: Writer) -> None:
    """A said response whose placeholder names no slot or fact is SOP027 in the catalog."""
    path = write_policy(catalog=lambda t: t.replace('"{number} is small."', '"{numbr} is small."'))
    (problem,) = errors_of(path)
    assert problem.code == "SOP027"
    catalog = path.with_name("catalog.yaml")
    assert problem.location.file == str(catalog)
    assert problem.location.line == line_of(catalog.read_text(), "{numbr}")


def test_sop027_reported_once_per_response(write_policy: Writer) -> None:
    """A bad placeholder is one problem even when the response is said in several places."""
    path = write_policy(
        policy=lambda t: t.replace(
            "      greet: {say: welcome}", "      greet: {say: small}"
        ).replace("  fallback: {say: sorry}", "  fallback: {say: small}"),
        catalog=lambda t: t.replace('"{number} is small."', '"{numbr} is small."'),
    )
    assert codes(errors_of(path)) == ["SOP027"]


def test_sop027_error_response_with_placeholder(write_policy: Writer) -> None:
    """The error route may only say plain responses: no placeholders."""
    path = write_policy(policy=lambda t: t.replace("  error: {say: oops}", "  error: {say: small}"))
    (problem,) = errors_of(path)
    assert problem.code == "SOP027"
    assert "said on errors" in problem.message
    assert problem.location.line == line_of(path.read_text(), "error: {say: small}")


# --- SOP028 decision modules ----------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    ["raise RuntimeError('boom')\n", "def broken(:\n", "import no_such_module_for_sopagent\n"],
)
def test_sop028_module_fails_to_import(write_policy: Writer, source: str) -> None:
    """A decision module that raises or does not parse is SOP028 at its entry."""
    path = write_policy(decisions=source)
    problems = errors_of(path)
    # The missing function follows from the failed import.
    assert codes(problems) == ["SOP028", "SOP024"]
    assert problems[0].location.line == line_of(path.read_text(), "decisions: [decisions.py]")


def test_sop028_missing_module_file(write_policy: Writer) -> None:
    """A decision module path that does not exist is SOP028."""
    path = write_policy(
        policy=lambda t: t.replace("decisions: [decisions.py]", "decisions: [nope.py]")
    )
    assert "SOP028" in codes(errors_of(path))


def test_sop028_function_defined_in_two_modules(write_policy: Writer) -> None:
    """Two declared modules defining the same decision function is SOP028."""
    path = write_policy(
        policy=lambda t: t.replace(
            "decisions: [decisions.py]", "decisions: [decisions.py, other.py]"
        ),
        files={"other.py": MINI_DECISIONS},
    )
    (problem,) = errors_of(path)
    assert problem.code == "SOP028"
    assert "'judge'" in problem.message


# --- SOP029 structure -----------------------------------------------------------------------


def test_sop029_error_route_with_target(write_policy: Writer) -> None:
    """The error route keeps the session in place, so `to` is SOP029."""
    path = write_policy(
        policy=lambda t: t.replace("  error: {say: oops}", "  error: {say: oops, to: done}")
    )
    (problem,) = errors_of(path)
    assert problem.code == "SOP029"


def test_sop029_outcome_without_target(write_policy: Writer) -> None:
    """An outcome route must lead to a state."""
    path = write_policy(policy=lambda t: t.replace("big: {to: done, say: big}", "big: {say: big}"))
    (problem,) = errors_of(path)
    assert problem.code == "SOP029"
    assert problem.location.line == line_of(path.read_text(), "big: {say: big}")


def test_sop029_filled_without_collect(write_policy: Writer) -> None:
    """`filled` needs slots to collect."""
    path = write_policy(
        policy=lambda t: t.replace("    say: welcome\n", "    say: welcome\n    filled: judge\n")
    )
    assert codes(errors_of(path)) == ["SOP029"]


def test_sop029_waiting_state_without_way_out(write_policy: Writer) -> None:
    """A waiting state with no routes and no global intents is a dead end."""
    path = write_policy(
        policy=lambda t: t.replace(
            "  done:\n    say: bye\n    terminal: true\n",
            "  done:\n    say: bye\n    globals: false\n",
        )
    )
    (problem,) = errors_of(path)
    assert problem.code == "SOP029"
    assert "no way out" in problem.message


# --- warnings -------------------------------------------------------------------------------


def test_sop030_unreachable_state_is_a_warning(write_policy: Writer) -> None:
    """A state nothing leads to is a SOP030 warning; the policy still compiles."""
    path = write_policy(policy=lambda t: t + "  limbo:\n    say: bye\n    terminal: true\n")
    (problem,) = problems_of(path)
    assert (problem.code, problem.severity) == ("SOP030", "warning")
    assert (problem.location.line, problem.location.column) == (
        line_of(path.read_text(), "  limbo:"),
        3,
    )
    compiled = compile_policy(load_policy(path))
    assert codes(compiled.warnings) == ["SOP030"]


def test_sop031_unused_intent_is_a_warning(write_policy: Writer) -> None:
    """An intent no state accepts is a SOP031 warning; the policy still compiles."""
    path = write_policy(
        policy=lambda t: t.replace("  stop:\n", "  thanks:\n    description: Thanks.\n  stop:\n")
    )
    (problem,) = problems_of(path)
    assert (problem.code, problem.severity) == ("SOP031", "warning")
    assert "'thanks'" in problem.message
    assert codes(compile_policy(load_policy(path)).warnings) == ["SOP031"]


def test_sop032_changed_approved_text_is_a_warning(write_policy: Writer) -> None:
    """A response whose text no longer matches its approved hash is a SOP032 warning."""
    stale = content_hash("Bye!")
    path = write_policy(
        catalog=lambda t: t.replace("  bye: Bye.", f"  bye: {{text: Bye., approved: '{stale}'}}")
    )
    (problem,) = problems_of(path)
    assert (problem.code, problem.severity) == ("SOP032", "warning")
    assert problem.location.file == str(path.with_name("catalog.yaml"))
    assert codes(compile_policy(load_policy(path)).warnings) == ["SOP032"]


def test_sop032_matching_hash_is_silent(write_policy: Writer) -> None:
    """A response approved with its current text's hash gives no warning."""
    fresh = content_hash("Bye.")
    path = write_policy(
        catalog=lambda t: t.replace("  bye: Bye.", f"  bye: {{text: Bye., approved: '{fresh}'}}")
    )
    assert problems_of(path) == []


def test_compile_raises_for_errors_with_every_error(write_policy: Writer) -> None:
    """compile_policy raises one PolicyError listing all errors, sorted, without warnings."""

    def break_it(text: str) -> str:
        text = text.replace("{to: judge, require", "{to: judg, require")
        text = text.replace("      greet: {say: welcome}", "      greet: {say: welcom}")
        return text + "  limbo:\n    say: bye\n    terminal: true\n"

    path = write_policy(policy=break_it)
    problems = errors_of(path)
    assert codes(problems) == ["SOP022", "SOP020"]
    assert list(problems) == sorted(problems, key=Problem.sort_key)
    # judge is unreachable through the broken route; limbo through nothing.
    warnings = [p for p in problems_of(path) if p.severity == "warning"]
    assert [(p.code, p.message) for p in warnings] == [
        ("SOP030", "state 'judge' is unreachable"),
        ("SOP030", "state 'limbo' is unreachable"),
    ]


# --- the last check is remembered -----------------------------------------------------------


def test_compile_after_a_check_of_the_same_objects_checks_once(
    write_policy: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sopagent check` then compile: the second check of the same frozen objects is reused."""
    import sopagent._check as checking  # noqa: PLC0415

    runs: list[int] = []
    real = checking._Checker.run

    def counted(self: checking._Checker) -> list[Problem]:
        runs.append(1)
        return real(self)

    monkeypatch.setattr(checking._Checker, "run", counted)
    wave = "  wave:\n    description: The user waves.\n    examples: [wave]\nslots:\n"
    path = write_policy(policy=lambda text: text.replace("slots:\n", wave, 1))
    policy = load_policy(path)
    catalog = load_catalog(path.parent / policy.catalog)
    functions, _ = resolve_decisions(policy)
    first = check_policy(policy, catalog, functions)
    assert runs == [1]
    assert first == problems_of(path)  # new objects from the same files: checked again
    assert runs == [1, 1]
    first.clear()  # the caller's list is its own
    again = check_policy(policy, catalog, functions)
    assert runs == [1, 1, 1]  # only the last check is kept
    assert again == problems_of(path)
    compile_policy(load_policy(path))
    assert runs == [1, 1, 1, 1, 1]
    policy = load_policy(path)
    catalog = load_catalog(path.parent / policy.catalog)
    check_policy(policy, catalog, resolve_decisions(policy)[0])
    compiled = compile_policy(policy, catalog)
    assert runs == [1, 1, 1, 1, 1, 1]  # compile reused the check of the same objects
    assert codes(list(compiled.warnings)) == codes(again) == ["SOP031"]


def test_other_objects_are_checked_afresh(write_policy: Writer) -> None:
    """A copy with a change, another catalog or other functions is never given old problems."""
    path = write_policy()
    policy = load_policy(path)
    catalog = load_catalog(path.parent / policy.catalog)
    functions, _ = resolve_decisions(policy)
    assert check_policy(policy, catalog, functions) == []
    broken = policy.model_copy(update={"initial": "nowhere"})
    assert "SOP020" in codes(check_policy(broken, catalog, functions))
    assert check_policy(policy, catalog, functions) == []
    assert "SOP024" in codes(check_policy(policy, catalog, {}))
    empty = catalog.model_copy(update={"responses": {}})
    assert check_policy(policy, empty, functions) != []
