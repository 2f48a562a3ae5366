"""Effects: declared, checked (SOP100-SOP104, SOP110, SOP112), emitted in order, rolled back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sopagent import (
    Agent,
    MemorySink,
    PolicyError,
    ScriptedBackend,
    Session,
    Turn,
    compile_policy,
    load_policy,
)
from sopagent.errors import Problem

Writer = Callable[..., Path]

POLICY = """\
sopagent: 1
name: stall
catalog: catalog.yaml
decisions: [decisions.py]
initial: open
intents:
  hello: {description: The player says hello., examples: [hello]}
  buy: {description: The player buys an apple., examples: [buy]}
  gift: {description: The player asks for a gift., examples: [gift]}
  leave: {description: The player leaves., examples: [leave]}
slots:
  price: {type: integer, min: 0, ask: ask_price}
facts:
  gold: {type: integer, min: 0}
  paid: {type: integer, min: 0}
  fruit: {type: enum, values: [apple, pear]}
  secret: {type: string, personal: true}
effects:
  wave:
    description: The stall keeper waves.
  give:
    params:
      item: {type: enum, values: [apple, pear]}
  pay:
    params:
      amount: {type: integer, min: 1}
  receipt:
    params:
      amount: {type: integer, min: 1}
  whisper:
    params:
      word: {type: string, personal: true}
global:
  on:
    leave: bye
  fallback: {say: sorry}
  error: {say: oops}
states:
  open:
    effects: [wave]
    decide: open_stall
    outcomes:
      open: {to: stall, say: welcome}
  stall:
    on:
      hello: {say: welcome, effects: [wave, {whisper: {word: {from: secret}}}]}
      gift: {say: here, effects: [{give: {item: {from: fruit}}}]}
      buy: {to: sell, require: [price]}
  sell:
    decide: sell
    outcomes:
      sold:
        to: stall
        say: sold
        effects:
          - give: {item: apple}
          - receipt: {amount: {from: paid}}
      poor: {to: stall, say: poor}
  bye:
    say: bye
    effects: [wave]
    terminal: true
"""

CATALOG = """\
sopagent: 1
catalog: stall
responses:
  welcome: Welcome.
  ask_price: How much?
  here: Here you go.
  sold: Sold.
  poor: Not enough gold.
  sorry: Sorry?
  oops: Something broke.
  bye: Bye.
"""

DECISIONS = """\
from sopagent import Effect, Outcome, decision

RETURN = {}


@decision(outcomes=["open"], reads=["gold"])
def open_stall(ctx):
    return "open"


@decision(outcomes=["sold", "poor"], reads=["price", "gold"], effects={"sold": ["pay"]})
def sell(ctx):
    price = ctx.slots["price"]
    if price > ctx.facts.get("gold", 0):
        return Outcome("poor", slots={"price": None})
    effects = RETURN.get("effects", [Effect(name="pay", args={"amount": price})])
    return Outcome("sold", slots={"price": None}, facts={"paid": price}, effects=effects)
