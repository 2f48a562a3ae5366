"""Properties in policy YAML: the language, its problem codes (SOP070-SOP078) and conditions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REFUND_POLICY

from sopagent import PolicyError, PolicyLoadError, compile_policy, load_policy
from sopagent._properties import ConditionError, compile_properties, parse_condition
from sopagent._slots import compile_slot
from sopagent.errors import Problem
from sopagent.policy import (
    BooleanSlot,
    CountsFact,
    DateSlot,
    EnumSlot,
    IntegerSlot,
    MoneySlot,
    SetFact,
)

Writer = Callable[..., Path]


def with_properties(text: str, slots: str = "") -> Callable[[str], str]:
    """Edit the mini policy: add ``properties:`` (and optional slot lines)."""

    def edit(policy: str) -> str:
        if slots:
            policy = policy.replace("slots:\n", "slots:\n" + slots)
        return policy + "properties:\n" + text

    return edit


def problems(write_policy: Writer, text: str, slots: str = "") -> tuple[Path, list[Problem]]:
    """Write the mini policy with ``text`` as its properties and return the errors found."""
    path = write_policy(policy=with_properties(text, slots))
    with pytest.raises(PolicyError) as info:
        compile_policy(load_policy(path))
    return path, [p for p in info.value.problems if p.severity == "error"]


def at(path: Path, needle: str, value: str) -> tuple[int, int]:
    """1-based line and column of ``value`` on the line containing ``needle``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    line = next(i for i, text in enumerate(lines, 1) if needle in text)
    return line, lines[line - 1].index(value) + 1


def test_every_kind_loads_with_its_shorthands(write_policy: Writer) -> None:
    """One event or a list, `saying` as one intent or a list: all five kinds load."""
    path = write_policy(
        policy=with_properties(
            """\
  a: {never: {state: done}, before: {intent: give_number}}
  b: {never: [{say: small}, {say: big}], after: {ended: true}, reset: {state: start}}
  c: {at_most_once: {decision: judge, outcome: big}}
  d: {never_both: [{say: small}, {say: big}]}
  e: {reachable: {ended: true}}
  f: {leads_to: {state: done}, within: 1, saying: stop}
  g: {leads_to: {ended: true}, within: 2, saying: [stop, greet]}
"""
        )
    )
    policy = load_policy(path)
    compiled = compile_policy(policy)
    specs = {s.id: s for s in compile_properties(policy, compiled.catalog, compiled.functions)}
    assert [s.kind for s in specs.values()] == [
        "before", "after", "at_most_once", "never_both", "reachable", "leads_to", "leads_to",
    ]  # fmt: skip
    assert [m.names for m in specs["b"].target] == [{"small"}, {"big"}]
    assert specs["f"].saying == {"stop"}
    assert specs["g"].saying == {"stop", "greet"}
    assert specs["c"].target[0].outcome == "big"


def test_globs_resolve_to_every_matching_id(write_policy: Writer) -> None:
    """`say: b*` names every response starting with b; `intent: *` every intent."""
    path = write_policy(
        policy=with_properties("  a: {never: {say: 'b*'}}\n  b: {never: {intent: '*'}}\n")
    )
    compiled = compile_policy(load_policy(path))
    specs = compile_properties(compiled.policy, compiled.catalog, compiled.functions)
    assert specs[0].target[0].names == {"big", "bad_number", "bye"}
    assert specs[1].target[0].names == {"greet", "give_number", "stop", "out_of_scope"}


def test_unknown_kind_and_two_kinds_in_one_event(write_policy: Writer) -> None:
    """A property without a kind key, and an event with two, are format errors with locations."""
    path = write_policy(
        policy=with_properties(
            "  a: {sometimes: {state: done}}\n  b: {never: {state: done, say: bye}}\n"
        )
    )
    with pytest.raises(PolicyLoadError) as info:
        load_policy(path)
    messages = [(p.code, p.location.line, p.message) for p in info.value.problems]
    assert messages[0][0] == "SOP010"
    assert "a property has one of the keys never, at_most_once" in messages[0][2]
    assert messages[0][1] == at(path, "a: {sometimes", "a")[0]
    assert "an event has one kind; this one has state and say" in messages[1][2]


def test_before_and_after_together_are_refused(write_policy: Writer) -> None:
    """`before` and `after` in one property is ambiguous."""
    path = write_policy(
        policy=with_properties(
            "  a: {never: {state: done}, before: {ended: true}, after: {ended: true}}\n"
        )
    )
    with pytest.raises(PolicyLoadError) as info:
        load_policy(path)
    assert "either 'before' or 'after'" in str(info.value)


