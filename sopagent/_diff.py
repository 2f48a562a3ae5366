"""Semantic diff of two versions of a policy: what changed, and what conversations it changes.

Three layers, each easy to read on its own:

* **structure**: intents, slots, facts, global routes, states (each of their routes and keys),
  decision functions (declared outcomes, code), properties; each change says whether it can
  change behaviour (a description of a state cannot; an intent's examples can, through the
  model);
* **catalog**: responses added, removed or reworded, and the approvals the rewording
  invalidates;
* **conversations**: both abstract machines (`sopagent._explore`) are explored side by side
  over the same messages, each version's set of possible sessions kept per trace, up to a
  number of turns. A turn one version can take and the other cannot, after the same
  conversation so far, is a witness of a conversation newly possible or no longer possible;
  the shortest ones are reported.
"""

from __future__ import annotations

import hashlib
import inspect
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sopagent._compile import CompiledPolicy, CompiledState
from sopagent._explore import AbstractMachine, Input, Node, TurnPath
from sopagent.policy import OUT_OF_SCOPE, Catalog, Route

__all__ = [
    "Change",
    "ConversationDiff",
    "PolicyDiff",
    "Witness",
    "diff_policies",
    "inline_approvals",
    "invalidated_approvals",
]

Kind = Literal["added", "removed", "changed"]


@dataclass(frozen=True)
class Change:
    """One difference between the versions.

    Attributes:
        area: ``intent``, ``slot``, ``fact``, ``global``, ``state``, ``route``, ``decision``,
            ``property``, ``policy``, ``response``, ``approval``.
        kind: added, removed or changed.
        name: what changed, e.g. ``confirm_refund`` or ``confirm_refund on affirm``.
        detail: how, in words.
        semantic: whether it can change what the agent does or says.
    """

    area: str
    kind: Kind
    name: str
    detail: str = ""
    semantic: bool = True
    old: Any = None
    new: Any = None

    def __str__(self) -> str:
        text = f"{self.kind} {self.area} {self.name}"
        return f"{text}: {self.detail}" if self.detail else text

    def to_json(self) -> dict[str, Any]:
        """The change as plain JSON."""
        return {
            "area": self.area,
            "kind": self.kind,
            "name": self.name,
            "detail": self.detail,
            "semantic": self.semantic,
            "old": self.old,
            "new": self.new,
        }


@dataclass(frozen=True)
class Exchange:
    """One turn of a witness: the message and what the agent did."""

    message: str
    path: tuple[str, ...]
    responses: tuple[str, ...]
    ended: bool
    failed: bool

    def describe(self) -> str:
        """The turn in words."""
        moves = " > ".join(self.path) or "stays"
        if self.failed:
            moves = "error route"
        said = ", ".join(self.responses) or "-"
        return f"{self.message}: {moves}; says {said}" + (" (ends)" if self.ended else "")

    def to_json(self) -> dict[str, Any]:
        """The turn as plain JSON."""
        return {
            "message": self.message,
            "path": list(self.path),
            "responses": list(self.responses),
            "ended": self.ended,
            "failed": self.failed,
        }


@dataclass(frozen=True)
class Witness:
    """A shortest conversation one version allows and the other does not.

    Attributes:
        direction: ``new`` (only the new version allows it) or ``old``.
        before: the turns both versions can take, the opening first.
        last: the turns only one version can take next on the same message.
        instead: what the other version does with that message there.
    """

    direction: Literal["new", "old"]
    before: tuple[Exchange, ...]
    last: tuple[Exchange, ...]
    instead: tuple[Exchange, ...]

    @property
    def turns(self) -> int:
        """User turns, the last included."""
        return len(self.before)  # the opening is in ``before``; the last turn adds one

    def to_json(self) -> dict[str, Any]:
        """The witness as plain JSON."""
        return {
            "direction": self.direction,
            "turns": self.turns,
            "before": [t.to_json() for t in self.before],
            "last": [t.to_json() for t in self.last],
            "instead": [t.to_json() for t in self.instead],
        }