"""


def stall(write_policy: Writer, **edits: Callable[[str], str]) -> Path:
    return write_policy(
        policy=edits.get("policy", lambda t: t)(POLICY),
        catalog=edits.get("catalog", lambda t: t)(CATALOG),
        decisions=edits.get("decisions", lambda t: t)(DECISIONS),
    )


def agent_of(path: Path) -> Agent:
    return Agent(
        compile_policy(load_policy(path)), ScriptedBackend(default=None), audit=MemorySink()
    )


def opened(agent: Agent, **facts: Any) -> tuple[Session, Turn]:
    session = agent.new_session(facts=facts)
    return session, agent.start(session)


def named(turn: Turn) -> list[tuple[str, dict[str, Any], str | None, str | None]]:
    return [(e.name, dict(e.args), e.state, e.origin) for e in turn.effects]


def errors(path: Path) -> tuple[Problem, ...]:
    with pytest.raises(PolicyError) as info:
        compile_policy(load_policy(path))
    return tuple(p for p in info.value.problems if p.severity == "error")


def line_of(path: Path, needle: str) -> int:
    lines = [i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    assert len(lines) == 1, lines
    return lines[0]


# --- run time ---------------------------------------------------------------------------------


def test_stall_compiles_without_problems(write_policy: Writer) -> None:
    """The policy of these tests is clean: every effect declared, used and well typed."""
    assert compile_policy(load_policy(stall(write_policy))).warnings == ()


def test_state_entry_effects_come_with_the_opening(write_policy: Writer) -> None:
    """Entering a state emits its effects; the opening turn returns them."""
    agent = agent_of(stall(write_policy))
    _, opening = opened(agent, gold=5)
    assert named(opening) == [("wave", {}, "open", "enter")]


def test_effects_follow_the_path_code_first_then_the_outcome_route(write_policy: Writer) -> None:
    """A decision's own effects come before its outcome route's, in path order."""
    agent = agent_of(stall(write_policy))
    session, _ = opened(agent, gold=5)
    turn = agent.respond(session, "buy 3", intent="buy")
    assert turn.path == ("sell", "stall")
    assert named(turn) == [
        ("pay", {"amount": 3}, "sell", "decide"),
        ("give", {"item": "apple"}, "sell", "outcome:sold"),
        ("receipt", {"amount": 3}, "sell", "outcome:sold"),
    ]
    assert session.facts["paid"] == 3


def test_route_effects_read_values_when_the_route_is_taken(write_policy: Writer) -> None:
    """``{from: fruit}`` takes the fact's value at the moment the effect is emitted."""
    agent = agent_of(stall(write_policy))
    session, _ = opened(agent, fruit="pear")
    gift = agent.respond(session, "gift")
    assert named(gift) == [("give", {"item": "pear"}, "stall", "intent:gift")]
    again = agent.respond(session, "gift", facts={"fruit": "apple"})
    assert named(again) == [("give", {"item": "apple"}, "stall", "intent:gift")]


def test_a_terminal_state_emits_its_effects_on_entry(write_policy: Writer) -> None:
    """Leaving enters the terminal state, whose effects come with the last turn."""
    agent = agent_of(stall(write_policy))
    session, _ = opened(agent)
    turn = agent.respond(session, "leave")
    assert named(turn) == [("wave", {}, "bye", "enter")]
    assert turn.ended is True


def test_turns_that_do_nothing_emit_nothing(write_policy: Writer) -> None:
    """Refusals, fallbacks and re-asks emit no effect."""
    agent = agent_of(stall(write_policy))
    session, _ = opened(agent, gold=1)
    assert agent.respond(session, "buy", intent="buy").effects == ()  # asks the price
    assert agent.respond(session, "buy 3", intent="buy").effects == ()  # poor
    assert agent.respond(session, "what?", intent="out_of_scope").effects == ()


def _failing_turn(write_policy: Writer, decisions: Callable[[str], str]) -> tuple[Turn, Session]:
    agent = agent_of(stall(write_policy, decisions=decisions))
    session, _ = opened(agent, gold=5)
    before = session.model_dump()
    turn = agent.respond(session, "buy 3", intent="buy")
    after = session.model_dump()
    for snapshot in (before, after):
        snapshot.pop("turns")
        snapshot.pop("history")
        snapshot.pop("usage")
    assert after == before
    return turn, session


@pytest.mark.parametrize(
    ("returned", "reason"),
    [
        ('[Effect(name="give", args={"item": "apple"})]', "does not declare for outcome 'sold'"),
        ('[Effect(name="pay", args={"amount": 0})]', "amount: Input should be greater than"),
        ('[Effect(name="pay", args={})]', "missing argument 'amount'"),
        ('[Effect(name="pay", args={"amount": 1, "tip": 2})]', "unknown argument 'tip'"),
        ('[("pay", 1)]', "returned tuple among its effects"),
    ],
)
def test_an_effect_the_code_may_not_return_takes_the_error_route(
    write_policy: Writer, returned: str, reason: str
) -> None:
    """An undeclared or ill-typed effect from code: error line, no effects, session kept."""
    turn, _ = _failing_turn(
        write_policy, lambda t: t.replace("RETURN = {}", f"RETURN = {{'effects': {returned}}}")
    )
    assert turn.error is not None
    assert reason in turn.error
    assert turn.effects == ()
    assert turn.response_ids == ("oops",)


def test_a_failing_decision_discards_effects_already_emitted(write_policy: Writer) -> None:
    """Effects emitted earlier in a turn that then fails are not returned: none are emitted."""
    path = stall(
        write_policy,
        policy=lambda t: t.replace(
            "      buy: {to: sell, require: [price]}",
            "      buy: {to: sell, require: [price], effects: [wave]}",
        ),
        decisions=lambda t: t.replace(
            "    price = ctx.slots", "    raise RuntimeError('no')\n    x ="
        ),
    )
    agent = agent_of(path)
    session, _ = opened(agent, gold=5)
    turn = agent.respond(session, "buy 3", intent="buy")
    assert turn.error is not None
    assert "RuntimeError" in turn.error
    assert turn.effects == ()
    events = agent.audit.events  # type: ignore[attr-defined]
    assert events[-1]["effects"] == []


