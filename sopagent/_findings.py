"""What `sopagent verify` finds: transcripts of counterexamples, each engine's result.

Shared by the exhaustive engine (`sopagent._verify`) and the search (`sopagent._search`),
with the matching of a property's events against what happened in a turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sopagent._explore import Event, Input
from sopagent._properties import Matcher

__all__ = ["Counterexample", "EngineResult", "Status", "Step", "any_match", "matches"]

Status = Literal["proved", "violated", "unknown", "passed", "skipped"]


# --- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One turn of a counterexample.

    Attributes:
        index: 0 for the opening, then 1, 2, ... per user message.
        state: the state the turn started in.
        input: what the adversary answered (exhaustive engine), ``None`` for the opening.
        text: what the user wrote (search engine).
        intent: the label classified, if any; ``forced`` when it was given, not classified.
        slots: slot values found (search engine, JSON form).
        path: states entered.
        responses: response ids said.
        decisions: ``(state, function, outcome)`` in order.
        ended: whether the conversation ended.
        failed: the turn took the error route.
        breaks: the event that breaks the property, when it happens in this turn.
        effects: the effects emitted, in order, as calls (``give_item(item=silver_key)``;
            ``?`` for an argument the exhaustive engine does not know).
        effect_args: the search engine's effects as ``{name: {argument: value}}``.
    """

    index: int
    state: str
    input: Input | None = None
    text: str | None = None
    intent: str | None = None
    forced: bool = False
    slots: Mapping[str, Any] = field(default_factory=dict)
    path: tuple[str, ...] = ()
    responses: tuple[str, ...] = ()
    decisions: tuple[tuple[str, str, str], ...] = ()
    ended: bool = False
    failed: bool = False
    breaks: str | None = None
    other_choice: bool = False
    effects: tuple[str, ...] = ()
    effect_args: tuple[Mapping[str, Mapping[str, Any]], ...] = ()

    @property
    def state_after(self) -> str:
        """The state the turn ended in."""
        return self.path[-1] if self.path and not self.failed else self.state

    def to_json(self) -> dict[str, Any]:
        """The step as plain JSON."""
        return {
            "turn": self.index,
            "state_before": self.state,
            "input": None if self.input is None else _input_json(self.input),
            "text": self.text,
            "intent": self.intent,
            "slots": dict(self.slots),
            "path": list(self.path),
            "state_after": self.state_after,
            "responses": list(self.responses),
            "effects": list(self.effects),
            "decisions": [f"{f}={o}" for _, f, o in self.decisions],
            "ended": self.ended,
            "failed": self.failed,
            "breaks": self.breaks,
        }


def _input_json(given: Input) -> dict[str, Any]:
    return {
        "label": given.label,
        "slots": {slot: "valid" if valid else "invalid" for slot, valid in given.slots},
        "unsure": given.unsure,
        "error": given.error,
    }


@dataclass(frozen=True)
class Counterexample:
    """A conversation that breaks a property, as a transcript.

    Attributes:
        engine: ``exhaustive`` or ``search``.
        steps: the turns, the opening first.
        facts: facts the host passed at the start (search engine).
        note: what the transcript shows, in words.
        from_step: for ``reachable`` and ``leads_to``: the turn from which the property is
            shown to fail (the turns after it, if any, are the witness).
    """

    engine: str
    steps: tuple[Step, ...]
    facts: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""
    from_step: int | None = None

    @property
    def turns(self) -> int:
        """User turns in the transcript."""
        return max(0, len(self.steps) - 1)

    def to_json(self) -> dict[str, Any]:
        """The counterexample as plain JSON."""
        return {
            "engine": self.engine,
            "turns": self.turns,
            "note": self.note,
            "facts": dict(self.facts),
            "from_turn": self.from_step,
            "steps": [s.to_json() for s in self.steps],
        }


@dataclass(frozen=True)
class EngineResult:
    """What one engine found about one property."""

    status: Status
    detail: str = ""
    counterexample: Counterexample | None = None

    def to_json(self) -> dict[str, Any]:
        """The result as plain JSON."""
        return {
            "status": self.status,
            "detail": self.detail,
            "counterexample": None
            if self.counterexample is None
            else self.counterexample.to_json(),
        }


# --- matching events ------------------------------------------------------------------------


def matches(matcher: Matcher, event: Event, assume: bool) -> bool:
    """Whether ``event`` is one ``matcher`` describes.

    ``assume`` is the answer when it depends on values the abstract machine does not know
    (a ``where`` condition, or an event that may not happen).
    """
    if event.kind != matcher.kind:
        return False
    if matcher.kind == "effect":
        return _effect_matches(matcher, event, assume)
    if matcher.kind == "ended":
        pass
    elif event.name not in matcher.names:
        return False
    if matcher.states is not None and event.state not in matcher.states:
        return False
    if matcher.outcome is not None and event.outcome != matcher.outcome:
        return False
    if event.maybe:
        return assume
    if matcher.where is None:
        return True
    if event.values is None:
        return assume
    return matcher.where(event.values)


def _effect_matches(matcher: Matcher, event: Event, assume: bool) -> bool:
    """Match an effect by name, arguments and condition; unknown arguments give ``assume``.

    The abstract machine knows the constant arguments of a route's or state's effects, not
    those taken from slot or fact values or returned by decision functions (``unknown``), and
    not whether a decision function returns an effect it declares (``maybe``).
    """
    if event.name not in matcher.names:
        return False
    known = dict(event.args)
    uncertain = event.maybe
    for param, value in matcher.args:
        if param in known:
            if known[param] != value:
                return False
        elif param in event.unknown:
            uncertain = True
        else:
            return False
    where = matcher.where
    if where is not None:
        params = known.keys() | event.unknown
        if any(name in event.unknown and name not in known for name in where.names) or (
            event.values is None and any(name not in params for name in where.names)
        ):
            uncertain = True
        elif not where({**(event.values or {}), **known}):
            return False
    return assume if uncertain else True


def any_match(matchers: Sequence[Matcher], event: Event, assume: bool) -> bool:
    return any(matches(m, event, assume) for m in matchers)
