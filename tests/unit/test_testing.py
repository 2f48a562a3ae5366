"""Tests of conversation test files: loading, checking, running, diffs and coverage."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sopagent import Agent, MemorySink, ScriptedBackend, load_agent
from sopagent._coverage import coverage_of
from sopagent._testing import (
    EXPECTATIONS,
    Expectation,
    Suite,
    load_test_file,
    render_failure,
)
from sopagent.errors import PolicyError

ROOT = Path(__file__).resolve().parents[2]
REFUND = ROOT / "policies" / "refund.yaml"
MERCHANT = ROOT / "policies" / "merchant_npc.yaml"


def write(tmp_path: Path, body: str, policy: Path = REFUND, name: str = "t.test.yaml") -> Path:
    """A test file in ``tmp_path`` naming ``policy`` by its absolute path."""
    path = tmp_path / name
    text = f"sopagent_test: 1\npolicy: {policy}\nconversations:\n" + textwrap.dedent(body)
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    """The problems loading ``path`` reports, as text."""
    with pytest.raises(PolicyError) as raised:
        Suite.load([path])
    return [str(p) for p in raised.value.problems]


def run(path: Path, backend: object = None) -> list:
    """Run every conversation of ``path``."""
    return Suite.load([path]).run(backend).results  # type: ignore[arg-type]


# --- loading ---------------------------------------------------------------------------------


def test_structure_problems_are_located(tmp_path: Path) -> None:
    """Unknown keys (with a hint), a misplaced opening and bad types point at file:line:col."""
    path = write(
        tmp_path,
        """\
          - name: one
            steps:
              - user: hi
                expect: {stat: greeting}
              - expect: {state: greeting}
              - user: [not, text]
        """,
    )
    found = problems(path)
    assert f"{path}:7:16: SOP141 unknown key 'stat' (hint: did you mean 'state'?)" in found
    assert any(p.startswith(f"{path}:8:7: SOP146 a step without 'user'") for p in found)
    assert any(p.startswith(f"{path}:9:13: SOP140 user must be text") for p in found)


def test_names_are_checked_against_the_policy(tmp_path: Path) -> None:
    """Intents, decisions, states, responses, slots and facts unknown to the policy."""
    path = write(
        tmp_path,
        """\
          - name: one
            facts: {verifed: true}
            steps:
              - user: hi
                intent: request_refnd
                decisions: {check_refund: maybe}
                expect: {state: ask_ordr, responses: [greet, nope], slots: {order_id: "12"}}
        """,
    )
    found = "\n".join(problems(path))
    assert f"{path}:5:20: SOP147 unknown fact 'verifed' (hint: did you mean 'verified'?)" in found
    assert f"{path}:8:15: SOP143 unknown intent 'request_refnd'" in found
    assert f"{path}:9:33: SOP145 'check_refund' does not declare outcome 'maybe'" in found
    assert f"{path}:10:23: SOP144 expect.state: unknown state 'ask_ordr'" in found
    assert f"{path}:10:44: SOP144 expect.responses: unknown response 'nope'" in found
    assert (
        f"{path}:10:66: SOP140 expect.slots: slot 'order_id': does not match the pattern" in found
    )


def test_file_level_problems(tmp_path: Path) -> None:
    """Missing keys, a wrong version, a missing policy and duplicate names."""
    bad = tmp_path / "bad.test.yaml"
    bad.write_text("sopagent_test: 2\nconversations: []\n", encoding="utf-8")
    found = problems(bad)
    assert any("SOP140 unsupported format version 2" in p for p in found)
    assert any("SOP140 missing required key 'policy'" in p for p in found)
    missing = write(tmp_path, "  - {name: a, steps: [{user: hi}]}\n", tmp_path / "nope.yaml")
    assert any("SOP142 the policy" in p for p in problems(missing))
    twice = write(
        tmp_path, "  - {name: a, steps: [{user: hi}]}\n  - {name: a, steps: [{user: hi}]}\n"
    )
    assert any("SOP148 two conversations are named 'a'" in p for p in problems(twice))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert problems(empty) == [f"{empty}: SOP149 no conversation tests (*.test.yaml) in {empty}"]


def test_a_number_written_unquoted_is_what_the_user_typed(tmp_path: Path) -> None:
    """``user: 10001`` (a YAML number) is sent as the text 10001."""
    path = write(tmp_path, "  - {name: a, steps: [{user: I want a refund}, {user: 10001}]}\n")
    (conversation,) = load_test_file(path).conversations
    assert conversation.steps[1].user == "10001"


# --- running ---------------------------------------------------------------------------------


def test_a_passing_conversation_and_its_turns(tmp_path: Path) -> None:
    """Every expectation key compares with the real turn; the opening is step 1."""
    path = write(
        tmp_path,
        """\
          - name: small refund
            steps:
              - expect: {state: greeting, path: [greeting], responses: [greet], ended: false}
              - user: I want a refund
                expect: {intent: request_refund, state: ask_order}
              - user: "10001"
                expect:
                  intent: null
                  slots: {order_id: "10001"}
                  decisions: {find_order: found, check_refund: eligible}
                  outcome: eligible
                  facts: {refund_amount: "45.50", verified: null}
                  text: >-
                    I can refund $45.50 for order 10001 to your original payment method.
                    Shall I go ahead?
                  error: false
        """,
    )
    (result,) = run(path)
    assert result.passed, render_failure(result)
    assert [s.turn.state_after for s in result.steps] == ["greeting", "ask_order", "confirm_refund"]


def test_a_failing_step_shows_a_diff_per_key_at_its_location(tmp_path: Path) -> None:
    """The first failing step stops the conversation; its diff names expected and actual."""
    path = write(
        tmp_path,
        """\
          - name: wrong
            steps:
              - user: I want a refund
                expect: {state: ask_order}
              - user: "10002"
                expect:
                  state: confirm_refund
                  responses: [confirm_refund]
                  facts: {order_total: "12.00"}
              - user: "yes"
        """,
    )
    (result,) = run(path)
    assert not result.passed
    assert len(result.steps) == 2
    text = render_failure(result)
    assert text.startswith(f"{path}:8:7: step 2 (\"10002\") of conversation 'wrong' failed")
    assert "  turn: ask_order -> lookup_order > check_eligibility > verify" in text
    assert '  state:\n    expected "confirm_refund"\n    actual   "verify"' in text
    assert "    - confirm_refund\n    + verification_needed" in text
    assert '    order_total: expected "12.00", actual "249.99"' in text
    failure = result.to_json()["failure"]
    assert [m["key"] for m in failure["mismatches"]] == ["state", "responses", "facts"]
    assert failure["location"] == f"{path}:8:7"


def test_recorded_mode_needs_a_label_for_what_the_model_would_classify(tmp_path: Path) -> None:
    """A message the agent would send to the model fails without a forced or expected intent."""
    path = write(
        tmp_path, "  - {name: a, steps: [{user: please give my money back, expect: {}}]}\n"
    )
    (result,) = run(path)
    assert "the step records no label" in result.failed_step.problem
    labelled = write(
        tmp_path,
        "  - {name: a, steps: [{user: please give my money back, expect: {intent: request_refund,"
        " state: ask_order}}]}\n",
        name="b.test.yaml",
    )
    (passed,) = run(labelled)
    assert passed.passed
    assert passed.steps[0].turn.intent_source == "model"
    assert passed.steps[0].turn.answered_by == "recorded"


def test_forced_decisions_do_not_run_the_function(tmp_path: Path) -> None:
    """A forced sale leaves the purse and the key as they were: weigh_offer did not run."""
    path = write(
        tmp_path,
        """\
          - name: forced
            facts: {gold: 80}
            steps:
              - user: I'll take the key
              - user: "10"
                intent: buy_key
                decisions: {weigh_offer: sold}
                expect:
                  state: sold_out
                  decisions: {weigh_offer: sold}
                  facts: {gold: 80}
                  effects: [{give_item: {item: silver_key}}]
        """,
        MERCHANT,
    )
    (result,) = run(path)
    assert result.passed, render_failure(result)
    (decided,) = result.steps[1].turn.decisions
    assert decided.forced
    unforced = write(tmp_path, "  - {name: a, facts: {gold: 80}, steps: [{user: I'll take the key},"
                     " {user: '10', intent: buy_key, expect: {outcome: sold}}]}\n",
                     MERCHANT, name="b.test.yaml")  # fmt: skip
    (failed,) = run(unforced)
    assert failed.failed_step.mismatches[0].actual == "no_moonstone"


def test_decision_module_state_is_reset_between_conversations(tmp_path: Path) -> None:
    """Two conversations refunding the same order both pass: refunds do not leak."""
    body = """\
          - name: {name}
            steps:
              - user: I want a refund
              - user: "10001"
              - user: "yes"
                expect: {{outcome: issued}}
        """
    path = write(
        tmp_path,
        textwrap.dedent(body.format(name="first")) + textwrap.dedent(body.format(name="second")),
    )
    results = run(path)
    assert [r.passed for r in results] == [True, True]
    assert [r.passed for r in run(path)] == [True, True]


def test_a_conversation_that_ended_cannot_go_on(tmp_path: Path) -> None:
    """A step after the end fails with a note, not a crash."""
    path = write(tmp_path, "  - {name: a, steps: [{user: bye}, {user: hello}]}\n")
    (result,) = run(path)
    assert result.failed_step.problem == "the conversation had already ended before this step"


def test_a_backend_classifies_and_is_measured(tmp_path: Path) -> None:
    """With a backend, unforced steps are classified by it and counted; forced ones are not."""
    path = write(
        tmp_path,
        """\
          - name: measured
            steps:
              - user: I'd love to get my cash back
                expect: {intent: request_refund}
              - user: "x"
                intent: talk_to_human
                expect: {intent: talk_to_human}
              - user: nope
                expect: {intent: deny}
        """,
    )
    backend = ScriptedBackend({"I'd love to get my cash back": "request_refund", "nope": "affirm"})
    suite = Suite.load([path])
    result = suite.run(backend)
    figures = result.classification()
    assert figures is not None
    assert figures["steps"] == 2
    assert figures["correct"] == 1
    assert figures["accuracy"] == 0.5
    assert figures["misclassified"][0]["expected"] == "deny"
    assert figures["misclassified"][0]["actual"] == "affirm"
    assert Suite.load([path]).run().classification() is None


def test_expectations_are_a_table_that_can_grow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new key is one entry of EXPECTATIONS: read, checked and compared like the others."""
    extra = Expectation(
        "said_count",
        "how many responses were said",
        lambda v, c: int(v),
        lambda o, _: len(o.turn.responses),
    )
    monkeypatch.setitem(EXPECTATIONS, "said_count", extra)
    path = write(
        tmp_path, "  - {name: a, steps: [{user: I want a refund, expect: {said_count: 2}}]}\n"
    )
    (result,) = run(path)
    (mismatch,) = result.failed_step.mismatches
    assert (mismatch.key, mismatch.expected, mismatch.actual) == ("said_count", 2, 1)


