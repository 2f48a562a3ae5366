"""The run step: whole conversations with a scripted model, failures, sessions and audit."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import REFUND_POLICY
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from sopagent import (
    Agent,
    BackendError,
    JsonLinesSink,
    MemorySink,
    ScriptedBackend,
    Session,
    SessionError,
    Turn,
    load_agent,
)
from sopagent.backends import Choice, ChooseRequest, Classification, ClassifyRequest, Label

MakeAgent = Callable[..., Agent]
Writer = Callable[..., Path]

# Messages that lead from the greeting to each waiting state of the refund policy.
TO_STATE: dict[str, list[str]] = {
    "greeting": [],
    "ask_order": ["I want a refund"],
    "confirm_refund": ["I want a refund", "10001"],
    "verify": ["I want a refund", "10002"],
    "verify_retry": ["I want a refund", "10002", "000000"],
    "anything_else": ["I want a refund", "10003"],
}


def started(agent: Agent, *messages: str) -> tuple[Session, list[Turn]]:
    """A new session, started, then advanced by ``messages``."""
    session = agent.new_session()
    turns = [agent.start(session)]
    turns += [agent.respond(session, message) for message in messages]
    return session, turns


def snapshot(session: Session) -> dict[str, Any]:
    """What a failed turn must leave unchanged."""
    return {
        "state": session.state,
        "slots": dict(session.slots),
        "facts": dict(session.facts),
        "ended": session.ended,
        "started": session.started,
    }


def comparable(turn: Turn) -> dict[str, Any]:
    """A turn without its timing, to compare two runs."""
    return turn.model_dump(exclude={"latency_ms"})


class RaisingBackend:
    """A backend that fails every call, as a timed-out provider would."""

    name = "raising"

    def __init__(self) -> None:
        self.calls = 0

    def classify(self, request: ClassifyRequest) -> Classification:
        self.calls += 1
        raise BackendError("timed out", provider=self.name, retryable=True)

    def choose(self, request: ChooseRequest) -> Choice:
        self.calls += 1
        raise BackendError("timed out", provider=self.name, retryable=True)


# --- the refund procedure -------------------------------------------------------------------


def test_small_refund_is_confirmed_and_issued(refund_agent: MakeAgent) -> None:
    """Order 10001 ($45.50): asked for the order, confirmed with the amount, then issued."""
    agent = refund_agent()
    session, turns = started(agent, "I want a refund", "10001", "yes", "no")
    greet, ask, confirm, issued, bye = turns
    assert greet.response_ids == ("greet",)
    assert ask.response_ids == ("ask_order_id",)
    assert ask.state_after == "ask_order"
    assert confirm.path == ("lookup_order", "check_eligibility", "confirm_refund")
    assert [d.outcome for d in confirm.decisions] == ["found", "eligible"]
    assert confirm.text == (
        "I can refund $45.50 for order 10001 to your original payment method. Shall I go ahead?"
    )
    assert issued.response_ids == ("refund_issued", "anything_else")
    assert issued.text.startswith("Done! $45.50 is on its way back to you.")
    assert "RF-070007" in issued.text
    assert issued.outcome == "issued"
    assert bye.response_ids == ("goodbye",)
    assert bye.ended
    assert session.state == "closed"
    assert session.ended
    assert session.facts["refund_reference"] == "RF-070007"


def test_large_refund_needs_a_code_and_locks_after_three_misses(refund_agent: MakeAgent) -> None:
    """Order 10002 ($249.99): a code is required; three wrong codes lock it and hand over."""
    agent = refund_agent()
    session, turns = started(agent, "I want a refund", "10002")
    assert turns[-1].response_ids == ("verification_needed",)
    assert session.state == "verify"
    first = agent.respond(session, "111111")
    assert first.response_ids == ("code_wrong", "ask_code")
    assert first.state_after == "verify_retry"
    second = agent.respond(session, "my code is 222222")
    assert second.response_ids == ("code_wrong", "ask_code")
    assert session.facts["failed_attempts"] == 2
    third = agent.respond(session, "333333")
    assert third.response_ids == ("code_locked", "handoff")
    assert third.path == ("check_code", "handoff")
    assert third.ended
    assert session.state == "handoff"
    assert session.facts["failed_attempts"] == 3
    assert "refund_reference" not in session.facts


def test_large_refund_with_the_right_code_is_issued(refund_agent: MakeAgent) -> None:
    """Order 10002 with the emailed code is verified, confirmed and issued."""
    agent = refund_agent()
    session, _ = started(agent, "I want a refund", "10002", "000000")
    verified = agent.respond(session, "615204")
    assert verified.response_ids == ("confirm_refund",)
    assert "$249.99" in verified.text
    assert session.facts["verified"] is True
    issued = agent.respond(session, "yes")
    assert issued.outcome == "issued"
    assert "$249.99" in issued.text


def test_unknown_order_is_asked_again(refund_agent: MakeAgent) -> None:
    """An order number that does not exist is forgotten and asked for again."""
    agent = refund_agent()
    session, turns = started(agent, "I want a refund", "99999")
    turn = turns[-1]
    assert turn.response_ids == ("order_not_found", "ask_order_id")
    assert turn.path == ("lookup_order", "ask_order")
    assert session.state == "ask_order"
    assert "order_id" not in session.slots
    again = agent.respond(session, "10001")
    assert again.state_after == "confirm_refund"


@pytest.mark.parametrize(
    ("order", "response", "fragment"),
    [
        ("10003", "refund_not_delivered", "Order 10003 hasn't been delivered yet"),
        ("10004", "refund_too_old", "Order 10004 was delivered more than 30 days ago"),
        ("10005", "refund_already_done", "Order 10005 has already been refunded"),
    ],
)
def test_ineligible_orders_are_explained(
    refund_agent: MakeAgent, order: str, response: str, fragment: str
) -> None:
    """Undelivered, too old and already refunded orders are refused with the reason."""
    agent = refund_agent()
    session, turns = started(agent, "I want a refund", order)
    assert turns[-1].response_ids == (response, "anything_else")
    assert turns[-1].text.startswith(fragment)
    assert session.state == "anything_else"


def test_second_refund_of_same_order_is_refused(refund_agent: MakeAgent) -> None:
    """After a refund, starting over with the same order finds it already refunded."""
    agent = refund_agent()
    session, _ = started(agent, "I want a refund", "10001", "yes")
    again = agent.respond(session, "I want a refund")
    assert again.path == ("start_over", "ask_order")
    assert "order_id" not in session.slots
    assert "refund_amount" not in session.facts
    repeat = agent.respond(session, "10001")
    assert repeat.response_ids == ("refund_already_done", "anything_else")


def test_denying_confirmation_refunds_nothing(refund_agent: MakeAgent) -> None:
    """Saying no at the confirmation cancels and does not run the refund."""
    agent = refund_agent()
    session, turns = started(agent, "I want a refund", "10001", "no thanks")
    assert turns[-1].response_ids == ("refund_cancelled", "anything_else")
    assert turns[-1].decisions == ()
    assert "refund_reference" not in session.facts


def test_policy_question_is_answered_in_place(refund_agent: MakeAgent) -> None:
    """A global intent without a target says its line and keeps the state."""
    agent = refund_agent()
    session, turns = started(agent, "I want a refund", "10001", "what is your refund policy")
    assert turns[-1].response_ids == ("refund_policy",)
    assert session.state == "confirm_refund"


def test_order_id_given_at_the_greeting(refund_agent: MakeAgent) -> None:
    """Giving an order number first thing leads straight to the order, whatever its digits."""
    agent = refund_agent()
    _, turns = started(agent, "it's order 10002")
    assert turns[-1].state_after == "verify"
    _, turns = started(agent, "it's order 10001")
    assert turns[-1].state_after == "confirm_refund"


@pytest.mark.parametrize("state", sorted(TO_STATE))
def test_talk_to_human_from_any_waiting_state(refund_agent: MakeAgent, state: str) -> None:
    """Asking for a human from any waiting state, once confirmed, hands over and ends."""
    agent = refund_agent()
    session, turns = started(agent, *TO_STATE[state])
    assert turns[-1].state_after == state
    turn = agent.respond(session, "let me talk to a human")
    assert turn.state_before == state
    assert turn.intent == "talk_to_human"
    assert turn.path == ("confirm_handoff",)
    assert turn.response_ids == ("confirm_handoff",)
    assert not turn.ended
    turn = agent.respond(session, "yes")
    assert turn.path == ("handoff",)
    assert turn.response_ids == ("handoff",)
    assert turn.ended
    assert session.state == "handoff"
    assert session.ended


def test_declined_handoff_keeps_the_conversation(refund_agent: MakeAgent) -> None:
    """A request for a person that the customer then declines does not end the conversation."""
    agent = refund_agent()
    session, _ = started(agent, "let me talk to a human")
    turn = agent.respond(session, "no")
    assert turn.state_after == "anything_else"
    assert not session.ended


def test_terminal_state_is_absorbing(refund_agent: MakeAgent) -> None:
    """After the end, every message is answered with nothing and changes nothing."""
    agent = refund_agent(default="request_refund")
    session, _ = started(agent, "goodbye")
    assert session.state == "closed"
    before = snapshot(session)
    for message, intent in [("I want a refund", None), ("10001", None), ("x", "talk_to_human")]:
        turn = agent.respond(session, message, intent=intent)
        assert turn.responses == ()
        assert turn.path == ()
        assert turn.state_before == turn.state_after == "closed"
        assert turn.ended
        assert snapshot(session) == before
    assert agent.backend.requests == []  # type: ignore[attr-defined]


def test_start_twice_says_nothing_more(refund_agent: MakeAgent) -> None:
    """Starting a session that has started returns an empty turn."""
    agent = refund_agent()
    session, _ = started(agent)
    again = agent.start(session)
    assert again.responses == ()
    assert session.state == "greeting"


def test_respond_without_start_opens_first(refund_agent: MakeAgent) -> None:
    """The first message of an unstarted session also says the opening lines."""
    agent = refund_agent()
    session = agent.new_session()
    turn = agent.respond(session, "I want a refund")
    assert turn.response_ids == ("greet", "ask_order_id")
    assert session.state == "ask_order"


# --- model calls ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "source"),
    [
        ("I want a refund", "example"),
        ("  i WANT a refund!! ", "example"),
        ("refund my order, please", "example"),
    ],
)
def test_examples_need_no_model_call(refund_agent: MakeAgent, message: str, source: str) -> None:
    """Text equal to an intent example (ignoring case and punctuation) skips the model."""
    agent = refund_agent()
    _, turns = started(agent, message)
    assert turns[-1].intent == "request_refund"
    assert turns[-1].intent_source == source
    assert turns[-1].model_calls == 0
    assert agent.backend.requests == []  # type: ignore[attr-defined]


@pytest.mark.parametrize("message", ["10001", "it's 10001", "order number 10001 please"])
def test_slot_only_messages_need_no_model_call(refund_agent: MakeAgent, message: str) -> None:
    """A message that only gives the collected slot skips the model."""
    agent = refund_agent()
    _, turns = started(agent, "I want a refund", message)
    assert turns[-1].intent_source == "slots"
    assert turns[-1].slots == {"order_id": "10001"}
    assert turns[-1].model_calls == 0
    assert turns[-1].state_after == "confirm_refund"
    assert agent.backend.requests == []  # type: ignore[attr-defined]


def test_other_text_asks_the_model_once_with_the_state_labels(refund_agent: MakeAgent) -> None:
    """Free text is classified by one model call limited to the state's labels."""
    agent = refund_agent({"please send the cash": "affirm"})
    session, turns = started(agent, "I want a refund", "10001", "please send the cash")
    assert turns[-1].intent == "affirm"
    assert turns[-1].intent_source == "model"
    assert turns[-1].model_calls == 1
    (request,) = agent.backend.requests  # type: ignore[attr-defined]
    assert [label.name for label in request.labels] == [
        "affirm",
        "deny",
        "ask_refund_policy",
        "greet",
        "talk_to_human",
        "goodbye",
        "out_of_scope",
    ]
    assert request.text == "please send the cash"
    assert request.key.startswith(agent.policy_hash)
    assert session.state == "anything_else"


