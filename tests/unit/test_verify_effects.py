"""Properties over effects: checked, proved on the abstract machine, searched on real code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from sopagent import Agent, PolicyError, ScriptedBackend, compile_policy, load_policy
from sopagent._compile import CompiledPolicy
from sopagent._verify import PropertyResult, Report, transcript, verify, write_counterexamples

Writer = Callable[..., Path]

SHOP_POLICY = """\
sopagent: 1
name: shop
description: Sells a key for gold.
catalog: catalog.yaml
decisions: [decisions.py]
initial: start
intents:
  buy:
    description: The user offers gold for the key.
    examples: [I offer 60 gold]
  swap:
    description: The user trades a moonstone for the key.
    examples: [take my moonstone]
  stop:
    description: The user leaves.
    examples: [bye]
slots:
  offer:
    {type: integer, min: 0, max: 500, ask: ask_offer, invalid: bad_offer, examples: [10, 45, 499]}
effects:
  take_gold:
    params: {amount: {type: integer, min: 1}}
  take_item:
    params: {item: {type: enum, values: [moonstone]}}
  give_item:
    params: {item: {type: enum, values: [silver_key, rope]}}
global:
  on:
    stop: done
  fallback: {say: sorry}
  error: {say: oops}
states:
  start:
    say: welcome
    on:
      buy: {to: weigh, require: [offer]}
      swap:
        to: sold_out
        say: swapped
        effects: SWAP
  weigh:
    decide: weigh
    outcomes:
      sold:
        to: sold_out
        say: sold
        effects:
          - give_item: {item: silver_key}
      low: {to: start, say: low}
  sold_out:
    say: thanks
    on:
      buy: {say: sold_out}
  done:
    say: bye
    terminal: true
"""

SHOP_CATALOG = """\
sopagent: 1
catalog: shop
responses:
  welcome: Welcome.
  ask_offer: How much do you offer?
  bad_offer: Offers go from 0 to 500 gold.
  sold: The key is yours.
  swapped: A fair swap.
  low: Too low.
  thanks: Thank you.
  sold_out: I have no more keys.
  sorry: Sorry?
  oops: Something broke.
  bye: Bye.
"""

SHOP_DECISIONS = """\
from sopagent import Effect, Outcome, decision


@decision(outcomes=["sold", "low"], effects={"sold": ["take_gold"]})
def weigh(ctx):
    offer = ctx.slots["offer"]
    if offer < PRICE:
        return Outcome("low", slots={"offer": None})
    return Outcome("sold", effects=[Effect(name="take_gold", args={"amount": offer})])
"""

SWAP_FIRST = "[{take_item: {item: moonstone}}, {give_item: {item: silver_key}}]"
GIVE_FIRST = "[{give_item: {item: silver_key}}, {take_item: {item: moonstone}}]"

PAID = """\
  key_paid_for:
    never: {effect: give_item, args: {item: silver_key}}
    before:
      - {effect: take_gold, where: "amount >= 50"}
      - {effect: take_item, args: {item: moonstone}}
