"""Tests of `sopagent test --generate`: a minimal suite covering every route."""

from __future__ import annotations

from pathlib import Path

import pytest

from sopagent._compile import compile_policy
from sopagent._coverage import coverage_of
from sopagent._generate import generate_suite
from sopagent._load import load_policy
from sopagent._testing import Suite, load_test_file, render_failure

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["refund", "merchant_npc"])
def test_the_generated_suite_passes_and_covers_every_route(tmp_path: Path, name: str) -> None:
    """On the shipped policies: every route covered, every conversation passing."""
    policy = ROOT / "policies" / f"{name}.yaml"
    compiled = compile_policy(load_policy(policy))
    out = tmp_path / "suite" / f"{name}.test.yaml"
    text, report = generate_suite(compiled, policy, out)
    out.parent.mkdir()
    out.write_text(text, encoding="utf-8")
    assert report.uncovered == []
    assert len(report.covered) == report.routes == len(compiled.machine_config()["transitions"])
    suite = Suite.load([out])
    result = suite.run()
    assert not result.failed, render_failure(result.failed[0])
    (coverage,) = coverage_of(suite.compiled(), result.results)
    assert coverage.ratio("routes") == 1.0
    assert coverage.ratio("states") == 1.0
    # Shortest conversations, and fewer of them than routes.
    assert report.conversations < report.routes
    file = load_test_file(out)
    assert file.policy.resolve() == policy.resolve()
    assert max(len(c.steps) for c in file.conversations) <= 8


def test_real_decisions_are_preferred_and_forcing_is_the_last_resort(tmp_path: Path) -> None:
    """An unknown order number is searched for rather than forcing not_found; a forced outcome
    is only where no message or fact gives it."""
    policy = ROOT / "policies" / "refund.yaml"
    compiled = compile_policy(load_policy(policy))
    text, report = generate_suite(compiled, policy, tmp_path / "s.test.yaml")
    file_path = tmp_path / "s.test.yaml"
    file_path.write_text(text, encoding="utf-8")
    steps = [s for c in load_test_file(file_path).conversations for s in c.steps]
    forced = [step.decisions for step in steps if step.decisions]
    assert report.forced == sum(len(d) for d in forced)
    assert all("find_order" not in d for d in forced)
    assert any(s.expect.get("decisions", {}).get("find_order") == "not_found" for s in steps)
    # locked needs three wrong codes; the shortest way is one, so that outcome is forced.
    assert {"verify_identity": "locked"} in forced


def test_a_route_no_test_can_take_is_reported(write_policy) -> None:  # type: ignore[no-untyped-def]
    """A state reachable only through the model being unsure is left out, with the reason."""
    path = write_policy(
        policy=lambda text: text.replace(
            "  fallback: {say: sorry}\n",
            "  fallback: {say: sorry}\n"
            "  confidence: {threshold: 0.5, below: {to: done, say: sorry}}\n",
        )
    )
    compiled = compile_policy(load_policy(path))
    _, report = generate_suite(compiled, path, path.with_name("s.test.yaml"))
    uncovered = dict(report.uncovered)
    assert "start -[unsure]-> done" in uncovered
    assert "no conversation a test can force takes it" in uncovered["start -[unsure]-> done"]
    assert any("not covered: start -[unsure]-> done" in line for line in report.lines())