def test_out_of_scope_takes_the_fallback(refund_agent: MakeAgent) -> None:
    """An out_of_scope answer says the fallback line and stays."""
    agent = refund_agent()
    session, turns = started(agent, "I want a refund", "what's the weather")
    assert turns[-1].intent == "out_of_scope"
    assert turns[-1].response_ids == ("not_understood",)
    assert not turns[-1].accepted
    assert session.state == "ask_order"


def test_forced_intent_skips_the_model(refund_agent: MakeAgent) -> None:
    """`intent=` routes as that intent without a model call."""
    agent = refund_agent(default=None)
    session, _ = started(agent)
    turn = agent.respond(session, "anything at all", intent="request_refund")
    assert turn.intent == "request_refund"
    assert turn.intent_source == "forced"
    assert turn.model_calls == 0
    assert session.state == "ask_order"
    fallback = agent.respond(session, "whatever", intent="out_of_scope")
    assert fallback.response_ids == ("not_understood",)


def test_forced_intent_not_allowed_here_takes_fallback(refund_agent: MakeAgent) -> None:
    """A forced intent of the policy that the state does not accept takes the fallback."""
    agent = refund_agent()
    session, _ = started(agent)
    turn = agent.respond(session, "x", intent="affirm")
    assert turn.response_ids == ("not_understood",)
    assert not turn.accepted
    assert session.state == "greeting"


