"""End to end: Bramble and Wren (policies/merchant_npc.yaml, warden_npc.yaml) on scripted labels."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sopagent
from sopagent import Agent, CompiledPolicy, Context, MemorySink, Npc, ScriptedBackend, Turn
from sopagent._yaml import read_yaml
from sopagent.decisions import import_decision_module

ROOT = Path(__file__).resolve().parents[2]
MERCHANT = ROOT / "policies" / "merchant_npc.yaml"
WARDEN = ROOT / "policies" / "warden_npc.yaml"
DECISIONS = ROOT / "examples" / "npc" / "decisions.py"

# What the model would answer for texts that are not examples of an intent word for word.
SCRIPT = {
    "hi, nice shop": "greet",
    "what's for sale here?": "ask_wares",
    "I want that silver key": "buy_key",
    "fine, 60 gold then": "buy_key",
    "I'll give you 60 gold": "buy_key",
    "I'll offer 30 gold": "buy_key",
    "I'll pay 60 gold for it": "buy_key",
    "50 gold, final offer": "buy_key",
    "-5": "buy_key",
    "here, take my moonstone for it": "trade_offer",
    "yes, the moonstone is yours": "affirm",
    "nah, keep the key": "deny",
    "see you around": "farewell",
}
INTENTS = ["greet", "ask_wares", "buy_key", "trade_offer", "affirm", "deny", "farewell"]
PURSE = {"gold": 80, "inventory": {}, "flags": []}


@cache
def compiled(path: Path = MERCHANT) -> CompiledPolicy:
    return sopagent.compile_policy(sopagent.load_policy(path))


def merchant(backend: ScriptedBackend | None = None) -> Agent:
    backend = backend if backend is not None else ScriptedBackend(SCRIPT, default=None)
    return Agent(compiled(), backend, audit=MemorySink())


def talk(*lines: str, **facts: Any) -> tuple[Npc, list[Turn]]:
    """Open the shop with the game state ``facts`` and say ``lines``; return the NPC and turns."""
    npc = Npc(merchant(), facts=facts)
    turns = [npc.start()]
    for line in lines:
        turn = npc.step(line)
        assert turn.error is None, f"{line!r}: {turn.error}"
        turns.append(turn)
    return npc, turns


def effects(turn: Turn) -> list[tuple[str, dict[str, Any]]]:
    return [(e.name, dict(e.args)) for e in turn.effects]


def test_policies_compile_without_warnings() -> None:
    """Both NPC policies, their catalogs, translations and decision functions have no warnings."""
    assert compiled().warnings == ()
    assert compiled(WARDEN).warnings == ()
    assert list(compiled().policy.intents) == INTENTS
    assert list(compiled().locales) == ["de"]


@pytest.mark.parametrize(
    ("schema", "document"),
    [
        ("policy.schema.json", "policies/merchant_npc.yaml"),
        ("policy.schema.json", "policies/warden_npc.yaml"),
        ("catalog.schema.json", "catalogs/merchant_npc_en.yaml"),
        ("catalog.schema.json", "catalogs/merchant_npc_de.yaml"),
        ("catalog.schema.json", "catalogs/warden_npc_en.yaml"),
        ("catalog.schema.json", "catalogs/warden_npc_de.yaml"),
    ],
)
def test_npc_files_validate_against_the_schemas(schema: str, document: str) -> None:
    """Effects in every shorthand, new fact types and translations validate in editors."""
    validator = jsonschema.Draft202012Validator(
        json.loads((ROOT / "schemas" / schema).read_text(encoding="utf-8"))
    )
    errors = [e.message for e in validator.iter_errors(read_yaml(ROOT / document).data)]
    assert errors == []


def test_the_policy_schema_rejects_a_malformed_effect() -> None:
    """An effect written with two names in one mapping is rejected by the schema too."""
    validator = jsonschema.Draft202012Validator(
        json.loads((ROOT / "schemas" / "policy.schema.json").read_text(encoding="utf-8"))
    )
    data = read_yaml(MERCHANT).data
    effects = data["states"]["barter"]["outcomes"]["bartered"]["effects"]
    effects[0] = {"take_item": {"item": "moonstone"}, "give_item": {"item": "silver_key"}}
    assert list(validator.iter_errors(data)) != []


def test_opening_sets_the_price_and_emits_nothing() -> None:
    """The shop opens with the welcome line, the key's price from code and no effect."""
    npc, (opening,) = talk(**PURSE)
    assert opening.path == ("opening", "shop")
    assert opening.response_ids == ("welcome",)
    assert opening.effects == ()
    assert npc.session.facts == {"gold": 80, "inventory": {}, "flags": [], "key_price": 50}


