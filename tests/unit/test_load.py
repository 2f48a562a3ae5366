"""The load step: policy and catalog files validated, every problem located."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REFUND_POLICY, ROOT

from sopagent import Catalog, Policy, PolicyLoadError, load_catalog, load_policy
from sopagent.errors import Location, Problem
from sopagent.policy import EnumSlot, Route, StringSlot


def line_of(text: str, needle: str) -> int:
    """Return the 1-based line of the only line containing ``needle``."""
    lines = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(lines) == 1, f"{needle!r} on lines {lines}"
    return lines[0]


def policy_problems(path: Path) -> tuple[Problem, ...]:
    with pytest.raises(PolicyLoadError) as info:
        load_policy(path)
    return info.value.problems


def catalog_problems(path: Path) -> tuple[Problem, ...]:
    with pytest.raises(PolicyLoadError) as info:
        load_catalog(path)
    return info.value.problems


def test_refund_example_loads() -> None:
    """The worked example loads into typed models that remember their source."""
    policy = load_policy(REFUND_POLICY)
    assert isinstance(policy, Policy)
    assert policy.name == "refund"
    assert policy.initial == "greeting"
    assert policy.global_.fallback.say == ["not_understood"]
    assert isinstance(policy.slots["order_id"], StringSlot)
    assert policy.states["greeting"].on["request_refund"] == Route(to="ask_order")
    assert policy.source == REFUND_POLICY
    line = next(
        number
        for number, text in enumerate(REFUND_POLICY.read_text().splitlines(), start=1)
        if text == "  greeting:"
    )
    assert policy.locate("states", "greeting", "say") == Location(str(REFUND_POLICY), line + 1, 10)
    catalog = load_catalog(ROOT / "catalogs" / "support_en.yaml")
    assert isinstance(catalog, Catalog)
    assert catalog.responses["greet"].placeholders == ()
    assert catalog.responses["confirm_refund"].placeholders == ("refund_amount", "order_id")


def test_shorthands_expand(write_policy: Callable[..., Path]) -> None:
    """`say: x` is a one-item list and a route written as a state name is `{to: name}`."""
    path = write_policy()
    policy = load_policy(path)
    assert policy.states["start"].say == ["welcome"]
    assert policy.global_.on["stop"] == Route(to="done")
    assert policy.states["judge"].outcomes["small"] == Route(to="done", say=["small"])


def test_all_problems_are_reported_at_once_sorted(write_policy: Callable[..., Path]) -> None:
    """Several mistakes in one file come back together, sorted, each at file:line:col."""

    def break_it(text: str) -> str:
        text = text.replace("name: mini", "name: Mini")
        text = text.replace("    examples: [stop]", "    exampels: [stop]")
        text = text.replace("{type: integer, min: 0,", "{type: integr, min: 0,")
        return text.replace("  error: {say: oops}\n", "")

    path = write_policy(policy=break_it)
    text = path.read_text()
    problems = policy_problems(path)
    assert list(problems) == sorted(problems, key=Problem.sort_key)
    got = [(p.code, p.location.line) for p in problems]
    assert got == [
        ("SOP010", line_of(text, "name: Mini")),
        ("SOP011", line_of(text, "exampels")),
        ("SOP010", line_of(text, "integr")),
        # A missing key is reported at the start of the mapping that lacks it.
        ("SOP012", line_of(text, "global:") + 1),
    ]
    assert all(p.location.file == str(path) and p.location.column > 0 for p in problems)


def test_unknown_key_has_location_and_did_you_mean_hint(
    write_policy: Callable[..., Path],
) -> None:
    """An unknown key is SOP011 at the key, with the closest known key as a hint."""
    path = write_policy(policy=lambda t: t.replace("initial: start", "inital: start"))
    # `initial` is then missing (at 1:1, so first) and `inital` is unknown.
    (missing, problem) = policy_problems(path)
    assert missing.code == "SOP012"
    assert missing.location == Location(str(path), 1, 1)
    assert problem.code == "SOP011"
    assert problem.location == Location(str(path), line_of(path.read_text(), "inital"), 1)
    assert problem.message == "unknown key 'inital'"
    assert problem.hint == "did you mean 'initial'?"


def test_unknown_key_deep_in_a_route(write_policy: Callable[..., Path]) -> None:
    """An unknown key inside a route is SOP011 at that key's column."""
    path = write_policy(
        policy=lambda t: t.replace(
            "{to: judge, require: [number]}", "{to: judge, requires: [number]}"
        )
    )
    (problem,) = policy_problems(path)
    text = path.read_text()
    line = line_of(text, "requires")
    assert problem.code == "SOP011"
    assert problem.location == Location(
        str(path), line, text.splitlines()[line - 1].index("requires") + 1
    )
    assert problem.hint == "did you mean 'require'?"