def test_unknown_forced_intent_is_a_value_error(refund_agent: MakeAgent) -> None:
    """Forcing a label the policy does not declare raises ValueError and changes nothing."""
    agent = refund_agent()
    session, _ = started(agent)
    before = snapshot(session)
    with pytest.raises(ValueError, match="unknown intent 'fly_away'"):
        agent.respond(session, "x", intent="fly_away")
    assert snapshot(session) == before


# --- failures keep the session --------------------------------------------------------------


def test_backend_error_says_technical_issue_and_keeps_session(refund_agent: MakeAgent) -> None:
    """A failing backend gives the error response; state, slots and facts are unchanged."""
    agent = refund_agent(default=None)
    session, _ = started(agent, "I want a refund", "10001")
    before = snapshot(session)
    turn = agent.respond(session, "hmm, what now?")
    assert turn.response_ids == ("technical_issue",)
    assert turn.error is not None
    assert turn.error.startswith("BackendError")
    assert turn.state_before == turn.state_after == "confirm_refund"
    assert turn.path == ()
    assert snapshot(session) == before
    # The conversation goes on from where it was.
    assert agent.respond(session, "yes").outcome == "issued"


def test_backend_exception_from_provider_is_handled(refund_agent: MakeAgent) -> None:
    """A backend raising BackendError on every call still yields the error line."""
    agent = load_agent(REFUND_POLICY, backend=RaisingBackend(), audit=MemorySink())
    session, _ = started(agent, "I want a refund", "10002")
    before = snapshot(session)
    turn = agent.respond(session, "what happens next")
    assert turn.response_ids == ("technical_issue",)
    assert snapshot(session) == before