def test_a_reference_without_a_value_takes_the_error_route(write_policy: Writer) -> None:
    """``{from: fruit}`` with no fruit set cannot be emitted: error line, session kept."""
    agent = agent_of(stall(write_policy))
    session, _ = opened(agent)
    state = session.state
    turn = agent.respond(session, "gift")
    assert turn.error is not None
    assert "{from: fruit} has no value" in turn.error
    assert turn.effects == ()
    assert session.state == state


def test_effects_are_in_the_audit_event_with_personal_arguments_masked(
    write_policy: Writer,
) -> None:
    """The audit event lists the effects; a parameter marked personal is a keyed hash."""
    agent = agent_of(stall(write_policy))
    session, _ = opened(agent, secret="open sesame")
    agent.respond(session, "hello")
    event = agent.audit.events[-1]  # type: ignore[attr-defined]
    assert [e["name"] for e in event["effects"]] == ["wave", "whisper"]
    assert event["effects"][1]["args"]["word"].startswith("hmac:")
    assert "open sesame" not in str(event)


def test_the_compiled_policy_shows_every_effect_without_running_code(
    write_policy: Writer,
) -> None:
    """effects_config lists declarations, entry, route and outcome effects and code effects."""
    compiled = compile_policy(load_policy(stall(write_policy)))
    config = compiled.effects_config()
    assert config["effects"]["pay"] == {
        "description": "",
        "params": {"amount": {"type": "integer", "min": 1}},
    }
    states = config["states"]
    assert states["open"]["enter"] == [{"name": "wave", "args": {}}]
    assert states["stall"]["routes"]["intent:gift"] == [
        {"name": "give", "args": {"item": {"from": "fruit"}}}
    ]
    assert states["sell"]["outcomes"]["sold"] == {
        "to": "stall",
        "effects": [
            {"name": "give", "args": {"item": "apple"}},
            {"name": "receipt", "args": {"amount": {"from": "paid"}}},
        ],
        "code": ["pay"],
    }
    assert states["sell"]["outcomes"]["poor"] == {"to": "stall", "effects": [], "code": []}
    assert states["bye"] == {"enter": [{"name": "wave", "args": {}}]}
    route = compiled.states["sell"].outcomes["sold"]
    assert [e.name for e in route.effects] == ["give", "receipt"]
    assert route.effects[1].refs == (("amount", "paid"),)


# --- the checker --------------------------------------------------------------------------------


def test_sop100_unknown_effect_in_a_route(write_policy: Writer) -> None:
    """An effect the policy does not declare is SOP100 at the route, with a suggestion."""
    path = stall(
        write_policy, policy=lambda t: t.replace("- give: {item: apple}", "- gvie: {item: apple}")
    )
    (problem,) = errors(path)
    assert problem.code == "SOP100"
    assert "did you mean 'give'" in problem.hint
    assert problem.location.line == line_of(path, "- gvie: {item: apple}")


def test_sop100_effect_a_decision_declares_but_the_policy_does_not(write_policy: Writer) -> None:
    """A decision function declaring an undeclared effect is SOP100 at its decide key."""
    path = stall(
        write_policy, decisions=lambda t: t.replace('{"sold": ["pay"]}', '{"sold": ["tip"]}')
    )
    codes = [p.code for p in errors(path)]
    assert codes == ["SOP100"]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("- give: {item: apple}", "- give: {item: apple, count: 2}", "has no parameter 'count'"),
        ("- give: {item: apple}", "- give: {}", "needs argument 'item'"),
        ("- give: {item: apple}", "- give: {item: plum}", "argument 'item' of effect 'give'"),
        ("- receipt: {amount: {from: paid}}", "- receipt: {amount: 0}", "greater than or equal"),
    ],
)
def test_sop101_arguments(write_policy: Writer, old: str, new: str, message: str) -> None:
    """Unknown, missing and invalid constant arguments are SOP101."""
    path = stall(write_policy, policy=lambda t: t.replace(old, new))
    (problem,) = errors(path)
    assert problem.code == "SOP101"
    assert message in problem.message


