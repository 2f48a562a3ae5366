"""End to end: Bramble the merchant (policies/merchant_npc.yaml) driven by a scripted model."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import sopagent
from sopagent import Agent, CompiledPolicy, Context, MemorySink, ScriptedBackend, Session, Turn
from sopagent.decisions import import_decision_module

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "policies" / "merchant_npc.yaml"
DECISIONS = ROOT / "examples" / "npc" / "decisions.py"

# What the model would answer for texts that are not examples of an intent word for word.
SCRIPT = {
    "hi, nice shop": "greet",
    "what's for sale here?": "ask_wares",
    "I want that silver key": "buy_key",
    "fine, 60 gold then": "gold_offer",
    "I'll offer 30 gold": "gold_offer",
    "I'll pay 60 gold for it": "gold_offer",
    "50 gold, final offer": "gold_offer",
    "-5": "gold_offer",
    "here, take my moonstone for it": "trade_offer",
    "yes, the moonstone is yours": "affirm",
    "nah, keep the key": "deny",
    "see you around": "farewell",
}

INTENTS = [
    "greet",
    "ask_wares",
    "buy_key",
    "gold_offer",
    "trade_offer",
    "affirm",
    "deny",
    "farewell",
]


@cache
def compiled() -> CompiledPolicy:
    return sopagent.compile_policy(sopagent.load_policy(POLICY))


def merchant(backend: ScriptedBackend | None = None) -> Agent:
    backend = backend if backend is not None else ScriptedBackend(SCRIPT, default=None)
    return Agent(compiled(), backend, audit=MemorySink())


def talk(*lines: str, **facts: Any) -> tuple[Session, list[Turn]]:
    """Open the shop with ``facts`` and say ``lines``; return the session and every turn."""
    agent = merchant()
    session = agent.new_session(facts=facts)
    turns = [agent.start(session)]
    for line in lines:
        turn = agent.respond(session, line)
        assert turn.error is None, f"{line!r}: {turn.error}"
        turns.append(turn)
    return session, turns


def test_policy_compiles_without_warnings() -> None:
    """The policy, its catalog and its decision functions compile with no warnings."""
    assert compiled().warnings == ()
    assert list(compiled().policy.intents) == INTENTS


def test_opening_greets_and_sets_the_price() -> None:
    """The shop opens with the welcome line, the key's price from code and no trade yet."""
    session, (opening,) = talk(gold=80, has_moonstone=False, has_silver_key=False)
    assert opening.path == ("opening", "shop")
    assert opening.response_ids == ("welcome",)
    assert session.state == "shop"
    assert session.facts == {
        "gold": 80,
        "has_moonstone": False,
        "has_silver_key": False,
        "key_price": 50,
        "trade": "none",
    }


def test_missing_facts_default_to_an_empty_purse_and_pack() -> None:
    """Facts the game leaves out are filled in as no gold, no moonstone and no key."""
    session, _ = talk()
    assert session.facts["gold"] == 0
    assert session.facts["has_moonstone"] is False
    assert session.facts["has_silver_key"] is False


def test_chat_keeps_the_merchant_in_the_shop() -> None:
    """Greeting and asking about wares answer from the catalog and change nothing."""
    session, turns = talk("hello", "hi, nice shop", "what do you sell?", "no", gold=80)
    assert [t.response_ids for t in turns[1:]] == [
        ("greet_back",),
        ("greet_back",),
        ("wares",),
        ("just_browsing",),
    ]
    assert turns[3].text.endswith("50 gold, and worth every coin.")
    assert all(t.state_after == "shop" for t in turns)
    assert session.facts["trade"] == "none"