@pytest.mark.parametrize("label", ["request_refund", "banana", ""])
def test_backend_label_not_allowed_is_an_error(refund_agent: MakeAgent, label: str) -> None:
    """A label outside the state's allowed set is treated like a backend failure."""
    agent = refund_agent({"do the thing": label})
    session, _ = started(agent, "I want a refund", "10001")
    before = snapshot(session)
    turn = agent.respond(session, "do the thing")
    assert turn.response_ids == ("technical_issue",)
    assert turn.intent is None
    assert "not one of the allowed labels" in (turn.error or "")
    assert snapshot(session) == before


def test_failed_turn_leaves_found_slots_out(refund_agent: MakeAgent) -> None:
    """Slot values found in a failed turn are not kept."""
    agent = refund_agent(default=None)
    session, _ = started(agent, "I want a refund")
    turn = agent.respond(session, "10001 and also something else entirely")
    assert turn.response_ids == ("technical_issue",)
    assert turn.slots == {}
    assert "order_id" not in session.slots


BROKEN_DECISIONS = {
    "raises": "    raise KeyError('no such record')\n",
    "undeclared_outcome": "    return 'medium'\n",
    "not_an_outcome": "    return 42\n",
    "undeclared_fact": "    return Outcome('small', facts={'mood': 'good'})\n",
    "undeclared_slot": "    return Outcome('small', slots={'colour': 'red'})\n",
    "invalid_fact": "    return Outcome('small', facts={'verdict': 'x' * 50})\n",
}


