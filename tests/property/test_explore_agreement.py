"""The abstract machine agrees with the real agent on random conversations.

Every turn the real agent takes (real decision functions, arbitrary text, arbitrary backend
answers) must be one of the turns the abstract machine lists for the same session and the
same input: the same intent, states, decisions and lines in the same order, ending in the
same state with the same slots filled. And recording a turn's events never changes it.
"""

from __future__ import annotations

from typing import Any

from conftest import REFUND_POLICY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import (
    GENERATED_CATALOG,
    DrawnBackend,
    answers,
    generated_labels,
    generated_policies,
    generated_texts,
    intent_labels,
    refund_texts,
)

from sopagent import Agent, Catalog, MemorySink, Policy, Session, compile_policy, load_policy
from sopagent._compile import CompiledPolicy
from sopagent._explore import AbstractMachine, Event, Input, Node, Recorder
from sopagent._search import ModuleState
from sopagent.session import Turn

REFUND = compile_policy(load_policy(REFUND_POLICY))
MERCHANT = compile_policy(load_policy(REFUND_POLICY.parent / "merchant_npc.yaml"))
MACHINES = {REFUND.hash: AbstractMachine(REFUND), MERCHANT.hash: AbstractMachine(MERCHANT)}

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def node_of(compiled: CompiledPolicy, session: Session) -> Node:
    """The abstract node of a real session."""
    if not session.started:
        return Node("start", session.state)
    kind = "ended" if compiled.states[session.state].kind == "terminal" else "rest"
    return Node(kind, session.state, frozenset(session.slots))  # type: ignore[arg-type]


def input_of(compiled: CompiledPolicy, state_name: str, turn: Turn) -> Input:
    """The abstract input a real turn corresponds to."""
    if turn.error is not None:
        return Input(error=True)
    state = compiled.states[state_name]
    given = {**dict.fromkeys(turn.slots, True), **dict.fromkeys(turn.invalid_slots, False)}
    slots = tuple((n, given[n]) for n in state.collect if n in given)
    label = None if turn.intent_source == "slots" and turn.intent is None else turn.intent
    route = state.routes.get(label or "")
    unsure = (
        turn.intent_source == "model"
        and route is not None
        and state.unsure is not None
        and turn.score < state.threshold
    )
    return Input(label, slots, unsure)


def core(events: list[Event] | tuple[Event, ...]) -> list[tuple[str, str, str, str]]:
    """Events without values and without slot or fact updates."""
    return [(e.kind, e.name, e.state, e.outcome) for e in events if e.kind != "filled"]


def comparable(turn: Turn) -> dict[str, Any]:
    return turn.model_dump(exclude={"latency_ms"})


def check_turn(
    machine: AbstractMachine, node: Node, given: Input | None, events: list[Event], after: Node
) -> None:
    """The real turn is one of the abstract machine's turns from ``node`` on ``given``."""
    if given is not None and given.error:
        (move,) = [m for m in machine.moves(node) if m.input == given]
        (branch,) = move.branches
        assert core(branch.events) == core(events)
        assert branch.target == node == after
        return
    turns = machine.turns(node, given)
    assert turns, (node, given)
    matching = [t for t in turns if core(t.events) == core(events) and t.target == after]
    assert matching, (node, given, core(events), after, [(core(t.events), t.target) for t in turns])
    filled = {e.name for e in events if e.kind == "filled"}
    assert any(filled <= {e.name for e in t.events if e.kind == "filled"} for t in matching)


def converse(
    compiled: CompiledPolicy,
    machine: AbstractMachine,
    data: st.DataObject,
    texts: st.SearchStrategy[str],
    labels: list[str],
    responses: list[str] | None = None,
) -> None:
    """Drive the recording agent and a plain one in step; check every turn."""
    backend = DrawnBackend()
    recorder = Recorder(compiled, backend)
    plain = Agent(compiled, backend, audit=MemorySink())
    session = recorder.new_session()
    twin = Session.from_json(session.to_json())
    initial = ModuleState(compiled.functions)
    try:
        for _ in range(data.draw(st.integers(1, 12), label="turns")):
            if session.ended:
                break
            before = node_of(compiled, session)
            # The plain agent runs from the decision modules' state the recorder started from.
            snapshot = ModuleState(compiled.functions)
            recorder.begin()
            if not session.started:
                # The opening (again, as a host does when it failed): it takes no input.
                turn = recorder.start(session)
                snapshot.restore()
                assert comparable(plain.start(twin)) == comparable(turn)
                given = Input(error=True) if turn.error is not None else None
            else:
                text = data.draw(texts, label="text")
                backend.answer = data.draw(answers(labels, responses), label="answer")
                turn = recorder.respond(session, text)
                snapshot.restore()
                assert comparable(plain.respond(twin, text)) == comparable(turn)
                given = input_of(compiled, before.state, turn)
            assert twin == session
            check_turn(machine, before, given, recorder.finish(turn), node_of(compiled, session))
    finally:
        initial.restore()


@SETTINGS
@given(st.data())
def test_refund_agrees(data: st.DataObject) -> None:
    """Random refund conversations: every real turn is an abstract turn."""
    converse(
        REFUND,
        MACHINES[REFUND.hash],
        data,
        refund_texts(REFUND.policy),
        intent_labels(REFUND.policy),
    )


@SETTINGS
@given(st.data())
def test_merchant_agrees(data: st.DataObject) -> None:
    """Random merchant conversations, with the model's choice of greeting."""
    texts = st.one_of(
        st.sampled_from([e for i in MERCHANT.policy.intents.values() for e in i.examples]),
        st.integers(-5, 300).map(str),
        st.text(max_size=20),
    )
    converse(
        MERCHANT,
        MACHINES[MERCHANT.hash],
        data,
        texts,
        intent_labels(MERCHANT.policy),
        ["greet_back", "small_talk"],
    )


@SETTINGS
@given(spec=generated_policies(), data=st.data())
def test_generated_policies_agree(spec: dict[str, Any], data: st.DataObject) -> None:
    """Random small policies with decision loops, failing decisions and choices."""
    compiled = compile_policy(
        Policy.model_validate(spec), Catalog.model_validate(GENERATED_CATALOG)
    )
    converse(
        compiled,
        AbstractMachine(compiled),
        data,
        generated_texts(),
        generated_labels(),
        ["r0", "r1", "r2", "r3", "with_n"],
    )