def test_buying_with_enough_gold_gives_the_key_and_takes_the_gold() -> None:
    """An affordable offer of 50 or more sells the key and lowers the gold by the offer."""
    session, turns = talk(
        "hello", "what do you sell?", "I want that silver key", "I'll give you 60 gold", gold=80
    )
    ask, offer = turns[3], turns[4]
    assert ask.state_after == "haggle"
    assert ask.response_ids == ("key_pitch", "ask_offer")
    assert offer.intent == "gold_offer"
    assert offer.slots == {"offer": 60}
    assert offer.path == ("weigh_offer", "sold_out")
    assert [(d.function, d.outcome) for d in offer.decisions] == [("weigh_offer", "sold")]
    assert offer.response_ids == ("key_sold",)
    assert "20 gold" in offer.text
    assert session.state == "sold_out"
    assert session.facts["gold"] == 20
    assert session.facts["has_silver_key"] is True
    assert session.facts["trade"] == "bought"
    assert session.slots == {}


def test_offer_named_with_the_request_is_weighed_at_once() -> None:
    """An amount said in the shop goes straight to the decision, without asking again."""
    session, turns = talk("I'll pay 60 gold for it", gold=100)
    assert turns[1].path == ("haggle", "weigh_offer", "sold_out")
    assert turns[1].response_ids == ("key_sold",)
    assert session.facts["gold"] == 40


def test_bare_amount_answers_the_merchants_question() -> None:
    """A bare number after 'how much gold?' is taken as the offer without a model call."""
    session, turns = talk("I want to buy the silver key", "55", gold=60)
    assert turns[2].intent_source == "slots"
    assert turns[2].model_calls == 0
    assert turns[2].response_ids == ("key_sold",)
    assert session.facts["gold"] == 5


def test_offer_of_exactly_the_price_and_the_whole_purse_is_accepted() -> None:
    """Fifty gold from a purse of fifty buys the key and empties the purse."""
    session, turns = talk("50 gold, final offer", gold=50)
    assert turns[1].response_ids == ("key_sold",)
    assert session.facts["gold"] == 0
    assert session.facts["has_silver_key"] is True


def test_offer_below_the_price_is_refused_with_a_counter() -> None:
    """An offer under 50 gold is refused with the counter line and no key changes hands."""
    session, turns = talk("sell me the silver key", "I'll offer 30 gold", gold=80)
    refused = turns[2]
    assert refused.path == ("weigh_offer", "consider_barter", "haggle")
    assert [d.outcome for d in refused.decisions] == ["too_low", "no_moonstone"]
    assert refused.response_ids == ("counter_low", "ask_offer")
    assert "Not a copper under 50 gold." in refused.text
    assert session.state == "haggle"
    assert session.slots == {}
    assert session.facts["gold"] == 80
    assert session.facts["has_silver_key"] is False
    assert session.facts["trade"] == "none"


def test_haggling_up_after_a_refusal_buys_the_key() -> None:
    """After a refused offer the player may raise it and buy the key."""
    session, turns = talk("I'll offer 30 gold", "fine, 60 gold then", gold=80)
    assert turns[1].response_ids == ("counter_low", "ask_offer")
    assert turns[2].response_ids == ("key_sold",)
    assert session.facts["gold"] == 20
    assert session.facts["trade"] == "bought"


def test_offer_above_the_purse_is_refused() -> None:
    """An offer of more gold than the player has is refused, even above the price."""
    session, turns = talk("sell me the silver key", "I'll give you 60 gold", gold=40)
    refused = turns[2]
    assert [d.outcome for d in refused.decisions] == ["cannot_afford", "no_moonstone"]
    assert refused.response_ids == ("counter_purse", "ask_offer")
    assert "Your purse holds 40 gold" in refused.text
    assert session.state == "haggle"
    assert session.facts["gold"] == 40
    assert session.facts["has_silver_key"] is False
    assert session.facts["trade"] == "none"


def test_negative_offer_is_rejected_as_invalid() -> None:
    """A negative amount is not an offer: the merchant asks again and nothing is decided."""
    session, turns = talk("sell me the silver key", "-5", gold=80)
    assert turns[2].invalid_slots.keys() == {"offer"}
    assert turns[2].decisions == ()
    assert turns[2].response_ids == ("offer_invalid",)
    assert session.state == "haggle"
    assert "offer" not in session.slots