@pytest.mark.parametrize("kind", sorted(BROKEN_DECISIONS))
def test_broken_decision_says_error_and_keeps_session(write_policy: Writer, kind: str) -> None:
    """A decision that raises or breaks its contract gives the error line; nothing changes."""
    body = BROKEN_DECISIONS[kind]
    decisions = (
        "from sopagent import Outcome, decision\n\n\n"
        '@decision(outcomes=["small", "big"])\n'
        "def judge(ctx):\n" + body
    )
    agent = load_agent(
        write_policy(decisions=decisions), backend=ScriptedBackend(), audit=MemorySink()
    )
    session, _ = started(agent)
    before = snapshot(session)
    turn = agent.respond(session, "my number is 7")
    assert turn.response_ids == ("oops",)
    assert turn.error is not None
    assert turn.error.startswith("DecisionError")
    assert turn.decisions == ()
    assert snapshot(session) == before


def test_decision_sees_typed_read_only_context(write_policy: Writer) -> None:
    """A decision reads typed slots, the intent, the turn and its state; it cannot write them."""
    decisions = (
        "from sopagent import Outcome, decision\n\n"
        "SEEN = []\n\n\n"
        '@decision(outcomes=["small", "big"])\n'
        "def judge(ctx):\n"
        "    SEEN.append(ctx)\n"
        "    try:\n"
        "        ctx.slots['number'] = 0\n"
        "    except TypeError:\n"
        "        pass\n"
        "    else:\n"
        "        raise AssertionError('context is writable')\n"
        "    return 'small'\n"
    )
    agent = load_agent(
        write_policy(decisions=decisions), backend=ScriptedBackend(), audit=MemorySink()
    )
    session, turns = started(agent, "my number is 7")
    assert turns[-1].text == "7 is small. Bye."
    (ctx,) = agent.compiled.functions["judge"].__globals__["SEEN"]
    assert ctx.slots == {"number": 7}
    assert type(ctx.slots["number"]) is int
    assert ctx.intent == "give_number"
    assert ctx.state == "judge"
    assert ctx.turn == 0
    assert ctx.session_id == session.id
    assert [h.responses for h in ctx.history] == [("welcome",)]
    # A snapshot of the turns before this one, read like a tuple; the session has moved on.
    assert len(ctx.history) == 1 < len(session.history)
    assert ctx.history == tuple(ctx.history) == ctx.history[:]
    assert ctx.history[-1].responses == ("welcome",)


def test_invalid_slot_value_is_asked_again(write_policy: Writer) -> None:
    """A slot value outside its bounds gets the slot's `invalid` line and is not kept."""
    agent = load_agent(write_policy(), backend=ScriptedBackend(), audit=MemorySink())
    session, _ = started(agent)
    turn = agent.respond(session, "500", intent="give_number")
    assert turn.response_ids == ("bad_number",)
    assert "number" in turn.invalid_slots
    assert "number" not in session.slots
    assert session.state == "start"
    missing = agent.respond(session, "no number here", intent="give_number")
    assert missing.response_ids == ("ask_number",)


