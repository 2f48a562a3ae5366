"""Game state: set and counts facts, fact values passed with every turn, kept only on success."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

import pytest

from sopagent import (
    Agent,
    MemorySink,
    PolicyLoadError,
    ScriptedBackend,
    compile_policy,
    load_policy,
)
from sopagent._slots import compile_slot
from sopagent.policy import CountsFact, SetFact

Writer = Callable[..., Path]

POLICY = """\
sopagent: 1
name: gate
catalog: catalog.yaml
decisions: [decisions.py]
initial: gate
intents:
  knock: {description: The player knocks., examples: [knock]}
facts:
  gold: {type: integer, min: 0}
  pack: {type: counts, keys: [key, rope], max: 9}
  flags: {type: set, values: [friend, foe]}
  mood: {type: integer, min: -3, max: 3}
global:
  fallback: {say: what}
  error: {say: oops}
states:
  gate:
    say: hello
    on:
      knock: judge
  judge:
    decide: judge
    outcomes:
      open: {to: gate, say: opened}
      shut: {to: gate, say: shut}
"""

CATALOG = """\
sopagent: 1
catalog: gate
responses:
  hello: "Hello. You carry {pack}; flags: {flags}."
  opened: The gate opens.
  shut: The gate stays shut.
  what: What?
  oops: Something broke.
"""

DECISIONS = """\
from sopagent import Outcome, decision

SEEN = []


@decision(outcomes=["open", "shut"], reads=["pack", "flags", "mood"])
def judge(ctx):
    SEEN.append(dict(ctx.facts))
    if ctx.facts.get("mood", 0) < -2:
        raise RuntimeError("too angry to think")
    if ctx.facts.get("pack", {}).get("key", 0) and "foe" not in ctx.facts.get("flags", frozenset()):
        return Outcome("open", facts={"flags": ctx.facts["flags"] | {"friend"}})
    return "shut"
"""


@pytest.fixture
def gate(write_policy: Writer) -> Agent:
    path = write_policy(policy=POLICY, catalog=CATALOG, decisions=DECISIONS)
    return Agent(compile_policy(load_policy(path)), ScriptedBackend(), audit=MemorySink())


def seen(agent: Agent) -> list[dict[str, object]]:
    result: list[dict[str, object]] = agent.compiled.functions["judge"].__globals__["SEEN"]
    return result


def test_set_facts_are_frozen_sets_stored_sorted() -> None:
    """A set fact validates its members, is a frozenset in code and a sorted list in JSON."""
    kind = compile_slot("flags", SetFact(type="set", values=["b", "a"]))
    value = kind.validate(["b", "a", "b"])
    assert value == frozenset({"a", "b"})
    assert kind.to_json(value) == ["a", "b"]
    assert kind.from_json(["a", "b"]) == value
    assert kind.render(value) == "a, b"
    for bad in (["c"], "ab", [1]):
        with pytest.raises(ValueError, match="Input should be"):
            kind.validate(bad)


def test_counts_facts_are_read_only_and_drop_zero_counts() -> None:
    """A counts fact is a read-only mapping; zero counts vanish so one state has one form."""
    kind = compile_slot("pack", CountsFact(type="counts", keys=["rope", "key"], max=9))
    value = kind.validate({"rope": 2, "key": 0})
    assert isinstance(value, MappingProxyType)
    assert value == {"rope": 2}
    assert kind.to_json(kind.validate({"rope": 1, "key": 3})) == {"key": 3, "rope": 1}
    assert kind.render(kind.validate({"rope": 2, "key": 1})) == "1 key, 2 rope"
    assert kind.render(kind.validate({})) == "none"
    for bad in ({"sword": 1}, {"rope": 10}, {"rope": -1}, {"rope": True}, {"rope": 1.5}):
        with pytest.raises(ValueError, match="Input should be"):
            kind.validate(bad)


def test_set_and_counts_are_facts_only(write_policy: Writer) -> None:
    """A slot cannot be a set or counts: the text never holds one (SOP010 at the type)."""
    path = write_policy(
        policy=POLICY.replace("facts:\n", "slots:\n  bag: {type: set}\nfacts:\n"),
        catalog=CATALOG,
        decisions=DECISIONS,
    )
    with pytest.raises(PolicyLoadError) as info:
        load_policy(path)
    assert [p.code for p in info.value.problems] == ["SOP010"]


def test_facts_given_with_a_turn_are_what_decisions_read(gate: Agent) -> None:
    """The game state passed with a turn replaces the session's values before the turn runs."""
    session = gate.new_session(facts={"pack": {}, "flags": []})
    opening = gate.start(session)
    assert opening.text == "Hello. You carry none; flags: none."
    shut = gate.respond(session, "knock")
    assert shut.response_ids == ("shut", "hello")
    opened = gate.respond(session, "knock", facts={"pack": {"key": 1}, "mood": 1})
    assert opened.response_ids == ("opened", "hello")
    assert opened.responses[1].text == "Hello. You carry 1 key; flags: friend."
    assert seen(gate)[-1] == {"pack": {"key": 1}, "flags": frozenset(), "mood": 1}
    assert session.facts == {"pack": {"key": 1}, "flags": ["friend"], "mood": 1}


def test_none_clears_a_fact(gate: Agent) -> None:
    """A value of None in the game state removes the fact."""
    session = gate.new_session(facts={"gold": 3, "mood": 1, "pack": {}, "flags": []})
    gate.start(session)
    gate.respond(session, "knock", facts={"mood": None})
    assert "mood" not in session.facts
    assert session.facts["gold"] == 3


def test_facts_of_a_failed_turn_are_not_kept(gate: Agent) -> None:
    """The game state given with a turn that takes the error route is dropped with it."""
    session = gate.new_session(facts={"mood": 0, "pack": {}, "flags": []})
    gate.start(session)
    turn = gate.respond(session, "knock", facts={"mood": -3, "gold": 7})
    assert turn.error is not None
    assert "too angry" in turn.error
    assert session.facts == {"mood": 0, "pack": {}, "flags": []}


@pytest.mark.parametrize(
    ("facts", "message"),
    [
        ({"silver": 1}, "fact 'silver' is not declared"),
        ({"mood": 9}, "fact 'mood': Input should be less than or equal to 3"),
        ({"flags": ["enemy"]}, "fact 'flags'"),
        ({"gold": "lots"}, "fact 'gold': Input should be a valid integer"),
    ],
)
def test_bad_game_state_is_refused_before_the_turn(
    gate: Agent, facts: dict[str, object], message: str
) -> None:
    """An undeclared fact or a wrong value raises ValueError and changes nothing."""
    session = gate.new_session(facts={"pack": {}, "flags": []})
    gate.start(session)
    before = session.model_dump()
    with pytest.raises(ValueError, match=message):
        gate.respond(session, "knock", facts=facts)
    assert session.model_dump() == before


def test_an_ended_conversation_takes_no_game_state(write_policy: Writer) -> None:
    """After the end, a turn changes nothing, the facts given included."""
    policy = POLICY.replace("      knock: judge", "      knock: done").replace(
        "  judge:\n", "  done:\n    terminal: true\n  judge:\n"
    )
    path = write_policy(policy=policy, catalog=CATALOG, decisions=DECISIONS)
    agent = Agent(compile_policy(load_policy(path)), ScriptedBackend(), audit=MemorySink())
    session = agent.new_session(facts={"pack": {}, "flags": []})
    agent.start(session)
    assert agent.respond(session, "knock").ended is True
    agent.respond(session, "knock", facts={"gold": 4})
    assert "gold" not in session.facts