def test_unknown_state_response_intent_at_file_line_col(write_policy: Writer) -> None:
    """SOP070, SOP071, SOP072: unknown ids, with a did-you-mean, where they are written."""
    path, found = problems(
        write_policy,
        """\
  a:
    never: {state: dne}
  b:
    never: {say: smal}
  c:
    never: {intent: stopp, in: strat}
  d:
    leads_to: {ended: true}
    within: 1
    saying: [stpo]
""",
    )
    by_code = {(p.code, p.message): p for p in found}
    state = by_code[("SOP070", "unknown state 'dne'")]
    assert (state.location.line, state.location.column) == at(path, "never: {state: dne}", "dne")
    assert state.hint == "did you mean 'done'?"
    response = by_code[("SOP071", "unknown response 'smal'")]
    assert (response.location.line, response.location.column) == at(
        path, "never: {say: smal}", "smal"
    )
    assert by_code[("SOP072", "unknown intent 'stopp'")].hint == "did you mean 'stop'?"
    assert ("SOP070", "unknown state 'strat'") in by_code
    saying = by_code[("SOP072", "unknown intent 'stpo'")]
    assert (saying.location.line, saying.location.column) == at(path, "saying: [stpo]", "stpo")


def test_glob_matching_nothing(write_policy: Writer) -> None:
    """SOP071: a glob that matches no response is an error, not a property that always holds."""
    _, found = problems(write_policy, "  a: {never: {say: 'refund_*'}}\n")
    assert [(p.code, p.message) for p in found] == [
        ("SOP071", "response glob 'refund_*' matches no response")
    ]


def test_unknown_decision_and_outcome(write_policy: Writer) -> None:
    """SOP073 for a function no state decides with, SOP074 for an outcome it does not declare."""
    path, found = problems(
        write_policy,
        "  a: {never: {decision: judje}}\n  b: {never: {decision: judge, outcome: huge}}\n",
    )
    assert [(p.code, p.message) for p in found] == [
        ("SOP073", "no state decides with 'judje'"),
        ("SOP074", "'judge' has no outcome 'huge' (it declares small, big)"),
    ]
    assert found[0].hint == "did you mean 'judge'?"
    assert (found[1].location.line, found[1].location.column) == at(path, "outcome: huge", "huge")


def test_unknown_slot_or_fact(write_policy: Writer) -> None:
    """SOP075: `filled` and names in conditions must be slots or facts."""
    _, found = problems(
        write_policy,
        "  a: {never: {filled: numbr}}\n  b: {never: {state: done, where: 'verdikt == \"x\"'}}\n",
    )
    assert [p.code for p in found] == ["SOP075", "SOP075"]
    assert found[0].hint == "did you mean 'number'?"
    assert "'verdikt' is neither a slot nor a fact (did you mean 'verdict'?)" in found[1].message


def test_condition_syntax_and_types(write_policy: Writer) -> None:
    """SOP076 for a condition that cannot be read, SOP077 for values of different kinds."""
    path, found = problems(
        write_policy,
        """\
  a: {never: {state: done, where: "number >> 3"}}
  b: {never: {state: done, where: "number > 'three'"}}
  c: {never: {state: done, where: "verdict < 'x'"}}
  d: {never: {state: done, where: "(number > 3"}}
""",
    )
    assert [p.code for p in found] == ["SOP076", "SOP077", "SOP077", "SOP076"]
    assert "(at character 9)" in found[0].message
    assert "an integer is compared with a number" in found[1].message
    assert "only == and != compare it" in found[2].message
    assert "not closed" in found[3].message
    assert found[0].location.line == at(path, "number >> 3", "number")[0]


def test_example_values_are_checked(write_policy: Writer) -> None:
    """SOP078: a slot's examples must be valid values of its type."""
    path = write_policy(
        policy=lambda text: text.replace(
            "number: {type: integer, min: 0, max: 100, ask: ask_number, invalid: bad_number}",
            "number: {type: integer, min: 0, max: 100, ask: ask_number, invalid: bad_number,"
            " examples: [7, 500]}",
        )
    )
    with pytest.raises(PolicyError) as info:
        compile_policy(load_policy(path))
    (problem,) = info.value.problems
    assert problem.code == "SOP078"
    assert problem.message.startswith("example 500 of 'number' is not a valid integer")


def test_shipped_policies_check_clean() -> None:
    """The refund and merchant policies' properties have no problems."""
    for path in (REFUND_POLICY, REFUND_POLICY.parent / "merchant_npc.yaml"):
        compiled = compile_policy(load_policy(path))
        assert compiled.warnings == ()
        assert compile_properties(compiled.policy, compiled.catalog, compiled.functions)