def test_first_start_failure_can_be_retried(write_policy: Writer) -> None:
    """If the opening turn fails, starting again runs the opening instead of doing nothing."""
    decisions = (
        "from sopagent import decision\n\n"
        "CALLS = []\n\n\n"
        '@decision(outcomes=["ready"])\n'
        "def boot(ctx):\n"
        "    CALLS.append(1)\n"
        "    if len(CALLS) == 1:\n"
        "        raise ConnectionError('service down')\n"
        "    return 'ready'\n\n\n"
        '@decision(outcomes=["small", "big"])\n'
        "def judge(ctx):\n"
        "    return 'small'\n"
    )

    def policy(text: str) -> str:
        return text.replace("initial: start", "initial: boot").replace(
            "  done:\n", "  boot:\n    decide: boot\n    outcomes: {ready: start}\n  done:\n"
        )

    agent = load_agent(
        write_policy(policy=policy, decisions=decisions),
        backend=ScriptedBackend(),
        audit=MemorySink(),
    )
    session = agent.new_session()
    failed = agent.start(session)
    assert failed.response_ids == ("oops",)
    assert session.state == "boot"
    retry = agent.start(session)
    assert retry.response_ids == ("welcome",)
    assert retry.path == ("boot", "start")
    assert session.state == "start"


def test_error_route_says_every_response_without_the_model(write_policy: Writer) -> None:
    """An error route with several responses says all of them, in order, with no model call."""
    agent = load_agent(
        write_policy(
            policy=lambda t: t.replace("  error: {say: oops}", "  error: {say: [oops, sorry]}")
        ),
        backend=RaisingBackend(),
        audit=MemorySink(),
    )
    session, _ = started(agent)
    turn = agent.respond(session, "something unclear")
    assert turn.response_ids == ("oops", "sorry")
    assert turn.text == "Something broke. Sorry?"
    assert session.state == "start"


def test_escaped_braces_render_as_braces(write_policy: Writer) -> None:
    """`{{` and `}}` in a template render as single braces, with or without placeholders."""
    agent = load_agent(
        write_policy(
            catalog=lambda t: t.replace(
                "  welcome: Welcome.", '  welcome: "Welcome {{friend}}."'
            ).replace('"{number} is small."', '"{number} is {{small}}."')
        ),
        backend=ScriptedBackend(),
        audit=MemorySink(),
    )
    session, turns = started(agent)
    assert turns[0].text == "Welcome {friend}."
    turn = agent.respond(session, "my number is 7")
    assert turn.text == "7 is {small}. Bye."


def test_choose_asks_the_model_for_one_of_the_options(write_policy: Writer) -> None:
    """A `choose` route says the option the model picks; an option not offered is an error."""
    path = write_policy(
        policy=lambda t: t.replace("greet: {say: welcome}", "greet: {choose: [welcome, sorry]}")
    )
    agent = load_agent(path, backend=ScriptedBackend(choices=["sorry"]), audit=MemorySink())
    session, _ = started(agent)
    turn = agent.respond(session, "hello")
    assert turn.response_ids == ("sorry",)
    assert turn.model_calls == 1
    rogue = load_agent(path, backend=ScriptedBackend(choices=["bye"]), audit=MemorySink())
    session, _ = started(rogue)
    turn = rogue.respond(session, "hello")
    assert turn.response_ids == ("oops",)
    assert "BackendError" in (turn.error or "")


# --- sessions -------------------------------------------------------------------------------


def test_session_round_trip_continues_identically(refund_agent: MakeAgent) -> None:
    """A session restored from JSON mid-conversation behaves exactly like the original."""
    agent = refund_agent({"let me think": "ask_refund_policy"})
    original, _ = started(agent, "I want a refund", "10002", "111111")
    restored = Session.from_json(original.to_json())
    assert restored == original
    script = ["let me think", "222222", "615204", "yes", "what is your refund policy", "no"]
    for message in script:
        a = agent.respond(original, message)
        b = agent.respond(restored, message)
        assert comparable(a) == comparable(b)
    assert restored == original
    assert restored.state == "closed"


def test_session_json_is_plain_and_typed_values_survive(refund_agent: MakeAgent) -> None:
    """Session JSON holds plain values (money as text) that come back typed in decisions."""
    agent = refund_agent()
    session, _ = started(agent, "I want a refund", "10001")
    data = json.loads(session.to_json())
    assert data["state"] == "confirm_refund"
    assert data["slots"] == {"order_id": "10001"}
    assert data["facts"]["refund_amount"] == "45.50"
    assert data["policy_hash"] == agent.policy_hash
    restored = Session.from_json(session.to_json())
    assert agent.respond(restored, "yes").text.startswith("Done! $45.50")


