"""Run step: `Agent.respond` turns one user message into one `Turn`.

A turn is: find slot values in the text, classify the intent (one constrained model call at
most, none when an example, a forced label or the slot values alone decide it), pick the
route the state declares for it, take that transition of the compiled machine, run decision
functions of the states entered until one waits for input, render the approved responses, and
write one audit event. Any failure underneath (backend, decision function, rendering) takes
the policy's error route and leaves the session as it was before the turn. A message longer
than the policy's ``limits.max_input`` is not read at all: the too-long or fallback line is
said and the session is kept the same way.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from operator import attrgetter
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

from transitions import Machine

from sopagent._compile import CompiledPolicy, CompiledRoute, CompiledState
from sopagent._effects import CompiledEffect, resolve, validate_returned
from sopagent._limits import (
    DecisionRunner,
    DecisionTimeoutError,
    escape_hidden,
    received,
)
from sopagent._locales import LocaleTable
from sopagent._privacy import Redactor
from sopagent._slots import Found, SlotType
from sopagent.audit import AuditSink, NullSink, StructlogSink
from sopagent.backends import (
    Backend,
    ChooseRequest,
    Label,
    Usage,
    _new_request,
)
from sopagent.decisions import (
    Context,
    HistoryItem,
    Outcome,
    _Past,
    declared_effects,
    declared_reads,
)
from sopagent.errors import BackendError, DecisionError, RuntimeFault, SessionError
from sopagent.policy import OUT_OF_SCOPE, Route
from sopagent.session import (
    DecisionRecord,
    Effect,
    Session,
    SessionTurn,
    SessionUsage,
    Turn,
    Utterance,
    adopt,
    blank,
    trusted,
)

__all__ = ["Agent"]

# Usage is immutable: the turns that cost nothing share one.
_NO_USAGE = Usage()
# A turn's fields and its audit event's keys, in order: each turn fills a copy.
_TURN = blank(Turn)
_EVENT = dict.fromkeys(
    (
        "policy",
        "policy_hash",
        "session_id",
        "turn",
        "text",
        "redacted",
        "state_before",
        "state_after",
        "path",
        "intent",
        "score",
        "intent_source",
        "allowed",
        "slots",
        "invalid_slots",
        "decisions",
        "responses",
        "response_hashes",
        "locale",
        "effects",
        "backend",
        "answered_by",
        "model_calls",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
        "error",
        "ended",
    )
)
_WORD = re.compile(r"[\w']+")
# Words that may surround slot values without changing what a message means.
_FILLER = frozenset({
    "it", "its", "it's", "is", "my", "the", "a", "an", "number", "order", "no", "id", "code",
    "please", "thanks", "thank", "you", "here", "this", "that", "of", "for", "s", "sure", "ok",
    "okay", "yes",
})  # fmt: skip
_PUNCTUATION = re.compile(r"[^\w\s]")
# The same substitution for ASCII text, as a byte table (bytes.translate is one pass in C).
_ASCII_PUNCTUATION = bytes(
    ord(" ") if c < 128 and _PUNCTUATION.match(chr(c)) else c for c in range(256)
)
_NO_OUTCOMES: Mapping[str, str] = MappingProxyType({})
# The usage totals a turn adds to: all set once the session has spent anything.
_SPENT = frozenset(SessionUsage.model_fields)
# A line's id and hash, read in C (a comprehension is a function call of its own).
_ID = attrgetter("id")
_HASH = attrgetter("hash")
# JSON values that are hashable as they are, so their rendering can be remembered.
_SCALARS = (str, int, float)
_SHOWN_MAX = 4096
Source = Literal["model", "example", "slots", "forced", "none", "error"]


class _RouteFault(RuntimeFault):
    """The procedure could not be followed (render failure, route loop, undeclared move)."""


class _TooLong(RuntimeFault):
    """The message is longer than the policy's ``limits.max_input``; nothing was asked."""


class _ReplayedError(BackendError):
    """A backend failure recorded in a replayed turn, raised where it happened."""

    def __init__(self, recorded: str) -> None:
        super().__init__(recorded, provider="replay")
        self.recorded = recorded


@dataclass(frozen=True)
class Heard:
    """What the model and the slot grammars made of one message: all a turn needs to replay.

    Attributes:
        intent: the intent, or None when slot values alone (or nothing) decided the turn.
        score: its score, exactly as the backend gave it.
        source: where the intent came from.
        slots: valid slot values found, typed.
        invalid: slot name -> why the value found was rejected.
        unsure: whether the confidence rule doubted the intent.
        choices: responses the model picked for ``choose``, in order.
        error: the backend failure the turn met, if any, as the turn reported it.
    """

    intent: str | None
    score: float
    source: Source
    slots: Mapping[str, Any] = field(default_factory=dict)
    invalid: Mapping[str, str] = field(default_factory=dict)
    unsure: bool = False
    choices: tuple[str, ...] = ()
    error: str | None = None


class _Work:
    """A turn's scratch copy of the session; committed only if the turn succeeds.

    Built on every turn: its ``__init__`` is written out, so that each list is a list display
    rather than a call to a default factory.
    """

    __slots__ = (
        "_history", "chosen", "decisions", "effects", "ended", "facts", "forced", "index",
        "locale", "past", "path", "picks", "replay_error", "replayed", "said", "seed",
        "session_id", "slots", "state", "steps", "turn", "usage",
    )  # fmt: skip

    def __init__(
        self,
        state: str,
        slots: dict[str, Any],
        facts: dict[str, Any],
        session_id: str = "",
        turn: int = 0,
        past: list[SessionTurn] | None = None,
        locale: str | None = None,
        seed: int = 0,
        index: int = 0,
        forced: Mapping[str, str] = _NO_OUTCOMES,
    ) -> None:
        # What the session gives: a turn passes these positionally (binding keywords costs
        # more than building the rest).
        self.state = state
        self.slots = slots
        self.facts = facts
        self.session_id = session_id
        self.turn = turn
        self.past: list[SessionTurn] = [] if past is None else past
        self.locale = locale
        self.seed = seed
        self.index = index
        self.forced = forced
        # What the turn does.
        self.path: list[str] = []
        self.said: list[tuple[str, ...]] = []
        self.decisions: list[DecisionRecord] = []
        self.ended = False
        self.steps = 0
        self.usage: Usage = _NO_USAGE
        self.picks = 0
        self.effects: list[Effect] = []
        self.chosen: list[str] = []
        self.replayed: deque[str] | None = None
        self.replay_error: str | None = None
        self._history: Sequence[HistoryItem] | None = None

    @property
    def history(self) -> Sequence[HistoryItem]:
        """Earlier turns as decision functions see them: one snapshot per turn, read lazily."""
        if self._history is None:
            self._history = _Past(self.past)
        return self._history