def test_declining_to_haggle_returns_to_the_shop() -> None:
    """Saying no while haggling goes back to browsing with no trade."""
    session, turns = talk("sell me the silver key", "no deal", gold=80)
    assert turns[2].response_ids == ("no_deal",)
    assert session.state == "shop"
    assert session.facts["trade"] == "none"


def test_barter_with_a_moonstone_trades_it_for_the_key() -> None:
    """A player with a moonstone can trade it for the key; the gold is untouched."""
    session, turns = talk("here, take my moonstone for it", "yes", gold=10, has_moonstone=True)
    proposal, accepted = turns[1], turns[2]
    assert proposal.path == ("check_barter", "barter_offered")
    assert proposal.response_ids == ("barter_welcome",)
    assert accepted.path == ("barter", "sold_out")
    assert [(d.function, d.outcome) for d in accepted.decisions] == [("barter_key", "bartered")]
    assert accepted.response_ids == ("key_bartered",)
    assert session.facts == {
        "gold": 10,
        "has_moonstone": False,
        "has_silver_key": True,
        "key_price": 50,
        "trade": "bartered",
    }


def test_merchant_offers_a_barter_when_turning_gold_down() -> None:
    """Refusing an offer, the merchant proposes the trade if the player carries a moonstone."""
    session, turns = talk(
        "I'll give you 60 gold", "yes, the moonstone is yours", gold=40, has_moonstone=True
    )
    refused, accepted = turns[1], turns[2]
    assert [d.outcome for d in refused.decisions] == ["cannot_afford", "carries_moonstone"]
    assert refused.response_ids == ("counter_purse", "barter_pitch")
    assert refused.state_after == "barter_offered"
    assert accepted.response_ids == ("key_bartered",)
    assert session.facts["has_moonstone"] is False
    assert session.facts["has_silver_key"] is True
    assert session.facts["gold"] == 40


def test_declined_barter_keeps_the_moonstone() -> None:
    """Turning the trade down keeps the moonstone and goes back to haggling for gold."""
    session, turns = talk("I'll offer 30 gold", "nah, keep the key", gold=80, has_moonstone=True)
    assert turns[1].response_ids == ("counter_low", "barter_pitch")
    assert turns[2].response_ids == ("barter_declined", "ask_offer")
    assert session.state == "haggle"
    assert session.facts["has_moonstone"] is True
    assert session.facts["has_silver_key"] is False
    assert session.facts["trade"] == "none"


def test_player_without_a_moonstone_cannot_barter() -> None:
    """Offering a trade without a moonstone is turned down and nothing changes hands."""
    agent = merchant()
    session = agent.new_session(facts={"gold": 80, "has_moonstone": False})
    agent.start(session)
    refused = agent.respond(session, "here, take my moonstone for it")
    assert [d.outcome for d in refused.decisions] == ["no_moonstone"]
    assert refused.response_ids == ("no_moonstone", "ask_offer")
    assert refused.state_after == "haggle"
    # Even a model answering "affirm" cannot close a trade that was never offered.
    agreed = agent.respond(session, "yes, deal", intent="affirm")
    assert agreed.accepted is False
    assert agreed.decisions == ()
    assert agreed.response_ids == ("not_understood",)
    assert session.state == "haggle"
    assert session.facts["has_moonstone"] is False
    assert session.facts["has_silver_key"] is False
    assert session.facts["trade"] == "none"


def test_barter_decision_checks_the_moonstone_itself() -> None:
    """barter_key refuses without a moonstone even if a route ever reached it."""
    module = import_decision_module(str(DECISIONS), ROOT)
    context = Context.build(
        state="barter",
        intent="affirm",
        slots={},
        facts={"gold": 10, "has_moonstone": False},
        history=(),
        session_id="test",
        turn=1,
    )
    assert module.barter_key(context) == "no_moonstone"