def test_chat_keeps_the_merchant_in_the_shop() -> None:
    """Greetings and questions about wares answer from the catalog and change nothing."""
    _npc, turns = talk("hello", "hi, nice shop", "what do you sell?", "no", **PURSE)
    assert turns[1].response_ids[0] in ("greet_back", "small_talk")
    assert turns[3].response_ids == ("wares",)
    assert turns[3].text.endswith("50 gold, and worth every coin.")
    assert turns[4].response_ids == ("just_browsing",)
    assert all(t.state_after == "shop" and t.effects == () for t in turns)


def test_buying_emits_take_gold_then_give_item() -> None:
    """An affordable offer of the price or more emits take_gold (from code), then give_item."""
    npc, turns = talk("I want that silver key", "I'll give you 60 gold", **PURSE)
    ask, offer = turns[1], turns[2]
    assert ask.state_after == "haggle"
    assert ask.response_ids == ("key_pitch", "ask_offer")
    assert offer.slots == {"offer": 60}
    assert offer.path == ("weigh_offer", "sold_out")
    assert offer.response_ids == ("key_sold",)
    assert "20 gold" in offer.text
    assert effects(offer) == [("take_gold", {"amount": 60}), ("give_item", {"item": "silver_key"})]
    assert [(e.state, e.origin) for e in offer.effects] == [
        ("weigh_offer", "decide"),
        ("weigh_offer", "outcome:sold"),
    ]
    assert npc.session.state == "sold_out"
    assert npc.session.slots == {}


def test_offer_named_with_the_request_is_weighed_at_once() -> None:
    """An amount said in the shop goes straight to the decision, without asking again."""
    _npc, turns = talk("I'll pay 60 gold for it", gold=100)
    assert turns[1].path == ("haggle", "weigh_offer", "sold_out")
    assert effects(turns[1])[0] == ("take_gold", {"amount": 60})


def test_bare_amount_answers_the_merchants_question() -> None:
    """A bare number after 'how much gold?' is the offer, taken without a model call."""
    _npc, turns = talk("I want to buy the silver key", "55", gold=60)
    assert turns[2].intent_source == "slots"
    assert turns[2].model_calls == 0
    assert effects(turns[2]) == [
        ("take_gold", {"amount": 55}),
        ("give_item", {"item": "silver_key"}),
    ]


def test_offer_below_the_price_is_refused_without_effects() -> None:
    """An offer under the price is refused with the counter line and nothing changes hands."""
    npc, turns = talk("sell me the key", "I'll offer 30 gold", **PURSE)
    refused = turns[2]
    assert refused.path == ("weigh_offer", "consider_barter", "haggle")
    assert [d.outcome for d in refused.decisions] == ["too_low", "no_moonstone"]
    assert refused.response_ids == ("counter_low", "ask_offer")
    assert refused.effects == ()
    assert npc.session.state == "haggle"


def test_offer_above_the_purse_is_refused() -> None:
    """An offer of more gold than the game says the player has is refused."""
    _npc, turns = talk("sell me the key", "I'll give you 60 gold", gold=40)
    refused = turns[2]
    assert [d.outcome for d in refused.decisions] == ["cannot_afford", "no_moonstone"]
    assert "Your purse holds 40 gold" in refused.text
    assert refused.effects == ()