@dataclass
class ConversationDiff:
    """Conversations newly possible or no longer possible, up to ``max_turns``."""

    max_turns: int
    newly_possible: list[Witness] = field(default_factory=list)
    no_longer_possible: list[Witness] = field(default_factory=list)
    pairs: int = 0
    truncated: bool = False

    @property
    def same(self) -> bool:
        """Whether both versions allow the same conversations up to ``max_turns``."""
        return not self.newly_possible and not self.no_longer_possible


@dataclass
class PolicyDiff:
    """The whole diff."""

    old_name: str
    new_name: str
    old_hash: str
    new_hash: str
    changes: list[Change]
    conversations: ConversationDiff

    @property
    def semantic(self) -> bool:
        """Whether the versions can behave differently."""
        return any(c.semantic for c in self.changes) or not self.conversations.same

    @property
    def invalidated(self) -> list[Change]:
        """Approvals the new version invalidates."""
        return [c for c in self.changes if c.area == "approval"]

    def to_json(self) -> dict[str, Any]:
        """The diff as plain JSON."""
        conversations = self.conversations
        return {
            "old": {"policy": self.old_name, "hash": self.old_hash},
            "new": {"policy": self.new_name, "hash": self.new_hash},
            "semantic": self.semantic,
            "changes": [c.to_json() for c in self.changes if c.area != "approval"],
            "approvals_invalidated": [c.to_json() for c in self.invalidated],
            "conversations": {
                "max_turns": conversations.max_turns,
                "same": conversations.same,
                "compared": conversations.pairs,
                "truncated": conversations.truncated,
                "newly_possible": [w.to_json() for w in conversations.newly_possible],
                "no_longer_possible": [w.to_json() for w in conversations.no_longer_possible],
            },
        }


# --- structure --------------------------------------------------------------------------------


def _route(route: Route | None) -> dict[str, Any] | None:
    if route is None:
        return None
    return route.model_dump(exclude_defaults=True)


def _describe_route(route: dict[str, Any] | None) -> str:
    if route is None:
        return "none"
    parts = []
    if route.get("to"):
        parts.append(f"to {route['to']}")
    if route.get("say"):
        parts.append("say " + ", ".join(route["say"]))
    if route.get("choose"):
        parts.append("choose " + "|".join(route["choose"]))
    if route.get("require"):
        parts.append("require " + ", ".join(route["require"]))
    return "; ".join(parts) or "stay"


def _mapping_changes(
    area: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    label: Callable[[str], str] = str,
    describe: Callable[[Any], str] = str,
    semantic: bool = True,
) -> list[Change]:
    changes: list[Change] = []
    for name in new:
        if name not in old:
            changes.append(
                Change(area, "added", label(name), describe(new[name]), semantic, None, new[name])
            )
        elif old[name] != new[name]:
            changes.append(
                Change(
                    area,
                    "changed",
                    label(name),
                    f"{describe(old[name])} -> {describe(new[name])}",
                    semantic,
                    old[name],
                    new[name],
                )
            )
    for name in old:
        if name not in new:
            changes.append(
                Change(area, "removed", label(name), describe(old[name]), semantic, old[name], None)
            )
    return changes


_STATE_KEYS = ("say", "choose", "collect", "decide", "terminal", "globals")


