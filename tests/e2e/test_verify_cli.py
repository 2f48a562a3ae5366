"""End-to-end tests of `sopagent verify`, `diff` and `replay`, run as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sopagent._yaml import read_yaml

ROOT = Path(__file__).resolve().parents[2]
REFUND = ROOT / "policies" / "refund.yaml"
MERCHANT = ROOT / "policies" / "merchant_npc.yaml"
BROKEN = ROOT / "tests" / "data" / "verify" / "refund_skips_confirmation.yaml"
CATALOG = ROOT / "catalogs" / "support_en.yaml"
DECISIONS = ROOT / "examples" / "support" / "decisions.py"

_ENV = {
    key: value
    for key, value in os.environ.items()
    if key not in {"FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "PYTHONWARNINGS"}
}
_ENV.update({"NO_COLOR": "1", "COLUMNS": "200", "PYTHONIOENCODING": "utf-8"})


def sopagent(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sopagent ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "sopagent", *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=ROOT,
        env=_ENV,
        timeout=300,
        check=False,
    )


def refund_copy(tmp_path: Path, old: str = "", new: str = "", name: str = "policy.yaml") -> Path:
    """The refund policy with one edit, pointing at the real catalog and decisions."""
    text = REFUND.read_text(encoding="utf-8")
    text = text.replace("../catalogs/support_en.yaml", json.dumps(str(CATALOG)))
    text = text.replace("../examples/support/decisions.py", json.dumps(str(DECISIONS)))
    assert old in text
    path = tmp_path / name
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


# --- verify ---------------------------------------------------------------------------------


def test_verify_the_shipped_policies() -> None:
    """Both shipped policies verify: exit 0, every property proved or tested, as JSON."""
    for policy in (REFUND, MERCHANT):
        result = sopagent("verify", policy, "--json", "--examples", "40")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["ok"] is True
        verdicts = {p["id"]: p["verdict"] for p in report["properties"]}
        assert set(verdicts.values()) <= {"proved", "not_refuted"}
        assert sum(v == "proved" for v in verdicts.values()) >= 5


def test_verify_prints_a_counterexample_and_saves_it(tmp_path: Path) -> None:
    """A broken policy: exit 1, the transcript on stdout, the regression test written."""
    saved = tmp_path / "regressions"
    result = sopagent("verify", BROKEN, "--examples", "60", "--save-counterexamples", saved)
    assert result.returncode == 1, result.stderr
    assert "FAILS        explicit_yes" in result.stdout
    assert "greeting -> lookup_order > check_eligibility > issue_refund > anything_else" in (
        result.stdout
    )
    assert "!! state issue_refund" in result.stdout
    (written,) = saved.glob("*.test.yaml")
    assert f"saved explicit_yes: {written}" in result.stderr
    document = read_yaml(written).data
    assert document["sopagent_test"] == 1
    assert (written.parent / document["policy"]).resolve() == BROKEN.resolve()


def test_verify_exhaustive_only_and_require_proof() -> None:
    """--engine exhaustive skips the search; --require-proof fails on a tested property."""
    result = sopagent("verify", REFUND, "--engine", "exhaustive", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["search"]["conversations"] == 0
    strict = sopagent("verify", REFUND, "--engine", "exhaustive", "--require-proof")
    assert strict.returncode == 1
    assert "not refuted  verified_above_threshold" in strict.stdout


def test_verify_reports_property_problems_at_their_location(tmp_path: Path) -> None:
    """An unknown state in a property: exit 2 and SOP070 at file:line:col."""
    path = refund_copy(
        tmp_path, "    never: {state: issue_refund}\n", "    never: {state: issue_refnd}\n"
    )
    result = sopagent("verify", path)
    assert result.returncode == 2
    lines = path.read_text(encoding="utf-8").splitlines()
    line = next(i for i, t in enumerate(lines, 1) if "issue_refnd" in t)
    column = lines[line - 1].index("issue_refnd") + 1
    assert f"{path}:{line}:{column}: SOP070 unknown state 'issue_refnd'" in result.stderr
    assert "did you mean 'issue_refund'?" in result.stderr


def test_verify_bad_options() -> None:
    """Options out of range are usage errors: exit 2."""
    assert sopagent("verify", REFUND, "--max-turns", "0").returncode == 2
    assert sopagent("verify", REFUND, "--engine", "guess").returncode == 2


# --- diff -----------------------------------------------------------------------------------


def test_diff_exit_codes(tmp_path: Path) -> None:
    """0 for the same policy, 1 for a changed one (with witnesses), 2 for a broken file."""
    same = sopagent("diff", REFUND, refund_copy(tmp_path))
    assert same.returncode == 0, same.stderr
    assert "no semantic difference" in same.stdout
    changed = refund_copy(
        tmp_path, "      affirm: {say: ask_what_else}\n", "      affirm: ask_order\n", "new.yaml"
    )
    result = sopagent("diff", REFUND, changed, "--json", "--max-turns", "3")
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert document["semantic"] is True
    assert [c["name"] for c in document["changes"]] == ["anything_else on affirm"]
    newly = document["conversations"]["newly_possible"]
    assert newly
    assert newly[0]["last"][0]["path"][0] == "ask_order"
    broken = tmp_path / "broken.yaml"
    broken.write_text("sopagent: 1\nname: [\n", encoding="utf-8")
    failed = sopagent("diff", REFUND, broken)
    assert failed.returncode == 2
    assert f"{broken}:" in failed.stderr


# --- replay ---------------------------------------------------------------------------------


def test_replay_an_audit_log(tmp_path: Path) -> None:
    """A conversation logged with --audit replays the same (0) and changed on a new version (1)."""
    conversation = tmp_path / "conversation.jsonl"
    conversation.write_text(
        "".join(
            json.dumps(line) + "\n"
            for line in [
                {"text": "I want a refund"},
                {"text": "10003"},
                {"text": "yes", "intent": "affirm"},
                {"text": "bye"},
            ]
        ),
        encoding="utf-8",
    )
    script = tmp_path / "script.yaml"
    script.write_text("{}\n", encoding="utf-8")  # every message is an example, slots or forced
    audit = tmp_path / "audit.jsonl"
    run = sopagent(
        "run", REFUND, "--input", conversation, "--script", script, "--audit", audit,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    same = sopagent("replay", audit, "--policy", REFUND)
    assert same.returncode == 0, same.stderr
    assert "0 changed, 1 the same" in same.stderr
    new = refund_copy(
        tmp_path,
        "      affirm: {say: ask_what_else}\n",
        "      affirm: {say: ask_what_else}\n      greet: closed\n",
    )
    new_same = sopagent("replay", audit, "--policy", new, "--json")
    assert new_same.returncode == 0, new_same.stderr
    changed = refund_copy(
        tmp_path,
        "      not_delivered: {to: anything_else, say: refund_not_delivered}\n",
        "      not_delivered: {to: closed, say: refund_not_delivered}\n",
        "changed.yaml",
    )
    result = sopagent("replay", audit, "--policy", changed, "--json")
    assert result.returncode == 1, result.stderr
    (replayed,) = json.loads(result.stdout)
    assert replayed["status"] == "changed"
    assert replayed["turn"] == 2
    assert replayed["new"]["path"][-1] == "closed"
