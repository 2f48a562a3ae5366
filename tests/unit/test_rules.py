"""The graph, data and routing rules of `sopagent check`: a failing and a passing policy each."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import MINI_DECISIONS, MINI_POLICY, REFUND_POLICY

from sopagent._analysis import check_paths
from sopagent.errors import Problem

Writer = Callable[..., Path]

ROOT = Path(__file__).resolve().parents[2]


def line_of(text: str, needle: str) -> int:
    """Return the 1-based line of the only line containing ``needle``."""
    lines = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(lines) == 1, f"{needle!r} on lines {lines}"
    return lines[0]


def findings(path: Path, *codes: str) -> list[Problem]:
    """The findings of `sopagent check` on one policy, only of ``codes`` when given."""
    report = check_paths([path])
    assert not report.failed_to_load, report.findings
    return [p for p in report.findings if not codes or p.code in codes]


def edit(*pairs: tuple[str, str]) -> Callable[[str], str]:
    """An editor of the mini policy replacing each ``old`` (which must be there) by ``new``."""

    def apply(text: str) -> str:
        for old, new in pairs:
            assert old in text, old
            text = text.replace(old, new, 1)
        return text

    return apply


START_ROUTES = "      greet: {say: welcome}\n      give_number: {to: judge, require: [number]}\n"


def with_states(extra: str, *pairs: tuple[str, str]) -> Callable[[str], str]:
    """Edit the mini policy and append ``extra`` states at the end."""
    editor = edit(*pairs)
    return lambda text: editor(text) + extra


def test_shipped_policies_are_clean() -> None:
    """Both shipped policies pass every rule, warnings included."""
    report = check_paths([REFUND_POLICY, ROOT / "policies" / "merchant_npc.yaml"])
    assert [str(p) for p in report.findings] == []
    assert report.exit_code(strict=True) == 0


def test_mini_policy_is_clean(write_policy: Writer) -> None:
    """The mini policy every test edits passes every rule."""
    assert findings(write_policy()) == []


# --- SOP040 dead ends -------------------------------------------------------------------------

LIMBO = "  limbo:\n    say: welcome\n    globals: false\n    on:\n      greet: {say: welcome}\n"


def test_sop040_state_whose_routes_all_stay(write_policy: Writer) -> None:
    """A waiting state whose every route stays where it is is a dead end (SOP040, error)."""
    path = write_policy(
        policy=with_states(LIMBO, ("greet: {say: welcome}", "greet: {to: limbo, say: welcome}"))
    )
    (problem,) = findings(path, "SOP040", "SOP041")
    assert (problem.code, problem.severity) == ("SOP040", "error")
    assert problem.location.line == line_of(path.read_text(), "  limbo:")
    assert check_paths([path]).exit_code() == 1


def test_sop040_passes_with_a_way_out(write_policy: Writer) -> None:
    """The same state with one route to another state is no dead end."""
    path = write_policy(
        policy=with_states(
            LIMBO + "      stop: done\n",
            ("greet: {say: welcome}", "greet: {to: limbo, say: welcome}"),
        )
    )
    assert findings(path) == []


# --- SOP041 no way to end ----------------------------------------------------------------------

LOOP = (
    "  loop_a:\n    say: welcome\n    globals: false\n    on:\n      greet: loop_b\n"
    "  loop_b:\n    say: sorry\n    globals: false\n    on:\n      greet: loop_a\n"
)


def test_sop041_group_of_states_that_never_ends(write_policy: Writer) -> None:
    """States that only lead among themselves are reported once, at the way into them."""
    path = write_policy(
        policy=with_states(LOOP, ("greet: {say: welcome}", "greet: {to: loop_a, say: welcome}"))
    )
    (problem,) = findings(path, "SOP041")
    assert problem.severity == "warning"
    assert "'loop_a'" in problem.message
    assert "'loop_b'" in problem.message
    assert problem.location.line == line_of(path.read_text(), "  loop_a:")


def test_sop041_passes_when_one_state_of_the_group_can_end(write_policy: Writer) -> None:
    """A route from the group to a terminal state clears it."""
    path = write_policy(
        policy=with_states(
            LOOP + "      stop: done\n",
            ("greet: {say: welcome}", "greet: {to: loop_a, say: welcome}"),
        )
    )
    assert findings(path, "SOP041") == []


def test_sop041_policy_without_terminal_state(write_policy: Writer) -> None:
    """A policy without any terminal state is reported once, at `states`."""
    path = write_policy(
        policy=edit(
            ("    say: bye\n    terminal: true\n", "    say: bye\n    on:\n      greet: start\n")
        )
    )
    (problem,) = findings(path, "SOP041")
    assert "no state is terminal" in problem.message
    assert problem.location.line == line_of(path.read_text(), "states:")


# --- SOP042 decision loops ---------------------------------------------------------------------


def test_sop042_decision_routing_back_to_itself(write_policy: Writer) -> None:
    """A deciding state whose outcome leads back to it can loop without waiting (SOP042)."""
    path = write_policy(
        policy=edit(("small: {to: done, say: small}", "small: {to: judge, say: small}"))
    )
    (problem,) = findings(path, "SOP042")
    assert "'judge' can route back to itself" in problem.message
    assert problem.location.line == line_of(path.read_text(), "  judge:")


def test_sop042_cycle_of_two_deciding_states(write_policy: Writer) -> None:
    """Two deciding states routing to each other are one finding naming both."""
    again = (
        "  judge_again:\n    decide: judge\n    outcomes:\n      small: judge\n      big: done\n"
    )
    path = write_policy(
        policy=with_states(again, ("small: {to: done, say: small}", "small: {to: judge_again}"))
    )
    (problem,) = findings(path, "SOP042")
    assert "'judge'" in problem.message
    assert "'judge_again'" in problem.message


def test_sop042_filled_leading_back_to_its_state(write_policy: Writer) -> None:
    """`filled` that re-enters its own state moves on again at once, round and round."""
    ask = "  ask:\n    say: welcome\n    collect: [number]\n    filled: ask\n"
    path = write_policy(policy=with_states(ask, ("greet: {say: welcome}", "greet: ask")))
    (problem,) = findings(path, "SOP042")
    assert "'ask' can route back to itself" in problem.message
    assert problem.location.line == line_of(path.read_text(), "  ask:")


ASK_AGAIN = "  ask:\n    say: ask_number\n    collect: [number]\n    filled: judge\n"


def test_sop042_waiting_state_whose_slot_stays_filled(write_policy: Writer) -> None:
    """A decision sending the turn back to a state whose slot is still filled loops."""
    path = write_policy(
        policy=with_states(
            ASK_AGAIN,
            ("greet: {say: welcome}", "greet: ask"),
            ("small: {to: done, say: small}", "small: {to: ask, say: small}"),
        )
    )
    (problem,) = findings(path, "SOP042")
    assert "'ask'" in problem.message
    assert "'judge'" in problem.message


def test_sop042_passes_when_the_decision_clears_the_slot(write_policy: Writer) -> None:
    """The same cycle is no loop once the decision clears the slot: the state waits again."""
    path = write_policy(
        policy=with_states(
            ASK_AGAIN,
            ("greet: {say: welcome}", "greet: ask"),
            ("small: {to: done, say: small}", "small: {to: ask, say: bye}"),
        ),
        decisions=MINI_DECISIONS.replace(
            'return "small"', 'return Outcome("small", slots={"number": None})'
        ),
    )
    assert findings(path, "SOP042") == []


def test_sop042_passes_for_the_mini_decision(write_policy: Writer) -> None:
    """A decision whose outcomes lead on is no loop."""
    assert findings(write_policy(), "SOP042") == []


# --- SOP043 intents accepted nowhere -----------------------------------------------------------

THANKS = "  thanks:\n    description: The user says thanks.\n  stop:\n"


def test_sop043_intent_routed_only_in_an_unreachable_state(write_policy: Writer) -> None:
    """An intent whose only route is in an unreachable state is SOP043 at the intent."""
    limbo = "  limbo:\n    say: bye\n    on:\n      thanks: done\n"
    path = write_policy(policy=with_states(limbo, ("  stop:\n", THANKS)))
    problems = findings(path, "SOP043", "SOP030", "SOP031")
    assert [p.code for p in problems] == ["SOP043", "SOP030"]
    assert problems[0].location.line == path.read_text().splitlines().index("  thanks:") + 1


def test_sop043_global_intent_every_state_turns_off(write_policy: Writer) -> None:
    """A global route no reachable waiting state takes (globals: false) is SOP043."""
    path = write_policy(
        policy=edit(
            ("    say: welcome\n    on:\n", "    say: welcome\n    globals: false\n    on:\n")
        )
    )
    (problem,) = findings(path, "SOP043")
    assert "'stop'" in problem.message


def test_sop043_passes_when_a_reachable_state_routes_it(write_policy: Writer) -> None:
    """Routing the intent in the initial state clears it."""
    path = write_policy(
        policy=edit(
            ("  stop:\n", THANKS),
            (
                "      greet: {say: welcome}\n",
                "      greet: {say: welcome}\n      thanks: {say: welcome}\n",
            ),
        )
    )
    assert findings(path, "SOP043", "SOP031") == []


# --- SOP044 silence ----------------------------------------------------------------------------


def test_sop044_route_that_says_nothing_and_stays(write_policy: Writer) -> None:
    """A route with no line and no target answers with silence (SOP044 at the route)."""
    path = write_policy(policy=edit(("greet: {say: welcome}", "greet: {}")))
    (problem,) = findings(path, "SOP044")
    assert "intent 'greet'" in problem.message
    assert "stays" in problem.message
    assert problem.location.line == line_of(path.read_text(), "greet: {}")


def test_sop044_route_to_a_state_that_says_nothing(write_policy: Writer) -> None:
    """A silent route into a state with no lines of its own is silence too."""
    quiet = "  quiet:\n    on:\n      greet: start\n"
    path = write_policy(policy=with_states(quiet, ("greet: {say: welcome}", "greet: quiet")))
    (problem,) = findings(path, "SOP044")
    assert "neither does 'quiet'" in problem.message


def test_sop044_passes_when_the_route_into_a_quiet_state_speaks(write_policy: Writer) -> None:
    """A state without lines is fine when every route into it says something."""
    quiet = "  quiet:\n    on:\n      greet: {to: start, say: welcome}\n"
    path = write_policy(
        policy=with_states(quiet, ("greet: {say: welcome}", "greet: {to: quiet, say: sorry}"))
    )
    assert findings(path, "SOP044") == []


def test_sop044_error_route_without_lines(write_policy: Writer) -> None:
    """An error route that says nothing is reported at the error route."""
    path = write_policy(policy=edit(("  error: {say: oops}", "  error: {}")))
    problems = findings(path, "SOP044")
    assert [p.location.line for p in problems] == [line_of(path.read_text(), "error: {}")]


# --- SOP045 / SOP046 responses -----------------------------------------------------------------


def test_sop045_response_no_policy_names(write_policy: Writer) -> None:
    """A catalog response nothing refers to is SOP045 at the catalog entry."""
    path = write_policy(catalog=lambda t: t + "  extra: Never said.\n")
    (problem,) = findings(path, "SOP045")
    catalog = path.with_name("catalog.yaml")
    assert problem.location.line == line_of(catalog.read_text(), "extra:")
    assert problem.severity == "warning"


def test_sop045_counts_every_policy_checked_with_the_catalog(write_policy: Writer) -> None:
    """A response one policy uses is not unused because another policy sharing it does not."""
    first = write_policy(catalog=lambda t: t + "  extra: Said by the second one.\n")
    second = first.with_name("second.yaml")
    second.write_text(
        MINI_POLICY.replace("name: mini", "name: second").replace(
            "greet: {say: welcome}", "greet: {say: extra}"
        ),
        encoding="utf-8",
    )
    assert [p.code for p in check_paths([first]).findings] == ["SOP045"]
    assert check_paths([first, second]).findings == []


def test_sop046_response_only_named_in_an_unreachable_state(write_policy: Writer) -> None:
    """A response named only where no conversation gets is SOP046, not SOP045."""
    path = write_policy(
        policy=lambda t: t + "  limbo:\n    say: extra\n    terminal: true\n",
        catalog=lambda t: t + "  extra: Never reached.\n",
    )
    assert sorted(p.code for p in findings(path)) == ["SOP030", "SOP046"]


def test_sop046_passes_once_the_state_is_reached(write_policy: Writer) -> None:
    """The same response is fine once a route leads to its state."""
    path = write_policy(
        policy=with_states(
            "  limbo:\n    say: extra\n    terminal: true\n",
            ("greet: {say: welcome}", "greet: {to: limbo, say: welcome}"),
        ),
        catalog=lambda t: t + "  extra: Now reached.\n",
    )
    assert findings(path) == []


# --- SOP047 / SOP048 placeholders --------------------------------------------------------------


def test_sop047_placeholder_not_certainly_set(write_policy: Writer) -> None:
    """A line needing a slot the path may not have collected is SOP047 at the line."""
    path = write_policy(policy=edit(("greet: {say: welcome}", "greet: {say: small}")))
    (problem,) = findings(path, "SOP047")
    assert problem.severity == "error"
    assert "{number}" in problem.message
    assert problem.location.line == line_of(path.read_text(), "greet: {say: small}")


def test_sop047_passes_with_require(write_policy: Writer) -> None:
    """Requiring the slot on the route makes it certain."""
    path = write_policy(
        policy=edit(("greet: {say: welcome}", "greet: {say: small, require: [number]}"))
    )
    assert findings(path, "SOP047", "SOP048") == []


VERDICT_LINE = '  verdict_line: "Verdict: {verdict}."\n'


def test_sop047_fact_set_on_one_outcome_only(write_policy: Writer) -> None:
    """A fact the decision sets with a constant on 'big' only is missing after 'small'."""
    path = write_policy(
        policy=edit(
            ("small: {to: done, say: small}", "small: {to: done, say: verdict_line}"),
            ("big: {to: done, say: big}", "big: {to: done, say: [big, verdict_line]}"),
        ),
        catalog=lambda t: t + VERDICT_LINE,
    )
    (problem,) = findings(path, "SOP047")
    assert problem.location.line == line_of(path.read_text(), "say: verdict_line}")
    assert "facts the host passes in are never certain" in problem.message


def test_sop047_passes_when_the_decision_declares_it_sets(write_policy: Writer) -> None:
    """@decision(sets=...) makes the fact certain after the outcome."""
    decisions = MINI_DECISIONS.replace(
        '@decision(outcomes=["small", "big"])',
        '@decision(outcomes=["small", "big"], sets={"small": ["verdict"]})',
    ).replace('return "small"', 'return Outcome("small", facts={"verdict": ctx.slots["x"]})')
    path = write_policy(
        policy=edit(("small: {to: done, say: small}", "small: {to: done, say: verdict_line}")),
        catalog=lambda t: t + VERDICT_LINE,
        decisions=decisions,
    )
    assert findings(path, "SOP047") == []


def test_sop047_value_cleared_later_in_the_turn(write_policy: Writer) -> None:
    """Lines render when the turn stops: a decision after the line may clear its value."""
    decisions = MINI_DECISIONS.replace(
        'return "small"', 'return Outcome("small", slots={"number": None})'
    )
    path = write_policy(
        policy=edit(
            (
                "give_number: {to: judge, require: [number]}",
                "give_number: {to: judge, require: [number], say: small}",
            ),
            ("small: {to: done, say: small}", "small: {to: done, say: bye}"),
        ),
        decisions=decisions,
    )
    (problem,) = findings(path, "SOP047")
    assert "judge may clear it later in the turn" in problem.message


def test_sop048_slot_no_state_collects(write_policy: Writer) -> None:
    """A placeholder of a slot nothing collects is SOP048: it can never have a value."""
    path = write_policy(
        policy=edit(
            ("  number: {type: integer", "  code: {type: string}\n  number: {type: integer"),
            ("greet: {say: welcome}", "greet: {say: code_line}"),
        ),
        catalog=lambda t: t + '  code_line: "Your code is {code}."\n',
    )
    (problem,) = findings(path, "SOP047", "SOP048")
    assert (problem.code, problem.severity) == ("SOP048", "error")


def test_sop048_passes_once_the_slot_is_required(write_policy: Writer) -> None:
    """Requiring the slot on the route clears both placeholder rules."""
    path = write_policy(
        policy=edit(
            ("  number: {type: integer", "  code: {type: string}\n  number: {type: integer"),
            ("greet: {say: welcome}", "greet: {say: code_line, require: [code]}"),
        ),
        catalog=lambda t: t + '  code_line: "Your code is {code}."\n',
    )
    assert findings(path, "SOP047", "SOP048") == []


def test_sop048_decision_reads_a_slot_nothing_collects(write_policy: Writer) -> None:
    """A decision reading ctx.slots[...] of a slot nothing collects is SOP048 at `decide`."""
    path = write_policy(
        policy=edit(
            ("  number: {type: integer", "  code: {type: string}\n  number: {type: integer")
        ),
        decisions=MINI_DECISIONS.replace('ctx.slots["number"]', 'ctx.slots["code"]'),
    )
    (problem,) = findings(path, "SOP048")
    assert "ctx.slots['code']" in problem.message
    assert problem.location.line == line_of(path.read_text(), "decide: judge")


# --- SOP049 decision reads ---------------------------------------------------------------------


def test_sop049_decision_reads_a_slot_that_may_be_missing(write_policy: Writer) -> None:
    """A route into the decision without the slot makes its subscript read fail (SOP049)."""
    path = write_policy(policy=edit(("greet: {say: welcome}", "greet: judge")))
    (problem,) = findings(path, "SOP049")
    assert problem.severity == "warning"
    assert "ctx.slots['number']" in problem.message
    assert "decisions.py:6" in problem.message


def test_sop049_passes_when_the_read_uses_get(write_policy: Writer) -> None:
    """Reading with .get is safe, so nothing is reported."""
    decisions = MINI_DECISIONS.replace(
        'ctx.slots["number"] < 50', 'ctx.slots.get("number", 0) < 50'
    )
    path = write_policy(policy=edit(("greet: {say: welcome}", "greet: judge")), decisions=decisions)
    assert findings(path, "SOP049") == []


def test_sop049_follows_a_helper_given_ctx(write_policy: Writer) -> None:
    """A read inside a module-level helper the function passes ctx to counts too."""
    decisions = MINI_DECISIONS.replace(
        "@decision", "def _number(context):\n    return context.slots['number']\n\n\n@decision"
    ).replace('ctx.slots["number"]', "_number(ctx)")
    path = write_policy(policy=edit(("greet: {say: welcome}", "greet: judge")), decisions=decisions)
    (problem,) = findings(path, "SOP049")
    assert "decisions.py:5" in problem.message


# --- SOP050 promises of unknown values ---------------------------------------------------------


def test_sop050_sets_names_an_undeclared_fact(write_policy: Writer) -> None:
    """@decision(sets=...) naming no slot or fact of the policy is SOP050 at `decide`."""
    decisions = MINI_DECISIONS.replace(
        '@decision(outcomes=["small", "big"])',
        '@decision(outcomes=["small", "big"], sets={"big": ["verdit"]})',
    )
    path = write_policy(decisions=decisions)
    (problem,) = findings(path, "SOP050")
    assert "'verdit'" in problem.message
    assert problem.location.line == line_of(path.read_text(), "decide: judge")


def test_sop050_passes_for_a_declared_fact(write_policy: Writer) -> None:
    """The same declaration with the fact's right name is fine."""
    decisions = MINI_DECISIONS.replace(
        '@decision(outcomes=["small", "big"])',
        '@decision(outcomes=["small", "big"], sets={"big": ["verdict"]})',
    )
    assert findings(write_policy(decisions=decisions)) == []


