"""The retail policy's invariants are proved, and a policy that skips a confirmation is caught."""

from __future__ import annotations

from pathlib import Path

from sopagent import compile_policy, load_policy
from sopagent._verify import verify

ROOT = Path(__file__).resolve().parents[2]
RETAIL = ROOT / "policies" / "retail.yaml"


def test_every_retail_invariant_is_proved() -> None:
    """`sopagent verify policies/retail.yaml`: the exhaustive engine proves every property."""
    report = verify(compile_policy(load_policy(RETAIL)), engines=["exhaustive"])
    verdicts = {r.spec.id: r.verdict for r in report.results}
    assert len(verdicts) >= 20
    assert set(verdicts.values()) == {"proved"}, verdicts
    assert report.unreadable == ()  # every decision's updates are read from its code


def test_a_cancellation_without_confirmation_is_a_counterexample(tmp_path: Path) -> None:
    """Routing the cancel reason straight to do_cancel breaks the yes and the details rules."""
    text = RETAIL.read_text(encoding="utf-8").replace("../", f"{ROOT.as_posix()}/")
    old = "  check_reason:\n    decide: cancel_reason\n    outcomes:\n      ok: confirm_cancel\n"
    assert old in text
    broken = tmp_path / "retail.yaml"
    broken.write_text(text.replace(old, old.replace("ok: confirm_cancel", "ok: do_cancel")))
    report = verify(compile_policy(load_policy(broken)), engines=["exhaustive"])
    verdicts = {r.spec.id: r for r in report.results}
    for pid in ("yes_before_cancel", "details_before_cancel"):
        result = verdicts[pid]
        assert result.verdict == "violated", pid
        example = result.counterexample
        assert example is not None
        assert "do_cancel" in example.steps[-1].path
        assert example.steps[-1].breaks == "state do_cancel"
    others = {pid for pid, r in verdicts.items() if r.verdict != "proved"}
    assert others == {"yes_before_cancel", "details_before_cancel"}
