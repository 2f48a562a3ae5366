"""Decision functions of Bramble the merchant (policies/merchant_npc.yaml).

The rules of the trade live here, in code: the model only recognises what the player wants,
it never decides whether the key changes hands. The game passes its state in with every turn
(``gold``, ``inventory``, ``flags``); what changes hands goes back to the game as effects
(``take_gold`` from here, ``give_item`` and ``take_item`` from the policy's routes).
"""

from __future__ import annotations

from sopagent import Context, Effect, Outcome, decision

KEY_PRICE = 50
"""The least gold Bramble takes for the silver key."""
QUEST_PRICE = 40
"""His price for a player on Wren's crypt quest."""


def _carries(ctx: Context, item: str) -> bool:
    return ctx.facts.get("inventory", {}).get(item, 0) > 0


@decision(
    outcomes=["key_for_sale", "quest_discount", "player_has_key"],
    reads=["inventory", "flags"],
    sets={
        outcome: ["key_price"] for outcome in ("key_for_sale", "quest_discount", "player_has_key")
    },
)
def open_shop(ctx: Context) -> Outcome:
    """Open the shop: the key's price depends on whether Wren sent the player."""
    if _carries(ctx, "silver_key"):
        return Outcome("player_has_key", facts={"key_price": KEY_PRICE})
    if "crypt_quest" in ctx.facts.get("flags", frozenset()):
        return Outcome("quest_discount", facts={"key_price": QUEST_PRICE})
    return Outcome("key_for_sale", facts={"key_price": KEY_PRICE})


@decision(
    outcomes=["sold", "too_low", "cannot_afford"],
    reads=["offer", "gold", "key_price"],
    effects={"sold": ["take_gold"]},
    sets={"cannot_afford": ["gold"], "sold": ["gold"]},
)
def weigh_offer(ctx: Context) -> Outcome:
    """Sell for an offer of at least the price that the player can pay; forget the offer."""
    offer = ctx.slots["offer"]
    gold = ctx.facts.get("gold", 0)
    if offer > gold:
        # The purse as Bramble counted it (empty when the game sent none), for his line.
        return Outcome("cannot_afford", slots={"offer": None}, facts={"gold": gold})
    if offer < ctx.facts["key_price"]:
        return Outcome("too_low", slots={"offer": None})
    return Outcome(
        "sold",
        slots={"offer": None},
        # Bramble's own view of the purse, for the line he says; the game applies the effect.
        facts={"gold": gold - offer},
        effects=[Effect(name="take_gold", args={"amount": offer})],
    )


@decision(outcomes=["carries_moonstone", "no_moonstone"], reads=["inventory"])
def check_moonstone(ctx: Context) -> str:
    """Whether the player has the one thing Bramble would take instead of gold."""
    return "carries_moonstone" if _carries(ctx, "moonstone") else "no_moonstone"


@decision(outcomes=["bartered", "no_moonstone"], reads=["inventory"])
def barter_key(ctx: Context) -> Outcome | str:
    """Swap the key for the moonstone; check the moonstone again so no path can skip it."""
    if not _carries(ctx, "moonstone"):
        return "no_moonstone"
    return Outcome("bartered", slots={"offer": None})