def _state_changes(old: CompiledPolicy, new: CompiledPolicy) -> list[Change]:
    changes: list[Change] = []
    old_states, new_states = old.policy.states, new.policy.states
    for name, state in new_states.items():
        if name not in old_states:
            changes.append(Change("state", "added", name, _state_kind(state)))
    for name in old_states:
        if name not in new_states:
            changes.append(Change("state", "removed", name, _state_kind(old_states[name])))
    for name in new_states:
        if name not in old_states:
            continue
        before, after = old_states[name], new_states[name]
        for key in _STATE_KEYS:
            a, b = getattr(before, key), getattr(after, key)
            if a != b:
                changes.append(
                    Change("state", "changed", name, f"{key}: {a!r} -> {b!r}", True, a, b)
                )
        if before.description != after.description:
            changes.append(
                Change(
                    "state",
                    "changed",
                    name,
                    "description",
                    False,
                    before.description,
                    after.description,
                )
            )
        if before.confidence != after.confidence:
            changes.append(
                Change(
                    "state",
                    "changed",
                    name,
                    "confidence rule",
                    True,
                    None if before.confidence is None else before.confidence.model_dump(),
                    None if after.confidence is None else after.confidence.model_dump(),
                )
            )
        routes_before = {f"on {i}": _route(r) for i, r in before.on.items()}
        routes_after = {f"on {i}": _route(r) for i, r in after.on.items()}
        routes_before |= {f"outcome {o}": _route(r) for o, r in before.outcomes.items()}
        routes_after |= {f"outcome {o}": _route(r) for o, r in after.outcomes.items()}
        for key in ("filled", "fallback"):
            routes_before[key] = _route(getattr(before, key))
            routes_after[key] = _route(getattr(after, key))
        changes += _mapping_changes(
            "route",
            {k: v for k, v in routes_before.items() if v is not None},
            {k: v for k, v in routes_after.items() if v is not None},
            label=_prefixed(name),
            describe=_describe_route,
        )
    return changes


def _prefixed(prefix: str) -> Callable[[str], str]:
    return lambda key: f"{prefix} {key}"


def _state_kind(state: Any) -> str:
    if state.terminal:
        return "terminal"
    if state.decide:
        return f"decides {state.decide}"
    return "waits"


def _source_hash(function: Any) -> str | None:
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _decision_changes(old: CompiledPolicy, new: CompiledPolicy) -> list[Change]:
    used_old = {s.decide for s in old.policy.states.values() if s.decide}
    used_new = {s.decide for s in new.policy.states.values() if s.decide}
    changes: list[Change] = []
    for name in sorted(used_old | used_new):
        before, after = old.functions.get(name), new.functions.get(name)
        if before is None or after is None:
            kind: Kind = "added" if before is None else "removed"
            changes.append(Change("decision", kind, name))
            continue
        a, b = before.__sopagent_outcomes__, after.__sopagent_outcomes__
        for outcome in b:
            if outcome not in a:
                changes.append(Change("decision", "added", f"{name} outcome {outcome}"))
        for outcome in a:
            if outcome not in b:
                changes.append(Change("decision", "removed", f"{name} outcome {outcome}"))
        if _source_hash(before) != _source_hash(after) or (
            inspect.getmodule(before) is not inspect.getmodule(after)
            and _module_hash(before) != _module_hash(after)
        ):
            changes.append(Change("decision", "changed", name, "its code changed"))
    return changes


def _module_hash(function: Any) -> str | None:
    module = inspect.getmodule(function)
    if module is None:
        return None
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _dump(items: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: item.model_dump(exclude_defaults=True, by_alias=True) for name, item in items.items()
    }


