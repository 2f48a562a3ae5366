"""Decision functions of Bramble the merchant (policies/merchant_npc.yaml).

The rules of the trade live here, in code: the model only recognises what the player wants,
it never decides whether the key changes hands. The game passes the player's purse and pack in
as facts (``gold``, ``has_moonstone``, ``has_silver_key``) and reads the result back from the
same facts and from ``trade``.
"""

from __future__ import annotations

from sopagent import Context, Outcome, decision

KEY_PRICE = 50
"""The least gold Bramble takes for the silver key."""


_SHOP_FACTS = ["gold", "has_moonstone", "has_silver_key", "key_price", "trade"]


@decision(
    outcomes=["key_for_sale", "player_has_key"],
    sets={"key_for_sale": _SHOP_FACTS, "player_has_key": _SHOP_FACTS},
)
def open_shop(ctx: Context) -> Outcome:
    """Open the shop: fill in what the game left out and state the price of the key."""
    facts = {
        "gold": ctx.facts.get("gold", 0),
        "has_moonstone": ctx.facts.get("has_moonstone", False),
        "has_silver_key": ctx.facts.get("has_silver_key", False),
        "key_price": KEY_PRICE,
        "trade": "none",
    }
    if facts["has_silver_key"]:
        return Outcome("player_has_key", facts=facts)
    return Outcome("key_for_sale", facts=facts)


@decision(outcomes=["sold", "too_low", "cannot_afford"])
def weigh_offer(ctx: Context) -> Outcome:
    """Sell for an offer of at least KEY_PRICE the player can pay; always forget the offer."""
    offer = ctx.slots["offer"]
    gold = ctx.facts["gold"]
    if offer > gold:
        return Outcome("cannot_afford", slots={"offer": None})
    if offer < KEY_PRICE:
        return Outcome("too_low", slots={"offer": None})
    return Outcome(
        "sold",
        slots={"offer": None},
        facts={"gold": gold - offer, "has_silver_key": True, "trade": "bought"},
    )


@decision(outcomes=["carries_moonstone", "no_moonstone"])
def check_moonstone(ctx: Context) -> str:
    """Whether the player has the one thing Bramble would take instead of gold."""
    return "carries_moonstone" if ctx.facts.get("has_moonstone") else "no_moonstone"


@decision(outcomes=["bartered", "no_moonstone"])
def barter_key(ctx: Context) -> Outcome | str:
    """Swap the key for the moonstone; check the moonstone again so no path can skip it."""
    if not ctx.facts.get("has_moonstone"):
        return "no_moonstone"
    return Outcome(
        "bartered",
        slots={"offer": None},
        facts={"has_moonstone": False, "has_silver_key": True, "trade": "bartered"},
    )