# --- SOP051 routes competing for slot values ---------------------------------------------------


def test_sop051_two_routes_require_the_same_slot(write_policy: Writer) -> None:
    """A number-only message takes the first route requiring it; the second one never."""
    path = write_policy(
        policy=edit(("greet: {say: welcome}", "greet: {say: welcome, require: [number]}"))
    )
    (problem,) = findings(path, "SOP051")
    assert "'greet', declared first" in problem.message
    assert problem.location.line == line_of(path.read_text(), "give_number: {to: judge")


def test_sop051_passes_when_both_routes_lead_to_the_same_place(write_policy: Writer) -> None:
    """Competing routes with the same effect are not ambiguous."""
    path = write_policy(
        policy=edit(("greet: {say: welcome}", "greet: {to: judge, require: [number]}"))
    )
    assert findings(path, "SOP051") == []


ASK = "  ask:\n    say: ask_number\n    collect: [number]\n    filled: judge\n    on:\n"


def test_sop051_route_requiring_the_slot_shadows_filled(write_policy: Writer) -> None:
    """A route requiring a collected slot takes slot-only messages before `filled` does."""
    path = write_policy(
        policy=with_states(
            ASK + "      greet: {say: welcome, require: [number]}\n",
            ("greet: {say: welcome}", "greet: {to: ask, say: welcome}"),
        )
    )
    (problem,) = findings(path, "SOP051")
    assert "instead of 'filled'" in problem.message
    assert problem.location.line == line_of(path.read_text(), "filled: judge")