def _structure(old: CompiledPolicy, new: CompiledPolicy) -> list[Change]:
    a, b = old.policy, new.policy
    changes: list[Change] = []
    for key, semantic in (("description", True), ("version", False), ("initial", True)):
        before, after = getattr(a, key), getattr(b, key)
        if before != after:
            changes.append(
                Change(
                    "policy", "changed", key, f"{before!r} -> {after!r}", semantic, before, after
                )
            )
    intents_old, intents_new = _dump(a.intents), _dump(b.intents)
    changes += _mapping_changes(
        "intent", intents_old, intents_new, describe=lambda i: i.get("description", "")
    )
    if a.out_of_scope != b.out_of_scope:
        changes.append(Change("intent", "changed", OUT_OF_SCOPE, "description or examples"))
    changes += _mapping_changes(
        "slot", _dump(a.slots), _dump(b.slots), describe=lambda s: s.get("type", "")
    )
    changes += _mapping_changes(
        "fact", _dump(a.facts), _dump(b.facts), describe=lambda s: s.get("type", "")
    )
    globals_old = {f"on {i}": _route(r) for i, r in a.global_.on.items()}
    globals_new = {f"on {i}": _route(r) for i, r in b.global_.on.items()}
    for key in ("fallback", "error"):
        globals_old[key] = _route(getattr(a.global_, key))
        globals_new[key] = _route(getattr(b.global_, key))
    changes += _mapping_changes("global", globals_old, globals_new, describe=_describe_route)
    if a.global_.confidence != b.global_.confidence:
        changes.append(Change("global", "changed", "confidence", "the confidence rule"))
    changes += _state_changes(old, new)
    changes += _decision_changes(old, new)
    changes += _mapping_changes(
        "property",
        _dump(a.properties),
        _dump(b.properties),
        describe=lambda p: p.get("description", ""),
        semantic=False,
    )
    return changes


# --- catalog and approvals ------------------------------------------------------------------


Approvals = Callable[[Catalog], Mapping[str, str]]
"""Where approvals come from: response id -> the content hash a reviewer approved."""


def inline_approvals(catalog: Catalog) -> dict[str, str]:
    """The approvals written in the catalog itself (``approved: sha256:...``)."""
    return {rid: r.approved for rid, r in catalog.responses.items() if r.approved is not None}


def invalidated_approvals(
    old: Catalog, new: Catalog, approvals: Approvals = inline_approvals
) -> list[Change]:
    """Responses approved in ``old`` whose text the new version changes (or removes).

    Args:
        old: the catalog of the old version.
        new: the catalog of the new version.
        approvals: reads a catalog's approvals; by default the inline ``approved`` hashes.
    """
    approved_old = approvals(old)
    approved_new = approvals(new)
    changes: list[Change] = []
    for rid, approved in approved_old.items():
        before = old.responses.get(rid)
        if before is None or before.hash != approved:
            continue  # not a valid approval in the old version either
        after = new.responses.get(rid)
        if after is None:
            changes.append(
                Change(
                    "approval",
                    "removed",
                    rid,
                    "the approved response is gone",
                    True,
                    approved,
                    None,
                )
            )
        elif after.hash != approved and approved_new.get(rid) != after.hash:
            changes.append(
                Change(
                    "approval",
                    "changed",
                    rid,
                    f"approved {approved}, now {after.hash}",
                    True,
                    approved,
                    after.hash,
                )
            )
    return changes


def _catalog(old: Catalog, new: Catalog, approvals: Approvals) -> list[Change]:
    texts_old = {rid: r.text for rid, r in old.responses.items()}
    texts_new = {rid: r.text for rid, r in new.responses.items()}
    changes = _mapping_changes("response", texts_old, texts_new, describe=repr)
    return changes + invalidated_approvals(old, new, approvals)


# --- conversations ----------------------------------------------------------------------------

Message = tuple[str | None, tuple[tuple[str, bool], ...], bool]
"""A user message as both versions read it: label, slot values (valid or not), unsure."""

Observation = tuple[tuple[str, ...], tuple[str, ...], bool, bool]
"""What a turn does, as a user or a reviewer sees it: path, responses, ended, failed."""


def _message(given: Input) -> Message:
    return (given.label, tuple(sorted(given.slots)), given.unsure)


def _describe(message: Message | None) -> str:
    if message is None:
        return "(opening)"
    label, slots, unsure = message
    return str(Input(label, slots, unsure))


