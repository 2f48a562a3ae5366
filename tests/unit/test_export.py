"""Audit logs become labeled examples, and labeled examples become fine-tuning records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REFUND_POLICY

from sopagent import Agent, JsonLinesSink, ScriptedBackend, compile_policy, load_policy
from sopagent._export import fine_tuning_records, labeled_turns
from sopagent.backends import ClassifyRequest
from sopagent.backends.openai import system_message


def audit_log(tmp_path: Path, *, audit_text: bool = True) -> list[dict[str, object]]:
    """Run a short refund conversation with a JSON-lines audit log and read the log back."""
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesSink(path)
    agent = Agent(
        compile_policy(load_policy(REFUND_POLICY)),
        ScriptedBackend({"money back for a broken lamp": "request_refund"}),
        audit=sink,
        audit_text=audit_text,
    )
    session = agent.new_session()
    agent.start(session)
    for text in ("money back for a broken lamp", "10001", "what's up with the weather"):
        agent.respond(session, text)
    sink.close()
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_classified_turns_become_labeled_examples(tmp_path: Path, reset_refunds: None) -> None:
    """Model-classified turns are exported with their state; openings and slot turns are not."""
    examples = list(labeled_turns(audit_log(tmp_path)))
    assert examples == [
        {"text": "money back for a broken lamp", "intent": "request_refund", "state": "greeting"},
        {"text": "what's up with the weather", "intent": "out_of_scope", "state": "confirm_refund"},
    ]


def test_events_without_text_are_skipped(tmp_path: Path, reset_refunds: None) -> None:
    """With audit_text off nothing the user wrote is logged, so nothing is exported."""
    events = audit_log(tmp_path, audit_text=False)
    assert all(event["text"] is None for event in events)
    assert list(labeled_turns(events)) == []


def test_fine_tuning_records_use_the_backend_system_message() -> None:
    """Each record is system, user, assistant; the system message is what the backend sends."""
    compiled = compile_policy(load_policy(REFUND_POLICY))
    (record,) = fine_tuning_records(
        compiled, [{"text": "get me my money", "intent": "request_refund", "state": "greeting"}]
    )
    system, user, assistant = record["messages"]
    state = compiled.states["greeting"]
    request = ClassifyRequest(
        text="get me my money",
        labels=state.labels,
        vocabulary=compiled.vocabulary,
        key=compiled.hash,
        instructions=compiled.policy.description,
    )
    assert system == {"role": "system", "content": system_message(request)}
    assert user == {"role": "user", "content": "get me my money"}
    assert json.loads(assistant["content"]) == {"intent": "request_refund"}


def test_intent_not_accepted_in_the_state_is_out_of_scope_there() -> None:
    """An intent the example's state does not accept is trained as out_of_scope, as it routes."""
    compiled = compile_policy(load_policy(REFUND_POLICY))
    (record,) = fine_tuning_records(
        compiled, [{"text": "yes", "intent": "affirm", "state": "greeting"}]
    )
    assert json.loads(record["messages"][2]["content"]) == {"intent": "out_of_scope"}


@pytest.mark.parametrize(
    "example",
    [
        {"text": "x", "intent": "request_refund", "state": "nowhere"},
        {"text": "x", "intent": "request_refund", "state": "lookup_order"},
        {"text": "x", "intent": "fly_to_mars", "state": "greeting"},
    ],
)
def test_bad_examples_are_rejected(example: dict[str, str]) -> None:
    """Unknown states, states that do not wait, and unknown intents are errors."""
    compiled = compile_policy(load_policy(REFUND_POLICY))
    with pytest.raises(ValueError, match="example 1"):
        list(fine_tuning_records(compiled, [example]))