@pytest.mark.parametrize(
    ("new", "message"),
    [
        ("{from: nothing}", "neither a slot nor a fact"),
        ("{from: fruit}", "is integer, but 'fruit' is enum"),
    ],
)
def test_sop102_references(write_policy: Writer, new: str, message: str) -> None:
    """A ``{from: ...}`` naming no value, or a value of another type, is SOP102."""
    path = stall(
        write_policy, policy=lambda t: t.replace("{amount: {from: paid}}", f"{{amount: {new}}}")
    )
    (problem,) = errors(path)
    assert problem.code == "SOP102"
    assert message in problem.message


def test_sop102_enum_reference_with_values_the_parameter_refuses(write_policy: Writer) -> None:
    """An enum fact that may hold a value the parameter's enum lacks is SOP102."""
    path = stall(
        write_policy,
        policy=lambda t: t.replace(
            "values: [apple, pear]}\n  secret", "values: [apple, pear, plum]}\n  secret"
        ),
    )
    (problem,) = errors(path)
    assert problem.code == "SOP102"
    assert "plum" in problem.message


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("  error: {say: oops}", "  error: {say: oops, effects: [wave]}", "cannot emit effects"),
        ("  error: {say: oops}", "  error: {say: oops}\n  filler: {say: oops, to: bye}", "'to'"),
        (
            "  error: {say: oops}",
            "  error: {say: oops}\n  filler: {choose: [oops, sorry]}",
            "'choose'",
        ),
    ],
)
def test_sop103_error_routes_and_fillers_only_say_lines(
    write_policy: Writer, old: str, new: str, message: str
) -> None:
    """The error route emits no effects; a filler has no target, choice or effects."""
    path = stall(write_policy, policy=lambda t: t.replace(old, new))
    (problem,) = errors(path)
    assert problem.code == "SOP103"
    assert message in problem.message


def test_sop104_parameter_with_slot_only_keys(write_policy: Writer) -> None:
    """An effect parameter with ``ask`` is SOP104: only slots are asked for."""
    path = stall(
        write_policy,
        policy=lambda t: t.replace(
            "amount: {type: integer, min: 1}\n  receipt",
            "amount: {type: integer, min: 1, ask: ask_price}\n  receipt",
        ),
    )
    (problem,) = errors(path)
    assert problem.code == "SOP104"


def test_sop110_a_decision_reads_an_undeclared_value(write_policy: Writer) -> None:
    """``reads`` naming neither a slot nor a fact is SOP110 at the decide key."""
    path = stall(
        write_policy, decisions=lambda t: t.replace('reads=["gold"]', 'reads=["gold", "silver"]')
    )
    (problem,) = errors(path)
    assert problem.code == "SOP110"
    assert "'silver'" in problem.message
    assert problem.location.line == line_of(path, "decide: open_stall")


def test_sop112_declared_effect_emitted_nowhere_is_a_warning(write_policy: Writer) -> None:
    """An effect no route, state or decision emits is warned about, not refused."""
    path = stall(
        write_policy,
        policy=lambda t: t.replace("effects:\n  wave:", "effects:\n  shrug: {}\n  wave:"),
    )
    warnings = compile_policy(load_policy(path)).warnings
    assert [(w.code, w.severity) for w in warnings] == [("SOP112", "warning")]
    assert warnings[0].location.line == line_of(path, "shrug: {}")


def test_a_decision_sees_only_what_it_reads(write_policy: Writer) -> None:
    """With ``reads``, the context holds those values only; without, every value."""
    decisions = """\
from sopagent import decision

SEEN = []


@decision(outcomes=["open"], reads=["gold"])
def open_stall(ctx):
    SEEN.append((dict(ctx.slots), dict(ctx.facts)))
    return "open"


@decision(outcomes=["sold", "poor"])
def sell(ctx):
    SEEN.append((dict(ctx.slots), dict(ctx.facts)))
    return "poor"
"""
    path = stall(
        write_policy,
        decisions=lambda _: decisions,
        policy=lambda t: t.replace("          - receipt: {amount: {from: paid}}\n", ""),
    )
    agent = agent_of(path)
    session, _ = opened(agent, gold=5, fruit="pear")
    agent.respond(session, "buy 2", intent="buy")
    seen = agent.compiled.functions["open_stall"].__globals__["SEEN"]
    assert seen == [({}, {"gold": 5}), ({"price": 2}, {"gold": 5, "fruit": "pear"})]
