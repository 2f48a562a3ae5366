"""Personal values never leave the process as written: audit logs, exports, server views.

A refund conversation gives the six-digit verification code (a personal slot), says it again
in a state that does not collect it, and is handed to a person. The raw code is then looked
for in the audit log file as written, the labelled examples exported from it, the server's
session view, its transcript and the handoff event: it must be in none of them, whichever
of ``hash``, ``mask`` or ``drop`` the policy chooses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sopagent import JsonLinesSink, MemorySink, ScriptedBackend, load_agent, load_policy
from sopagent._export import labeled_turns
from sopagent._privacy import Redactor
from sopagent._replay import replay
from sopagent.errors import Location
from sopagent.server import ApiKey, KeyRing, Service, hash_key
from sopagent.stores import SqliteStore
from tests.conftest import REFUND_POLICY

CODE = "615204"
ACME = ApiKey("acme-web", "acme", frozenset({"refund"}), hash_key("sk_acme"))
SCRIPT = {
    "I want my money back": "request_refund",
    f"my code {CODE} again, to be sure": "out_of_scope",
    "let me talk to a human": "talk_to_human",
    "yes": "affirm",
}
MESSAGES = ["I want my money back", "10002", f"the code is {CODE}",
            f"my code {CODE} again, to be sure", "let me talk to a human", "yes"]  # fmt: skip


def _policy(tmp_path: Path, privacy: str) -> Path:
    """The shipped refund policy with its privacy block replaced."""
    root = REFUND_POLICY.parent.parent
    text = REFUND_POLICY.read_text(encoding="utf-8").replace("../", f"{root}/")
    text = text.replace("privacy: {personal: mask}", f"privacy: {privacy}")
    path = tmp_path / "policies" / "refund.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


class Handoffs:
    """A handoff sink that keeps what it is sent."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def send(self, event: Any) -> None:
        self.events.append(dict(event))

    def close(self) -> None:
        pass


MODES = ["{personal: hash}", "{personal: mask}", "{personal: mask, keep_last: 2}",
         "{personal: drop}"]  # fmt: skip


@pytest.mark.parametrize("privacy", MODES)
def test_the_code_is_in_no_audit_line_and_no_export(
    tmp_path: Path, privacy: str, reset_refunds: None
) -> None:
    """The audit file and the labelled examples made from it never hold the raw code."""
    log = tmp_path / "audit.jsonl"
    sink = JsonLinesSink(log)
    agent = load_agent(_policy(tmp_path, privacy), backend=ScriptedBackend(SCRIPT), audit=sink)
    session = agent.new_session()
    agent.start(session)
    turns = [agent.respond(session, text) for text in MESSAGES]
    sink.close()
    assert turns[2].slots == {"verification_code": CODE}  # the conversation did use it
    written = log.read_text(encoding="utf-8")
    assert CODE not in written
    assert CODE[-4:] not in written
    events = [json.loads(line) for line in written.splitlines()]
    slots = events[3]["slots"]
    assert events[3]["redacted"] == ["verification_code"]
    if "drop" in privacy:
        assert "verification_code" not in slots
    elif "hash" in privacy:
        assert slots["verification_code"].startswith("hmac:")
    elif "keep_last" in privacy:
        assert slots["verification_code"] == "***04"
    else:
        assert slots["verification_code"] == "***"
    assert events[4]["text"] is not None
    assert CODE not in events[4]["text"]
    exported = json.dumps(list(labeled_turns(events)))
    assert "again, to be sure" in exported
    assert CODE not in exported


@pytest.mark.parametrize("privacy", MODES)
def test_server_views_and_handoff_events_never_hold_the_code(
    tmp_path: Path, privacy: str, reset_refunds: None
) -> None:
    """Session view, transcript and handoff event are redacted; the store keeps the value."""
    audit, handoffs = MemorySink(), Handoffs()
    agent = load_agent(_policy(tmp_path, privacy), backend=ScriptedBackend(SCRIPT))
    store = SqliteStore(tmp_path / "s.db")
    service = Service([agent], store, KeyRing([ACME]), audit=audit, handoff=handoffs)
    session_id, _ = service.create(ACME, "refund", policy_hash=None, facts={}, request_id="r0")
    for number, text in enumerate(MESSAGES, start=1):
        service.message(ACME, session_id, text, intent=None, idempotency_key=None,
                        request_id=f"r{number}")  # fmt: skip
    view = service.session(ACME, session_id)
    transcript = service.transcript(ACME, session_id)
    assert json.loads(transcript)["status"] == "handoff"
    assert len(handoffs.events) == 1
    for body in (view, transcript, json.dumps(handoffs.events), json.dumps(audit.events)):
        assert CODE not in body
    stored = store.load(session_id)
    assert stored is not None
    assert CODE in stored.data


