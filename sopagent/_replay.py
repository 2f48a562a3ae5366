"""Replay logged conversations against another version of a policy, with the labels recorded.

Each conversation of an audit log (`sopagent.audit.JsonLinesSink` events, grouped by
``session_id`` and ordered by ``turn``) is run again on the new version: the user's text when
the log has it (so slot values are found by the new version's grammar), the intent the log
recorded (no model call: a model's answer keeps its score, so a new confidence rule applies to
it), and the real decision functions of the new version, each conversation starting from the
decision modules' state as it is when the replay starts. The first turn whose path, state,
responses or end differ is reported; what follows it would be another conversation.

Turns the log cannot reproduce are reported as such: a backend failure (no label was
recorded), values of personal slots (masked in the log), or a log that starts mid-way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from typing_extensions import override

from sopagent._agent import Agent, _Classified
from sopagent._compile import CompiledPolicy, CompiledState
from sopagent._search import ModuleState
from sopagent._slots import Found
from sopagent.audit import NullSink
from sopagent.backends import Choice, ChooseRequest, Classification, ClassifyRequest, Usage
from sopagent.errors import BackendError, Location
from sopagent.session import Turn

__all__ = ["Replayed", "replay"]

Status = Literal["same", "changed", "unreplayable"]
_COMPARED = ("state_after", "path", "responses", "ended")


@dataclass(frozen=True)
class Replayed:
    """What happened to one logged conversation on the new version.

    Attributes:
        session_id: the logged session.
        location: where its first event is in the log.
        turns: user turns replayed.
        status: ``same``, ``changed`` (at ``turn``) or ``unreplayable`` (``reason``).
        turn: the first turn that differs, or that cannot be replayed.
        old: the logged values of that turn (state_after, path, responses, ended).
        new: the replayed values.
        reason: why the conversation cannot be replayed further.
    """

    session_id: str
    location: Location
    turns: int
    status: Status
    turn: int | None = None
    old: Mapping[str, Any] = field(default_factory=dict)
    new: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def differs(self) -> list[str]:
        """The fields of the first differing turn that differ."""
        return [k for k in _COMPARED if self.old.get(k) != self.new.get(k)]

    def to_json(self) -> dict[str, Any]:
        """As plain JSON."""
        return {
            "session_id": self.session_id,
            "location": str(self.location),
            "turns": self.turns,
            "status": self.status,
            "turn": self.turn,
            "differs": self.differs if self.status == "changed" else [],
            "old": dict(self.old),
            "new": dict(self.new),
            "reason": self.reason or None,
        }


class _Recorded:
    """A backend that only answers choices, with the response the log says was said."""

    name = "replay"

    def __init__(self) -> None:
        self.said: tuple[str, ...] = ()

    def classify(self, request: ClassifyRequest) -> Classification:  # noqa: ARG002 (Protocol)
        """Never used: every label comes from the log."""
        raise BackendError("replay makes no model calls", provider=self.name)

    def choose(self, request: ChooseRequest) -> Choice:
        """The option the logged turn said, else the first."""
        names = [o.name for o in request.options]
        picked = next((r for r in self.said if r in names), names[0])
        return Choice(picked, 1.0, Usage())


class _ReplayAgent(Agent):
    """An agent whose classification (and, without text, slot values) come from the log."""

    def __init__(self, compiled: CompiledPolicy) -> None:
        self.recorded = _Recorded()
        super().__init__(compiled, self.recorded, audit=NullSink(), audit_text=False)
        self.event: Mapping[str, Any] = {}

    @override
    def _extract(
        self, state: CompiledState, text: str
    ) -> tuple[dict[str, Found], list[tuple[int, int]]]:
        if self.event.get("text") is not None:
            return super()._extract(state, text)
        found: dict[str, Found] = {}
        for name, value in (self.event.get("slots") or {}).items():
            kind = self.compiled.slot_types.get(name)
            if kind is None or name not in state.collect:
                continue
            try:
                found[name] = Found(kind.validate(value), None, (0, 0))
            except ValueError as exc:
                found[name] = Found(value, str(exc), (0, 0))
        for name in self.event.get("invalid_slots") or ():
            if name in state.collect and name not in found:
                found[name] = Found(None, "invalid in the log", (0, 0))
        return found, []

    @override
    def _classify(
        self,
        state: CompiledState,
        text: str,
        forced: str | None,
        found: dict[str, Any],
        taken: list[tuple[int, int]],
        locale: str | None = None,
    ) -> _Classified:
        event = self.event
        intent = event.get("intent")
        source = event.get("intent_source")
        if source == "slots" or intent is None:
            return _Classified(intent, 1.0, "slots", Usage(), {})
        if source == "model":
            return _Classified(intent, float(event.get("score") or 0.0), "model", Usage(), {})
        return _Classified(intent, 1.0, "forced", Usage(), {})


def _logged(event: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "state_after": event.get("state_after"),
        "path": list(event.get("path") or ()),
        "responses": list(event.get("responses") or ()),
        "ended": bool(event.get("ended")),
    }


def _replayed(turn: Turn) -> dict[str, Any]:
    return {
        "state_after": turn.state_after,
        "path": list(turn.path),
        "responses": list(turn.response_ids),
        "ended": turn.ended,
    }


def _conversations(
    events: Iterable[tuple[Location, Mapping[str, Any]]],
) -> dict[str, list[tuple[Location, Mapping[str, Any]]]]:
    grouped: dict[str, list[tuple[Location, Mapping[str, Any]]]] = {}
    for location, event in events:
        session = event.get("session_id")
        if isinstance(session, str) and isinstance(event.get("turn"), int):
            grouped.setdefault(session, []).append((location, event))
    for items in grouped.values():
        items.sort(key=lambda item: item[1]["turn"])
    return grouped


def _masked(event: Mapping[str, Any]) -> list[str]:
    """Personal slots of the turn whose values the log does not hold (hashed, masked, dropped)."""
    redacted = event.get("redacted")
    if isinstance(redacted, list):
        return [str(name) for name in redacted]
    slots = event.get("slots") or {}
    return [k for k, v in slots.items() if isinstance(v, str) and v.startswith("hmac:")]


def replay(
    compiled: CompiledPolicy,
    events: Iterable[tuple[Location, Mapping[str, Any]]],
    *,
    facts: Mapping[str, Any] | None = None,
) -> list[Replayed]:
    """Replay every logged conversation in ``events`` on ``compiled``.

    Args:
        compiled: the new version.
        events: audit events with where each was read.
        facts: facts to start every session with (audit events do not carry the host's facts).

    Returns:
        One result per conversation, in the order they first appear.
    """
    agent = _ReplayAgent(compiled)
    # Each conversation starts from the decision modules' state as it is now, so that one
    # replayed refund does not make the next conversation's order "already refunded".
    state = ModuleState(compiled.functions)
    results = []
    try:
        for session_id, items in _conversations(events).items():
            state.restore()
            results.append(_replay_one(agent, session_id, items, facts or {}))
    finally:
        state.restore()
    return results


def _replay_one(
    agent: _ReplayAgent,
    session_id: str,
    items: Sequence[tuple[Location, Mapping[str, Any]]],
    facts: Mapping[str, Any],
) -> Replayed:
    location = items[0][0]
    session = agent.new_session(session_id=session_id, facts=facts)
    first = items[0][1]
    if first["turn"] != 0:
        return Replayed(
            session_id,
            location,
            0,
            "unreplayable",
            first["turn"],
            reason="the log starts after the opening turn",
        )
    turns = 0
    for _, event in items:
        index = event["turn"]
        agent.event = event
        agent.recorded.said = tuple(event.get("responses") or ())
        if index == 0:
            turn = agent.start(session)
        else:
            if event.get("intent_source") == "error" and event.get("intent") is None:
                continue  # the backend failed then: the session did not move
            masked = _masked(event)
            # The text carries them only if it was logged whole: personal values are replaced.
            if masked and (event.get("text") is None or "redacted" in event):
                return Replayed(
                    session_id,
                    location,
                    turns,
                    "unreplayable",
                    index,
                    reason=f"personal slot(s) {', '.join(masked)} are masked in the log",
                )
            turns += 1
            turn = agent._turn(session, event.get("text") or "", None)
        old, new = _logged(event), _replayed(turn)
        if old != new:
            return Replayed(session_id, location, turns, "changed", index, old, new)
    return Replayed(session_id, location, turns, "same")
