"""Stateful properties: any input and any backend answer keep the agent inside its procedure.

A Hypothesis state machine drives a compiled agent with arbitrary user text and arbitrary
backend answers (allowed labels, foreign labels, bad scores, failures) and checks after every
turn that what was said is exactly an approved template, that every move is a declared
transition, that the end is final, and that sessions survive a JSON round trip (the general
one and the compact NPC save).
"""

from __future__ import annotations

from typing import Any

from conftest import REFUND_POLICY
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from strategies import (
    GENERATED_CATALOG,
    GENERATED_RESPONSES,
    Answer,
    DrawnBackend,
    answers,
    generated_labels,
    generated_policies,
    generated_texts,
    intent_labels,
    refund_texts,
)

from sopagent import Agent, Catalog, MemorySink, Policy, Session, Turn, compile_policy, load_policy
from sopagent._compile import CompiledPolicy
from sopagent._npc import load_state, save_state
from sopagent.backends import ClassifyRequest

REFUND = compile_policy(load_policy(REFUND_POLICY))
REFUNDED: set[str] = REFUND.functions["issue_refund"].__globals__["_REFUNDED"]

SETTINGS = settings(
    max_examples=60,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def edges(compiled: CompiledPolicy) -> set[tuple[str, str]]:
    """The (source, dest) pairs the compiled machine declares."""
    return {(t["source"], t["dest"]) for t in compiled.machine_config()["transitions"]}


def expected_text(compiled: CompiledPolicy, response: str, session: Session) -> str:
    """The catalog template of ``response`` filled from the session's validated values."""
    template = compiled.templates[response]
    values: dict[str, str] = {}
    for name in template.placeholders:
        if name in session.slots:
            kind = compiled.slot_types[name]
            values[name] = kind.render(kind.from_json(session.slots[name]))
        else:
            kind = compiled.fact_types[name]
            values[name] = kind.render(kind.from_json(session.facts[name]))
    return template.text.format_map(values)


def essence(session: Session) -> dict[str, Any]:
    return {
        "state": session.state,
        "slots": dict(session.slots),
        "facts": dict(session.facts),
        "ended": session.ended,
    }


def comparable(turn: Turn) -> dict[str, Any]:
    return turn.model_dump(exclude={"latency_ms"})


class AgentMachine(RuleBasedStateMachine):
    """Invariants shared by every compiled policy; subclasses choose the policy and the input."""

    compiled: CompiledPolicy
    agent: Agent
    backend: DrawnBackend
    session: Session
    edges: set[tuple[str, str]]

    def setup(self, compiled: CompiledPolicy) -> None:
        self.compiled = compiled
        self.edges = edges(compiled)
        self.backend = DrawnBackend()
        self.sink = MemorySink()
        self.agent = Agent(compiled, self.backend, audit=self.sink)
        self.session = self.agent.new_session()
        before = essence(self.session)
        turn = self.agent.start(self.session)
        self.check_turn(turn, before, opening=True)

    # -- the checks ----------------------------------------------------------------------------

    def check_turn(self, turn: Turn, before: dict[str, Any], *, opening: bool = False) -> None:
        compiled, session = self.compiled, self.session
        # Said: only catalog templates, filled from validated values; nothing else leaks.
        for utterance in turn.responses:
            assert utterance.id in compiled.templates
            assert utterance.hash == compiled.templates[utterance.id].hash
            assert utterance.text == expected_text(compiled, utterance.id, session)
        # The end is final: nothing is said and nothing changes.
        if before["ended"]:
            assert turn.responses == ()
            assert turn.path == ()
            assert essence(session) == before
            return
        # A failure says the error route and leaves the session as it was.
        if turn.error is not None:
            assert turn.response_ids == tuple(compiled.policy.global_.error.say)
            assert turn.path == ()
            assert turn.decisions == ()
            assert essence(session) == before
            return
        # Moves: each step is a declared transition; only decide states and filled waiting
        # states are passed through; the session rests in a waiting or terminal state.
        current = turn.state_before
        for index, state in enumerate(turn.path):
            if not (opening and index == 0):
                assert (current, state) in self.edges, (current, state, turn.path)
            if index < len(turn.path) - 1 and not (opening and index == 0):
                passing = compiled.states[state]
                assert passing.kind == "decide" or (
                    passing.filled is not None and passing.filled.to is not None
                ), turn.path
            current = state
        assert turn.state_after == current == session.state
        assert compiled.states[session.state].kind != "decide"
        # Intents: whatever the model said, an accepted intent is one the state allows.
        if turn.intent_source == "model" and turn.intent is not None:
            assert turn.intent in compiled.states[turn.state_before].allowed

    @invariant()
    def session_is_consistent(self) -> None:
        """Slots and facts are declared and valid; ended exactly in terminal states."""
        compiled, session = self.compiled, self.session
        for values, types in (
            (session.slots, compiled.slot_types),
            (session.facts, compiled.fact_types),
        ):
            for name, value in values.items():
                kind = types[name]
                assert kind.to_json(kind.validate(kind.from_json(value))) == value
        if session.ended:
            assert compiled.states[session.state].kind == "terminal"
        elif compiled.states[session.state].kind == "terminal":
            raise AssertionError(f"session rests in terminal {session.state} without ending")

    @invariant()
    def one_audit_event_per_turn(self) -> None:
        """Every turn writes one audit event; personal values are never in it."""
        assert len(self.sink.events) == len(self.session.history)
        personal = {n for n, s in self.compiled.policy.slots.items() if s.personal}
        # As the policy's privacy block says: refund masks ("***"), the default hashes.
        shown = {"hash": "hmac:", "mask": "***"}[self.compiled.policy.privacy.personal]
        for event in self.sink.events:
            for name in personal & set(event["slots"]):
                assert str(event["slots"][name]).startswith(shown)

    # -- the steps -----------------------------------------------------------------------------

    def turn(self, text: str, answer: Answer, intent: str | None = None) -> Turn:
        self.backend.answer = answer
        before = essence(self.session)
        opening = not self.session.started
        seen = len(self.backend.requests)
        turn = self.agent.respond(self.session, text, intent=intent)
        if intent is not None:
            asked = self.backend.requests[seen:]
            assert not any(isinstance(r, ClassifyRequest) for r in asked)
            assert turn.intent == intent or turn.error is not None or before["ended"]
        # A session whose opening failed enters its initial state again first.
        self.check_turn(turn, before, opening=opening)
        return turn

    def replay_on_copy(self, text: str, answer: Answer) -> None:
        copy = Session.from_json(self.session.to_json())
        assert copy == self.session
        assert load_state(save_state(self.session)) == self.session
        self.backend.answer = answer
        first = self.agent.respond(copy, text)
        first_event = self.sink.events.pop()
        second = self.turn(text, answer)
        assert comparable(first) == comparable(second)
        assert copy == self.session
        untimed = [
            {k: v for k, v in e.items() if k != "latency_ms"}
            for e in (first_event, self.sink.events[-1])
        ]
        assert untimed[0] == untimed[1]


class RefundMachine(AgentMachine):
    """The worked refund example under arbitrary input."""

    @initialize()
    def open(self) -> None:
        """Start a refund conversation."""
        # Refunds are remembered by the example's module; start every run afresh.
        REFUNDED.clear()
        self.setup(REFUND)

    @rule(text=refund_texts(REFUND.policy), answer=answers(intent_labels(REFUND.policy)))
    def say(self, text: str, answer: Answer) -> None:
        """Any text, any backend answer: at most one model call, and always an answer."""
        ended = self.session.ended
        turn = self.turn(text, answer)
        assert turn.model_calls <= 1
        if not ended:
            assert turn.responses, "the agent always answers until the end"

    @rule(
        text=refund_texts(REFUND.policy),
        intent=st.sampled_from(intent_labels(REFUND.policy)),
    )
    def press_button(self, text: str, intent: str) -> None:
        """Any text with a forced intent: no model call."""
        self.turn(text, Answer(intent), intent=intent)

    @rule(text=refund_texts(REFUND.policy), answer=answers(intent_labels(REFUND.policy)))
    def round_trip(self, text: str, answer: Answer) -> None:
        """A copy restored from JSON answers the next message exactly like the original."""
        self.replay_on_copy(text, answer)

    def teardown(self) -> None:
        REFUNDED.clear()


class GeneratedMachine(AgentMachine):
    """Random small policies, including decision loops, failing decisions and choices."""

    @initialize(spec=generated_policies())
    def open(self, spec: dict[str, Any]) -> None:
        """Compile a generated policy and start a conversation on it."""
        policy = Policy.model_validate(spec)
        catalog = Catalog.model_validate(GENERATED_CATALOG)
        self.setup(compile_policy(policy, catalog))

    @rule(text=generated_texts(), answer=answers(generated_labels(), GENERATED_RESPONSES))
    def say(self, text: str, answer: Answer) -> None:
        """Any text, any backend answer."""
        self.turn(text, answer)

    @rule(text=generated_texts(), intent=st.sampled_from(generated_labels()))
    def press_button(self, text: str, intent: str) -> None:
        """Any text with a forced intent."""
        self.turn(text, Answer(intent), intent=intent)

    @rule(text=generated_texts(), answer=answers(generated_labels(), GENERATED_RESPONSES))
    def round_trip(self, text: str, answer: Answer) -> None:
        """A copy restored from JSON answers the next message exactly like the original."""
        self.replay_on_copy(text, answer)


TestRefundMachine = SETTINGS(RefundMachine).TestCase
TestGeneratedMachine = SETTINGS(GeneratedMachine).TestCase
