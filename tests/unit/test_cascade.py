"""The cascade backend: the second backend answers only when the first is unsure or fails."""

from __future__ import annotations

import pytest
from conftest import FixedBackend

from sopagent import MemorySink, load_agent
from sopagent.backends import (
    Choice,
    ChooseRequest,
    Classification,
    ClassifyRequest,
    Label,
    Usage,
)
from sopagent.backends.cascade import cascade
from sopagent.backends.resilient import resilient
from sopagent.errors import BackendError

REQUEST = ClassifyRequest(text="hm", labels=(Label("stop", "stop"), Label("out_of_scope", "x")))


class Failing:
    """Fails every call, as a backend that timed out would."""

    name = "failing"

    def classify(self, request: ClassifyRequest) -> Classification:
        raise BackendError("timed out", provider=self.name, retryable=True)

    def choose(self, request: ChooseRequest) -> Choice:
        raise BackendError("timed out", provider=self.name, retryable=True)


def named(name: str, intent: str, score: float) -> FixedBackend:
    backend = FixedBackend(intent, score)
    backend.name = name
    return backend


def test_confident_first_backend_answers_alone() -> None:
    """At or above the threshold the first answer is kept and the second is never asked."""
    backend = cascade(named("small", "stop", 0.8), Failing(), threshold=0.8)
    answer = backend.classify(REQUEST)
    assert (answer.intent, answer.answered_by) == ("stop", "small")
    assert answer.usage == Usage(1)
    assert backend.counts == {"small": 1}


def test_unsure_first_backend_defers_to_the_second() -> None:
    """Below the threshold the second answers, and the usage of both calls is added up."""
    backend = cascade(named("small", "stop", 0.3), named("large", "out_of_scope", 0.9), 0.5)
    answer = backend.classify(REQUEST)
    assert (answer.intent, answer.answered_by) == ("out_of_scope", "large")
    assert answer.usage == Usage(2)
    assert backend.counts == {"large": 1}


def test_failing_first_backend_defers_to_the_second() -> None:
    """A failure of the first backend is answered by the second."""
    backend = cascade(Failing(), named("large", "stop", 0.9), 0.5)
    assert backend.classify(REQUEST).answered_by == "large"


def test_both_failing_is_a_backend_error() -> None:
    """When both fail the agent gets a BackendError, which it turns into the error line."""
    with pytest.raises(BackendError):
        cascade(Failing(), Failing(), 0.5).classify(REQUEST)


def test_threshold_outside_unit_interval_is_rejected() -> None:
    """A threshold outside [0, 1] is a programming error."""
    with pytest.raises(ValueError, match="threshold"):
        cascade(Failing(), Failing(), 1.5)


def test_turn_and_audit_record_which_backend_answered(reset_refunds: None) -> None:
    """The Turn and its audit event name the backend whose answer was used."""
    sink = MemorySink()
    backend = cascade(named("small", "talk_to_human", 0.2), named("large", "goodbye", 0.9), 0.5)
    agent = load_agent("policies/refund.yaml", backend=backend, audit=sink)
    session = agent.new_session()
    agent.start(session)
    turn = agent.respond(session, "I am off then")
    assert turn.answered_by == "large"
    assert turn.model_calls == 2
    assert sink.events[-1]["answered_by"] == "large"
    assert sink.events[-1]["backend"] == "cascade"
    assert session.state == "closed"


def test_session_adds_up_what_each_turn_cost(reset_refunds: None) -> None:
    """The session's usage is the sum of its turns' model calls and tokens."""
    backend = cascade(named("small", "request_refund", 0.2), named("large", "greet", 0.9), 0.5)
    agent = load_agent("policies/refund.yaml", backend=backend, audit=MemorySink())
    session = agent.new_session()
    agent.start(session)
    turns = [agent.respond(session, text) for text in ("hmm well", "hello", "so then")]
    assert session.usage.model_calls == sum(t.model_calls for t in turns) == 4
    restored = type(session).from_json(session.to_json())
    assert restored.usage == session.usage


def test_classify_understands_without_acting(reset_refunds: None) -> None:
    """Agent.classify reports intent and slots, and takes no route, runs nothing, logs nothing."""
    sink = MemorySink()
    agent = load_agent(
        "policies/refund.yaml", backend=named("m", "provide_order_id", 0.8), audit=sink
    )
    session = agent.new_session()
    agent.start(session)
    before = session.to_json()
    events = len(sink.events)
    turn = agent.classify(session, "it is the one with number 10001, thanks a lot")
    assert (turn.intent, turn.intent_source, turn.answered_by) == ("provide_order_id", "model", "m")
    assert turn.slots == {"order_id": "10001"}
    assert turn.accepted is True
    assert turn.decisions == ()
    assert turn.responses == ()
    assert session.to_json() == before
    assert len(sink.events) == events


class Warmable(FixedBackend):
    """A backend that records the prompts it was asked to evaluate early."""

    def __init__(self) -> None:
        super().__init__("stop", 1.0)
        self.warmed: list[str] = []

    def warm(self, vocabulary: tuple[Label, ...], key: str = "") -> None:
        self.warmed.append(key)


def test_warm_reaches_every_backend_that_can_warm() -> None:
    """Warming a cascade (or a resilient wrapper) warms the backends inside it."""
    first, second = Warmable(), Warmable()
    wrapped = resilient(cascade(first, second, 0.5))
    wrapped.warm((Label("stop", "stop"),), "policy-hash")
    wrapped.close()
    assert first.warmed == second.warmed == ["policy-hash"]
    cascade(Failing(), first, 0.5).warm((), "other")
    assert first.warmed[-1] == "other"
