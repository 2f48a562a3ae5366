"""Catalog templates name plain values only, and values are rendered as data, never formatted.

The loader rejects placeholders that would reach into an object (``{a.b}``, ``{a[0]}``),
positional fields, conversions and format specs, with the file, line and column of the line.
Whatever a slot or fact holds (format-string syntax, printf syntax, braces) appears in the line
said exactly as it is; control and bidi characters are blanked, and a megabyte is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from sopagent import MemorySink, PolicyError, ScriptedBackend, Turn, load_agent, load_catalog
from sopagent._limits import visible
from sopagent._slots import clean_text
from sopagent.policy import placeholders

Writer = Callable[..., Path]

REJECTED = {
    "{number.__class__}": "must be a plain slot or fact name",
    "{number.__class__.__init__.__globals__}": "must be a plain slot or fact name",
    "{number[0]}": "must be a plain slot or fact name",
    "{number[__class__]}": "must be a plain slot or fact name",
    "{0}": "must be a plain slot or fact name",
    "{0.__class__}": "must be a plain slot or fact name",
    "{}": "must be a plain slot or fact name",
    "{Number}": "must be a plain slot or fact name",
    "{number!r}": "may not carry a format spec or conversion",
    "{number!s}": "may not carry a format spec or conversion",
    "{number:>1000000}": "may not carry a format spec or conversion",
    "{number:{number}}": "may not carry a format spec or conversion",
    "{number": "expected '}' before end of string",
    "number}": "Single '}' encountered",
}


@pytest.mark.parametrize("template", sorted(REJECTED))
def test_loader_rejects_unsafe_placeholders_with_a_location(
    write_policy: Writer, template: str
) -> None:
    """A catalog line with attribute, index, positional or formatted fields is a located SOP010."""
    catalog = "sopagent: 1\ncatalog: mini\nresponses:\n  welcome: Welcome.\n  small: '" + (
        template + " is small.'\n"
    )
    path = write_policy(catalog=catalog).parent / "catalog.yaml"
    with pytest.raises(PolicyError) as caught:
        load_catalog(path)
    (problem,) = caught.value.problems
    assert problem.code == "SOP010"
    assert REJECTED[template] in problem.message
    assert problem.location is not None
    assert problem.location.file == str(path)
    assert (problem.location.line, problem.location.column) == (5, 10)


@pytest.mark.parametrize(
    ("template", "names"),
    [
        ("{{number}} is literal", ()),
        ("100%s {number} %(x)s %d", ("number",)),
        ("{a} and {b} and {a}", ("a", "b")),
        ("}}{{", ()),
    ],
)
def test_plain_templates_are_accepted(template: str, names: tuple[str, ...]) -> None:
    """Doubled braces and printf syntax are plain text; repeated names are listed once."""
    assert placeholders(template) == names


HOSTILE_VALUES = [
    "{0.__class__}",
    "{verdict.__dict__}",
    "{number}",
    "{{",
    "}}",
    "{",
    "%s%s%n %(verdict)s",
    "\x1b[31mred\x1b[0m \u202eevil\u202c \x00",
    "\u200b\ufeff",
    "x" * 10_000,
]


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=lambda v: repr(v[:20]))
def test_slot_and_fact_values_are_rendered_literally(write_policy: Writer, value: str) -> None:
    """A value reaches the line as data: no second formatting pass; hidden characters go."""
    turn = verdict_turn(write_policy, value)
    assert turn.error is None
    assert turn.responses[0].id == "small"
    assert turn.responses[0].text == f"Verdict: {clean_text(value, 10_000)} for 7."
    if value.isprintable():
        assert turn.responses[0].text == f"Verdict: {value} for 7."
    assert visible(turn.responses[0].text) == turn.responses[0].text


def test_a_megabyte_value_is_refused_not_rendered(write_policy: Writer) -> None:
    """A value longer than any string type allows fails the decision; the error line is said."""
    turn = verdict_turn(write_policy, "x" * 1_000_000)
    assert turn.error is not None
    assert "set fact 'verdict' to an invalid value" in turn.error
    assert turn.response_ids == ("oops",)
    assert len(turn.text) < 100


def verdict_turn(write_policy: Writer, value: str) -> Turn:
    """The turn that says ``small`` after the decision set the fact verdict to ``value``."""
    decisions = (
        "from sopagent import Outcome, decision\n\n\n"
        '@decision(outcomes=["small", "big"])\n'
        "def judge(ctx):\n"
        f'    return Outcome("small", facts={{"verdict": {value!r}}})\n'
    )
    catalog = (
        "sopagent: 1\ncatalog: mini\nresponses:\n  welcome: Welcome.\n  ask_number: Which?\n"
        "  bad_number: No.\n  small: 'Verdict: {verdict} for {number}.'\n  big: Big.\n"
        "  sorry: Sorry?\n  oops: Something broke.\n  bye: Bye.\n"
    )
    policy = write_policy(
        decisions=decisions,
        catalog=catalog,
        policy=lambda p: p.replace("max_length: 20", "max_length: 10000"),
    )
    agent = load_agent(policy, backend=ScriptedBackend(default="give_number"), audit=MemorySink())
    session = agent.new_session()
    agent.start(session)
    return agent.respond(session, "my number is 7")


def test_user_text_never_reaches_a_template(write_policy: Writer) -> None:
    """Format syntax typed by the user is classified like any text and never rendered."""
    agent = load_agent(write_policy(), backend=ScriptedBackend(), audit=MemorySink())
    session = agent.new_session()
    agent.start(session)
    for text in ["{0.__class__}", "{number.__dict__}", "{{", "%s %n", "{welcome}"]:
        turn = agent.respond(session, text)
        assert turn.response_ids == ("sorry",)
        assert [u.text for u in turn.responses] == ["Sorry?"]
        assert not re.search(r"__|%|\{", turn.text)
