"""Catalogs per locale: translations checked (SOP105-SOP109), said, understood, exported as CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import pytest

from sopagent import Agent, MemorySink, PolicyError, ScriptedBackend, compile_policy, load_policy
from sopagent._locales import CSV_COLUMNS, lines_csv
from sopagent.errors import Problem
from sopagent.policy import content_hash

Writer = Callable[..., Path]

POLICY = """\
sopagent: 1
name: inn
catalog: catalog.yaml
translations: [de.yaml]
initial: bar
intents:
  order: {description: The guest orders a drink., examples: [a beer please]}
  leave: {description: The guest leaves., examples: [goodbye]}
facts:
  count: {type: integer, min: 1, max: 9}
global:
  on:
    leave: closed
  fallback: {say: what}
  error: {say: oops}
states:
  bar:
    say: hello
    on:
      order: {say: [coming, total]}
  closed:
    say: bye
    terminal: true
"""

CATALOG = """\
sopagent: 1
catalog: inn
locale: en
responses:
  hello: Welcome to the inn.
  coming: Coming right up.
  total: "That is {count} beers."
  what: What was that?
  oops: Sorry, I dropped a glass.
  bye: Good night.
"""

GERMAN = """\
sopagent: 1
catalog: inn
locale: de
responses:
  hello: Willkommen im Gasthaus.
  coming: Kommt sofort.
  total: "Das macht {count} Bier."
  what: Wie bitte?
  oops: Verzeihung, mir ist ein Glas heruntergefallen.
  bye: Gute Nacht.
examples:
  order: [ein bier bitte, noch eins]
  leave: [auf wiedersehen]
"""


def inn(write_policy: Writer, german: Callable[[str], str] = lambda t: t, **more: str) -> Path:
    return write_policy(
        policy=more.pop("policy", POLICY),
        catalog=more.pop("catalog", CATALOG),
        files={"de.yaml": german(GERMAN), **more},
    )


def problems(path: Path) -> tuple[Problem, ...]:
    try:
        return compile_policy(load_policy(path)).warnings
    except PolicyError as exc:
        return exc.problems


def codes(path: Path) -> list[tuple[str, str]]:
    return [(p.code, p.severity) for p in problems(path)]


def test_a_complete_translation_has_no_problems(write_policy: Writer) -> None:
    """The inn and its German catalog compile cleanly, with German as a locale."""
    compiled = compile_policy(load_policy(inn(write_policy)))
    assert compiled.warnings == ()
    assert list(compiled.locales) == ["de"]


def test_sop105_lines_missing_in_a_locale_are_reported(write_policy: Writer) -> None:
    """Ids the translation lacks are one SOP105 warning naming them."""
    path = inn(write_policy, lambda t: t.replace("  what: Wie bitte?\n", ""))
    (problem,) = problems(path)
    assert (problem.code, problem.severity) == ("SOP105", "warning")
    assert "'de' lacks 1 line(s): what" in problem.message
    assert problem.location.file.endswith("de.yaml")


def test_a_missing_line_is_said_from_the_source_catalog(write_policy: Writer) -> None:
    """A German session says the English line where German has none, marked as English."""
    path = inn(write_policy, lambda t: t.replace("  coming: Kommt sofort.\n", ""))
    agent = Agent(compile_policy(load_policy(path)), ScriptedBackend(), audit=MemorySink())
    session = agent.new_session(locale="de", facts={"count": 1})
    agent.start(session)
    turn = agent.respond(session, "ein bier bitte")
    assert [(u.id, u.locale) for u in turn.responses] == [("coming", "en"), ("total", "de")]
    assert turn.text == "Coming right up. Das macht 1 Bier."


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("  bye: Gute Nacht.", "  bye: Gute Nacht.\n  extra: Mehr."), "SOP106"),
        (lambda t: t.replace("{count} Bier", "{count} Bier für {name}"), "SOP107"),
        (lambda t: t.replace("catalog: inn", "catalog: tavern"), "SOP108"),
        (lambda t: t.replace("locale: de", "locale: en"), "SOP108"),
        (lambda t: t.replace("  leave: [auf", "  dance: [tanzen]\n  leave: [auf"), "SOP109"),
    ],
)
def test_translation_problems(
    write_policy: Writer, edit: Callable[[str], str], expected: str
) -> None:
    """Extra ids warn; unknown placeholders, clashing catalogs and unknown intents are errors."""
    found = codes(inn(write_policy, edit))
    assert [code for code, _ in found] == [expected]
    severity = "warning" if expected == "SOP106" else "error"
    assert found[0][1] == severity


def test_sop108_a_translation_that_does_not_exist(write_policy: Writer) -> None:
    """A translations entry naming no file is SOP108 at the entry."""
    path = inn(write_policy, policy=POLICY.replace("[de.yaml]", "[fr.yaml]"))
    (problem,) = problems(path)
    assert problem.code == "SOP108"
    assert "fr.yaml" in problem.message
    assert problem.location.line == 4


def test_sop109_examples_in_the_source_catalog(write_policy: Writer) -> None:
    """Intent examples belong in the policy for the source locale: SOP109 in its catalog."""
    path = inn(write_policy, catalog=CATALOG + "examples:\n  order: [one more]\n")
    assert codes(path) == [("SOP109", "error")]


def test_a_changed_translation_is_flagged_like_the_source(write_policy: Writer) -> None:
    """A translated line edited after approval is SOP032, in the translation's file."""
    approved = content_hash("Gute Nacht.")
    path = inn(
        write_policy,
        lambda t: t.replace(
            "  bye: Gute Nacht.", f"  bye: {{text: Gute Nacht!, approved: '{approved}'}}"
        ),
    )
    (problem,) = problems(path)
    assert (problem.code, problem.severity) == ("SOP032", "warning")
    assert problem.location.file.endswith("de.yaml")