def test_replay_refuses_turns_whose_personal_values_were_redacted(
    tmp_path: Path, reset_refunds: None
) -> None:
    """A logged turn whose code was masked is unreplayable, not replayed with a wrong value."""
    for privacy in ("{personal: mask}", "{personal: drop}"):
        sink = MemorySink()
        agent = load_agent(_policy(tmp_path, privacy), backend=ScriptedBackend(SCRIPT), audit=sink)
        session = agent.new_session()
        agent.start(session)
        for text in MESSAGES[:3]:
            agent.respond(session, text)
        [result] = replay(agent.compiled, [(Location("a.jsonl", i + 1), e)
                                           for i, e in enumerate(sink.events)])  # fmt: skip
        assert result.status == "unreplayable"
        assert "verification_code" in (result.reason or "")


def test_redactor_modes_and_per_slot_override(tmp_path: Path) -> None:
    """hash is keyed and stable, mask keeps at most keep_last, a slot's own privacy wins."""
    text = (
        REFUND_POLICY.read_text(encoding="utf-8")
        .replace("../", f"{REFUND_POLICY.parent.parent}/")
        .replace("privacy: {personal: mask}", "privacy: {personal: mask, keep_last: 3}")
        .replace("  refund_reference: {type: string, pattern: 'RF-\\d{6}'}",
                 "  refund_reference: {type: string, pattern: 'RF-\\d{6}', personal: true,"
                 " privacy: drop}")
    )  # fmt: skip
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    policy = load_policy(path)
    redactor = Redactor(policy, b"k")
    values = {"verification_code": CODE, "refund_reference": "RF-123456", "order_id": "10002"}
    assert redactor.values(values) == {"verification_code": "***204", "order_id": "10002"}
    hashed = Redactor(policy.model_copy(update={"privacy": policy.privacy.model_copy(
        update={"personal": "hash"})}), b"k")  # fmt: skip
    assert (
        hashed.shown("hash", CODE)
        == hashed.shown("hash", CODE)
        != Redactor(policy, b"other").shown("hash", CODE)
    )
    personal = redactor.personal(values)
    assert redactor.scrub(f"code {CODE}, ref rf-123456, order 10002", personal) == (
        "code ***204, ref [redacted], order 10002"
    )


def test_shipped_policies_mark_personal_slots() -> None:
    """Email, name, zip, address, payment ids, user ids and codes are personal where shipped."""
    root = REFUND_POLICY.parent
    retail = load_policy(root / "retail.yaml")
    for name in ("email", "full_name", "zip", "address", "payment"):
        assert retail.slots[name].personal, name
    assert retail.facts["user_id"].personal
    assert retail.facts["user_name"].personal
    assert load_policy(REFUND_POLICY).slots["verification_code"].personal


_REFUND = load_policy(REFUND_POLICY)
_PIECES = ["615204", "ORD-77", "straße", "Σίσυφος", "ﬀ", "İstanbul", "hello", " ", "-", "k"]


@given(
    words=st.lists(st.sampled_from(_PIECES), max_size=8),
    cases=st.lists(st.sampled_from(["lower", "upper", "title", "casefold"]), max_size=8),
    mode=st.sampled_from(["hash", "mask", "drop"]),
)
def test_scrubbing_only_the_values_present_changes_nothing(
    words: list[str], cases: list[str], mode: str
) -> None:
    """Replacing the values found in the text equals replacing every known value."""
    redactor = Redactor(_REFUND, b"k" * 32)
    redactor.modes["verification_code"] = mode
    written = [getattr(w, c)() for w, c in zip(words, cases + ["lower"] * 8, strict=False)]
    text = " ".join(written)
    sources = (
        {"verification_code": "615204"},
        {"order_id": "ord-77", "verification_code": "STRASSE"},
        {"verification_code": "σίσυφος"},
        {"verification_code": "ff"},
        {"verification_code": "i̇stanbul"},
    )
    for source in sources:
        expected = redactor.scrub(text, redactor.personal(source))
        assert redactor.scrub_values(text, source) == expected
