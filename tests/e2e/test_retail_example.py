"""The retail flagship: tau-bench's 20 retail dev tasks as scripted conversations, and its rules.

Each task of ``tests/data/tau_retail/tasks_dev.json`` is played as the conversation in
``retail_conversations.yaml`` against ``policies/retail.yaml`` with a scripted classifier.
The database actions the agent takes must be exactly the task's expected actions, and the
database must end exactly as replaying those actions on a fresh copy leaves it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from sopagent import (
    Agent,
    CompiledPolicy,
    MemorySink,
    ScriptedBackend,
    Turn,
    compile_policy,
    load_policy,
)
from sopagent.decisions import import_decision_module

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "policies" / "retail.yaml"
DATA = ROOT / "tests" / "data" / "tau_retail"
TASKS: list[dict[str, Any]] = json.loads((DATA / "tasks_dev.json").read_text(encoding="utf-8"))
CONVERSATIONS: dict[int, list[dict[str, str]]] = {
    c["task"]: c["turns"]
    for c in yaml.safe_load((DATA / "retail_conversations.yaml").read_text())["conversations"]
}
tools: Any = import_decision_module("tools.py", ROOT / "examples" / "retail")


@pytest.fixture(autouse=True)
def fresh_database() -> Iterator[None]:
    """Every test starts from the database as shipped, and leaves it so."""
    tools.reset()
    yield
    tools.reset()


@cache
def _compiled() -> CompiledPolicy:
    return compile_policy(load_policy(POLICY))


def _agent(script: dict[str, str]) -> Agent:
    backend = ScriptedBackend(script, default="out_of_scope")
    return Agent(_compiled(), backend, audit=MemorySink())


def _play(turns: list[dict[str, str]]) -> tuple[Agent, list[Turn]]:
    agent = _agent({t["text"]: t["intent"] for t in turns if "intent" in t})
    session = agent.new_session()
    played = [agent.start(session)]
    played += [agent.respond(session, turn["text"]) for turn in turns]
    return agent, played


def _comparable(actions: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Actions with their item lists as multisets: the order items are named in is not data."""
    out = []
    for action in actions:
        kwargs = dict(action["kwargs"])
        if "new_item_ids" in kwargs:
            pairs = zip(kwargs.pop("item_ids"), kwargs.pop("new_item_ids"), strict=True)
            kwargs["pairs"] = sorted(pairs)
        elif "item_ids" in kwargs:
            kwargs["item_ids"] = sorted(kwargs["item_ids"])
        out.append((action["name"], json.dumps(kwargs, sort_keys=True)))
    return out


@cache
def _expected_database(index: int) -> str:
    """The database after replaying the task's expected actions on a fresh copy."""
    db = tools.Database.load()
    for action in TASKS[index]["actions"]:
        tools.WRITE_TOOLS[action["name"]](**action["kwargs"], db=db)
    return json.dumps([db.users, db.orders, db.products], sort_keys=True)


def test_every_dev_task_has_a_conversation() -> None:
    """All 20 dev tasks are scripted, none twice."""
    assert sorted(CONVERSATIONS) == list(range(len(TASKS))) == list(range(20))


@pytest.mark.parametrize("index", range(20))
def test_dev_task_takes_exactly_the_expected_actions(index: int) -> None:
    """The conversation of dev task INDEX writes exactly the expected actions, and no others."""
    _, played = _play(CONVERSATIONS[index])
    assert [t.error for t in played if t.error] == []
    assert _comparable(tools.DB.actions) == _comparable(TASKS[index]["actions"])
    database = json.dumps([tools.DB.users, tools.DB.orders, tools.DB.products], sort_keys=True)
    assert database == _expected_database(index)
    assert played[-1].ended, "every scripted conversation ends with a goodbye"


def test_nothing_happens_before_authentication() -> None:
    """Before the user is found, requests are refused, and nothing is written."""
    _, played = _play(
        [
            # A model that answers a request label here is overruled: it is not allowed.
            {"text": "cancel order #W5442520 now", "intent": "cancel_order"},
            {"text": "please just cancel it", "intent": "out_of_scope"},
            {"text": "yes"},
            {"text": "my email is nobody@example.com", "intent": "give_identity"},
        ]
    )
    assert played[1].response_ids == ("technical_issue",)
    assert played[2].response_ids == ("identify_first", "ask_identity")
    assert played[3].response_ids == ("identify_first", "ask_identity")
    assert played[4].response_ids == ("user_not_found", "ask_identity")
    assert all(t.state_after == "identify" for t in played[1:])
    assert tools.DB.actions == []


def test_half_a_name_and_zip_asks_for_the_other_half() -> None:
    """A name alone is answered with a question for the zip code; with it, the user is found."""
    _, played = _play(
        [{"text": "I'm Olivia Ito", "intent": "give_identity"}, {"text": "it's 80218"}]
    )
    assert played[1].response_ids == ("ask_zip",)
    assert played[2].state_after == "menu"
    assert played[2].response_ids == ("identified", "how_can_i_help")