"""


def shop(
    write_policy: Writer,
    properties: str,
    *,
    price: int = 50,
    swap: str = SWAP_FIRST,
) -> tuple[CompiledPolicy, Path]:
    """The shop policy with ``properties``, its decision's price and the swap route's effects."""
    path = write_policy(
        policy=SHOP_POLICY.replace("SWAP", swap) + "properties:\n" + properties,
        catalog=SHOP_CATALOG,
        decisions=f"PRICE = {price}\n" + SHOP_DECISIONS,
    )
    return compile_policy(load_policy(path)), path


def results(report: Report) -> dict[str, PropertyResult]:
    return {r.spec.id: r for r in report.results}


# --- the exhaustive engine ------------------------------------------------------------------


def test_constant_arguments_are_proved(write_policy: Writer) -> None:
    """Effects with constant arguments are known to the abstraction: it proves them."""
    compiled, _ = shop(
        write_policy,
        "  one_key: {at_most_once: {effect: give_item, args: {item: silver_key}}}\n"
        "  no_rope: {never: {effect: give_item, args: {item: rope}}}\n"
        "  only_there: {never: {effect: '*'}}\n"
        "  not_both: {never_both: [{effect: take_gold}, {effect: take_item}]}\n",
    )
    found = results(verify(compiled, engines=["exhaustive"]))
    assert found["one_key"].exhaustive.status == "proved"
    assert found["no_rope"].exhaustive.status == "proved"
    assert found["not_both"].exhaustive.status == "proved"
    # `never any effect` fails whatever the values: the swap route gives the key.
    assert found["only_there"].exhaustive.status == "violated"


def test_an_effect_earlier_in_the_same_turn_counts_as_before(write_policy: Writer) -> None:
    """take_item then give_item on one route keeps `give only after take`; the reverse breaks it."""
    prop = (
        "  swapped_first:\n"
        "    never: {effect: give_item, args: {item: silver_key}}\n"
        "    before: [{effect: take_item}, {decision: weigh, outcome: sold}]\n"
    )
    compiled, _ = shop(write_policy, prop)
    kept = results(verify(compiled, engines=["exhaustive"]))["swapped_first"]
    assert kept.exhaustive.status == "proved"
    compiled, _ = shop(write_policy, prop, swap=GIVE_FIRST)
    broken = results(verify(compiled, engines=["exhaustive"]))["swapped_first"]
    assert broken.exhaustive.status == "violated"
    example = broken.exhaustive.counterexample
    assert example is not None
    last = example.steps[-1]
    assert last.input is not None
    assert last.input.label == "swap"
    assert last.effects == ("give_item(item=silver_key)", "take_item(item=moonstone)")
    assert last.breaks == "effect give_item(item=silver_key)"
    text = "\n".join(transcript(example))
    assert "effects give_item(item=silver_key), take_item(item=moonstone)" in text


def test_arguments_the_abstraction_cannot_know_are_not_proved(write_policy: Writer) -> None:
    """An amount computed by code is unknown: `never` over it is left to the search, not proved."""
    compiled, _ = shop(
        write_policy,
        "  fair_price: {never: {effect: take_gold, where: 'amount < 50'}}\n"
        "  no_fortune: {never: {effect: take_gold, args: {amount: 499}}}\n" + PAID,
    )
    found = results(verify(compiled, examples=150))
    for pid in ("fair_price", "no_fortune", "key_paid_for"):
        assert found[pid].exhaustive.status == "unknown", pid
    assert found["fair_price"].search.status == "passed"
    assert found["key_paid_for"].search.status == "passed"
    assert found["key_paid_for"].verdict == "not_refuted"
    # The search tries the slot's examples, 499 among them: the code takes it.
    assert found["no_fortune"].search.status == "violated"


# --- the search engine ----------------------------------------------------------------------


def test_the_search_finds_a_key_sold_below_the_price(write_policy: Writer, tmp_path: Path) -> None:
    """A shop that sells from 40 breaks `key only for >= 50`; the transcript becomes a test."""
    compiled, path = shop(write_policy, PAID, price=40)
    report = verify(compiled, examples=300)
    result = results(report)["key_paid_for"]
    assert result.search.status == "violated"
    example = result.search.counterexample
    assert example is not None
    last = example.steps[-1]
    amount = int(last.effects[0].removeprefix("take_gold(amount=").rstrip(")"))
    assert 40 <= amount < 50
    assert last.effects[1] == "give_item(item=silver_key)"
    assert "!! effect give_item(item=silver_key)" in "\n".join(transcript(example))

    written = write_counterexamples(report, compiled, tmp_path / "found", path)
    (saved,) = [(p, why) for pid, p, why in written if pid == "key_paid_for"]
    assert saved[0] is not None, saved[1]
    document = yaml.safe_load(saved[0].read_text(encoding="utf-8"))
    (conversation,) = document["conversations"]
    agent = Agent(compiled, ScriptedBackend())
    session = agent.new_session(facts=conversation.get("facts"))
    replayed = []
    for step in conversation["steps"]:
        if "user" in step:
            turn = agent.respond(session, step["user"], intent=step.get("intent"))
        else:
            turn = agent.start(session)
        replayed.append([{e.name: dict(e.args)} for e in turn.effects])
        assert replayed[-1] == step["expect"]["effects"]
    assert replayed[-1] == [
        {"take_gold": {"amount": amount}},
        {"give_item": {"item": "silver_key"}},
    ]


# --- the checker ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "code", "words"),
    [
        ("{effect: give_itme}", "SOP079", "did you mean 'give_item'"),
        ("{effect: 'gift_*'}", "SOP079", "matches no effect"),
        ("{effect: give_item, args: {itme: silver_key}}", "SOP079", "no parameter 'itme'"),
        ("{effect: give_item, args: {item: golden_key}}", "SOP079", "not a valid item"),
        ("{effect: take_gold, args: {amount: 0}}", "SOP079", "not a valid amount"),
        ("{effect: take_gold, where: 'amont >= 50'}", "SOP075", "did you mean 'amount'"),
        ("{effect: take_gold, where: 'amount >= \"x\"'}", "SOP077", "compared with a number"),
    ],
)
def test_the_checker_validates_effect_events(
    write_policy: Writer, event: str, code: str, words: str
) -> None:
    """Unknown effects, parameters and values, and bad conditions are located problems."""
    path = write_policy(
        policy=SHOP_POLICY.replace("SWAP", SWAP_FIRST) + f"properties:\n  p: {{never: {event}}}\n",
        catalog=SHOP_CATALOG,
        decisions="PRICE = 50\n" + SHOP_DECISIONS,
    )
    with pytest.raises(PolicyError) as info:
        compile_policy(load_policy(path))
    problems = [p for p in info.value.problems if p.code == code]
    assert problems, [str(p) for p in info.value.problems]
    assert words in problems[0].message + " " + problems[0].hint
    assert problems[0].location.line > 0


def test_a_clean_effect_property_checks_clean(write_policy: Writer) -> None:
    """The shop with its effect properties compiles: no problem is found."""
    compiled, _ = shop(write_policy, PAID)
    assert list(compiled.policy.properties) == ["key_paid_for"]


def test_effects_returned_by_code_are_read_from_it(write_policy: Writer) -> None:
    """A literal `effects=[Effect(...)]` is read as certain; an expression leaves it possible."""
    prop = (
        "  paid_first:\n"
        "    never: {effect: give_item, args: {item: silver_key}}\n"
        "    before: [{effect: take_gold}, {effect: take_item}]\n"
        "    reset: {state: '*'}\n"
    )
    compiled, _ = shop(write_policy, prop)
    read = results(verify(compiled, engines=["exhaustive"]))["paid_first"]
    assert read.exhaustive.status == "proved"
    hidden = SHOP_DECISIONS.replace(
        'effects=[Effect(name="take_gold", args={"amount": offer})]',
        "effects=pay(offer)",
    ) + ('\n\ndef pay(offer):\n    return [Effect(name="take_gold", args={"amount": offer})]\n')
    path = write_policy(
        policy=SHOP_POLICY.replace("SWAP", SWAP_FIRST) + "properties:\n" + prop,
        catalog=SHOP_CATALOG,
        decisions="PRICE = 50\n" + hidden,
    )
    compiled = compile_policy(load_policy(path))
    unread = results(verify(compiled, examples=60))["paid_first"]
    assert unread.exhaustive.status == "unknown"
    assert unread.search.status == "passed"