def test_session_of_another_policy_is_refused(
    refund_agent: MakeAgent, write_policy: Writer
) -> None:
    """A session started on another policy raises SessionError and is left alone."""
    agent = refund_agent()
    other = load_agent(write_policy(), backend=ScriptedBackend(), audit=MemorySink())
    session = other.new_session()
    with pytest.raises(SessionError, match="policy mini"):
        agent.respond(session, "I want a refund")
    with pytest.raises(SessionError):
        agent.start(session)
    assert session.turns == 0
    assert not session.started


def test_session_in_unknown_state_is_refused(refund_agent: MakeAgent) -> None:
    """A session naming a state the policy lacks raises SessionError."""
    agent = refund_agent()
    session = agent.new_session()
    data = json.loads(session.to_json())
    data["state"] = "nowhere"
    with pytest.raises(SessionError, match="unknown state 'nowhere'"):
        agent.respond(Session.from_json(json.dumps(data)), "hi")


def test_bad_session_json_is_a_session_error() -> None:
    """Restoring a session from text that is not a session raises SessionError."""
    with pytest.raises(SessionError):
        Session.from_json("{not json")


def test_new_session_validates_facts(refund_agent: MakeAgent) -> None:
    """Facts given up front are validated and stored in JSON form; unknown ones are refused."""
    agent = refund_agent()
    session = agent.new_session(session_id="abc", facts={"order_total": "12.50"})
    assert session.id == "abc"
    assert session.facts == {"order_total": "12.50"}
    with pytest.raises(ValueError, match="not declared"):
        agent.new_session(facts={"mood": "good"})
    with pytest.raises(ValueError):  # noqa: PT011 (pydantic's message)
        agent.new_session(facts={"failed_attempts": "three"})


# --- audit ----------------------------------------------------------------------------------

AUDIT_KEYS = {
    "policy",
    "policy_hash",
    "session_id",
    "turn",
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
    "backend",
    "model_calls",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "error",
    "ended",
}


def test_default_audit_goes_through_structlog() -> None:
    """With no sink given, each turn is one structlog `turn` event with the audit fields."""
    agent = load_agent(REFUND_POLICY, backend=ScriptedBackend())
    with capture_logs() as logs:
        session, _ = started(agent, "I want a refund", "10003")
    assert len(logs) == 3
    assert all(log["event"] == "turn" and log["log_level"] == "info" for log in logs)
    assert all(set(log) >= AUDIT_KEYS for log in logs)
    assert [log["turn"] for log in logs] == [0, 1, 2]
    last = logs[-1]
    assert last["session_id"] == session.id
    assert last["policy"] == "refund"
    assert last["state_before"] == "ask_order"
    assert last["state_after"] == "anything_else"
    assert last["decisions"] == ["find_order=found", "check_refund=not_delivered"]
    assert last["responses"] == ["refund_not_delivered", "anything_else"]
    assert last["response_hashes"] == [agent.compiled.templates[r].hash for r in last["responses"]]
    assert last["slots"] == {"order_id": "10003"}
    assert last["intent_source"] == "slots"
    assert last["backend"] == "scripted"
    assert last["allowed"] == sorted(agent.compiled.states["ask_order"].allowed)