def test_game_state_given_with_a_turn_is_what_the_decision_reads() -> None:
    """Gold the game passes with the turn, not the gold at the start, decides the sale."""
    npc = Npc(merchant(), facts={"gold": 10})
    npc.start()
    npc.step("sell me the key")
    refused = npc.step("I'll give you 60 gold")
    assert next(d.outcome for d in refused.decisions) == "cannot_afford"
    npc.step("sell me the key")
    sold = npc.step("I'll give you 60 gold", facts={"gold": 75})
    assert sold.response_ids == ("key_sold",)
    assert "15 gold" in sold.text


def test_barter_takes_the_moonstone_and_gives_the_key() -> None:
    """A player with a moonstone can trade it for the key; no gold moves."""
    _npc, turns = talk("here, take my moonstone for it", "yes", gold=10, inventory={"moonstone": 1})
    proposal, accepted = turns[1], turns[2]
    assert proposal.path == ("check_barter", "barter_offered")
    assert proposal.effects == ()
    assert accepted.path == ("barter", "sold_out")
    assert effects(accepted) == [
        ("take_item", {"item": "moonstone"}),
        ("give_item", {"item": "silver_key"}),
    ]


def test_player_without_a_moonstone_cannot_barter() -> None:
    """Offering a trade without a moonstone is turned down, and a forced yes does nothing."""
    npc = Npc(merchant(), facts={"gold": 80})
    npc.start()
    refused = npc.step("here, take my moonstone for it")
    assert refused.response_ids == ("no_moonstone", "ask_offer")
    agreed = npc.step("yes, deal", intent="affirm")
    assert agreed.response_ids == ("ask_offer",)
    assert agreed.effects == ()
    assert npc.session.state == "haggle"


def test_barter_decision_checks_the_moonstone_itself() -> None:
    """barter_key refuses without a moonstone even if a route ever reached it."""
    module = import_decision_module(str(DECISIONS), ROOT)
    context = Context.build(
        state="barter",
        intent="affirm",
        slots={},
        facts={"gold": 10, "inventory": {}},
        history=(),
        session_id="test",
        turn=1,
    )
    assert module.barter_key(context) == "no_moonstone"


def test_key_is_sold_only_once() -> None:
    """After the sale the merchant has no key left to sell or barter."""
    _npc, turns = talk(
        "I'll give you 60 gold",
        "I want that silver key",
        "I'll pay 60 gold for it",
        "here, take my moonstone for it",
        "what do you sell?",
        gold=200,
        inventory={"moonstone": 1},
    )
    assert [t.response_ids for t in turns[2:]] == [
        ("key_gone",),
        ("key_gone",),
        ("key_gone",),
        ("wares_sold_out",),
    ]
    assert all(t.effects == () for t in turns[2:])


def test_player_who_holds_the_key_is_welcomed_back() -> None:
    """A player whose pack holds the key is greeted as a customer and sold nothing."""
    _npc, turns = talk("sell me the key", gold=100, inventory={"silver_key": 1})
    assert turns[0].response_ids == ("welcome_back",)
    assert turns[1].response_ids == ("key_gone",)


def test_german_lines_keep_their_ids() -> None:
    """In German the merchant says the same line ids in German, exact examples in German."""
    npc = Npc(merchant(), facts={"gold": 80}, locale="de")
    opening = npc.start()
    assert opening.response_ids == ("welcome",)
    assert opening.responses[0].locale == "de"
    assert opening.text.startswith("Willkommen")
    turn = npc.step("verkauf mir den schlüssel")
    assert turn.intent_source == "example"
    assert turn.response_ids == ("key_pitch", "ask_offer")
    sold = npc.step("60")
    assert sold.text == "Abgemacht! Der silberne Schlüssel gehört dir. Bleiben dir 20 Gold für" + (
        " meine anderen feinen Waren."
    )
    assert effects(sold)[1] == ("give_item", {"item": "silver_key"})


# --- the two NPCs share the quest flag ------------------------------------------------------