# --- the agent's forced decisions -------------------------------------------------------------


def refund_agent() -> Agent:
    """A refund agent on a scripted backend."""
    return load_agent(REFUND, backend=ScriptedBackend(), audit=MemorySink())


def test_respond_forces_outcomes_and_checks_them(reset_refunds: None) -> None:
    """Agent.respond(decisions=...) forces; unknown functions and outcomes are ValueErrors."""
    agent = refund_agent()
    session = agent.new_session()
    agent.start(session)
    agent.respond(session, "I want a refund")
    turn = agent.respond(session, "10003", decisions={"check_refund": "too_old"})
    assert [(d.function, d.outcome, d.forced) for d in turn.decisions] == [
        ("find_order", "found", False),
        ("check_refund", "too_old", True),
    ]
    assert turn.response_ids == ("refund_too_old", "anything_else")
    with pytest.raises(ValueError, match="unknown decision function 'nope'"):
        agent.respond(session, "x", decisions={"nope": "a"})
    with pytest.raises(ValueError, match="does not declare outcome 'maybe'"):
        agent.respond(session, "x", decisions={"find_order": "maybe"})


def test_start_forces_the_opening_decision() -> None:
    """The merchant's opening decision can be forced too."""
    agent = load_agent(MERCHANT, backend=ScriptedBackend(), audit=MemorySink())
    session = agent.new_session()
    turn = agent.start(session, decisions={"open_shop": "player_has_key"})
    assert turn.state_after == "sold_out"
    assert session.facts == {}


# --- coverage --------------------------------------------------------------------------------


def test_coverage_counts_states_routes_intents_and_responses() -> None:
    """The shipped refund tests: every state and intent; the routes taken, by trigger."""
    suite = Suite.load([ROOT / "policies" / "refund.test.yaml"])
    result = suite.run()
    assert not result.failed
    (coverage,) = coverage_of(suite.compiled(), result.results)
    data = coverage.to_json()
    assert data["states"]["ratio"] == 1.0
    assert data["intents"]["ratio"] == 1.0
    assert data["routes"]["total"] == len(coverage.compiled.machine_config()["transitions"])
    assert "greeting -[intent:request_refund]-> ask_order" in coverage.covered["routes"]
    assert "lookup_order -[outcome:not_found]-> ask_order" in coverage.covered["routes"]
    assert "ask_order -[filled]-> lookup_order" in data["routes"]["missing"]
    assert "technical_issue" in data["responses"]["missing"]
    assert coverage.render()[0].startswith("coverage of refund")
