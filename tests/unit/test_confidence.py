"""Confidence rules: a model answer below the policy's threshold is not acted upon."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FixedBackend, PolicyWriter

from sopagent import Agent, MemorySink, PolicyError, compile_policy, load_agent, load_policy


def with_confidence(state_rule: str = "") -> PolicyWriter:
    """Edit the mini policy: a global rule at 0.6, and optionally one for state ``start``."""

    def edit(text: str) -> str:
        text = text.replace(
            "  error: {say: oops}\n",
            "  error: {say: oops}\n  confidence: {threshold: 0.6, below: {say: unsure}}\n",
        )
        if state_rule:
            text = text.replace(
                "    say: welcome\n    on:\n", f"    say: welcome\n{state_rule}    on:\n"
            )
        return text

    return edit  # type: ignore[return-value]


def with_unsure_line(text: str) -> str:
    return text + "  unsure: Sorry, did you mean something else?\n  really: Really?\n"


def agent_for(path: Path, intent: str, score: float) -> Agent:
    return load_agent(path, backend=FixedBackend(intent, score), audit=MemorySink())


def test_low_score_takes_the_below_route(write_policy: PolicyWriter) -> None:
    """A model answer under the threshold says the clarifying line and stays put."""
    path = write_policy(policy=with_confidence(), catalog=with_unsure_line)
    agent = agent_for(path, "stop", 0.4)
    session = agent.new_session()
    agent.start(session)
    turn = agent.respond(session, "I think I might want to finish")
    assert turn.intent == "stop"
    assert turn.accepted is False
    assert turn.response_ids == ("unsure",)
    assert session.state == "start"
    assert not session.ended


def test_score_at_threshold_is_acted_upon(write_policy: PolicyWriter) -> None:
    """A score equal to the threshold follows the intent's route."""
    path = write_policy(policy=with_confidence(), catalog=with_unsure_line)
    agent = agent_for(path, "stop", 0.6)
    session = agent.new_session()
    agent.start(session)
    turn = agent.respond(session, "I think I might want to finish")
    assert turn.accepted is True
    assert session.state == "done"


def test_examples_and_forced_labels_are_never_doubted(write_policy: PolicyWriter) -> None:
    """Only model answers are subject to the threshold: examples and forced labels are certain."""
    path = write_policy(policy=with_confidence(), catalog=with_unsure_line)
    agent = agent_for(path, "greet", 0.1)
    session = agent.new_session()
    agent.start(session)
    assert agent.respond(session, "stop").state_after == "done"
    session = agent.new_session()
    agent.start(session)
    assert agent.respond(session, "whatever", intent="stop").state_after == "done"


def test_state_rule_overrides_the_global_one(write_policy: PolicyWriter) -> None:
    """A state's own threshold and line replace the global rule there."""
    rule = "    confidence: {threshold: 0.9, below: {say: really}}\n"
    path = write_policy(policy=with_confidence(rule), catalog=with_unsure_line)
    agent = agent_for(path, "stop", 0.8)
    session = agent.new_session()
    agent.start(session)
    turn = agent.respond(session, "I think I might want to finish")
    assert turn.response_ids == ("really",)
    assert session.state == "start"


def test_below_route_to_another_state_is_a_declared_transition(
    write_policy: PolicyWriter,
) -> None:
    """A below route with a target appears in the machine as the 'unsure' trigger."""

    def edit(text: str) -> str:
        return text.replace(
            "  error: {say: oops}\n",
            "  error: {say: oops}\n  confidence: {threshold: 0.5, below: {to: done}}\n",
        )

    path = write_policy(policy=edit)
    compiled = compile_policy(load_policy(path))
    transitions = compiled.machine_config()["transitions"]
    assert {"trigger": "unsure", "source": "start", "dest": "done"} in transitions
    assert not any(t["source"] == "done" and t["trigger"] == "unsure" for t in transitions)


def test_below_route_references_are_checked(write_policy: PolicyWriter) -> None:
    """An unknown response in the below route is reported like any other route."""
    path = write_policy(policy=with_confidence())
    with pytest.raises(PolicyError) as info:
        compile_policy(load_policy(path))
    assert "SOP022" in {p.code for p in info.value.problems}