def apply(world: dict[str, Any], turn: Turn) -> None:
    """What the game does with effects."""
    for effect in turn.effects:
        args = effect.args
        pack = world["inventory"]
        if effect.name == "give_item":
            pack[args["item"]] = pack.get(args["item"], 0) + 1
        elif effect.name == "take_item":
            pack[args["item"]] -= 1
        elif effect.name == "take_gold":
            world["gold"] -= args["amount"]
        elif effect.name == "give_gold":
            world["gold"] += args["amount"]
        elif effect.name == "set_flag":
            world["flags"].append(args["flag"])
        elif effect.name == "change_trust":
            world["trust"] += args["delta"]


def state_for(npc_agent: Agent, world: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in world.items() if k in npc_agent.compiled.fact_types}


def play(world: dict[str, Any], agent: Agent, *lines: str) -> list[Turn]:
    npc = Npc(agent, facts=state_for(agent, world))
    turns = [npc.start()]
    apply(world, turns[0])
    for line in lines:
        turns.append(npc.step(line, facts=state_for(agent, world)))
        assert turns[-1].error is None
        apply(world, turns[-1])
    return turns


def warden() -> Agent:
    return Agent(compiled(WARDEN), ScriptedBackend(default=None), audit=MemorySink())


def test_the_quest_flag_set_by_wren_lowers_brambles_price() -> None:
    """Wren's set_flag(crypt_quest) reaches Bramble through the game state: price 40, not 50."""
    world: dict[str, Any] = {"gold": 45, "inventory": {}, "flags": [], "trust": 0}
    before = play(dict(world, inventory={}, flags=[]), merchant(), "how much is the key?")
    assert "50 gold" in before[1].text
    wren = play(world, warden(), "can I help?", "yes")
    assert effects(wren[2]) == [
        ("start_quest", {"quest": "restless_crypt"}),
        ("set_flag", {"flag": "crypt_quest"}),
        ("give_item", {"item": "moonstone"}),
        ("change_trust", {"delta": 1}),
    ]
    assert world["flags"] == ["crypt_quest"]
    bramble = play(world, merchant(), "sell me the key", "42")
    assert bramble[0].response_ids == ("welcome_quest",)
    assert "40 gold" in bramble[0].text
    assert effects(bramble[2])[0] == ("take_gold", {"amount": 42})
    assert world["gold"] == 3


def test_the_whole_quest_with_the_barter() -> None:
    """Quest, moonstone, barter, key, unsealing: every effect in order, reward from a fact."""
    world: dict[str, Any] = {"gold": 35, "inventory": {"lantern": 1}, "flags": [], "trust": 0}
    play(world, warden(), "can I help?", "yes")
    play(world, merchant(), "take my moonstone", "yes")
    assert world["inventory"] == {"lantern": 1, "moonstone": 0, "silver_key": 1}
    back = play(world, warden(), "yes")
    assert back[0].response_ids == ("sees_key", "ask_unseal")
    assert back[1].response_ids == ("crypt_opened",)
    assert "30 gold" in back[1].text
    assert effects(back[1]) == [
        ("set_flag", {"flag": "crypt_open"}),
        ("complete_quest", {"quest": "restless_crypt"}),
        ("give_gold", {"amount": 30}),
    ]
    assert world["gold"] == 65
    assert play(world, warden())[0].response_ids == ("welcome_hero",)


def test_wren_turns_away_a_rude_player_and_the_quest_is_lost() -> None:
    """Insults cost trust (an effect); at -2 Wren ends the conversation and gives no quest."""
    world: dict[str, Any] = {"gold": 35, "inventory": {}, "flags": [], "trust": 0}
    turns = play(world, warden(), "you're useless", "can I help?")
    assert effects(turns[1]) == [("change_trust", {"delta": -1})]
    assert turns[2].response_ids == ("not_trusted",)
    last = play(world, warden(), "shut up")[1]
    assert last.response_ids == ("dismissal",)
    assert last.ended is True
    assert world["trust"] == -2