# --- conditions -------------------------------------------------------------------------------

TYPES = {
    "total": compile_slot("total", MoneySlot(type="money")),
    "count": compile_slot("count", IntegerSlot(type="integer")),
    "verified": compile_slot("verified", BooleanSlot(type="boolean")),
    "trade": compile_slot("trade", EnumSlot(type="enum", values=["none", "bought"])),
    "day": compile_slot("day", DateSlot(type="date")),
}


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("total > 100", {"total": "100.01"}, True),
        ("total > 100", {"total": "100.00"}, False),
        ("total > 100 and not verified", {"total": "150.00", "verified": True}, False),
        ("total > 100 and not verified", {"total": "150.00"}, True),
        ("total > count", {"total": "3.50", "count": 3}, True),
        ("count >= 2 or trade == 'bought'", {"trade": "bought"}, True),
        ("count != 2", {}, False),  # a comparison with a missing value is false
        ("total is set", {"total": "1.00"}, True),
        ("total is not set", {"total": "1.00"}, False),
        ("not (count < 3)", {"count": 5}, True),
        ("day < '2024-05-02'", {"day": "2024-05-01"}, True),
        ("verified == false", {"verified": False}, True),
    ],
)
def test_conditions_evaluate_on_typed_values(
    text: str, values: dict[str, object], expected: bool
) -> None:
    """Conditions compare typed values (Decimal money, dates); missing values compare false."""
    assert parse_condition(text, TYPES)(values) is expected


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "SOP076"),
        ("total >", "SOP076"),
        ("total > 100 extra", "SOP076"),
        ("100", "SOP076"),
        ("total is 3", "SOP076"),
        ("trade == 'sold'", "SOP077"),
        ("verified > true", "SOP077"),
        ("total == verified", "SOP077"),
        ("day == 'tomorrow'", "SOP077"),
        ("totl > 3", "SOP075"),
    ],
)
def test_bad_conditions(text: str, code: str) -> None:
    """Each mistake in a condition has its code."""
    with pytest.raises(ConditionError) as info:
        parse_condition(text, TYPES)
    assert info.value.code == code


def test_conditions_read_counts_keys_and_set_members() -> None:
    """`counts.key` is a count (0 when absent, no value without the fact); `"id" in set` tests."""
    types = {
        "inventory": compile_slot("inventory", CountsFact(type="counts", keys=["key", "gem"])),
        "flags": compile_slot("flags", SetFact(type="set", values=["quest", "open"])),
        "gold": compile_slot("gold", IntegerSlot(type="integer")),
    }
    has_gem = parse_condition("inventory.gem >= 1", types)
    assert has_gem({"inventory": {"gem": 2}})
    assert not has_gem({"inventory": {"key": 1}})
    assert not has_gem({})  # no inventory at all: no value, so the comparison is false
    assert parse_condition("not inventory.gem >= 1", types)({})
    assert parse_condition("inventory.key", types)({"inventory": {"key": 1}})
    on_quest = parse_condition('"quest" in flags', types)
    assert on_quest({"flags": ["quest"]})
    assert not on_quest({"flags": ["open"]})
    assert not on_quest({})
    assert parse_condition('"gem" in inventory and gold >= inventory.gem', types)(
        {"inventory": {"gem": 2}, "gold": 3}
    )
    assert parse_condition("inventory.gem >= 1", types).names == frozenset({"inventory"})


@pytest.mark.parametrize(
    ("text", "code", "words"),
    [
        ("inventory.gold > 1", "SOP077", "'gold' is not a key of inventory"),
        ("gold.x > 1", "SOP077", "only a counts fact has keys"),
        ("invntory.gem > 0", "SOP075", "did you mean 'inventory'"),
        ('"lost" in flags', "SOP077", "not a possible member of flags"),
        ("gold in flags", "SOP077", "'in' takes a quoted id"),
        ('"quest" in gold', "SOP077", "'in' tests a set or counts fact"),
        ('inventory.gem > "x"', "SOP077", "compared with a number"),
    ],
)
def test_counts_and_set_conditions_are_checked(text: str, code: str, words: str) -> None:
    """Unknown keys and members, and keys or members of the wrong kind of fact, are refused."""
    types = {
        "inventory": compile_slot("inventory", CountsFact(type="counts", keys=["key", "gem"])),
        "flags": compile_slot("flags", SetFact(type="set", values=["quest", "open"])),
        "gold": compile_slot("gold", IntegerSlot(type="integer")),
    }
    with pytest.raises(ConditionError) as info:
        parse_condition(text, types)
    assert info.value.code == code
    assert words in str(info.value)