def test_sop051_passes_when_route_and_filled_agree(write_policy: Writer) -> None:
    """A requiring route that leads where `filled` leads shadows nothing."""
    path = write_policy(
        policy=with_states(
            ASK + "      greet: {to: judge, require: [number]}\n",
            ("greet: {say: welcome}", "greet: {to: ask, say: welcome}"),
        )
    )
    assert findings(path, "SOP051") == []


def test_sop051_state_override_of_a_global_route_is_not_reported(write_policy: Writer) -> None:
    """Overriding a global route in a state is the documented rule, not an ambiguity."""
    path = write_policy(
        policy=edit(
            (
                "      greet: {say: welcome}\n",
                "      greet: {say: welcome}\n      stop: {say: bye}\n",
            )
        )
    )
    assert findings(path, "SOP051") == []


# --- SOP052 examples of two intents ------------------------------------------------------------


def test_sop052_example_written_for_two_intents(write_policy: Writer) -> None:
    """The same example under two accepted intents always means the later one."""
    path = write_policy(policy=edit(("examples: [stop]", "examples: [stop, Hello!]")))
    (problem,) = findings(path, "SOP052")
    assert "always means 'stop'" in problem.message
    assert problem.location.line == line_of(path.read_text(), "examples: [hello]")


def test_sop052_clash_with_built_in_out_of_scope_example(write_policy: Writer) -> None:
    """An intent example that is a built-in out_of_scope example is reported at the intent."""
    path = write_policy(policy=edit(("examples: [hello]", "examples: [hello, tell me a joke]")))
    (problem,) = findings(path, "SOP052")
    assert "built-in out_of_scope examples" in problem.message


