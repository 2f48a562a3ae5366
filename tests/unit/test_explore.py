"""The abstract machine: decision updates read from code, inputs, nodes, cut turns, choices."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conftest import REFUND_POLICY

from sopagent import Context, Outcome, compile_policy, decision, load_policy
from sopagent._explore import AbstractMachine, Event, Input, Node, Update, decision_updates

Writer = Callable[..., Path]
MERCHANT_POLICY = REFUND_POLICY.parent / "merchant_npc.yaml"
REFUND = compile_policy(load_policy(REFUND_POLICY))
MERCHANT = compile_policy(load_policy(MERCHANT_POLICY))


# --- decision updates -------------------------------------------------------------------------


@decision(outcomes=["yes", "no", "maybe"])
def literal_returns(ctx: Context) -> Outcome | str:
    """Outcomes written out, one inside a conditional expression."""
    if ctx.slots.get("a"):
        return Outcome("yes", slots={"a": None, "b": ctx.slots["a"]}, facts={"f": 1})
    return "no" if ctx.facts.get("f") else "maybe"


@decision(outcomes=["locked", "again"])
def through_a_variable(ctx: Context) -> Outcome:
    """The outcome's name is a local variable bound only to literals."""
    name = "locked" if ctx.facts.get("n", 0) > 2 else "again"
    return Outcome(name, slots={"code": None}, facts=dict(ctx.facts))


@decision(outcomes=["one", "two"])
def computed(ctx: Context) -> str:
    """The outcome comes from elsewhere: nothing can be read."""
    return str(ctx.facts["choice"])


def test_updates_of_literal_returns() -> None:
    """Literal dicts give exact sets and clears; plain strings change nothing."""
    updates = decision_updates(literal_returns)
    assert updates == {
        "yes": (Update(sets=frozenset({"b"}), clears=frozenset({"a"}), facts=frozenset({"f"})),),
        "no": (Update(),),
        "maybe": (Update(),),
    }


def test_updates_through_a_variable_and_unreadable_facts() -> None:
    """A name bound to literals is followed; a computed facts dict may set any fact."""
    updates = decision_updates(through_a_variable)
    assert updates is not None
    expected = Update(clears=frozenset({"code"}), facts_unknown=True)
    assert updates == {"locked": (expected,), "again": (expected,)}


def test_unreadable_functions_give_nothing() -> None:
    """When outcomes cannot be read, the machine assumes any update."""
    assert decision_updates(computed) is None


def test_shipped_decisions_are_all_read() -> None:
    """Every decision function of both examples is read from its code (the abstraction is
    exact about slots)."""
    for compiled in (REFUND, MERCHANT):
        machine = AbstractMachine(compiled)
        for name, updates in machine.updates.items():
            assert updates is not None, name
            assert not any(u.slots_unknown for us in updates.values() for u in us), name
    find_order = AbstractMachine(REFUND).updates["find_order"]
    assert find_order is not None
    assert find_order["not_found"] == (Update(clears=frozenset({"order_id"})),)


# --- inputs and nodes ---------------------------------------------------------------------


def test_inputs_are_labels_slot_values_and_failure() -> None:
    """A waiting state offers each allowed label with the slot values that route may keep,
    slot values alone, and the error route."""
    machine = AbstractMachine(REFUND)
    inputs = machine.inputs(REFUND.states["ask_order"])
    assert Input("deny", (("order_id", True),)) in inputs
    assert Input("provide_order_id", (("order_id", False),)) in inputs
    assert Input(None, (("order_id", True),)) in inputs
    assert Input(error=True) in inputs
    assert not any(i.unsure for i in inputs)  # the refund policy has no confidence rule
    greeting = machine.inputs(REFUND.states["greeting"])
    # The greeting collects nothing itself: only routes that require the order id keep it.
    assert Input("greet", (("order_id", True),)) not in greeting
    assert Input("provide_order_id", (("order_id", True),)) in greeting
    labels = {i.label for i in greeting if not i.error and i.label is not None}
    assert labels == REFUND.states["greeting"].allowed