def test_another_users_order_is_not_found() -> None:
    """One user per conversation: Olivia cannot touch Omar's order, nor learn that it exists."""
    _, played = _play(
        [
            {"text": "Hi, I'm Olivia Ito and my zip code is 80218.", "intent": "give_identity"},
            {"text": "cancel order #W7273336 please", "intent": "cancel_order"},
            {"text": "#W0000001"},
        ]
    )
    assert "order_not_found" in played[2].response_ids
    assert played[2].response_ids == played[3].response_ids
    assert tools.DB.actions == []


def test_no_means_nothing_changes() -> None:
    """Declining the confirmation leaves the database untouched."""
    _, played = _play(
        [
            {"text": "Hi, I'm Olivia Ito and my zip code is 80218.", "intent": "give_identity"},
            {"text": "cancel order #W5442520", "intent": "cancel_order"},
            {"text": "ordered by mistake"},
            {"text": "no"},
        ]
    )
    assert played[-2].state_after == "confirm_cancel"
    assert "nothing_changed" in played[-1].response_ids
    assert tools.DB.actions == []


def test_unclear_answer_to_a_confirmation_is_not_a_yes() -> None:
    """Anything but an explicit yes at a confirmation asks again and writes nothing."""
    _, played = _play(
        [
            {"text": "Hi, I'm Olivia Ito and my zip code is 80218.", "intent": "give_identity"},
            {"text": "cancel order #W5442520", "intent": "cancel_order"},
            {"text": "ordered by mistake"},
            {"text": "hmm, what's the weather like", "intent": "out_of_scope"},
        ]
    )
    assert played[-1].state_after == "confirm_cancel"
    assert played[-1].response_ids == ("yes_or_no",)
    assert tools.DB.actions == []


def test_only_pending_orders_can_be_cancelled() -> None:
    """A delivered order is not cancelled; the agent says why."""
    _, played = _play(
        [
            {"text": "Hi, I'm Olivia Ito and my zip code is 80218.", "intent": "give_identity"},
            {"text": "cancel order #W5866402", "intent": "cancel_order"},
        ]
    )
    assert "wrong_status" in played[-1].response_ids
    assert "delivered" in played[-1].text
    assert tools.DB.actions == []


def test_refund_must_go_to_the_original_method_or_a_gift_card() -> None:
    """A return refunded to a credit card that did not pay the order is refused."""
    _, played = _play(
        [
            {"text": "Hi, I'm Olivia Ito and my zip code is 80218.", "intent": "give_identity"},
            {"text": "I want to return items of order #W5866402", "intent": "return_items"},
            {"text": "the sneakers"},
            {"text": "no"},
            {"text": "my credit card"},
        ]
    )
    assert "refund_methods" in played[-1].response_ids
    assert tools.DB.actions == []


def test_gift_card_must_cover_the_amount() -> None:
    """Paying a pending order with a gift card whose balance is too small is refused."""
    _, played = _play(
        [
            {"text": "Hi, I'm Olivia Ito and my zip code is 80218.", "intent": "give_identity"},
            {"text": "change the payment of order #W5442520", "intent": "modify_order_payment"},
            {"text": "gift card"},
        ]
    )
    assert "gift_card_balance" in played[-1].response_ids
    assert tools.DB.actions == []


def test_items_can_be_modified_only_once() -> None:
    """After a change of items the order is no longer pending, so a second change is refused."""
    conversation = [t for t in CONVERSATIONS[19] if t["text"] != "no"]
    conversation.insert(3, {"text": "no"})
    _, played = _play(
        [
            *conversation,
            {"text": "change the skateboard of #W2974929 again", "intent": "modify_order_items"},
        ]
    )
    assert [a["name"] for a in tools.DB.actions] == ["modify_pending_order_items"]
    assert "wrong_status" in played[-1].response_ids


def test_transfer_emits_the_tool_call_and_ends_as_handoff() -> None:
    """Accepting a transfer calls transfer_to_human_agents and ends in the handoff state."""
    agent, played = _play(
        [
            {"text": "Hi, I'm Olivia Ito and my zip code is 80218.", "intent": "give_identity"},
            {"text": "unsubscribe me from your emails", "intent": "out_of_scope"},
            {"text": "yes"},
        ]
    )
    assert played[-1].state_after == "transferred"
    assert agent.compiled.policy.states["transferred"].handoff
    assert [a["name"] for a in tools.DB.actions] == ["transfer_to_human_agents"]


def test_consequential_states_are_entered_only_after_a_yes() -> None:
    """In all 20 conversations, every write happened on a turn that answered a confirmation."""
    consequential = {n for n, s in _agent({}).compiled.policy.states.items() if s.consequential}
    assert consequential == {
        "do_cancel", "do_modify_address", "do_modify_user_address", "do_modify_payment",
        "do_modify_items", "do_return", "do_exchange",
    }  # fmt: skip
    for index, turns in CONVERSATIONS.items():
        tools.reset()
        _, played = _play(turns)
        for turn in played:
            if consequential.intersection(turn.path):
                assert turn.state_before.startswith("confirm_"), (index, turn.state_before)
                assert turn.intent == "affirm", (index, turn.user_text)