def test_key_is_sold_only_once() -> None:
    """After the sale the merchant has no key left to sell or barter."""
    session, turns = talk(
        "I'll give you 60 gold",
        "I want that silver key",
        "I'll pay 60 gold for it",
        "here, take my moonstone for it",
        "what do you sell?",
        gold=200,
        has_moonstone=True,
    )
    assert [t.response_ids for t in turns[2:]] == [
        ("key_gone",),
        ("key_gone",),
        ("key_gone",),
        ("wares_sold_out",),
    ]
    assert all(t.decisions == () for t in turns[2:])
    assert session.facts["gold"] == 140
    assert session.facts["has_moonstone"] is True


def test_player_who_holds_the_key_is_welcomed_back() -> None:
    """A player who already holds the key is greeted as a customer and sold nothing."""
    session, turns = talk("sell me the silver key", gold=100, has_silver_key=True)
    assert turns[0].response_ids == ("welcome_back",)
    assert turns[1].response_ids == ("key_gone",)
    assert session.state == "sold_out"
    assert session.facts["gold"] == 100


def test_farewell_ends_the_conversation_from_any_waiting_state() -> None:
    """Goodbye is global: it ends the conversation while haggling too."""
    session, turns = talk("sell me the silver key", "see you around", gold=80)
    assert turns[2].response_ids == ("farewell",)
    assert session.state == "goodbye"
    assert session.ended is True


# --- only catalog lines, whatever the player and the model do ---------------------------------


def _template_pattern(text: str) -> re.Pattern[str]:
    parts = re.split(r"\{[a-z_][a-z0-9_]*\}", text)
    return re.compile(".+?".join(re.escape(part) for part in parts) + r"\Z", re.DOTALL)


def assert_catalog_only(turns: list[Turn]) -> None:
    responses = compiled().catalog.responses
    for turn in turns:
        for utterance in turn.responses:
            entry = responses[utterance.id]
            assert utterance.hash == entry.hash
            assert _template_pattern(entry.text).match(utterance.text), utterance


PLAYER_TEXTS = [
    *SCRIPT,
    "hello",
    "yes",
    "no",
    "bye",
    "45",
    "1,000 gold",
    "I'll give you 60 gold",
    "let me make you an offer",
    "how about a trade?",
    "what is the meaning of life?",
    "",
]
LABELS = [*INTENTS, "out_of_scope"]


@settings(max_examples=150, deadline=None, database=None)
@given(
    gold=st.integers(min_value=0, max_value=120),
    has_moonstone=st.booleans(),
    has_silver_key=st.booleans(),
    moves=st.lists(st.tuples(st.sampled_from(PLAYER_TEXTS), st.sampled_from(LABELS)), max_size=12),
)
def test_only_catalog_lines_are_said_and_trades_follow_the_rules(
    gold: int, has_moonstone: bool, has_silver_key: bool, moves: list[tuple[str, str]]
) -> None:
    """Any texts and model answers yield only catalog lines and trades the rules allow."""
    backend = ScriptedBackend([label for _, label in moves])
    agent = merchant(backend)
    session = agent.new_session(
        facts={"gold": gold, "has_moonstone": has_moonstone, "has_silver_key": has_silver_key}
    )
    turns = [agent.start(session)]
    turns += [agent.respond(session, text) for text, _ in moves]
    assert_catalog_only(turns)
    approved = {entry.hash for entry in compiled().catalog.responses.values()}
    assert isinstance(agent.audit, MemorySink)
    assert all(set(event["response_hashes"]) <= approved for event in agent.audit.events)

    facts = session.facts
    trade = facts["trade"]
    if trade == "bought":
        assert not has_silver_key
        assert facts["has_silver_key"] is True
        assert gold - facts["gold"] >= 50
        assert facts["gold"] >= 0
        assert facts["has_moonstone"] is has_moonstone
    elif trade == "bartered":
        assert not has_silver_key
        assert has_moonstone
        assert facts["has_moonstone"] is False
        assert facts["has_silver_key"] is True
        assert facts["gold"] == gold
    else:
        assert trade == "none"
        assert facts["gold"] == gold
        assert facts["has_moonstone"] is has_moonstone
        assert facts["has_silver_key"] is has_silver_key