def test_unknown_key_without_close_match_suggests_removal(
    write_policy: Callable[..., Path],
) -> None:
    """An unknown key with no similar known key gets the hint to remove it."""
    path = write_policy(policy=lambda t: t + "zzqqxx: 1\n")
    (problem,) = policy_problems(path)
    assert (problem.code, problem.hint) == ("SOP011", "remove it")


def test_missing_keys_are_reported_where_they_belong(write_policy: Callable[..., Path]) -> None:
    """A missing required key is SOP012 at the mapping that lacks it, naming the key."""
    path = write_policy(policy=lambda t: t.replace("    description: The user says hello.\n", ""))
    (problem,) = policy_problems(path)
    assert problem.code == "SOP012"
    assert problem.message == "missing required key 'description' in intents.greet"
    assert problem.location.line == line_of(path.read_text(), "examples: [hello]")


def test_missing_top_level_key_is_at_document_start(write_policy: Callable[..., Path]) -> None:
    """A key missing from the top level is SOP012 at line 1."""
    path = write_policy(policy=lambda t: t.replace("initial: start\n", ""))
    (problem,) = policy_problems(path)
    assert problem.code == "SOP012"
    assert "'initial'" in problem.message
    assert problem.location == Location(str(path), 1, 1)


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("sopagent: 1", "sopagent: 2", "sopagent: 2"),
        ("initial: start", "initial: Start", "initial: Start"),
        ("min: 0, max: 100", "min: zero, max: 100", "min: zero"),
        ("    stop: done", "    stop: [done]", "stop: [done]"),
        (
            "  done:\n    say: bye\n",
            "  done:\n    say: bye\n    on: {greet: start}\n",
            "on: {greet",
        ),
    ],
)
def test_bad_values_are_sop010_at_the_value(
    write_policy: Callable[..., Path], old: str, new: str, needle: str
) -> None:
    """A value of the wrong type or shape is SOP010 on the line of that value."""
    path = write_policy(policy=lambda t: t.replace(old, new))
    problems = policy_problems(path)
    assert [p.code for p in problems] == ["SOP010"]
    text = path.read_text()
    if needle == "on: {greet":
        # A model-level rule is reported at the start of the state it breaks.
        assert problems[0].location.line == line_of(text, "  done:") + 1
        assert "terminal state" in problems[0].message
    else:
        assert problems[0].location.line == line_of(text, needle)


def test_bad_slot_regex_is_reported(write_policy: Callable[..., Path]) -> None:
    """A slot pattern that does not compile is SOP010 at the pattern."""
    policy = lambda t: t.replace(  # noqa: E731
        "  number: {type: integer",
        "  code: {type: string, pattern: '(\\d+'}\n  number: {type: integer",
    )
    path = write_policy(policy=policy)
    (problem,) = policy_problems(path)
    assert problem.code == "SOP010"
    assert problem.message.startswith("slots.code.pattern: invalid regular expression")
    text = path.read_text()
    line = line_of(text, "code: {type")
    assert problem.location == Location(
        str(path), line, text.splitlines()[line - 1].index("'(") + 1
    )


def test_slot_regex_with_two_groups_is_rejected(write_policy: Callable[..., Path]) -> None:
    """A slot pattern may capture at most one group."""
    path = write_policy(
        policy=lambda t: t.replace(
            "  number: {type: integer",
            "  code: {type: string, pattern: '(a)(b)'}\n  number: {type: integer",
        )
    )
    (problem,) = policy_problems(path)
    assert problem.code == "SOP010"
    assert "at most one capture group" in problem.message