def test_a_player_on_the_quest_gets_the_moonstone_only_once() -> None:
    """Accepting again in a new conversation gives no second moonstone."""
    world: dict[str, Any] = {"gold": 0, "inventory": {}, "flags": [], "trust": 0}
    play(world, warden(), "can I help?", "yes")
    again = play(world, warden(), "you're useless", "can I help?", "yes")
    assert again[3].response_ids == ("quest_reminder",)
    assert again[3].effects == ()
    assert world["inventory"] == {"moonstone": 1}


def test_a_stale_game_state_cannot_get_the_moonstone_or_the_reward_twice() -> None:
    """A game that never applies Wren's effects still gets one moonstone and one reward."""
    stale = {"gold": 0, "inventory": {"silver_key": 0}, "flags": [], "trust": 0}
    npc = Npc(warden(), facts=stale)
    npc.start()
    said = ["can I help?", "yes", "you're useless", "can I help?", "yes"]
    turns = [npc.step(text, facts=stale) for text in said]
    moonstones = [e for t in turns for e in t.effects if e.name == "give_item"]
    assert len(moonstones) == 1
    assert turns[-1].response_ids == ("quest_reminder",)
    keyed = dict(stale, inventory={"silver_key": 1}, flags=["crypt_quest"])
    npc = Npc(warden(), facts=keyed)
    npc.start()
    said = ["yes", "you're useless", "can I help?", "yes", "I have the key", "yes"]
    turns = [npc.step(text, facts=keyed) for text in said]
    rewards = [e for t in turns for e in t.effects if e.name == "give_gold"]
    assert len(rewards) == 1
    assert turns[-1].response_ids == ("crypt_after",)


# --- only catalog lines and only trades the rules allow, whatever the model says --------------


def _template_pattern(text: str) -> re.Pattern[str]:
    parts = re.split(r"\{[a-z_][a-z0-9_]*\}", text)
    return re.compile(".+?".join(re.escape(part) for part in parts) + r"\Z", re.DOTALL)


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
    moonstone=st.booleans(),
    quest=st.booleans(),
    moves=st.lists(st.tuples(st.sampled_from(PLAYER_TEXTS), st.sampled_from(LABELS)), max_size=12),
)
def test_only_catalog_lines_are_said_and_the_key_moves_by_the_rules(
    gold: int, moonstone: bool, quest: bool, moves: list[tuple[str, str]]
) -> None:
    """Any texts and answers: catalog lines only; the key goes once, for its price or moonstone."""
    agent = merchant(ScriptedBackend([label for _, label in moves]))
    world = {"gold": gold, "inventory": {"moonstone": int(moonstone)}, "flags": []}
    if quest:
        world["flags"] = ["crypt_quest"]
    npc = Npc(agent, facts=world)
    turns = [npc.start()]
    turns += [npc.step(text) for text, _ in moves]
    responses = compiled().catalog.responses
    for turn in turns:
        for utterance in turn.responses:
            entry = responses[utterance.id]
            assert utterance.hash == entry.hash
            assert _template_pattern(entry.text).match(utterance.text), utterance
    emitted = [(e.name, dict(e.args)) for t in turns for e in t.effects]
    keys = [e for e in emitted if e == ("give_item", {"item": "silver_key"})]
    assert len(keys) <= 1
    price = 40 if quest else 50
    for turn in turns:
        names = [e.name for e in turn.effects]
        if "give_item" in names:
            paid = [e.args["amount"] for e in turn.effects if e.name == "take_gold"]
            bartered = ("take_item", {"item": "moonstone"}) in effects(turn)
            assert bartered or (len(paid) == 1 and price <= paid[0] <= gold)
            assert not (bartered and paid)
            assert not bartered or moonstone
        else:
            assert turn.effects == ()
    assert isinstance(agent.audit, MemorySink)
    logged = [(e["name"], e["args"]) for event in agent.audit.events for e in event["effects"]]
    assert logged == emitted
