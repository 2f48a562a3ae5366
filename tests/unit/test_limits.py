"""The policy's limits block: the longest message, hidden characters in what users type."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from sopagent import MemorySink, PolicyError, ScriptedBackend, load_agent, load_policy
from sopagent._limits import _HIDDEN, _SUSPECT, escape_hidden, visible
from sopagent.policy import Limits

Writer = Callable[..., Path]


def limited(block: str) -> Callable[[str], str]:
    """Edit the mini policy to carry ``limits: {block}``."""
    return lambda policy: policy.replace("global:\n", f"limits: {{{block}}}\nglobal:\n")


def test_defaults() -> None:
    """Without a limits block messages may have 4,000 characters and decisions run unlimited."""
    assert Limits() == Limits(max_input=4000, too_long=None, decision_seconds=None)


def test_a_long_message_is_not_classified_and_keeps_the_session(write_policy: Writer) -> None:
    """Past max_input nothing reaches the model or the slot grammars; the fallback line is said."""
    backend = ScriptedBackend(default="give_number")
    agent = load_agent(write_policy(policy=limited("max_input: 50")), backend=backend)
    agent.audit = MemorySink()
    session = agent.new_session()
    agent.start(session)
    before = session.model_dump(include={"state", "slots", "facts"})
    text = "my number is 7 " + "x" * 100
    turn = agent.respond(session, text)
    assert backend.requests == []
    assert turn.response_ids == ("sorry",)
    assert turn.error == (
        f"InputTooLong: the message has {len(text)} characters, more than the policy's limit of 50"
    )
    assert turn.slots == {}
    assert turn.model_calls == 0
    assert turn.user_text == text[:50]
    assert session.model_dump(include={"state", "slots", "facts"}) == before
    assert session.turns == 1
    assert agent.audit.events[-1]["text"] == text[:50]  # type: ignore[attr-defined]
    exactly = agent.respond(session, "my number is 7".ljust(50))
    assert exactly.error is None
    assert exactly.response_ids == ("small", "bye")


def test_a_long_message_says_the_too_long_line(write_policy: Writer) -> None:
    """``too_long`` names the line said for a message past the limit."""
    catalog = lambda c: c + "  too_long: Please say that in fewer words.\n"  # noqa: E731
    path = write_policy(policy=limited("max_input: 10, too_long: too_long"), catalog=catalog)
    agent = load_agent(path, backend=ScriptedBackend(), audit=MemorySink())
    session = agent.new_session()
    agent.start(session)
    turn = agent.respond(session, "hello hello hello")
    assert turn.response_ids == ("too_long",)
    assert turn.text == "Please say that in fewer words."


def test_a_long_message_says_the_error_line_when_the_fallback_is_silent(
    write_policy: Writer,
) -> None:
    """A fallback that only moves is not taken: the error line is said and nothing moves."""
    path = write_policy(
        policy=lambda p: limited("max_input: 10")(p).replace(
            "fallback: {say: sorry}", "fallback: {to: done}"
        )
    )
    agent = load_agent(path, backend=ScriptedBackend(), audit=MemorySink())
    session = agent.new_session()
    agent.start(session)
    turn = agent.respond(session, "x" * 11)
    assert turn.response_ids == ("oops",)
    assert session.state == "start"


def test_classify_refuses_a_long_message(write_policy: Writer) -> None:
    """`Agent.classify` reports a long message as an error without asking the model."""
    backend = ScriptedBackend(default="give_number")
    agent = load_agent(write_policy(policy=limited("max_input: 5")), backend=backend)
    session = agent.new_session()
    agent.start(session)
    turn = agent.classify(session, "hello there")
    assert turn.intent is None
    assert turn.error is not None
    assert turn.error.startswith("InputTooLong")
    assert backend.requests == []


@pytest.mark.parametrize(
    ("block", "code", "message"),
    [
        ("too_long: nowhere", "SOP022", "response 'nowhere' is not in catalog"),
        ("too_long: small", "SOP027", "is said for too long a message and may not have"),
        ("max_input: 0", "SOP010", "limits.max_input"),
        ("decision_seconds: 0", "SOP010", "limits.decision_seconds"),
        ("max_chars: 10", "SOP011", "unknown key 'max_chars'"),
    ],
)
def test_limits_are_checked(write_policy: Writer, block: str, code: str, message: str) -> None:
    """A too_long line must exist and be plain; limits must be positive and known keys."""
    path = write_policy(policy=limited(block))
    with pytest.raises(PolicyError) as caught:
        load_agent(path, backend=ScriptedBackend())
    assert any(p.code == code and message in str(p) for p in caught.value.problems), [
        str(p) for p in caught.value.problems
    ]


def test_the_shipped_policies_keep_the_defaults() -> None:
    """The shipped policies declare no limits: 4,000 characters, decisions unlimited."""
    root = Path(__file__).resolve().parents[2] / "policies"
    for name in ("refund", "retail", "merchant_npc", "warden_npc"):
        assert load_policy(root / f"{name}.yaml").limits == Limits()


HIDDEN = [
    "\u202erefund\u202c",
    "re\u200bfund",
    "\ufeffrefund",
    "refund\x00\x07",
    "\x1brefund\r\n",
    "\u2066refund\u2069",
    "re\xadfund\u061c",
]


@pytest.mark.parametrize("text", HIDDEN, ids=ascii)
def test_hidden_characters_are_removed_before_classification(
    write_policy: Writer, text: str
) -> None:
    """The model and the examples see the text without controls or bidi marks."""
    backend = ScriptedBackend(default="out_of_scope")
    policy = lambda p: p.replace("examples: [hello]", "examples: [hello, refund]")  # noqa: E731
    agent = load_agent(write_policy(policy=policy), backend=backend, audit=MemorySink())
    session = agent.new_session()
    agent.start(session)
    turn = agent.respond(session, text)
    assert (turn.intent, turn.intent_source) == ("greet", "example")
    assert turn.user_text == text
    logged = agent.audit.events[-1]["text"]  # type: ignore[attr-defined]
    assert logged == escape_hidden(text)
    assert logged.isprintable()


def test_hidden_characters_do_not_hide_a_slot_value(write_policy: Writer) -> None:
    """A number split by zero-width characters is still found after they are removed."""
    agent = load_agent(write_policy(), backend=ScriptedBackend(), audit=MemorySink())
    session = agent.new_session()
    agent.start(session)
    turn = agent.respond(session, "my number is 4\u200b2")
    assert turn.slots == {"number": 42}


def test_visible_and_escape_hidden() -> None:
    """Controls become spaces, format characters vanish; escapes name each code point."""
    assert visible("a\tb\nc\u202ed\u200be") == "a b cde"
    assert visible("plain text, ünïcode ✓") == "plain text, ünïcode ✓"
    assert escape_hidden("a\u202eb\x00c\U000e0041") == "a\\u202eb\\u0000c\\U000e0041"
    assert escape_hidden("no change") == "no change"


def test_printable_text_has_nothing_hidden() -> None:
    """What the hidden-character patterns match is never printable: printable text skips them."""
    every = [chr(c) for c in range(sys.maxunicode + 1)]
    suspect = [ch for ch in every if _SUSPECT.match(ch) is not None]
    assert len(suspect) > 2000  # the controls, format characters and surrogates
    assert not any(ch.isprintable() for ch in suspect)
    assert all(_SUSPECT.match(ch) for ch in every if _HIDDEN.match(ch))