def test_reserved_intent_name_is_rejected(write_policy: Callable[..., Path]) -> None:
    """`out_of_scope` is built in and may not be declared as an intent."""
    path = write_policy(
        policy=lambda t: t.replace("  stop:\n    description:", "  out_of_scope:\n    description:")
    )
    (problem,) = policy_problems(path)
    assert problem.code == "SOP010"
    assert "out_of_scope" in problem.message


def test_enum_synonyms_must_name_values(write_policy: Callable[..., Path]) -> None:
    """Synonyms for a value the enum does not have are SOP010."""
    path = write_policy(
        policy=lambda t: t.replace(
            "  number: {type: integer",
            "  size: {type: enum, values: [small], synonyms: {large: [big]}}\n"
            "  number: {type: integer",
        )
    )
    (problem,) = policy_problems(path)
    assert problem.code == "SOP010"
    assert "synonyms for unknown values: large" in problem.message


def test_enum_slot_loads(write_policy: Callable[..., Path]) -> None:
    """An enum slot with synonyms for its own values is accepted."""
    path = write_policy(
        policy=lambda t: t.replace(
            "  number: {type: integer",
            "  size: {type: enum, values: [small, large], synonyms: {large: [big]}}\n"
            "  number: {type: integer",
        )
    )
    slot = load_policy(path).slots["size"]
    assert isinstance(slot, EnumSlot)
    assert slot.synonyms == {"large": ["big"]}


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("Hello {0.__class__}", "plain slot or fact name"),
        ("Hello {a.b}", "plain slot or fact name"),
        ("Hello {a[0]}", "plain slot or fact name"),
        ("Hello {}", "plain slot or fact name"),
        ("Hello {0}", "plain slot or fact name"),
        ("Hello {number!r}", "format spec or conversion"),
        ("Hello {number:>10}", "format spec or conversion"),
        ("Hello {", "Single '{'"),
        ("Hello }", "Single '}'"),
    ],
)
def test_bad_placeholders_in_catalog_are_rejected(
    write_policy: Callable[..., Path], template: str, fragment: str
) -> None:
    """Placeholders other than plain names are SOP010 at the response."""
    path = write_policy(
        catalog=lambda t: t.replace("  bye: Bye.", f"  bye: {template!r}".replace("'", '"'))
    )
    catalog_path = path.with_name("catalog.yaml")
    (problem,) = catalog_problems(catalog_path)
    assert problem.code == "SOP010"
    assert fragment in problem.message
    assert problem.message.startswith("responses.bye")
    assert problem.location.line == line_of(catalog_path.read_text(), "  bye:")


def test_escaped_braces_are_not_placeholders(write_policy: Callable[..., Path]) -> None:
    """`{{` and `}}` are literal braces, not placeholders."""
    path = write_policy(catalog=lambda t: t.replace("  bye: Bye.", '  bye: "Bye {{for now}}."'))
    catalog = load_catalog(path.with_name("catalog.yaml"))
    assert catalog.responses["bye"].placeholders == ()


def test_catalog_approved_must_be_a_hash(write_policy: Callable[..., Path]) -> None:
    """An `approved` value that is not `sha256:` and 16 hex digits is SOP010."""
    path = write_policy(
        catalog=lambda t: t.replace("  bye: Bye.", "  bye: {text: Bye., approved: 'md5:12'}")
    )
    (problem,) = catalog_problems(path.with_name("catalog.yaml"))
    assert problem.code == "SOP010"
    assert problem.message.startswith("responses.bye.approved")


def test_policy_file_must_be_a_mapping(tmp_path: Path) -> None:
    """A policy file that is a list or empty is SOP010 at its start."""
    for text in ("- a\n- b\n", ""):
        path = tmp_path / "p.yaml"
        path.write_text(text)
        (problem,) = policy_problems(path)
        assert problem.code == "SOP010"
        assert problem.location == Location(str(path), 1, 1)


def test_yaml_problems_surface_through_load_policy(write_policy: Callable[..., Path]) -> None:
    """A duplicate key in a policy is reported by load_policy as SOP003 with its location."""
    path = write_policy(
        policy=lambda t: t.replace("initial: start\n", "initial: start\ninitial: x\n")
    )
    (problem,) = policy_problems(path)
    assert problem.code == "SOP003"
    assert problem.location.line == line_of(path.read_text(), "initial: x")