class _Classified(NamedTuple):
    """What classification made of a message (a tuple: one is built on most turns)."""

    intent: str | None
    score: float
    source: Source
    usage: Usage
    slots: Mapping[str, str]
    answered_by: str | None = None


# What a turn understood before anything was classified (shared: it is immutable).
_UNHEARD = _Classified(None, 0.0, "none", _NO_USAGE, {})
# ``_classified((intent, score, ...))`` builds one in C, without the named tuple's own
# ``__new__`` (a Python function) and its call: every field given, in order.
_classified = partial(tuple.__new__, _Classified)


def pick(seed: int, index: int, salt: str | int, options: tuple[str, ...]) -> str:
    """One of ``options``, the same for the same seed, turn index and salt on every machine."""
    digest = hashlib.blake2b(f"{seed}:{index}:{salt}".encode(), digest_size=8).digest()
    return options[int.from_bytes(digest, "big") % len(options)]


class Agent:
    """A compiled policy bound to a model backend and an audit sink.

    Agents are cheap to share: they hold no per-conversation state. Conversations live in
    `Session` objects that the caller keeps and passes in.

    Args:
        compiled: the compiled policy.
        backend: the model backend.
        audit: where audit events go; by default structlog's configured pipeline.
        audit_key: key of the HMAC that masks personal slots in audit events; the same key
            masks the same value the same way, so events can be joined without revealing it.
            By default a random key per agent.
        audit_text: whether audit events carry what the user wrote (needed to turn audit
            logs into evaluation and fine-tuning data). Text said in a state that collects a
            slot marked personal is never logged.
    """

    def __init__(
        self,
        compiled: CompiledPolicy,
        backend: Backend,
        *,
        audit: AuditSink | None = None,
        audit_key: bytes | None = None,
        audit_text: bool = True,
    ) -> None:
        self.compiled = compiled
        self._audit_key = audit_key if audit_key is not None else os.urandom(32)
        self._audit_text = audit_text
        self.backend = backend
        self.audit: AuditSink = audit if audit is not None else StructlogSink()
        self._machine = compiled.machine
        self._moves = _moves(compiled.machine)
        # Patterned slots first, so free numbers do not swallow an id.
        self._collect_order = {
            name: tuple(
                sorted(
                    state.collect,
                    key=lambda n: 0 if getattr(compiled.slot_types[n].spec, "pattern", None) else 1,
                )
            )
            for name, state in compiled.states.items()
        }
        limits = compiled.policy.limits
        self._max_input = limits.max_input
        seconds = limits.decision_seconds
        self._runner = DecisionRunner(seconds) if seconds is not None else None
        self._personal = {name for name, slot in compiled.policy.slots.items() if slot.personal} | {
            name for name, fact in compiled.policy.facts.items() if fact.personal
        }
        self.redactor = Redactor(compiled.policy, self._audit_key)
        # Enum slots a state collects, which the model fills: name -> their values as labels.
        self._enums = {
            name: tuple(
                (slot, _enum_labels(compiled.slot_types[slot]))
                for slot in state.collect
                if compiled.slot_types[slot].needs_model
            )
            for name, state in compiled.states.items()
        }
        # Slot and fact values as responses show them, by (type, JSON value): rendering a
        # value is a pure function of the two, and the same few values recur turn after turn.
        self._shown: dict[tuple[SlotType, type, Any], str] = {}
        self._remember = compiled.policy.remember
        # Immutable results that depend only on the policy, made once each on first use:
        # lines without placeholders (by response and locale) and decision records.
        self._fixed: dict[tuple[str, str | None], Utterance] = {}
        self._records: dict[tuple[str, str, str], DecisionRecord] = {}
        # Worked out once, for the audit event of every turn.
        self._policy_name = compiled.name
        self._allowed = {name: tuple(sorted(s.allowed)) for name, s in compiled.states.items()}
        self._collects_personal = frozenset(
            name for name, s in compiled.states.items() if self._personal.intersection(s.collect)
        )

    @property
    def policy_hash(self) -> str:
        """The hash that pins sessions to this exact policy, catalog and decision code."""
        return self.compiled.hash

    # -- sessions ------------------------------------------------------------------------------

    def new_session(
        self,
        *,
        session_id: str | None = None,
        facts: Mapping[str, Any] | None = None,
        locale: str | None = None,
        seed: int | None = None,
    ) -> Session:
        """Create a session in the initial state, with facts the host knows up front.

        Args:
            session_id: the session's id; by default a random one.
            facts: values of declared facts (the game state, for an NPC).
            locale: the locale of the lines said: the catalog's or one of the policy's
                translations; by default the catalog's.
            seed: seeds the lines picked by ``vary``; by default a random one.

        Raises:
            ValueError: a fact is not declared by the policy or has the wrong type, or the
                locale is not one of the policy's.
        """
        stored = {k: v for k, v in self.game_state(facts).items() if v is not None}
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int, not {type(seed).__name__}")
        if session_id is not None and not isinstance(session_id, str):
            raise TypeError(f"session_id must be a str, not {type(session_id).__name__}")
        # Built without validating again: every value is the policy's or was checked above.
        # Sessions are held by the hundred thousand; this also lets them share one set of
        # field names.
        return trusted(
            Session,
            id=uuid.uuid4().hex if session_id is None else session_id,
            policy=self.compiled.name,
            policy_hash=self.compiled.hash,
            state=self.compiled.policy.initial,
            facts=stored,
            locale=self._locale_of(locale),
            seed=secrets.randbelow(2**31) if seed is None else seed,
            usage=trusted(SessionUsage),
        )

    def game_state(self, facts: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate host values of declared facts; return their JSON form (None clears one).

        Raises:
            ValueError: a fact is not declared by the policy or has the wrong type.
        """
        stored: dict[str, Any] = {}
        for name, value in (facts or {}).items():
            kind = self.compiled.fact_types.get(name)
            if kind is None:
                raise ValueError(f"fact {name!r} is not declared by policy {self.compiled.name!r}")
            if value is None:
                stored[name] = None
                continue
            try:
                stored[name] = kind.to_json(kind.validate(value))
            except ValueError as exc:
                raise ValueError(f"fact {name!r}: {exc}") from None
        return stored

    def _locale_of(self, locale: str | None) -> str | None:
        if locale is None or locale == self.compiled.catalog.locale:
            return None
        if locale not in self.compiled.locales:
            known = ", ".join([self.compiled.catalog.locale, *self.compiled.locales])
            raise ValueError(
                f"unknown locale {locale!r}; policy {self.compiled.name!r} has {known}"
            )
        return locale

    def start(
        self,
        session: Session,
        *,
        facts: Mapping[str, Any] | None = None,
        decisions: Mapping[str, str] | None = None,
    ) -> Turn:
        """Enter the initial state: run its decisions and say its opening lines.

        Calling it on a session already started returns an empty turn.

        Args:
            session: a new session.
            facts: fact values (the game state) to set before the opening runs.
            decisions: outcomes to force, as in `respond`.

        Raises:
            ValueError: a fact is not declared by the policy or has the wrong type, or a
                forced decision names an unknown function or an undeclared outcome.
        """
        return self._turn(
            session, None, None, facts=facts, outcomes=self._forced_outcomes(decisions)
        )

    def respond(
        self,
        session: Session,
        text: str,
        *,
        intent: str | None = None,
        facts: Mapping[str, Any] | None = None,
        decisions: Mapping[str, str] | None = None,
    ) -> Turn:
        """Advance ``session`` by one user message and return what happened.

        The session is updated in place only when the turn succeeds; on a backend or decision
        failure the policy's error response is returned and the session keeps its state.

        Args:
            session: the conversation, as returned by `new_session` or `Session.from_json`.
            text: what the user said.
            intent: a label to use instead of asking the model (replay, tests, buttons).
            facts: fact values (the game state now) to set before the turn runs; None as a
                value clears a fact. They are kept only if the turn succeeds.
            decisions: ``{function: outcome}`` to force during this turn (tests): the named
                decision functions are not run, so slots and facts they would have set stay
                as they were; their records in the turn say ``forced``.

        Raises:
            SessionError: the session belongs to another policy or names an unknown state.
            ValueError: ``intent`` is not an intent of the policy, a fact is not declared
                or has the wrong type, or a forced decision names an unknown function or
                an outcome it does not declare.
        """
        if intent is not None:
            self.check_intent(intent)
        forced = self._forced_outcomes(decisions) if decisions else _NO_OUTCOMES
        return self._turn(session, text, intent, facts=facts, outcomes=forced)

    def check_intent(self, intent: str | None) -> None:
        """Raise ValueError unless ``intent`` is None, out_of_scope or one of the policy's."""
        if intent not in (None, OUT_OF_SCOPE) and intent not in self.compiled.policy.intents:
            raise ValueError(f"unknown intent {intent!r}")

    def _forced_outcomes(self, decisions: Mapping[str, str] | None) -> Mapping[str, str]:
        if not decisions:
            return _NO_OUTCOMES
        for function, outcome in decisions.items():
            declared = self.compiled.functions.get(function)
            if declared is None:
                raise ValueError(f"unknown decision function {function!r}")
            if outcome not in declared.__sopagent_outcomes__:
                raise ValueError(f"{function!r} does not declare outcome {outcome!r}")
        return dict(decisions)

    def classify(self, session: Session, text: str) -> Turn:
        """Return what the agent understands of ``text`` in the session's state, and nothing more.

        Slot values are found and the intent is classified exactly as `respond` would, but no
        route is taken, no decision function runs, nothing is said or audited, and the session
        is left as it is. For evaluation and review.

        Raises:
            SessionError: the session belongs to another policy or is not in a waiting state.
        """
        started = time.perf_counter()
        compiled = self.compiled
        state = compiled.states.get(session.state)
        if session.policy_hash != compiled.hash or state is None or state.kind != "wait":
            raise SessionError(f"session {session.id} is not waiting for input in this policy")
        error: str | None = None
        text, heard = received(text)
        if len(text) > self._max_input:
            error = f"InputTooLong: {self._too_long(text)}"
            text = text[: self._max_input]
            found: dict[str, Found] = {}
            slots: dict[str, Any] = {}
            classified = _UNHEARD
        else:
            found, taken = self._extract(state, heard)
            slots = {n: f.value for n, f in found.items() if f.error is None}
            try:
                classified = self._classify(state, heard, None, slots, taken, session.locale)
            except BackendError as exc:
                error = f"{type(exc).__name__}: {exc}"
                classified = _Classified(None, 0.0, "error", Usage(calls=1), {})
        usage = classified.usage
        return trusted(
            Turn,
            session_id=session.id,
            index=session.turns,
            user_text=text,
            state_before=session.state,
            state_after=session.state,
            path=(),
            intent=classified.intent,
            score=round(classified.score, 4),
            intent_source=classified.source,
            answered_by=classified.answered_by,
            accepted=classified.intent in state.routes,
            slots={n: compiled.slot_types[n].to_json(v) for n, v in slots.items()},
            invalid_slots={n: f.error for n, f in found.items() if f.error is not None},
            responses=(),
            error=error,
            ended=session.ended,
            **_cost(usage, started),
        )

    # -- the turn --------------------------------------------------------------------------------

    def _turn(
        self,
        session: Session,
        text: str | None,
        forced: str | None,
        *,
        facts: Mapping[str, Any] | None = None,
        heard: Heard | None = None,
        tape: list[Heard | None] | None = None,
        validated: Mapping[str, Any] | None = None,
        outcomes: Mapping[str, str] | None = None,
    ) -> Turn:
        """Run one turn.

        ``heard`` replays a recorded understanding, ``tape`` records it; ``validated`` holds
        fact values `game_state` has already validated (then ``facts`` is not used).
        """
        started = time.perf_counter()
        compiled = self.compiled
        if validated is not None:
            given: Mapping[str, Any] = validated
        else:
            given = self.game_state(facts) if facts else {}
        if session.policy_hash != compiled.hash:
            raise SessionError(
                f"session {session.id} was started on policy {session.policy}"
                f" {session.policy_hash}, not {compiled.name} {compiled.hash}"
            )
        # The session's fields, read once: a model's attribute costs more than a local.
        state_before = session.state
        opened = session.started
        turns = session.turns
        history = session.history
        if state_before not in compiled.states:
            raise SessionError(f"session {session.id} is in unknown state {state_before!r}")
        if text is None and opened:
            return self._empty_turn(session)
        clean = text
        if text is not None:
            text, clean = received(text)
        work = _Work(
            state_before,
            dict(session.slots),
            dict(session.facts),
            session.id,
            turns,
            history,
            session.locale,
            session.seed,
            turns + (text is not None),
            outcomes or _NO_OUTCOMES,
        )
        if heard is not None:
            work.replayed = deque(heard.choices)
            work.replay_error = heard.error
        understood: Heard | None = None
        classified = _UNHEARD
        found_slots: dict[str, Any] = {}
        invalid: dict[str, str] = {}
        accepted = False
        failed = False
        error: str | None = None
        usage = _NO_USAGE
        try:
            if text is None:
                if not opened:
                    _update(work.facts, given)
                    self._enter(work, state_before, None)
            elif session.ended:
                error = "the conversation has ended"
            else:
                if given:
                    _update(work.facts, given)
                if not opened:
                    self._enter(work, state_before, None)
                state = compiled.states[work.state]
                if len(text) > self._max_input:
                    message = self._too_long(text)
                    text = text[: self._max_input]
                    raise _TooLong(message)
                if heard is None:
                    assert clean is not None
                    found, taken = self._extract(state, clean)
                    if found:
                        found_slots = {n: f.value for n, f in found.items() if f.error is None}
                        invalid = {n: f.error for n, f in found.items() if f.error is not None}
                    try:
                        classified = self._classify(
                            state, clean, forced, found_slots, taken, work.locale
                        )
                    except BackendError as exc:
                        if tape is not None:
                            error = f"{type(exc).__name__}: {exc}"
                            understood = Heard(None, 0.0, "error", error=error)
                        raise
                    usage = classified.usage
                    for name, raw in classified.slots.items():
                        if name not in found_slots:
                            try:
                                found_slots[name] = compiled.slot_types[name].validate(raw)
                            except ValueError as exc:
                                invalid[name] = str(exc)
                else:
                    if heard.source == "error" and heard.intent is None:
                        raise _ReplayedError(heard.error or "BackendError: recorded failure")
                    classified = _Classified(heard.intent, heard.score, heard.source, _NO_USAGE, {})
                    found_slots = dict(heard.slots)
                    invalid = dict(heard.invalid)
                # Values count when the state collects them or the route taken needs them;
                # a number said in passing elsewhere is not remembered.
                if found_slots or invalid:
                    route = state.routes.get(classified.intent or "")
                    wanted = set(state.explicit) | set(route.require if route else ())
                    if classified.intent is None:
                        wanted |= set(found_slots)
                    found_slots = {n: v for n, v in found_slots.items() if n in wanted}
                    invalid = {n: e for n, e in invalid.items() if n in wanted}
                    for name, value in found_slots.items():
                        work.slots[name] = compiled.slot_types[name].to_json(value)
                if heard is not None:
                    unsure = heard.unsure
                else:
                    unsure = classified.source == "model" and classified.score < state.threshold
                if tape is not None:
                    understood = Heard(
                        classified.intent,
                        classified.score,
                        classified.source,
                        dict(found_slots),
                        dict(invalid),
                        unsure,
                    )
                accepted = self._route(
                    work, state, classified.intent, found_slots, invalid, unsure=unsure
                )
            responses = self._render(work, text or "")
            if work.usage is not _NO_USAGE:
                usage = usage + work.usage
        except (BackendError, DecisionError, _RouteFault, _TooLong) as exc:
            error = (
                exc.recorded
                if isinstance(exc, _ReplayedError)
                else f"InputTooLong: {exc}"
                if isinstance(exc, _TooLong)
                else f"{type(exc).__name__}: {exc}"
            )
            failed = True
            backend_failed = isinstance(exc, BackendError)
            if understood is not None and understood.error is None and backend_failed:
                understood = replace(understood, error=error)
            if isinstance(exc, BackendError) and classified.source == "none":
                calls = 0 if isinstance(exc, _ReplayedError) else 1
                classified = _Classified(None, 0.0, "error", Usage(calls=calls), {})
                usage = classified.usage
            chosen = work.chosen
            work = _Work(
                state_before,
                dict(session.slots),
                dict(session.facts),
                locale=session.locale,
                seed=session.seed,
                index=work.index,
            )
            work.chosen = chosen
            error_route = compiled.policy.global_.error
            if isinstance(exc, _TooLong):
                error_route = self._too_long_route()
            self._say(work, tuple(error_route.say), (), tuple(error_route.vary))
            responses = self._render(work, "")
            found_slots, invalid, accepted = {}, {}, False
            if classified.source != "none":
                classified = classified._replace(source="error")

        # Commit.
        commit: dict[str, Any] = {}
        if not failed and (text is not None or not opened):
            state_after, ended = work.state, session.ended or work.ended
            commit = {
                "state": state_after,
                "slots": work.slots,
                "facts": work.facts,
                "ended": ended,
                "started": True,
            }
        else:
            state_after, ended = state_before, session.ended
        if text is not None:
            commit["turns"] = turns = turns + 1
        _assign(session, commit)
        if usage.calls or usage.prompt_tokens or usage.completion_tokens:
            _spend(session.usage, usage)
        index = turns if text is not None else 0
        ids = tuple(map(_ID, responses))
        history.append(
            adopt(
                SessionTurn,
                {
                    "user": text,
                    "intent": classified.intent,
                    "state": state_after,
                    "responses": ids,
                },
            )
        )
        remember = self._remember
        if len(history) > remember:
            del history[: len(history) - remember]
        if tape is not None:
            if understood is not None and work.chosen:
                understood = replace(understood, choices=tuple(work.chosen))
            tape.append(understood)
        slot_types = compiled.slot_types
        values = _TURN.copy()
        values["session_id"] = session.id
        values["index"] = index
        values["user_text"] = text
        values["state_before"] = state_before
        values["state_after"] = state_after
        values["path"] = tuple(work.path)
        values["intent"] = classified.intent
        score = classified.score
        # Rounded to 4 places; an example's, a slot's or a forced intent's 1.0 needs no rounding.
        values["score"] = score if score == 1.0 else round(score, 4)
        values["intent_source"] = classified.source
        values["answered_by"] = classified.answered_by
        values["accepted"] = accepted
        values["slots"] = (
            {n: slot_types[n].to_json(v) for n, v in found_slots.items()} if found_slots else {}
        )
        values["invalid_slots"] = invalid
        values["decisions"] = tuple(work.decisions) if work.decisions else ()
        values["responses"] = responses
        values["effects"] = () if failed or not work.effects else tuple(work.effects)
        values["pending"] = False
        values["model_calls"] = usage.calls
        values["prompt_tokens"] = usage.prompt_tokens
        values["completion_tokens"] = usage.completion_tokens
        values["cached_tokens"] = usage.cached_tokens
        values["latency_ms"] = _latency_ms(started)
        values["error"] = error
        values["ended"] = ended
        turn = adopt(Turn, values)
        self._emit(session, turn, self._allowed[state_before], ids)
        return turn

    def _too_long(self, text: str) -> str:
        return (
            f"the message has {len(text)} characters, more than the policy's limit of"
            f" {self._max_input}"
        )

    def _too_long_route(self) -> Route:
        """What a message longer than the limit is answered with: a route that only says."""
        policy = self.compiled.policy
        if policy.limits.too_long is not None:
            return Route(say=[policy.limits.too_long])
        fallback = policy.global_.fallback
        if fallback.say or fallback.vary:
            return fallback
        return policy.global_.error

    def _empty_turn(self, session: Session) -> Turn:
        """What `start` returns for a session already started: nothing happened."""
        return trusted(
            Turn,
            session_id=session.id,
            index=0,
            user_text=None,
            state_before=session.state,
            state_after=session.state,
            path=(),
            intent=None,
            score=0.0,
            intent_source="none",
            accepted=False,
            slots={},
            responses=(),
            ended=session.ended,
        )

    def _extract(
        self, state: CompiledState, text: str
    ) -> tuple[dict[str, Found], list[tuple[int, int]]]:
        found: dict[str, Found] = {}
        taken: list[tuple[int, int]] = []
        order = self._collect_order[state.name]
        if not order:
            return found, taken
        for name in order:
            hit = self.compiled.slot_types[name].find(text, taken)
            if hit is not None:
                found[name] = hit
                taken.append(hit.span)
        return found, taken

    def _classify(
        self,
        state: CompiledState,
        text: str,
        forced: str | None,
        found: dict[str, Any],
        taken: list[tuple[int, int]],
        locale: str | None = None,
    ) -> _Classified:
        if forced is not None:
            return _classified((forced, 1.0, "forced", _NO_USAGE, {}, None))
        table = None if locale is None else self._local(locale)
        local = table is not None and table.vocabulary is not None
        normalized = " ".join(_normalized(text).split())
        examples = table.examples[state.name] if table is not None and local else state.examples
        example = examples.get(normalized)
        if example is not None:
            return _classified((example, 1.0, "example", _NO_USAGE, {}, None))
        enums = self._enums[state.name]
        enum_needed = {name: labels for name, labels in enums if name not in found} if enums else {}
        if found and not enum_needed:
            rest = list(text)
            for start, end in taken:
                rest[start:end] = " " * (end - start)
            words = [w for w in _WORD.findall("".join(rest).lower()) if w not in _FILLER]
            if not words:
                return _Classified(None, 1.0, "slots", _NO_USAGE, {})
        if not normalized:
            return _Classified(OUT_OF_SCOPE, 1.0, "slots", _NO_USAGE, {})
        if table is not None and table.vocabulary is not None:
            labels, vocabulary, key = table.labels[state.name], table.vocabulary, table.key
        else:
            labels, vocabulary, key = state.labels, self.compiled.vocabulary, state.key
        request = _new_request(
            text, labels, vocabulary, enum_needed, key, self.compiled.policy.description
        )
        answer = self.backend.classify(request)
        if answer.intent not in state.allowed:
            raise BackendError(
                f"backend answered {answer.intent!r}, not one of the allowed labels",
                provider=self.backend.name,
            )
        slots: dict[str, str] = {}
        for name, value in answer.slots.items():
            allowed = {label.name for label in enum_needed.get(name, ())}
            if value not in allowed:
                raise BackendError(
                    f"backend filled slot {name!r} with {value!r}, not an allowed value",
                    provider=self.backend.name,
                )
            slots[name] = value
        score = float(answer.score)
        if not 0.0 <= score <= 1.0:
            raise BackendError(f"score {score} is not in [0, 1]", provider=self.backend.name)
        answered_by = answer.answered_by or self.backend.name
        return _classified((answer.intent, score, "model", answer.usage, slots, answered_by))

    def _route(
        self,
        work: _Work,
        state: CompiledState,
        intent: str | None,
        found: dict[str, Any],
        invalid: dict[str, str],
        unsure: bool = False,
    ) -> bool:
        route = state.routes.get(intent) if intent is not None else None
        if route is not None and unsure and state.unsure is not None:
            # The model named an intent but is not sure enough to act on it.
            self._take(work, state, state.unsure, intent)
            return False
        if intent is None and found:
            # The message only gave slot values: take the first route that needed them.
            route = next(
                (
                    r
                    for r in state.routes.values()
                    if r.require
                    and any(s in found for s in r.require)
                    and all(s in work.slots for s in r.require)
                ),
                None,
            )
        accepted = route is not None
        if route is not None:
            missing = [s for s in route.require if s not in work.slots]
            if missing:
                self._reask(work, missing[0], invalid, state)
                return accepted
            self._take(work, state, route, intent)
            return accepted
        if invalid:
            self._reask(work, next(iter(invalid)), invalid, state)
        elif state.filled is not None and all(s in work.slots for s in state.collect):
            self._take(work, state, state.filled, intent)
        elif found and state.filled is not None:
            missing = [s for s in state.collect if s not in work.slots]
            self._reask(work, missing[0], invalid, state)
        else:
            self._take(work, state, state.fallback, intent)
        return accepted

    def _reask(self, work: _Work, slot: str, invalid: dict[str, str], state: CompiledState) -> None:
        spec = self.compiled.policy.slots[slot]
        response = (spec.invalid or spec.ask) if slot in invalid else spec.ask
        if response is None:
            self._take(work, state, state.fallback, None)
        else:
            work.said.append((response,))

    def _take(
        self,
        work: _Work,
        state: CompiledState,
        route: CompiledRoute,
        intent: str | None,
    ) -> None:
        if route.to is not None:
            self._fire(route.trigger, state.name, route.to)
        self._say(work, route.say, route.choose, route.vary)
        if route.effects:
            self._effects(work, route.effects, state.name, route.trigger)
        if route.to is not None:
            self._enter(work, route.to, intent)

    def _fire(self, trigger: str, source: str, dest: str) -> None:
        if self._moves is not None:
            if self._moves.get((trigger, source)) != dest:
                raise _RouteFault(f"no declared transition {trigger!r} from {source!r} to {dest!r}")
            return
        event = self._machine.events.get(trigger)
        if event is None or source not in event.transitions:
            raise _RouteFault(f"no declared transition {trigger!r} from {source!r}")
        cursor = _Cursor(source)
        event.trigger(cursor)
        if cursor.state != dest:
            raise _RouteFault(f"{trigger!r} from {source!r} led to {cursor.state!r}")

    def _say(
        self,
        work: _Work,
        say: tuple[str, ...],
        choose: tuple[str, ...],
        vary: tuple[str, ...] = (),
    ) -> None:
        for response in say:
            work.said.append((response,))
        if vary:
            work.picks += 1
            work.said.append((pick(work.seed, work.index, work.picks, vary),))
        if choose:
            work.said.append(choose)

    def _effects(
        self, work: _Work, effects: tuple[CompiledEffect, ...], state: str, origin: str
    ) -> None:
        compiled = self.compiled
        values: dict[str, tuple[SlotType, Mapping[str, Any]]] = {}
        for effect in effects:
            for _, source in effect.refs:
                if source in compiled.slot_types:
                    values[source] = (compiled.slot_types[source], work.slots)
                else:
                    values[source] = (compiled.fact_types[source], work.facts)
            try:
                args = resolve(effect, compiled.effect_types, values)
            except ValueError as exc:
                raise _RouteFault(f"effect {effect.name!r} in {state!r}: {exc}") from None
            work.effects.append(
                Effect.model_construct(name=effect.name, args=args, state=state, origin=origin)
            )

    def _enter(self, work: _Work, name: str, intent: str | None) -> None:
        states = self.compiled.states
        while True:
            work.steps += 1
            if work.steps > 64:
                raise _RouteFault("more than 64 states entered in one turn (a routing loop)")
            work.state = name
            work.path.append(name)
            state = states[name]
            if state.effects:
                self._effects(work, state.effects, name, "enter")
            if state.kind == "decide":
                outcome = self._decide(work, state, intent)
                route = state.outcomes[outcome]
                assert route.to is not None
                self._fire(route.trigger, name, route.to)
                self._say(work, route.say, route.choose, route.vary)
                if route.effects:
                    self._effects(work, route.effects, name, route.trigger)
                name = route.to
                continue
            filled = state.filled
            if (
                filled is not None
                and filled.to is not None
                and state.collect
                and all(s in work.slots for s in state.collect)
            ):
                self._fire(filled.trigger, name, filled.to)
                self._say(work, filled.say, filled.choose, filled.vary)
                if filled.effects:
                    self._effects(work, filled.effects, name, filled.trigger)
                name = filled.to
                continue
            self._say(work, state.say, state.choose, state.vary)
            if state.kind == "terminal":
                work.ended = True
            return

    def _decide(self, work: _Work, state: CompiledState, intent: str | None) -> str:
        function = state.decide
        name = state.decide_name or "?"
        assert function is not None
        forced = work.forced.get(name)
        if forced is not None:
            work.decisions.append(
                trusted(
                    DecisionRecord, state=state.name, function=name, outcome=forced, forced=True
                )
            )
            return forced
        compiled = self.compiled
        reads = declared_reads(function)
        slots, facts = work.slots, work.facts
        if reads is not None:
            slots = {k: v for k, v in slots.items() if k in reads}
            facts = {k: v for k, v in facts.items() if k in reads}
        # The typed dicts are made here for the context alone, so they need no second copy.
        context = Context._over(
            state.name,
            intent,
            {k: compiled.slot_types[k].from_json(v) for k, v in slots.items()},
            {k: compiled.fact_types[k].from_json(v) for k, v in facts.items()},
            work.history,
            work.session_id,
            work.turn,
        )
        try:
            if self._runner is None:
                result = function(context)
            else:
                result = self._runner.call(function, context)
        except DecisionTimeoutError as exc:
            raise DecisionError(f"{name} {exc}", function=name) from exc
        except Exception as exc:
            raise DecisionError(
                f"{name} raised {type(exc).__name__}: {exc}", function=name
            ) from exc
        if isinstance(result, str):
            result = Outcome(result)
        if not isinstance(result, Outcome):
            raise DecisionError(
                f"{name} returned {type(result).__name__}, not an outcome", function=name
            )
        if result.name not in function.__sopagent_outcomes__:
            raise DecisionError(
                f"{name} returned undeclared outcome {result.name!r}", function=name
            )
        if result.slots or result.facts:
            self._set_values(work, name, result)
        promised = getattr(function, "__sopagent_sets__", {}).get(result.name, ())
        empty = [key for key in promised if key not in work.slots and key not in work.facts]
        if empty:
            raise DecisionError(
                f"{name} returned {result.name!r} without a value for {', '.join(empty)},"
                " which it declares it sets",
                function=name,
            )
        if result.effects:
            allowed = declared_effects(function).get(result.name, ())
            for effect in result.effects:
                if not isinstance(effect, Effect):
                    raise DecisionError(
                        f"{name} returned {type(effect).__name__} among its effects, not an Effect",
                        function=name,
                    )
                if effect.name not in allowed:
                    raise DecisionError(
                        f"{name} returned effect {effect.name!r}, which it does not declare"
                        f" for outcome {result.name!r}",
                        function=name,
                    )
                try:
                    args = validate_returned(effect.name, effect.args, compiled.effect_types)
                except ValueError as exc:
                    raise DecisionError(
                        f"{name} returned effect {effect.name!r} with {exc}", function=name
                    ) from exc
                work.effects.append(
                    Effect.model_construct(
                        name=effect.name, args=args, state=state.name, origin="decide"
                    )
                )
        work.decisions.append(self._record(state.name, name, result.name))
        return result.name

    def _set_values(self, work: _Work, name: str, result: Outcome) -> None:
        """Validate and store the slot and fact values decision ``name`` returned."""
        compiled = self.compiled
        for target, types, kind, updates in (
            (work.slots, compiled.slot_types, "slot", result.slots),
            (work.facts, compiled.fact_types, "fact", result.facts),
        ):
            for key, value in updates.items():
                slot_type = types.get(key)
                if slot_type is None:
                    raise DecisionError(f"{name} set undeclared {kind} {key!r}", function=name)
                if value is None:
                    target.pop(key, None)
                    continue
                try:
                    target[key] = slot_type.to_json(slot_type.validate(value))
                except ValueError as exc:
                    raise DecisionError(
                        f"{name} set {kind} {key!r} to an invalid value: {exc}", function=name
                    ) from exc

    def _record(self, state: str, function: str, outcome: str) -> DecisionRecord:
        """The record of a decision that ran; immutable, so one per outcome serves every turn."""
        key = (state, function, outcome)
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = trusted(
                DecisionRecord, state=state, function=function, outcome=outcome, forced=False
            )
        return record

    def _local(self, locale: str | None) -> LocaleTable | None:
        return self.compiled.locales.get(locale) if locale is not None else None

    def _render(self, work: _Work, text: str) -> tuple[Utterance, ...]:
        compiled = self.compiled
        out: list[Utterance] = []
        table = None if work.locale is None else self._local(work.locale)
        source = compiled.catalog.locale
        for group in work.said:
            response = group[0]
            if len(group) > 1:
                response = self._choose(work, group, text)
            template = compiled.templates[response]
            locale = source
            if table is not None and response in table.templates:
                template, locale = table.templates[response], table.code
            if not template.placeholders:
                # The same line every time: one immutable Utterance serves every turn.
                said = self._fixed.get((response, locale))
                if said is None:
                    text_out = template.text
                    if "{" in text_out or "}" in text_out:
                        text_out = text_out.format_map({})  # escaped braces
                    said = self._fixed[(response, locale)] = trusted(
                        Utterance, id=response, text=text_out, hash=template.hash, locale=locale
                    )
                out.append(said)
                continue
            values: dict[str, str] = {}
            for name in template.placeholders:
                values[name] = self._shown_value(work, name, response)
            text_out = template.text.format_map(values)
            out.append(
                adopt(
                    Utterance,
                    {"id": response, "text": text_out, "hash": template.hash, "locale": locale},
                )
            )
        return tuple(out)

    def _shown_value(self, work: _Work, name: str, response: str) -> str:
        """The text a placeholder ``{name}`` of ``response`` is filled with."""
        if name in work.slots:
            kind, value = self.compiled.slot_types[name], work.slots[name]
        elif name in work.facts:
            kind, value = self.compiled.fact_types[name], work.facts[name]
        else:
            raise _RouteFault(f"response {response!r} needs {{{name}}}, which has no value")
        if not isinstance(value, _SCALARS):
            return kind.render(kind.from_json(value))
        key = (kind, type(value), value)
        shown = self._shown.get(key)
        if shown is None:
            if len(self._shown) >= _SHOWN_MAX:
                self._shown.clear()
            shown = self._shown[key] = kind.render(kind.from_json(value))
        return shown

    def _choose(self, work: _Work, options: tuple[str, ...], text: str) -> str:
        if work.replayed is not None:
            if not work.replayed:
                raise _ReplayedError(work.replay_error or "BackendError: no recorded choice")
            chosen = work.replayed.popleft()
            if chosen not in options:
                raise _ReplayedError(f"BackendError: recorded choice {chosen!r} is not an option")
            work.chosen.append(chosen)
            return chosen
        templates = self.compiled.templates
        request = ChooseRequest(
            text=text,
            options=tuple(Label(o, templates[o].text) for o in options),
            key=f"{self.compiled.hash}:choose:{','.join(options)}",
            instructions=self.compiled.policy.description,
        )
        answer = self.backend.choose(request)
        if answer.response not in options:
            raise BackendError(
                f"backend chose {answer.response!r}, not one of {', '.join(options)}",
                provider=self.backend.name,
            )
        work.usage = work.usage + answer.usage
        work.chosen.append(answer.response)
        return answer.response

    def _audited_text(
        self, session: Session, text: str | None, state: str, found: Mapping[str, Any]
    ) -> str | None:
        """The user's ``text`` for the audit log, unless it may hold a personal slot value.

        Text said where a personal slot is collected is left out; elsewhere the personal
        values known in the turn (``found``) and the session are replaced in it.
        """
        if not self._audit_text or text is None or state in self._collects_personal:
            return None
        slots, facts, personal = session.slots, session.facts, self._personal
        if personal.isdisjoint(found) and personal.isdisjoint(slots) and personal.isdisjoint(facts):
            return escape_hidden(text)  # no personal value is known yet: nothing to replace
        return escape_hidden(self.redactor.scrub_values(text, found, slots, facts))

    def _audited_effect(self, effect: Effect) -> dict[str, Any]:
        return {"name": effect.name, "args": self.redactor.effect_args(effect.name, effect.args)}

    def _emit(
        self, session: Session, turn: Turn, allowed: tuple[str, ...], ids: tuple[str, ...]
    ) -> None:
        """Send the turn's audit event; ``ids`` are its response ids, as its history entry has."""
        if type(self.audit) is NullSink:
            return  # no event is built for a sink that drops it
        # The turn's fields, read from its dict: a lookup there is cheaper than an attribute.
        t = turn.__dict__
        found = t["slots"]
        invalid = t["invalid_slots"]
        decisions = t["decisions"]
        effects = t["effects"]
        state_before = t["state_before"]
        event = _EVENT.copy()
        event["policy"] = self._policy_name
        event["policy_hash"] = self.compiled.hash
        event["session_id"] = t["session_id"]
        event["turn"] = t["index"]
        event["text"] = self._audited_text(session, t["user_text"], state_before, found)
        event["redacted"] = sorted(self._personal.intersection(found)) if found else []
        event["state_before"] = state_before
        event["state_after"] = t["state_after"]
        event["path"] = list(t["path"])
        event["intent"] = t["intent"]
        event["score"] = t["score"]
        event["intent_source"] = t["intent_source"]
        event["allowed"] = list(allowed)
        event["slots"] = self.redactor.values(found) if found else {}
        event["invalid_slots"] = sorted(invalid) if invalid else []
        event["decisions"] = [f"{d.function}={d.outcome}" for d in decisions] if decisions else []
        event["responses"] = list(ids)
        event["response_hashes"] = list(map(_HASH, t["responses"]))
        event["locale"] = session.locale
        event["effects"] = [self._audited_effect(e) for e in effects] if effects else []
        event["backend"] = self.backend.name
        event["answered_by"] = t["answered_by"]
        event["model_calls"] = t["model_calls"]
        event["prompt_tokens"] = t["prompt_tokens"]
        event["completion_tokens"] = t["completion_tokens"]
        event["latency_ms"] = t["latency_ms"]
        event["error"] = t["error"]
        event["ended"] = t["ended"]
        self.audit.emit(event)


def _normalized(text: str) -> str:
    """``text`` in lower case with punctuation replaced by spaces (examples are kept so)."""
    lowered = text.lower()
    if lowered.isascii():
        return lowered.encode("ascii").translate(_ASCII_PUNCTUATION).decode("ascii")
    return _PUNCTUATION.sub(" ", lowered)


def _enum_labels(slot: SlotType) -> tuple[Label, ...]:
    values: tuple[str, ...] = getattr(slot.spec, "values", ())
    return tuple(Label(value, value.replace("_", " ")) for value in values)


def _assign(target: Any, values: dict[str, Any]) -> None:
    """Set attributes of a session that the turn loop computed.

    The values already have the fields' types, so a pydantic model's fields are written
    directly, without its per-assignment bookkeeping; other stand-ins get ``setattr``.
    """
    marked = getattr(target, "__pydantic_fields_set__", None)
    if marked is not None:
        target.__dict__.update(values)
        marked.update(values)
    else:
        for name, value in values.items():
            setattr(target, name, value)


def _spend(spent: SessionUsage, usage: Usage) -> None:
    """Add a turn's ``usage`` to the session's running totals, in place."""
    fields = spent.__dict__
    fields["model_calls"] += usage.calls
    fields["prompt_tokens"] += usage.prompt_tokens
    fields["completion_tokens"] += usage.completion_tokens
    fields["cached_tokens"] += usage.cached_tokens
    marked = spent.__pydantic_fields_set__
    if len(marked) < len(_SPENT):
        marked.update(_SPENT)


def _update(facts: dict[str, Any], given: Mapping[str, Any]) -> None:
    """Set the host's fact values (already JSON); None clears one."""
    for name, value in given.items():
        if value is None:
            facts.pop(name, None)
        else:
            facts[name] = value


def _cost(usage: Usage, started: float) -> dict[str, Any]:
    """The Turn fields that say what a turn cost: model calls, tokens, latency."""
    return {
        "model_calls": usage.calls,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
        "latency_ms": _latency_ms(started),
    }


def _latency_ms(started: float) -> float:
    """Milliseconds since ``started`` (a `time.perf_counter` reading), to the microsecond.

    Rounding to a whole number of microseconds takes a third of ``round(x, 3)``, to the same
    value.
    """
    return round((time.perf_counter() - started) * 1e6) / 1000


def _moves(machine: Machine) -> dict[tuple[str, str], str] | None:
    """``(trigger, source) -> dest`` for every transition of ``machine``, read off the machine.

    Firing a transition that has no conditions and no callbacks, on a machine and states that
    have none either, only moves the model to its destination; such a move is a lookup here.
    None when anything would run on a move (a callback added to the machine after it was
    compiled): then every move goes through ``Event.trigger``.
    """
    hooks = (
        machine.before_state_change,
        machine.after_state_change,
        machine.prepare_event,
        machine.finalize_event,
        machine.on_exception,
        machine.on_final,
    )
    if any(hooks) or any(s.on_enter or s.on_exit for s in machine.states.values()):
        return None
    moves: dict[tuple[str, str], str] = {}
    for trigger, event in machine.events.items():
        for source, declared in event.transitions.items():
            if len(declared) != 1:
                return None
            (move,) = declared
            if move.conditions or move.before or move.after or move.prepare or move.dest is None:
                return None
            moves[(trigger, source)] = move.dest
    return moves


class _Cursor:
    """The model object transitions moves: it only carries the state name."""

    __slots__ = ("state",)

    def __init__(self, state: str) -> None:
        self.state = state
