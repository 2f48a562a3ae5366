"""Coverage of a policy by conversations: states entered, routes taken, intents, responses.

Routes are the transitions of the compiled machine (``machine_config()["transitions"]``): a
trigger (``intent:X``, ``outcome:Y``, ``filled``, ``fallback``, ``unsure``) from a source
state to a destination. A route that stays in its state (a line said in reply) is not a
transition and is covered through the responses it says.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sopagent._compile import CompiledPolicy
    from sopagent.session import Turn

__all__ = ["KINDS", "Coverage", "coverage_of", "route_name"]

KINDS = ("states", "routes", "intents", "responses")

Route = tuple[str, str, str]


def route_name(route: Route) -> str:
    """A route as text: ``source -[trigger]-> dest``."""
    trigger, source, dest = route
    return f"{source} -[{trigger}]-> {dest}"


@dataclass
class Coverage:
    """What of one policy a set of conversations reached.

    Attributes:
        compiled: the policy.
        conversations: how many conversations were counted.
        covered: for each kind of `KINDS`, the names reached (routes as `route_name`).
    """

    compiled: CompiledPolicy
    conversations: int = 0
    covered: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in KINDS})

    def universe(self, kind: str) -> list[str]:
        """Everything of ``kind`` the policy has, in the policy's order."""
        compiled = self.compiled
        if kind == "states":
            return list(compiled.states)
        if kind == "routes":
            return [
                route_name((t["trigger"], t["source"], t["dest"]))
                for t in compiled.machine_config()["transitions"]
            ]
        if kind == "intents":
            return list(compiled.policy.intents)
        return list(compiled.catalog.responses)

    def add(self, turn: Turn, routes: Iterable[Route]) -> None:
        """Count one turn and the transitions it fired (a failed turn counts for nothing)."""
        if turn.error is not None:
            return
        self.covered["states"].update(turn.path)
        self.covered["routes"].update(route_name(r) for r in routes)
        if turn.intent is not None:
            self.covered["intents"].add(turn.intent)
        self.covered["responses"].update(turn.response_ids)

    def missing(self, kind: str) -> list[str]:
        """What of ``kind`` no conversation reached, in the policy's order."""
        reached = self.covered[kind]
        return [name for name in self.universe(kind) if name not in reached]

    def ratio(self, kind: str) -> float:
        """The share of ``kind`` reached, 1.0 when the policy has none."""
        universe = self.universe(kind)
        if not universe:
            return 1.0
        reached = self.covered[kind]
        return sum(1 for name in universe if name in reached) / len(universe)

    def to_json(self) -> dict[str, Any]:
        """As plain JSON: per kind, the counts, the share and what is missing."""
        out: dict[str, Any] = {
            "policy": self.compiled.name,
            "policy_hash": self.compiled.hash,
            "conversations": self.conversations,
        }
        for kind in KINDS:
            universe = self.universe(kind)
            missing = self.missing(kind)
            out[kind] = {
                "total": len(universe),
                "covered": len(universe) - len(missing),
                "ratio": round(self.ratio(kind), 4),
                "missing": missing,
            }
        return out

    def render(self, *, limit: int = 12) -> list[str]:
        """As lines of text, with up to ``limit`` missing names per kind."""
        lines = [
            f"coverage of {self.compiled.name} ({self.compiled.hash}) by"
            f" {self.conversations} conversation{'s' if self.conversations != 1 else ''}:"
        ]
        for kind in KINDS:
            universe = self.universe(kind)
            missing = self.missing(kind)
            covered = len(universe) - len(missing)
            line = f"  {kind:<10} {covered:>4}/{len(universe):<4} {self.ratio(kind):>6.1%}"
            if missing:
                shown = ", ".join(missing[:limit])
                more = f", and {len(missing) - limit} more" if len(missing) > limit else ""
                line += f"  missing: {shown}{more}"
            lines.append(line)
        return lines


def coverage_of(compiled: Sequence[CompiledPolicy], results: Iterable[Any]) -> list[Coverage]:
    """The coverage of each policy by the conversation results that ran on it.

    Args:
        compiled: the policies, in the order to report them.
        results: `sopagent._testing.ConversationResult` objects.
    """
    by_hash = {c.hash: Coverage(c) for c in compiled}
    for result in results:
        target = by_hash.get(result.policy_hash)
        if target is None:
            continue
        target.conversations += 1
        for turn, routes in result.turns():
            target.add(turn, routes)
    return list(by_hash.values())
