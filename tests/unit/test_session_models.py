"""Models the turn loop builds from values it validated equal the validated models."""

from __future__ import annotations

import pytest

from sopagent.session import DecisionRecord, SessionTurn, Turn, Utterance, trusted


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
