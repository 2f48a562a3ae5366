"""sopagent diff: structure, wording, approvals, and conversations newly or no longer possible."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from conftest import MINI_CATALOG, MINI_POLICY, REFUND_POLICY, ROOT

from sopagent import compile_policy, load_policy
from sopagent._compile import CompiledPolicy
from sopagent._diff import diff_policies, inline_approvals, invalidated_approvals, render
from sopagent.policy import content_hash

Writer = Callable[..., Path]


def compiled(write_policy: Writer, **files: object) -> CompiledPolicy:
    return compile_policy(load_policy(write_policy(**files)))


def test_a_policy_does_not_differ_from_itself(write_policy: Writer) -> None:
    """Same files: no change, the same conversations, exit 0 territory."""
    old, new = compiled(write_policy), compiled(write_policy)
    result = diff_policies(old, new)
    assert result.changes == []
    assert result.conversations.same
    assert not result.semantic
    assert result.conversations.pairs > 1
    assert "no semantic difference" in render(result)


def test_a_rerouted_outcome_is_newly_and_no_longer_possible(write_policy: Writer) -> None:
    """A big number now goes back to the start: the structural change and its shortest witness."""
    old = compiled(write_policy)
    new = compiled(
        write_policy,
        policy=lambda t: t.replace("big: {to: done, say: big}", "big: {to: start, say: big}"),
    )
    result = diff_policies(old, new)
    assert [str(c) for c in result.changes] == [
        "changed route judge outcome big: to done; say big -> to start; say big"
    ]
    assert result.semantic
    # The number with its intent, and the number alone: two messages, the same finding.
    newly, alone = result.conversations.newly_possible
    assert alone.last[0].describe() == "number=<valid>: judge > start; says big, welcome"
    assert [t.describe() for t in newly.before] == ["(opening): start; says welcome"]
    assert [t.describe() for t in newly.last] == [
        "give_number + number=<valid>: judge > start; says big, welcome"
    ]
    assert {t.describe() for t in newly.instead} == {
        "give_number + number=<valid>: judge > done; says small, bye (ends)",
        "give_number + number=<valid>: judge > done; says big, bye (ends)",
    }
    gone = result.conversations.no_longer_possible[0]
    assert [t.describe() for t in gone.last] == [
        "give_number + number=<valid>: judge > done; says big, bye (ends)"
    ]
    assert newly.turns == 1


def refund_copy(directory: Path, old: str = "", new: str = "") -> Path:
    """The refund policy, edited, pointing at the real catalog and decisions."""
    text = REFUND_POLICY.read_text(encoding="utf-8")
    text = text.replace("../catalogs/support_en.yaml", str(ROOT / "catalogs" / "support_en.yaml"))
    text = text.replace(
        "../examples/support/decisions.py", str(ROOT / "examples" / "support" / "decisions.py")
    )
    assert old in text
    path = directory / "refund.yaml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def test_differences_beyond_the_horizon_are_not_reported(tmp_path: Path) -> None:
    """A change two turns away is seen with two turns of look-ahead, not with one."""
    old = compile_policy(load_policy(REFUND_POLICY))
    path = refund_copy(
        tmp_path, "issued: {to: anything_else, say: refund_issued}", "issued: closed"
    )
    new = compile_policy(load_policy(path))
    assert diff_policies(old, new, max_turns=1).conversations.same
    result = diff_policies(old, new, max_turns=2)
    witnesses = result.conversations.newly_possible
    assert witnesses
    assert min(w.turns for w in witnesses) == 2
    shortest = min(witnesses, key=lambda w: w.turns)
    assert shortest.last[0].path == ("issue_refund", "closed")


def test_wording_and_approvals(write_policy: Writer) -> None:
    """A reworded approved response invalidates its approval; a new one has none to lose."""
    approved = content_hash("Welcome.")
    catalog = MINI_CATALOG.replace(
        "  welcome: Welcome.", f"  welcome:\n    text: Welcome.\n    approved: {approved}"
    )
    old = compiled(write_policy, catalog=catalog)
    new = compiled(
        write_policy,
        catalog=catalog.replace("text: Welcome.", "text: Welcome back.") + "  extra: Extra.\n",
    )
    result = diff_policies(old, new)
    assert [str(c) for c in result.changes if c.area == "response"] == [
        "changed response welcome: 'Welcome.' -> 'Welcome back.'",
        "added response extra: 'Extra.'",
    ]
    (invalid,) = result.invalidated
    assert invalid.name == "welcome"
    assert invalid.old == approved
    assert invalid.new == content_hash("Welcome back.")
    assert result.semantic
    assert result.conversations.same  # the same response ids are said
    assert "approvals invalidated:" in render(result)


def test_approvals_come_from_a_pluggable_source(write_policy: Writer) -> None:
    """The approval source is a function: a lock file can stand in for the inline hashes."""
    old = compiled(write_policy).catalog
    new = compiled(write_policy, catalog=MINI_CATALOG.replace("Bye.", "Goodbye.")).catalog
    assert invalidated_approvals(old, new) == []
    locked = {"bye": content_hash("Bye.")}
    (change,) = invalidated_approvals(old, new, approvals=lambda catalog: locked)
    assert change.name == "bye"
    assert inline_approvals(old) == {}


def test_descriptions_do_not_change_behaviour(write_policy: Writer) -> None:
    """A state's description and the version string are reported but are not semantic."""
    old = compiled(write_policy)
    new = compiled(
        write_policy,
        policy=lambda t: t.replace(
            "  judge:\n", "  judge:\n    description: Weighs the number.\n"
        ).replace("name: mini\n", "name: mini\nversion: '2'\n"),
    )
    result = diff_policies(old, new)
    assert [(c.area, c.name, c.semantic) for c in result.changes] == [
        ("policy", "version", False),
        ("state", "judge", False),
    ]
    assert not result.semantic


def test_intents_outcomes_and_code(write_policy: Writer) -> None:
    """Intents added, outcomes a function no longer declares, and decision code that changed."""
    old = compiled(write_policy)
    policy = MINI_POLICY.replace(
        "  stop:\n    description: The user wants to stop.",
        "  stop:\n    description: The user wants to stop now.",
    ).replace("      big: {to: done, say: big}\n", "")
    decisions = (
        "from sopagent import decision\n\n\n"
        '@decision(outcomes=["small"])\n'
        "def judge(ctx):\n"
        '    return "small"\n'
    )
    new = compiled(write_policy, policy=policy, decisions=decisions)
    result = diff_policies(old, new)
    described = {str(c) for c in result.changes}
    assert (
        "changed intent stop: The user wants to stop. -> The user wants to stop now." in described
    )
    assert "removed decision judge outcome big" in described
    assert "changed decision judge: its code changed" in described
    assert "removed route judge outcome big: to done; say big" in described
    gone = result.conversations.no_longer_possible[0]
    assert gone.last[0].responses == ("big", "bye")
