"""Any text as user input and any value of a free-text slot: only catalog lines get out.

The agents run for real with a backend double whose answers are drawn too. After every turn
each line said must be its catalog template with the session's values put in literally (the
value, cleaned of hidden characters, never formatted a second time), the fallback or the error
line; nothing the user typed appears anywhere but inside a slot's placeholder.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import MINI_CATALOG, MINI_POLICY, REFUND_POLICY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import DrawnBackend, answers, hostile_texts, intent_labels

from sopagent import Agent, MemorySink, ScriptedBackend, Session, Turn, load_agent
from sopagent._limits import visible
from sopagent._slots import clean_text

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

REFUND = load_agent(REFUND_POLICY, backend=DrawnBackend(), audit=MemorySink())
REFUNDED: set[str] = REFUND.compiled.functions["issue_refund"].__globals__["_REFUNDED"]


def rendered(agent: Agent, rid: str, session: Session) -> str:
    """The catalog text of ``rid`` with the session's values put in by hand."""
    compiled = agent.compiled

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        if name in session.slots:
            kind = compiled.slot_types[name]
            return kind.render(kind.from_json(session.slots[name]))
        kind = compiled.fact_types[name]
        return kind.render(kind.from_json(session.facts[name]))

    return re.sub(r"\{\{|\}\}|\{(\w+)\}", value, compiled.catalog.responses[rid].text)


def check(agent: Agent, turn: Turn, session: Session) -> None:
    """Every line is a catalog template filled literally; hidden characters never get out."""
    catalog = agent.compiled.catalog.responses
    for line in turn.responses:
        assert line.id in catalog
        assert line.text == rendered(agent, line.id, session)
        assert visible(line.text) == line.text
    if turn.error is not None:
        policy = agent.compiled.policy
        allowed = {*policy.global_.error.say, *policy.global_.fallback.say}
        assert set(turn.response_ids) <= allowed


@SETTINGS
@given(
    st.lists(st.tuples(hostile_texts(), answers(intent_labels(REFUND.compiled.policy))), max_size=6)
)
def test_refund_agent_says_only_catalog_lines_whatever_is_typed(
    turns: list[tuple[str, object]],
) -> None:
    """Hostile text through the refund agent, with any backend answer, says only catalog lines."""
    REFUNDED.clear()
    backend = REFUND.backend
    assert isinstance(backend, DrawnBackend)
    session = REFUND.new_session(seed=3)
    check(REFUND, REFUND.start(session), session)
    for text, answer in turns:
        backend.answer = answer  # type: ignore[assignment]
        before = session.model_dump(include={"state", "slots", "facts"})
        turn = REFUND.respond(session, text)
        check(REFUND, turn, session)
        if turn.error is not None:
            assert session.model_dump(include={"state", "slots", "facts"}) == before
        Session.from_json(session.to_json())
    REFUNDED.clear()


# A free-text slot: whatever follows "call me" (up to 60 characters) is the name.
NAMED_POLICY = (
    MINI_POLICY.replace(
        "slots:\n",
        "slots:\n  name: {type: string, pattern: 'call me (.{1,60})', max_length: 60,"
        " ask: ask_name}\n",
    )
    .replace(
        "      greet: {say: welcome}\n",
        "      greet: {say: welcome}\n      give_name: {say: hello_name, require: [name]}\n",
    )
    .replace(
        "intents:\n",
        "intents:\n  give_name:\n    description: The user says their name.\n"
        "    examples: [call me Ann]\n",
    )
)
NAMED_CATALOG = MINI_CATALOG + (
    '  hello_name: "Hello, {name}! {{name}} is how you like it: {name}."\n'
    "  ask_name: What is your name?\n"
)


@pytest.fixture(scope="module")
def named_agent(tmp_path_factory: pytest.TempPathFactory) -> Agent:
    """The mini policy with a free-text name slot, classified as give_name by the double."""
    directory: Path = tmp_path_factory.mktemp("named")
    (directory / "policy.yaml").write_text(NAMED_POLICY, encoding="utf-8")
    (directory / "catalog.yaml").write_text(NAMED_CATALOG, encoding="utf-8")
    from conftest import MINI_DECISIONS  # noqa: PLC0415

    (directory / "decisions.py").write_text(MINI_DECISIONS, encoding="utf-8")
    return load_agent(
        directory / "policy.yaml", backend=ScriptedBackend(default="give_name"), audit=MemorySink()
    )


@SETTINGS
@given(value=hostile_texts(max_size=80), noise=hostile_texts(max_size=40))
def test_free_text_slot_values_are_substituted_literally(
    named_agent: Agent, value: str, noise: str
) -> None:
    """Whatever the name holds, the line is the template with that name, cleaned, put in."""
    session = named_agent.new_session()
    named_agent.start(session)
    turn = named_agent.respond(session, f"{noise} call me {value}")
    check(named_agent, turn, session)
    if turn.response_ids == ("hello_name",):
        name = named_agent.compiled.slot_types["name"]
        shown = name.render(session.slots["name"])
        assert turn.text == f"Hello, {shown}! {{name}} is how you like it: {shown}."
        assert shown == clean_text(session.slots["name"], 60)
    else:
        assert turn.response_ids in {("ask_name",), ("sorry",), ("oops",)}


@SETTINGS
@given(text=hostile_texts(max_size=5000))
def test_long_and_hostile_messages_never_crash_a_turn(named_agent: Agent, text: str) -> None:
    """A turn on any text returns a Turn of catalog lines; a long one is refused unchanged."""
    session = named_agent.new_session()
    named_agent.start(session)
    turn = named_agent.respond(session, text * 3)
    check(named_agent, turn, session)
    if len(text) * 3 > 4000:
        assert turn.error is not None
        assert turn.error.startswith("InputTooLong")
        assert session.state == "start"