def _as_input(message: Message, state: CompiledState) -> Input:
    """How ``message`` reads in ``state``: an intent the state does not allow is out of scope,
    values of slots it does not collect are not found."""
    label, slots, unsure = message
    if label is not None and label not in state.allowed:
        label = OUT_OF_SCOPE
    if label is None:
        kept = tuple((s, v) for s, v in slots if s in state.collect)
        if not kept:
            return Input(OUT_OF_SCOPE)
        return Input(None, tuple(sorted(kept, key=lambda i: state.collect.index(i[0]))))
    route = state.routes.get(label)
    wanted = set(state.explicit) | set(route.require if route else ())
    kept = tuple((s, v) for s, v in slots if s in state.collect and s in wanted)
    kept = tuple(sorted(kept, key=lambda i: state.collect.index(i[0])))
    unsure = unsure and route is not None and state.unsure is not None
    return Input(label, kept, unsure)


def _observe(turn: TurnPath) -> Observation:
    path = () if turn.failed else tuple(e.name for e in turn.events if e.kind == "enter")
    said = tuple(e.name for e in turn.events if e.kind == "say")
    ended = any(e.kind == "ended" for e in turn.events)
    return (path, said, ended, turn.failed)


def _outcomes(
    machine: AbstractMachine, nodes: Iterable[Node], message: Message | None
) -> dict[Observation, set[Node]]:
    out: dict[Observation, set[Node]] = {}
    for node in nodes:
        if node.kind == "ended":
            continue
        if message is None:
            turns = machine.turns(node, None)
        else:
            state = machine.compiled.states[node.state]
            turns = machine.turns(node, _as_input(message, state))
        for turn in turns:
            out.setdefault(_observe(turn), set()).add(turn.target)
    return out


def _messages(
    machines: Sequence[AbstractMachine], sides: Sequence[frozenset[Node]]
) -> list[Message]:
    found: dict[Message, None] = {}
    for machine, nodes in zip(machines, sides, strict=True):
        for node in nodes:
            for move in machine.moves(node):
                if move.input is not None and not move.input.error:
                    found.setdefault(_message(move.input), None)
    return sorted(found, key=lambda m: (m[0] is None, m[0] or "", m[1], m[2]))


def _as_turn(message: Message | None, observation: Observation) -> Exchange:
    path, said, ended, failed = observation
    return Exchange(_describe(message), path, said, ended, failed)


def diff_conversations(
    old: CompiledPolicy,
    new: CompiledPolicy,
    *,
    max_turns: int = 6,
    limit: int = 20,
    max_pairs: int = 200_000,
    progress: Callable[[int], None] | None = None,
) -> ConversationDiff:
    """Conversations of up to ``max_turns`` user turns that one version allows and the other not.

    Both machines are explored side by side: a pair holds every session each version can be in
    after the same messages and the same observed turns. Only the shortest witness of each
    difference (same message, same observation) is kept, at most ``limit`` per direction.
    """
    machines = (AbstractMachine(old), AbstractMachine(new))
    result = ConversationDiff(max_turns)
    start = (frozenset({machines[0].start}), frozenset({machines[1].start}))
    parents: dict[
        tuple[frozenset[Node], frozenset[Node]], tuple[Any, Message | None, Observation] | None
    ] = {start: None}
    queue: deque[tuple[tuple[frozenset[Node], frozenset[Node]], int]] = deque([(start, -1)])
    seen_differences: set[tuple[str, Message | None, frozenset[str]]] = set()

    def history(pair: Any) -> tuple[Exchange, ...]:
        turns: list[Exchange] = []
        link = parents[pair]
        while link is not None:
            previous, message, observation = link
            turns.append(_as_turn(message, observation))
            link = parents[previous]
        return tuple(reversed(turns))

    while queue:
        pair, depth = queue.popleft()
        result.pairs += 1
        if progress is not None:
            progress(result.pairs)
        if result.pairs > max_pairs:
            result.truncated = True
            break
        messages: list[Message | None] = [None] if depth < 0 else list(_messages(machines, pair))
        for message in messages:
            before = _outcomes(machines[0], pair[0], message)
            after = _outcomes(machines[1], pair[1], message)
            for direction, side, mine, theirs, bucket in (
                ("new", pair[1], after, before, result.newly_possible),
                ("old", pair[0], before, after, result.no_longer_possible),
            ):
                only = [o for o in mine if o not in theirs]
                if not only:
                    continue
                # The same difference reached by another way is the same finding.
                key = (direction, message, frozenset(n.state for n in side))
                if key in seen_differences or len(bucket) >= limit:
                    continue
                seen_differences.add(key)
                bucket.append(
                    Witness(
                        direction,  # type: ignore[arg-type]
                        history(pair),
                        tuple(_as_turn(message, o) for o in only),
                        tuple(_as_turn(message, o) for o in theirs),
                    )
                )
            if depth + 1 >= max_turns:
                continue
            for observation, targets in after.items():
                if observation not in before:
                    continue
                following = (frozenset(before[observation]), frozenset(targets))
                if following not in parents:
                    parents[following] = (pair, message, observation)
                    queue.append((following, depth + 1))
    return result


