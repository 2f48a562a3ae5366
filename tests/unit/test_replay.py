"""sopagent replay: audit logs of real conversations run again on another version."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from conftest import REFUND_POLICY, ROOT

from sopagent import Agent, JsonLinesSink, ScriptedBackend, compile_policy, load_policy
from sopagent._compile import CompiledPolicy
from sopagent._replay import replay
from sopagent.errors import Location

Conversation = Iterable[tuple[str, str | None]]


def log(path: Path, compiled: CompiledPolicy, conversations: Iterable[Conversation]) -> Path:
    """Run conversations on the refund agent, writing the audit log a deployment would."""
    sink = JsonLinesSink(path)
    try:
        for messages in conversations:
            agent = Agent(compiled, ScriptedBackend(default="out_of_scope"), audit=sink)
            session = agent.new_session()
            agent.start(session)
            for text, intent in messages:
                agent.respond(session, text, intent=intent)
    finally:
        sink.close()
    return path


def events(path: Path) -> list[tuple[Location, dict[str, Any]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(Location(str(path), n, 1), json.loads(line)) for n, line in enumerate(lines, 1)]


def edited(directory: Path, old: str, new: str) -> CompiledPolicy:
    """The refund policy with one edit, pointing at the real catalog and decisions."""
    text = REFUND_POLICY.read_text(encoding="utf-8")
    text = text.replace("../catalogs/support_en.yaml", str(ROOT / "catalogs" / "support_en.yaml"))
    text = text.replace(
        "../examples/support/decisions.py", str(ROOT / "examples" / "support" / "decisions.py")
    )
    assert old in text
    path = directory / "refund.yaml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return compile_policy(load_policy(path))


SMALL_REFUND = [("I want a refund", None), ("it's 10001", None), ("yes", None), ("bye", None)]
POLICY_QUESTION = [("what is your refund policy", None), ("that's all, thanks", "goodbye")]


def test_the_same_version_replays_the_same(tmp_path: Path, reset_refunds: None) -> None:
    """Every logged conversation replays identically on the version that wrote it."""
    compiled = compile_policy(load_policy(REFUND_POLICY))
    path = log(tmp_path / "audit.jsonl", compiled, [SMALL_REFUND, POLICY_QUESTION])
    refunded: set[str] = compiled.functions["issue_refund"].__globals__["_REFUNDED"]
    refunded.clear()
    results = replay(compiled, events(path))
    assert [(r.status, r.turns) for r in results] == [("same", 4), ("same", 2)]
    assert results[0].location == Location(str(path), 1, 1)


def test_a_changed_route_is_the_first_differing_turn(tmp_path: Path, reset_refunds: None) -> None:
    """The new version asks for confirmation differently: turn 2 of the refund differs."""
    compiled = compile_policy(load_policy(REFUND_POLICY))
    path = log(tmp_path / "audit.jsonl", compiled, [SMALL_REFUND, POLICY_QUESTION])
    compiled.functions["issue_refund"].__globals__["_REFUNDED"].clear()
    new = edited(tmp_path, "      eligible: confirm_refund\n", "      eligible: issue_refund\n")
    first, second = replay(new, events(path))
    assert first.status == "changed"
    assert first.turn == 2
    assert first.differs == ["state_after", "path", "responses"]
    assert first.old["path"] == ["lookup_order", "check_eligibility", "confirm_refund"]
    assert first.new["path"] == [
        "lookup_order", "check_eligibility", "issue_refund", "anything_else",
    ]  # fmt: skip
    assert second.status == "same"


def test_recorded_labels_are_used_not_a_model(tmp_path: Path, reset_refunds: None) -> None:
    """A label the model gave is replayed as recorded; the new version's examples do not matter."""
    compiled = compile_policy(load_policy(REFUND_POLICY))
    path = log(
        tmp_path / "audit.jsonl",
        compiled,
        [[("can you help me with money back", "request_refund")]],
    )
    new = edited(tmp_path, "      - can I get my money back\n", "")
    (result,) = replay(new, events(path))
    assert result.status == "same"


def test_masked_personal_values_cannot_be_replayed(tmp_path: Path, reset_refunds: None) -> None:
    """The verification code is personal: masked in the log, so that turn is not replayed."""
    compiled = compile_policy(load_policy(REFUND_POLICY))
    conversation = [("I want a refund", None), ("10002", None), ("615204", None)]
    path = log(tmp_path / "audit.jsonl", compiled, [conversation])
    (result,) = replay(compiled, events(path))
    assert result.status == "unreplayable"
    assert result.turn == 3
    assert "verification_code" in result.reason


def test_a_log_that_starts_mid_way(tmp_path: Path, reset_refunds: None) -> None:
    """Without the opening turn, a conversation is not replayed."""
    compiled = compile_policy(load_policy(REFUND_POLICY))
    path = log(tmp_path / "audit.jsonl", compiled, [POLICY_QUESTION])
    later = [item for item in events(path) if item[1]["turn"] > 0]
    (result,) = replay(compiled, later)
    assert result.status == "unreplayable"
    assert result.reason == "the log starts after the opening turn"


def test_facts_the_host_passed_can_be_given(tmp_path: Path) -> None:
    """Audit events do not carry the host's facts: the merchant's purse is given again."""
    compiled = compile_policy(load_policy(ROOT / "policies" / "merchant_npc.yaml"))
    sink = JsonLinesSink(tmp_path / "audit.jsonl")
    agent = Agent(compiled, ScriptedBackend(), audit=sink)
    session = agent.new_session(facts={"gold": 80})
    agent.start(session)
    agent.respond(session, "I'll give you 60 gold", intent="buy_key")
    sink.close()
    logged = events(tmp_path / "audit.jsonl")
    assert replay(compiled, logged)[0].status == "changed"  # no gold: an empty purse
    assert replay(compiled, logged, facts={"gold": 80})[0].status == "same"
