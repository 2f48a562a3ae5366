"""Decision functions of Wren the warden (policies/warden_npc.yaml).

The game passes its state in with every turn: ``gold``, ``inventory``, ``flags`` (shared with
Bramble the merchant) and ``trust`` (Wren's relationship with the player). Every decision
reads only what it declares; what it changes is told to the game as the effects of the
outcome's route in the policy. Each function also updates Wren's own view of the flags, and
her own memory (``gave_moonstone``, ``paid_reward``: facts the game never sends), so that no
game state, however stale, gets the moonstone or the reward twice out of one conversation.
"""

from __future__ import annotations

from sopagent import Context, Outcome, decision

REWARD = 30
"""The gold Wren pays for unsealing the crypt."""
DISMISS_AT = -2
"""At this trust Wren turns the player away."""


def _flags(ctx: Context) -> frozenset[str]:
    flags: frozenset[str] = ctx.facts.get("flags", frozenset())
    return flags


def _has_key(ctx: Context) -> bool:
    return ctx.facts.get("inventory", {}).get("silver_key", 0) > 0


@decision(outcomes=["stranger", "on_quest", "has_key", "crypt_open"], reads=["flags", "inventory"])
def greet_player(ctx: Context) -> str:
    """Where the conversation starts: how far the player has come with the quest."""
    flags = _flags(ctx)
    if "crypt_open" in flags:
        return "crypt_open"
    if "crypt_quest" in flags:
        return "has_key" if _has_key(ctx) else "on_quest"
    return "stranger"


@decision(outcomes=["trusted", "distrusted"], reads=["trust"])
def judge_player(ctx: Context) -> str:
    """Wren offers the quest only to a player she does not distrust."""
    return "trusted" if ctx.facts.get("trust", 0) >= 0 else "distrusted"


@decision(
    outcomes=["accepted", "accepted_with_key", "already_on_quest"],
    reads=["flags", "inventory", "gave_moonstone"],
)
def accept_quest(ctx: Context) -> Outcome | str:
    """Start the quest once; the moonstone is for a player who still needs the key."""
    flags = _flags(ctx)
    if "crypt_quest" in flags or ctx.facts.get("gave_moonstone"):
        return "already_on_quest"
    outcome = "accepted_with_key" if _has_key(ctx) else "accepted"
    return Outcome(outcome, facts={"flags": flags | {"crypt_quest"}, "gave_moonstone": True})


@decision(outcomes=["has_key", "no_key"], reads=["inventory"])
def check_key(ctx: Context) -> str:
    """Whether the player really carries the silver key."""
    return "has_key" if _has_key(ctx) else "no_key"


@decision(
    outcomes=["opened", "no_key", "already_open"],
    reads=["flags", "inventory", "paid_reward"],
    sets={"opened": ["reward", "paid_reward"]},
)
def open_crypt(ctx: Context) -> Outcome | str:
    """Unseal the crypt with the key, once, and set the reward the route pays out."""
    flags = _flags(ctx)
    if "crypt_open" in flags or ctx.facts.get("paid_reward"):
        return "already_open"
    if not _has_key(ctx):
        return "no_key"
    facts = {"flags": flags | {"crypt_open"}, "reward": REWARD, "paid_reward": True}
    return Outcome("opened", facts=facts)


@decision(outcomes=["warned", "dismissed"], reads=["trust"])
def take_offence(ctx: Context) -> str:
    """Rudeness costs one trust; a player who falls to DISMISS_AT is sent away."""
    return "dismissed" if ctx.facts.get("trust", 0) - 1 <= DISMISS_AT else "warned"