def test_json_lines_sink_writes_one_line_per_turn(tmp_path: Path) -> None:
    """JsonLinesSink appends one JSON object per turn with every audit key."""
    sink = JsonLinesSink(tmp_path / "audit" / "turns.jsonl")
    try:
        agent = load_agent(REFUND_POLICY, backend=ScriptedBackend(), audit=sink)
        session, _ = started(agent, "I want a refund", "99999", "bye")
    finally:
        sink.close()
    lines = (tmp_path / "audit" / "turns.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    events = [json.loads(line) for line in lines]
    for event in events:
        assert AUDIT_KEYS | {"event", "timestamp"} <= set(event)
        assert event["event"] == "turn"
        assert event["session_id"] == session.id
    assert [e["state_after"] for e in events] == ["greeting", "ask_order", "ask_order", "closed"]
    assert events[-1]["ended"] is True


def test_personal_slot_is_masked_in_audit(refund_agent: MakeAgent) -> None:
    """A personal slot's value appears in the audit event only as its policy says (``***``)."""
    agent = refund_agent()
    _, turns = started(agent, "I want a refund", "10002", "482913")
    assert turns[-1].slots == {"verification_code": "482913"}
    event = agent.audit.events[-1]  # type: ignore[attr-defined]
    assert event["slots"]["verification_code"] == "***"  # refund.yaml: privacy {personal: mask}
    assert "482913" not in json.dumps(event, default=str)
    # Non-personal slots are logged as they are.
    assert agent.audit.events[-2]["slots"] == {"order_id": "10002"}  # type: ignore[attr-defined]


def test_failed_turn_is_audited_with_its_error(refund_agent: MakeAgent) -> None:
    """A failed turn still writes one audit event carrying the error."""
    agent = refund_agent(default=None)
    started(agent, "I want a refund", "uh")
    event = agent.audit.events[-1]  # type: ignore[attr-defined]
    assert event["responses"] == ["technical_issue"]
    assert event["error"].startswith("BackendError")
    assert event["state_before"] == event["state_after"] == "ask_order"


def test_moves_are_the_transitions_the_machine_declares(refund_agent: MakeAgent) -> None:
    """The agent moves by a table read off the compiled machine, one entry per transition."""
    from sopagent._agent import _moves  # noqa: PLC0415 (a private helper under test)

    agent = refund_agent()
    machine = agent.compiled.machine
    table = _moves(machine)
    assert table is not None
    transitions = agent.compiled.machine_config()["transitions"]
    declared = {(t["trigger"], t["source"]): t["dest"] for t in transitions}
    assert table == declared


def test_a_callback_on_the_machine_runs_on_every_move(refund_agent: MakeAgent) -> None:
    """With anything attached to the machine, moves go through transitions and call it."""
    agent = refund_agent({"I want my money back": "request_refund"})
    entered: list[str] = []
    agent.compiled.machine.get_state("ask_order").add_callback(
        "enter", lambda *_: entered.append("ask_order")
    )
    agent = Agent(agent.compiled, agent.backend, audit=MemorySink())
    _, turns = started(agent, "I want my money back")
    assert turns[-1].state_after == "ask_order"
    assert entered == ["ask_order"]


@given(st.text(alphabet=st.characters(max_codepoint=0x2FF), max_size=40))
def test_normalizing_a_message_matches_the_punctuation_pattern(text: str) -> None:
    """The byte table used for ASCII text gives what the pattern gives."""
    from sopagent._agent import _PUNCTUATION, _normalized  # noqa: PLC0415 (private helpers)

    assert _normalized(text) == _PUNCTUATION.sub(" ", text.lower())


def test_scripted_answers_are_shared_and_read_only() -> None:
    """A scripted label's answer is made once; nothing a caller does to it changes the next."""
    labels = (Label("greet", "hello"), Label("out_of_scope", "anything else"))
    backend = ScriptedBackend({"hi": "greet"}, default="out_of_scope")
    first = backend.classify(ClassifyRequest(text="hi", labels=labels))
    assert backend.classify(ClassifyRequest(text="HI ", labels=labels)) is first
    assert (first.intent, dict(first.scores), dict(first.slots)) == ("greet", {"greet": 1.0}, {})
    with pytest.raises(TypeError):
        first.scores["greet"] = 0.0  # type: ignore[index]
    other = backend.classify(ClassifyRequest(text="what", labels=labels))
    assert other.intent == "out_of_scope"
    assert [r.text for r in backend.requests] == ["hi", "HI ", "what"]
    # With slots, each answer holds the slots its request asked for.
    filled = ScriptedBackend(["greet", "greet"], slots={"size": "large"})
    wanted = {"size": (Label("large", "large"),)}
    asked = filled.classify(ClassifyRequest(text="x", labels=labels, slot_choices=wanted))
    assert dict(asked.slots) == {"size": "large"}
    assert dict(filled.classify(ClassifyRequest(text="x", labels=labels)).slots) == {}
