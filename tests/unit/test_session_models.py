"""Models the turn loop builds from values it validated equal the validated models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import FrozenInstanceError, replace

import pytest

from sopagent import Agent
from sopagent.backends import ClassifyRequest, Label, _new_request
from sopagent.session import (
    DecisionRecord,
    Session,
    SessionTurn,
    Turn,
    Utterance,
    adopt,
    blank,
    trusted,
)

MakeAgent = Callable[..., Agent]


def test_trusted_models_equal_validated_ones() -> None:
    """A trusted model compares, dumps and hashes like one built with validation."""
    cases = [
        (Utterance, {"id": "greet", "text": "Hello.", "hash": "abc", "locale": None}),
        (DecisionRecord, {"state": "check", "function": "check_refund", "outcome": "ok"}),
        (SessionTurn, {"user": "hi", "intent": "greet", "state": "start", "responses": ("a",)}),
    ]
    for cls, fields in cases:
        fast, checked = trusted(cls, **fields), cls(**fields)
        assert fast == checked
        assert fast.model_dump_json() == checked.model_dump_json()
        assert hash(fast) == hash(checked)


def test_trusted_models_fill_defaults() -> None:
    """Fields left out take their defaults, factories included, per instance."""
    said = trusted(Utterance, id="greet", text="Hello.", hash="abc")
    turn = trusted(
        Turn,
        session_id="s",
        index=1,
        user_text="hi",
        state_before="a",
        state_after="b",
        path=("b",),
        intent="greet",
        score=1.0,
        intent_source="model",
        accepted=True,
        slots={},
        responses=(said,),
    )
    validated = Turn.model_validate_json(turn.model_dump_json())
    assert turn == validated
    assert turn.invalid_slots == {}
    other = trusted(
        Turn, **{**turn.__dict__, "invalid_slots": {"order_id": "bad"}, "session_id": "t"}
    )
    assert turn.invalid_slots == {}
    assert other.invalid_slots == {"order_id": "bad"}


def test_copies_of_trusted_models_keep_their_own_fields() -> None:
    """model_copy of a trusted model changes the copy only."""
    first = trusted(SessionTurn, user="hi", intent=None, state="start", responses=())
    second = first.model_copy(update={"state": "next"})
    assert (first.state, second.state) == ("start", "next")
    assert trusted(SessionTurn, user=None, intent=None, state="x", responses=()).state == "x"


def test_trusted_models_need_their_required_fields() -> None:
    """Leaving out a field without a default is a TypeError naming it."""
    with pytest.raises(TypeError, match="'hash'"):
        trusted(Utterance, id="greet", text="Hello.")


def test_new_and_restored_sessions_share_their_field_names(refund_agent: MakeAgent) -> None:
    """Sessions share one set of field names, and it does not leak between them."""
    agent = refund_agent()
    first, second = agent.new_session(seed=1), agent.new_session(session_id="abc", seed=2)
    assert first.model_fields_set is second.model_fields_set
    assert first.model_fields_set == set(Session.model_fields)
    restored = Session.from_json(second.to_json())
    assert restored == second
    assert restored.model_fields_set is first.model_fields_set
    assert restored.usage.model_fields_set is first.usage.model_fields_set
    second.state = "ask_order"
    assert (first.state, second.state) == ("greeting", "ask_order")
    assert first.usage is not second.usage


def test_new_session_refuses_ids_and_seeds_of_the_wrong_type(refund_agent: MakeAgent) -> None:
    """Values that skip validation are checked by hand."""
    agent = refund_agent()
    with pytest.raises(TypeError, match="session_id"):
        agent.new_session(session_id=7)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed"):
        agent.new_session(seed="1")  # type: ignore[arg-type]


def test_trusted_models_keep_the_declared_order_whatever_the_keyword_order() -> None:
    """Fields given out of order, or only some of them, still dump in the declared order."""
    given = {"locale": "fr", "hash": "abc", "text": "Bonjour.", "id": "greet"}
    fast, checked = trusted(Utterance, **given), Utterance(**given)
    assert list(fast.__dict__) == list(Utterance.model_fields)
    assert fast.model_dump_json() == checked.model_dump_json()
    complete = {"state": "check", "function": "f", "outcome": "ok", "forced": False}
    assert list(trusted(DecisionRecord, **complete).__dict__) == list(complete)


def test_trusted_models_refuse_unknown_fields() -> None:
    """A field the model does not declare is a TypeError naming it, not a silent extra."""
    with pytest.raises(TypeError, match="'colour'"):
        trusted(Utterance, id="greet", text="Hello.", hash="abc", locale=None, colour="red")


def test_adopted_models_equal_validated_ones() -> None:
    """`adopt` builds what validation builds, from a filled `blank` or a dict display."""
    values = blank(SessionTurn)
    assert list(values) == list(SessionTurn.model_fields)
    values.update(user="hi", intent="greet", state="start", responses=("a",))
    fast = adopt(SessionTurn, values)
    checked = SessionTurn(user="hi", intent="greet", state="start", responses=("a",))
    assert fast == checked
    assert fast.model_dump_json() == checked.model_dump_json()
    assert fast.model_fields_set == checked.model_fields_set


def test_every_turn_and_history_entry_of_a_conversation_validates(
    refund_agent: MakeAgent,
) -> None:
    """The turn loop fills every field of what it returns and keeps, with its field's type."""
    agent = refund_agent()
    session = agent.new_session()
    turns = [agent.start(session)]
    for message in ("I want a refund", "10001", "yes", "no", "hello?"):
        turns.append(agent.respond(session, message))
    assert [t.state_after for t in turns][-2:] == ["closed", "closed"]
    assert turns[-1].error == "the conversation has ended"
    for turn in turns:
        assert Turn.model_validate_json(turn.model_dump_json()) == turn
        assert list(turn.__dict__) == list(Turn.model_fields)
    for entry in session.history:
        assert SessionTurn.model_validate_json(entry.model_dump_json()) == entry
    events = agent.audit.events  # type: ignore[attr-defined]
    assert len(events) == len(turns)
    assert all(list(event) == list(events[0]) for event in events)
    may_be_none = {"text", "intent", "answered_by", "locale", "error"}
    assert all(event[k] is not None for event in events for k in set(event) - may_be_none)
    assert [event["turn"] for event in events] == [turn.index for turn in turns]


def test_requests_the_turn_loop_builds_equal_constructed_ones() -> None:
    """The turn loop's classify request equals, hashes and freezes like a constructed one."""
    labels = (Label("refund", "asks for a refund"), Label("out_of_scope", "anything else"))
    args = ("I want my money back", labels, labels, {}, "abc", "Refunds.")
    fast, built = _new_request(*args), ClassifyRequest(*args)
    assert fast == built
    assert repr(fast) == repr(built)
    assert fast.choices == labels
    assert replace(fast, candidates=("refund",)).choices == labels[:1]
    with pytest.raises(FrozenInstanceError):
        fast.text = "changed"  # type: ignore[misc]
