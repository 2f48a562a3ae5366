"""sopagent verify: both engines on the shipped policies, each property kind, saved tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REFUND_POLICY, ROOT

from sopagent import Agent, ScriptedBackend, compile_policy, load_policy
from sopagent._compile import CompiledPolicy
from sopagent._search import ModuleState
from sopagent._verify import (
    PropertyResult,
    Report,
    conversation_test,
    render,
    verify,
    write_counterexamples,
)
from sopagent._yaml import read_yaml

Writer = Callable[..., Path]
MERCHANT_POLICY = ROOT / "policies" / "merchant_npc.yaml"
BROKEN_POLICY = ROOT / "tests" / "data" / "verify" / "refund_skips_confirmation.yaml"


def results(report: Report) -> dict[str, PropertyResult]:
    return {r.spec.id: r for r in report.results}


def mini(write_policy: Writer, properties: str, decisions: str | None = None) -> CompiledPolicy:
    """The mini policy of conftest with ``properties``."""
    path = write_policy(
        policy=lambda text: text + "properties:\n" + properties, decisions=decisions
    )
    return compile_policy(load_policy(path))


def steps(result: PropertyResult) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """(input, path, responses) of each turn of the counterexample."""
    example = result.counterexample
    assert example is not None
    return [
        ("opening" if s.index == 0 else str(s.input), s.path, s.responses) for s in example.steps
    ]


# --- the shipped policies ---------------------------------------------------------------------


def test_refund_properties_hold() -> None:
    """Every property of the refund policy is proved, but the one on amounts, which the
    search tests on the real decision functions."""
    report = verify(compile_policy(load_policy(REFUND_POLICY)), examples=60)
    found = results(report)
    assert report.failed == []
    assert {pid for pid, r in found.items() if r.verdict == "proved"} == {
        "eligibility_checked",
        "explicit_yes",
        "one_refund_per_order",
        "codes_only_when_asked",
        "handoff_confirmed",
        "can_always_end",
        "human_always_reachable",
        "goodbye_ends",
    }
    threshold = found["verified_above_threshold"]
    assert threshold.exhaustive.status == "unknown"
    assert threshold.search.status == "passed"
    assert report.unreadable == ()
    assert report.conversations >= 60


def test_merchant_properties_hold() -> None:
    """The merchant never gives the key away: proved, or tested with the real trade rules."""
    report = verify(compile_policy(load_policy(MERCHANT_POLICY)), examples=60)
    found = results(report)
    assert report.failed == []
    assert found["key_changes_hands_once"].verdict == "proved"
    assert found["no_second_key"].verdict == "proved"
    assert found["paid_in_full"].exhaustive.status == "unknown"
    assert found["paid_in_full"].search.status == "passed"


def test_broken_policy_has_its_known_shortest_counterexample() -> None:
    """Skipping the confirmation breaks `explicit_yes` in one turn: the order number."""
    report = verify(compile_policy(load_policy(BROKEN_POLICY)), engines=["exhaustive"])
    result = results(report)["explicit_yes"]
    assert result.verdict == "violated"
    assert steps(result) == [
        ("opening", ("greeting",), ("greet",)),
        (
            "provide_order_id + order_id=<valid>",
            ("lookup_order", "check_eligibility", "issue_refund", "anything_else"),
            ("refund_issued", "anything_else"),
        ),
    ]
    example = result.counterexample
    assert example is not None
    assert example.steps[1].breaks == "state issue_refund"
    assert example.steps[1].decisions == (
        ("lookup_order", "find_order", "found"),
        ("check_eligibility", "check_refund", "eligible"),
        ("issue_refund", "issue_refund", "issued"),
    )
    assert [r.spec.id for r in report.failed] == ["explicit_yes"]
    text = render(report)
    assert "FAILS        explicit_yes" in text
    assert "!! state issue_refund" in text


def test_search_finds_a_threshold_bug_the_abstraction_cannot(tmp_path: Path) -> None:
    """A decision module whose verification threshold is wrong: only real values show it."""
    decisions = (ROOT / "examples" / "support" / "decisions.py").read_text(encoding="utf-8")
    buggy = decisions.replace('Decimal("100.00")', 'Decimal("1000.00")')
    assert buggy != decisions
    (tmp_path / "decisions.py").write_text(buggy, encoding="utf-8")
    (tmp_path / "orders.json").write_text(
        (ROOT / "examples" / "support" / "orders.json").read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    policy = REFUND_POLICY.read_text(encoding="utf-8")
    policy = policy.replace("../catalogs/support_en.yaml", str(ROOT / "catalogs/support_en.yaml"))
    policy = policy.replace("../examples/support/decisions.py", "decisions.py")
    (tmp_path / "refund.yaml").write_text(policy, encoding="utf-8")
    compiled = compile_policy(load_policy(tmp_path / "refund.yaml"))
    report = verify(compiled, examples=200, seed=0)
    result = results(report)["verified_above_threshold"]
    assert result.exhaustive.status == "unknown"  # the same as for the correct module
    assert result.search.status == "violated"
    example = result.search.counterexample
    assert example is not None
    last = example.steps[-1]
    assert last.breaks == "decision issue_refund=issued"
    assert any(s.slots.get("order_id") in ("10002", "10005") for s in example.steps)
    assert example.turns <= 4  # shrunk


# --- property kinds on a small policy -------------------------------------------------------


def test_never_is_broken_by_an_adversarial_decision(write_policy: Writer) -> None:
    """`never say big`: the judge may say big for any number in the abstraction."""
    compiled = mini(write_policy, "  no_big: {never: {say: big}}\n")
    result = results(verify(compiled, engines=["exhaustive"]))["no_big"]
    assert steps(result) == [
        ("opening", ("start",), ("welcome",)),
        ("give_number + number=<valid>", ("judge", "done"), ("big", "bye")),
    ]


def test_conditions_are_left_to_the_search(write_policy: Writer) -> None:
    """`never say big where number < 50` cannot be decided abstractly; the real judge keeps it."""
    compiled = mini(write_policy, "  honest: {never: {say: big, where: 'number < 50'}}\n")
    result = results(verify(compiled, examples=80))["honest"]
    assert result.exhaustive.status == "unknown"
    assert result.search.status == "passed"
    assert result.verdict == "not_refuted"


def test_the_search_refutes_a_condition_the_code_breaks(write_policy: Writer) -> None:
    """A judge that says big from 40 on breaks `never big where number < 50`."""
    decisions = (
        "from sopagent import decision\n\n\n"
        '@decision(outcomes=["small", "big"])\n'
        "def judge(ctx):\n"
        '    return "small" if ctx.slots["number"] < 40 else "big"\n'
    )
    compiled = mini(
        write_policy, "  honest: {never: {say: big, where: 'number < 50'}}\n", decisions
    )
    result = results(verify(compiled, examples=200))["honest"]
    assert result.search.status == "violated"
    example = result.search.counterexample
    assert example is not None
    assert 40 <= example.steps[-1].slots["number"] < 50


def test_after_and_reset(write_policy: Writer) -> None:
    """`never welcome after welcome` fails at the first greeting; a reset on greet saves it."""
    compiled = mini(
        write_policy,
        "  once: {never: {say: welcome}, after: {say: welcome}}\n"
        "  reset: {never: {say: welcome}, after: {say: welcome}, reset: {intent: greet}}\n"
        "  once_more: {at_most_once: {say: welcome}}\n",
    )
    found = results(verify(compiled, engines=["exhaustive"]))
    assert steps(found["once"]) == [
        ("opening", ("start",), ("welcome",)),
        ("greet", (), ("welcome",)),
    ]
    assert found["reset"].verdict == "proved"
    assert steps(found["once_more"]) == steps(found["once"])


def test_never_both(write_policy: Writer) -> None:
    """The judge decides once: never both small and big."""
    compiled = mini(write_policy, "  one_verdict: {never_both: [{say: small}, {say: big}]}\n")
    assert results(verify(compiled, engines=["exhaustive"]))["one_verdict"].verdict == "proved"


def test_reachable_is_a_game_against_the_decisions(write_policy: Writer) -> None:
    """The user can always end; the user cannot make the judge say big."""
    compiled = mini(
        write_policy,
        "  can_end: {reachable: {ended: true}}\n  can_big: {reachable: {say: big}}\n",
    )
    found = results(verify(compiled, engines=["exhaustive"]))
    assert found["can_end"].verdict == "proved"
    can_big = found["can_big"]
    assert can_big.verdict == "violated"
    example = can_big.counterexample
    assert example is not None
    assert example.from_step == 0  # already at the start, nothing guarantees a big verdict
    assert "no way to say big is guaranteed" in example.note


def test_leads_to_within_turns(write_policy: Writer) -> None:
    """Saying stop ends at once; greeting forever never does."""
    compiled = mini(
        write_policy,
        "  stop_ends: {leads_to: {ended: true}, within: 1, saying: stop}\n"
        "  greet_ends: {leads_to: {ended: true}, within: 3, saying: greet}\n",
    )
    found = results(verify(compiled, examples=50))
    assert found["stop_ends"].verdict == "proved"
    assert found["stop_ends"].search.status == "passed"
    greet = found["greet_ends"]
    assert greet.exhaustive.status == "violated"
    example = greet.exhaustive.counterexample
    assert example is not None
    assert [str(s.input) for s in example.steps[1:]] == ["greet", "greet", "greet"]
    assert greet.search.status == "violated"


def test_unreadable_decisions_are_reported(write_policy: Writer) -> None:
    """A decision whose outcomes the code does not spell out is assumed to do anything."""
    decisions = (
        "from sopagent import decision\n\n\n"
        '@decision(outcomes=["small", "big"])\n'
        "def judge(ctx):\n"
        "    return VERDICTS[ctx.slots['number'] > 49]\n\n\n"
        'VERDICTS = {False: "small", True: "big"}\n'
    )
    compiled = mini(write_policy, "  can_end: {reachable: {ended: true}}\n", decisions)
    report = verify(compiled, engines=["exhaustive"])
    assert report.unreadable == ("judge",)
    assert "could not be read from their code" in render(report)


# --- the search engine ------------------------------------------------------------------


def test_the_search_is_deterministic(write_policy: Writer) -> None:
    """The same seed gives the same conversations and the same counterexample."""
    compiled = mini(
        write_policy, "  greet_ends: {leads_to: {ended: true}, within: 2, saying: greet}\n"
    )

    def run(seed: int) -> dict[str, Any]:
        document = verify(compiled, engines=["search"], examples=40, seed=seed).to_json()
        document.pop("search")
        return document

    assert run(3) == run(3)


def test_module_state_is_restored() -> None:
    """Containers of decision modules are put back in place between conversations."""
    compiled = compile_policy(load_policy(REFUND_POLICY))
    refunded: set[str] = compiled.functions["issue_refund"].__globals__["_REFUNDED"]
    refunded.clear()
    state = ModuleState(compiled.functions)
    refunded.add("10001")
    state.restore()
    assert refunded == set()
    assert compiled.functions["issue_refund"].__globals__["_REFUNDED"] is refunded


# --- counterexamples as conversation tests --------------------------------------------------

STEP_KEYS = {"user", "intent", "decisions", "expect"}
EXPECT_KEYS = {
    "intent", "state", "path", "responses", "slots", "outcome", "decisions", "ended", "effects",
}  # fmt: skip


def check_test_file(path: Path, compiled: CompiledPolicy) -> dict[str, Any]:
    """The file is a conversation test in the agreed format (docs: CONVTEST-FORMAT)."""
    document = read_yaml(path).data
    assert isinstance(document, dict)
    assert set(document) == {"sopagent_test", "policy", "conversations"}
    assert document["sopagent_test"] == 1
    assert (path.parent / document["policy"]).resolve() == compiled.policy.source.resolve()  # type: ignore[union-attr]
    assert isinstance(document["conversations"], list)
    for conversation in document["conversations"]:
        assert set(conversation) <= {"name", "facts", "steps"}
        assert isinstance(conversation["name"], str)
        assert isinstance(conversation.get("facts", {}), dict)
        first, *rest = conversation["steps"]
        assert "user" not in first  # the opening turn
        for step in conversation["steps"]:
            assert set(step) <= STEP_KEYS
            assert set(step["expect"]) <= EXPECT_KEYS
            if "intent" in step:
                assert step["intent"] in {*compiled.policy.intents, "out_of_scope"}
            for function, outcome in step.get("decisions", {}).items():
                assert outcome in compiled.functions[function].__sopagent_outcomes__
            assert step["expect"]["state"] in compiled.states
        for step in rest:
            assert isinstance(step["user"], str)
    return document


def run_test_file(document: dict[str, Any], compiled: CompiledPolicy) -> None:
    """Run a saved conversation (labels recorded, no decision forced) and compare."""
    backend = ScriptedBackend()
    agent = Agent(compiled, backend)
    (conversation,) = document["conversations"]
    session = agent.new_session(facts=conversation.get("facts"))
    for step in conversation["steps"]:
        assert "decisions" not in step
        if "user" in step:
            turn = agent.respond(session, step["user"], intent=step.get("intent"))
        else:
            turn = agent.start(session)
        actual = {
            "intent": turn.intent,
            "state": turn.state_after,
            "path": list(turn.path),
            "responses": list(turn.response_ids),
            "slots": turn.slots,
            "decisions": {d.function: d.outcome for d in turn.decisions},
            "ended": turn.ended,
            "effects": [{e.name: dict(e.args)} for e in turn.effects],
        }
        assert {k: actual[k] for k in step["expect"]} == step["expect"]


def test_saved_counterexamples_are_conversation_tests(tmp_path: Path) -> None:
    """--save-counterexamples writes a test in the agreed format that replays the violation."""
    compiled = compile_policy(load_policy(BROKEN_POLICY))
    refunded: set[str] = compiled.functions["issue_refund"].__globals__["_REFUNDED"]
    report = verify(compiled, examples=100)
    written = write_counterexamples(report, compiled, tmp_path / "regressions", BROKEN_POLICY)
    assert [(pid, why) for pid, _, why in written] == [("explicit_yes", "")]
    path = written[0][1]
    assert path is not None
    assert path.name == "refund_skips_confirmation.explicit_yes.test.yaml"
    assert path.read_text(encoding="utf-8").startswith("# Counterexample to property explicit_yes")
    document = check_test_file(path, compiled)
    refunded.clear()
    try:
        run_test_file(document, compiled)
    finally:
        refunded.clear()


def test_exhaustive_counterexamples_force_labels_and_outcomes(write_policy: Writer) -> None:
    """An abstract counterexample forces each label with `intent:` and outcomes with
    `decisions:`, with a message that gives the slot values it needs."""
    compiled = mini(write_policy, "  no_big: {never: {say: big}}\n")
    report = verify(compiled, engines=["exhaustive"])
    document = conversation_test(report.results[0], compiled, "policy.yaml")
    assert isinstance(document, dict)
    steps_ = document["conversations"][0]["steps"]
    assert steps_[1]["intent"] == "give_number"
    assert steps_[1]["decisions"] == {"judge": "big"}
    found = compiled.slot_types["number"].find(steps_[1]["user"], [])
    assert found is not None
    assert found.error is None
    assert steps_[1]["expect"]["responses"] == ["big", "bye"]
    text = yaml.safe_dump(document)
    assert json.loads(json.dumps(yaml.safe_load(text))) == document


def test_counterexamples_a_test_cannot_force_are_not_written(write_policy: Writer) -> None:
    """A failing backend or decision cannot be forced by a test: nothing is written, and why."""
    compiled = mini(
        write_policy,
        "  never_sorry: {never: {say: oops}}\n",
    )
    report = verify(compiled, engines=["exhaustive"])
    assert report.failed
    reason = conversation_test(report.failed[0], compiled, "policy.yaml")
    assert reason == "turn 0: the backend or a decision fails here, which a test cannot force"


@pytest.mark.parametrize("policy", [REFUND_POLICY, MERCHANT_POLICY])
def test_reports_are_json(policy: Path) -> None:
    """The report serializes to JSON with every property and both engines."""
    report = verify(compile_policy(load_policy(policy)), examples=20)
    document = json.loads(json.dumps(report.to_json()))
    assert document["ok"] is True
    assert {p["verdict"] for p in document["properties"]} <= {"proved", "not_refuted"}
    assert document["exhaustive"]["nodes"] > 0