def test_unsure_inputs_where_a_confidence_rule_applies(write_policy: Writer) -> None:
    """With a confidence rule, every routed label also has its unsure variant."""
    path = write_policy(
        policy=lambda text: text.replace(
            "  fallback: {say: sorry}",
            "  fallback: {say: sorry}\n  confidence: {threshold: 0.6, below: {say: sorry}}",
        )
    )
    machine = AbstractMachine(compile_policy(load_policy(path)))
    inputs = machine.inputs(machine.compiled.states["start"])
    assert Input("greet", unsure=True) in inputs
    assert Input("out_of_scope", unsure=True) not in inputs  # fallback: nothing to doubt
    (move,) = [
        m for m in machine.moves(Node("rest", "start")) if m.input == Input("greet", unsure=True)
    ]
    (branch,) = move.branches
    assert [str(e) for e in branch.events] == ["intent greet", "say sorry"]


def test_refund_machine_nodes() -> None:
    """Nodes are states with which slots have a value; turns are cut at decisions."""
    machine = AbstractMachine(REFUND)
    count = machine.explore()
    nodes = set(machine.nodes)
    assert count == len(nodes)
    assert Node("rest", "greeting") in nodes
    assert Node("pending", "lookup_order", frozenset({"order_id"})) in nodes
    assert Node("ended", "closed") in nodes
    # No decision state ever waits for the user, and no rest state is a decision state.
    for node in nodes:
        kind = REFUND.states[node.state].kind
        assert (node.kind == "pending") == (kind == "decide")
    # An order id that was not found is forgotten, so the machine asks again: no filled
    # ask_order loops back to lookup in the same turn.
    moves = machine.moves(Node("pending", "lookup_order", frozenset({"order_id"})))
    targets = {b.decision[2]: b.target for b in moves[0].branches if b.decision}
    assert targets["not_found"] == Node("rest", "ask_order")
    assert targets["found"] == Node("pending", "check_eligibility", frozenset({"order_id"}))


def test_events_are_in_order() -> None:
    """A step records the intent, slots filled, states, decisions and lines in order."""
    machine = AbstractMachine(REFUND)
    (move,) = [
        m
        for m in machine.moves(Node("rest", "greeting"))
        if m.input == Input("provide_order_id", (("order_id", True),))
    ]
    (branch,) = move.branches
    assert [str(e) for e in branch.events] == [
        "intent provide_order_id",
        "filled order_id",
        "state lookup_order",
    ]
    assert branch.target == Node("pending", "lookup_order", frozenset({"order_id"}))
    (turn,) = [
        t
        for t in machine.turns(Node("rest", "greeting"), move.input)
        if t.decisions
        == (
            ("lookup_order", "find_order", "found"),
            ("check_eligibility", "check_refund", "eligible"),
        )
    ]
    assert [str(e) for e in turn.events] == [
        "intent provide_order_id",
        "filled order_id",
        "state lookup_order",
        "decision find_order=found",
        "filled order_total",
        "state check_eligibility",
        "decision check_refund=eligible",
        "filled refund_amount",
        "state confirm_refund",
        "say confirm_refund",
    ]
    assert turn.target == Node("rest", "confirm_refund", frozenset({"order_id"}))


def test_a_failing_backend_changes_nothing() -> None:
    """The error input says the error lines and leaves the node as it was."""
    machine = AbstractMachine(REFUND)
    node = Node("rest", "confirm_refund", frozenset({"order_id"}))
    (move,) = [m for m in machine.moves(node) if m.input == Input(error=True)]
    (branch,) = move.branches
    assert branch.failed
    assert branch.target == node
    assert branch.events == (Event("say", "technical_issue", "confirm_refund"),)


def test_the_model_choice_is_one_branch_per_response() -> None:
    """`choose` in a route gives a branch for each response the model may pick."""
    machine = AbstractMachine(MERCHANT)
    (move,) = [m for m in machine.moves(Node("rest", "shop")) if m.input == Input("greet")]
    said = sorted(tuple(e.name for e in b.events if e.kind == "say") for b in move.branches)
    assert said == [("greet_back",), ("small_talk",)]
    assert [b.other_choice for b in sorted(move.branches, key=lambda b: b.choices)] == [False, True]


def test_decision_loops_are_failing_turns(write_policy: Writer) -> None:
    """A turn that can come back to the same decision is also listed as a failed turn."""
    path = write_policy(
        policy=lambda text: text.replace(
            "      small: {to: done, say: small}", "      small: {to: judge, say: small}"
        )
    )
    machine = AbstractMachine(compile_policy(load_policy(path)))
    machine.explore()
    node = Node("rest", "start")
    turns = machine.turns(node, Input("give_number", (("number", True),)))
    assert any(t.failed and t.target == node for t in turns)
    assert any(not t.failed and t.target.state == "done" for t in turns)