def test_an_unknown_locale_is_refused(write_policy: Writer) -> None:
    """A session in a locale the policy has no catalog for is a ValueError."""
    agent = Agent(compile_policy(load_policy(inn(write_policy))), ScriptedBackend())
    with pytest.raises(ValueError, match="unknown locale 'fr'; policy 'inn' has en, de"):
        agent.new_session(locale="fr")
    assert agent.new_session(locale="en").locale is None


def test_locale_examples_are_matched_and_sent_to_the_model(write_policy: Writer) -> None:
    """German examples match exactly; other German text goes to the model with German labels."""
    backend = ScriptedBackend({"zwei bier": "order"})
    agent = Agent(compile_policy(load_policy(inn(write_policy))), backend, audit=MemorySink())
    session = agent.new_session(locale="de", facts={"count": 2})
    agent.start(session)
    exact = agent.respond(session, "Noch eins!")
    assert (exact.intent, exact.intent_source) == ("order", "example")
    assert agent.respond(session, "a beer please").intent_source == "example"
    asked = agent.respond(session, "zwei bier")
    assert asked.intent_source == "model"
    assert asked.text == "Kommt sofort. Das macht 2 Bier."
    (request,) = backend.requests
    assert request.key.endswith(":de")
    labels = {label.name: label.examples for label in request.labels}
    assert labels["order"] == ("ein bier bitte", "noch eins")
    english = agent.new_session(facts={"count": 2})
    agent.start(english)
    agent.respond(english, "zwei bier")
    assert backend.requests[-1].labels[0].examples == ("a beer please",)
    assert ":de" not in backend.requests[-1].key


def test_lines_csv_has_a_row_per_line_and_locale(write_policy: Writer) -> None:
    """The CSV holds every source id once per locale, with the source text and where it is said."""
    path = inn(write_policy, lambda t: t.replace("  what: Wie bitte?\n", ""))
    compiled = compile_policy(load_policy(path))
    rows = list(csv.DictReader(io.StringIO(lines_csv(compiled))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["id"], r["locale"]) for r in rows] == [
        (rid, locale) for locale in ("en", "de") for rid in compiled.catalog.responses
    ]
    by_key = {(r["id"], r["locale"]): r for r in rows}
    total = by_key["total", "de"]
    assert total["text"] == "Das macht {count} Bier."
    assert total["source_text"] == "That is {count} beers."
    assert total["placeholders"] == "count"
    assert total["said_in"] == "bar: on order"
    assert total["status"] == "unapproved"
    assert total["hash"] == content_hash("Das macht {count} Bier.")
    missing = by_key["what", "de"]
    assert (missing["status"], missing["text"]) == ("missing", "")
    assert by_key["oops", "en"]["said_in"] == "global: error"
    assert by_key["bye", "en"]["said_in"] == "closed: enter"
    german = list(csv.DictReader(io.StringIO(lines_csv(compiled, ["de"]))))
    assert {r["locale"] for r in german} == {"de"}
    with pytest.raises(ValueError, match="unknown locale 'fr'"):
        lines_csv(compiled, ["fr"])