# --- the invariants of docs/retail.md, on the compiled machine's graph -----------------------

CONFIRMATIONS = {
    "do_cancel": "confirm_cancel",
    "do_modify_address": "confirm_order_address",
    "do_modify_user_address": "confirm_user_address",
    "do_modify_payment": "confirm_payment",
    "do_modify_items": "confirm_modify_items",
    "do_return": "confirm_return",
    "do_exchange": "confirm_exchange",
}


def _edges() -> list[tuple[str, str, str]]:
    config = _compiled().machine_config()
    return [(t["source"], t["trigger"], t["dest"]) for t in config["transitions"]]


def _reachable(edges: list[tuple[str, str, str]], start: str = "welcome") -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        here = todo.pop()
        for source, _, dest in edges:
            if source == here and dest not in seen:
                seen.add(dest)
                todo.append(dest)
    return seen


def test_invariant_authentication_first() -> None:
    """Without find_user's `found`, only identification, transfer and goodbye are reachable."""
    edges = [e for e in _edges() if e[:2] != ("find_user", "outcome:found")]
    assert _reachable(edges) == {
        "welcome", "identify", "identify_more", "find_user", "confirm_transfer_unidentified",
        "do_transfer", "transferred", "closed",
    }  # fmt: skip


def test_invariant_consequential_states_only_after_affirm() -> None:
    """Each consequential state's only way in is `affirm` from its confirmation state."""
    policy = _compiled().policy
    assert {n for n, s in policy.states.items() if s.consequential} == set(CONFIRMATIONS)
    for action, confirmation in CONFIRMATIONS.items():
        incoming = [(s, t) for s, t, d in _edges() if d == action]
        assert incoming == [(confirmation, "intent:affirm")], action
        state = policy.states[confirmation]
        assert state.on["deny"].to == "drop"
        assert state.fallback is not None
        assert state.fallback.to is None


def test_invariant_orders_and_payments_checked_before_confirming() -> None:
    """Every path to an order confirmation passes check_order's outcome, and resolve_payment's."""
    checks = {
        "confirm_cancel": ("check_order", "outcome:cancel_ok"),
        "confirm_order_address": ("check_order", "outcome:address_ok"),
        "confirm_payment": ("check_order", "outcome:payment_ok"),
        "confirm_modify_items": ("check_order", "outcome:items_ok"),
        "confirm_return": ("check_order", "outcome:items_ok"),
        "confirm_exchange": ("check_order", "outcome:items_ok"),
    }
    resolvers = {
        "confirm_payment": "resolve_new_payment",
        "confirm_return": "resolve_refund",
        "confirm_exchange": "resolve_difference",
        "confirm_modify_items": "resolve_difference",
    }
    for confirmation, cut in checks.items():
        assert confirmation not in _reachable([e for e in _edges() if e[:2] != cut])
        if confirmation in resolvers:
            resolver = resolvers[confirmation]
            kept = [e for e in _edges() if not (e[0] == resolver and e[2] == confirmation)]
            assert confirmation not in _reachable(kept)


def test_invariant_confirmations_name_the_details() -> None:
    """The line said on entering each confirmation names the order and what will change."""
    compiled = _compiled()
    needed = {
        "confirm_cancel": {"order_ref", "order_items", "cancel_reason", "refund_note"},
        "confirm_order_address": {"order_ref", "address_text"},
        "confirm_user_address": {"address_text"},
        "confirm_payment": {"order_ref", "payment_label"},
        "confirm_modify_items": {"order_ref", "changes", "payment_label"},
        "confirm_return": {"order_ref", "selected_items", "payment_label"},
        "confirm_exchange": {"order_ref", "changes", "payment_label"},
    }
    for confirmation, names in needed.items():
        (line,) = compiled.policy.states[confirmation].say
        assert names <= set(compiled.templates[line].placeholders), confirmation


def test_invariant_one_user_per_conversation() -> None:
    """After the menu, identification is never reachable and identity slots never collected."""
    after = _reachable(_edges(), "menu")
    assert "identify" not in after
    states = _compiled().policy.states
    assert not any({"email", "full_name", "zip"} & set(states[n].collect) for n in after)
    assert "identify_more" not in after


def test_invariant_transfers_are_asked_for_and_end_in_handoff() -> None:
    """do_transfer follows a yes (or a request for a person) only; it ends in a handoff."""
    incoming = sorted((s, t) for s, t, d in _edges() if d == "do_transfer")
    assert incoming == [
        ("confirm_transfer", "intent:affirm"), ("confirm_transfer", "intent:talk_to_human"),
        ("confirm_transfer_unidentified", "intent:affirm"),
        ("confirm_transfer_unidentified", "intent:talk_to_human"),
        ("offer_transfer", "intent:affirm"),
    ]  # fmt: skip
    assert {t for s, t, d in _edges() if d == "offer_transfer" and s != "offer_transfer"} == {
        "fallback"
    }
    assert {d for s, _, d in _edges() if s == "do_transfer"} == {"transferred"}
    transferred = _compiled().policy.states["transferred"]
    assert transferred.terminal
    assert transferred.handoff