def test_sop052_passes_with_distinct_examples(write_policy: Writer) -> None:
    """Distinct examples are not reported."""
    path = write_policy(policy=edit(("examples: [stop]", "examples: [stop, goodbye]")))
    assert findings(path, "SOP052") == []


# --- SOP053 keys without effect ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("    decide: judge\n", "    decide: judge\n    say: welcome  # no effect\n"),
        ("    terminal: true\n", "    terminal: true\n    fallback: {say: sorry}  # no effect\n"),
        ("    decide: judge\n", "    decide: judge\n    globals: false  # no effect\n"),
    ],
)
def test_sop053_key_without_effect(write_policy: Writer, old: str, new: str) -> None:
    """Lines of a deciding state and waiting-only keys on other states have no effect."""
    path = write_policy(policy=edit((old, new)))
    (problem,) = findings(path, "SOP053")
    assert problem.location.line == line_of(path.read_text(), "# no effect")


def test_sop053_require_on_filled(write_policy: Writer) -> None:
    """`require` on a `filled` route is never checked."""
    path = write_policy(
        policy=with_states(
            "  ask:\n    say: ask_number\n    collect: [number]\n"
            "    filled: {to: judge, require: [number]}\n",
            ("greet: {say: welcome}", "greet: {to: ask, say: welcome}"),
        )
    )
    (problem,) = findings(path, "SOP053")
    assert "'require'" in problem.message


def test_sop053_lines_of_a_state_that_always_moves_on(write_policy: Writer) -> None:
    """A waiting state entered only with its slots filled never says its lines."""
    path = write_policy(
        policy=with_states(
            "  confirm:\n    say: ask_number\n    collect: [number]\n    filled: judge\n",
            ("give_number: {to: judge, require", "give_number: {to: confirm, require"),
        )
    )
    problems = findings(path, "SOP053", "SOP046")
    assert [p.code for p in problems] == ["SOP053"]
    assert "never said" in problems[0].message


def test_sop053_passes_for_the_mini_policy(write_policy: Writer) -> None:
    """The mini policy has no key without effect."""
    assert findings(write_policy(), "SOP053") == []