# --- the whole diff -----------------------------------------------------------------------


def diff_policies(
    old: CompiledPolicy,
    new: CompiledPolicy,
    *,
    max_turns: int = 6,
    limit: int = 20,
    approvals: Approvals = inline_approvals,
    progress: Callable[[int], None] | None = None,
) -> PolicyDiff:
    """Compare two compiled versions of a policy.

    Args:
        old: the version in use.
        new: the version under review.
        max_turns: how many user turns the conversation comparison looks ahead.
        limit: witnesses kept per direction.
        approvals: where approvals come from (by default the catalogs' inline hashes).
        progress: called with the number of session pairs compared so far.
    """
    changes = _structure(old, new) + _catalog(old.catalog, new.catalog, approvals)
    conversations = diff_conversations(
        old, new, max_turns=max_turns, limit=limit, progress=progress
    )
    return PolicyDiff(old.name, new.name, old.hash, new.hash, changes, conversations)


def render(diff: PolicyDiff) -> str:
    """The diff as text for a terminal."""
    lines = [f"diff {diff.old_name} {diff.old_hash} -> {diff.new_name} {diff.new_hash}"]
    plain = [c for c in diff.changes if c.area != "approval"]
    if plain:
        lines.append("")
        lines.append("changes:")
        for change in plain:
            mark = "" if change.semantic else "  (no effect on behaviour)"
            lines.append(f"  {change}{mark}")
    if diff.invalidated:
        lines.append("")
        lines.append("approvals invalidated:")
        lines.extend(f"  {c.name}: {c.detail}" for c in diff.invalidated)
    conversations = diff.conversations
    lines.append("")
    horizon = f"up to {conversations.max_turns} turns"
    if conversations.same:
        lines.append(f"conversations: the same {horizon} ({conversations.pairs} compared)")
    for title, witnesses, other in (
        ("newly possible", conversations.newly_possible, "the old version"),
        ("no longer possible", conversations.no_longer_possible, "the new version"),
    ):
        if not witnesses:
            continue
        lines.append(f"conversations {title} ({horizon}, shortest first):")
        for witness in witnesses:
            lines.append(f"  after {len(witness.before)} turn(s):")
            for turn in witness.before:
                lines.append(f"      {turn.describe()}")
            for turn in witness.last:
                lines.append(f"    > {turn.describe()}")
            for turn in witness.instead:
                lines.append(f"      {other} instead: {turn.describe()}")
            if not witness.instead:
                lines.append(f"      {other} cannot take this message there")
    if conversations.truncated:
        lines.append("(the comparison stopped early: too many session pairs)")
    lines.append("")
    lines.append("semantic difference" if diff.semantic else "no semantic difference")
    return "\n".join(lines) + "\n"
