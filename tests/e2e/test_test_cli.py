"""End-to-end tests of `sopagent test` and of the pytest plugin, run as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
REFUND = POLICIES / "refund.yaml"
BROKEN = ROOT / "tests" / "data" / "verify" / "refund_skips_confirmation.yaml"

_ENV = {
    key: value
    for key, value in os.environ.items()
    if key not in {"FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "PYTHONWARNINGS"}
}
_ENV.update({"NO_COLOR": "1", "COLUMNS": "200", "PYTHONIOENCODING": "utf-8"})


def run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGS`` in ``cwd``."""
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=cwd,
        env=_ENV,
        timeout=600,
        check=False,
    )


def sopagent(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sopagent ARGS``."""
    return run("-m", "sopagent", *args)


def failing_copy(tmp_path: Path) -> Path:
    """The shipped refund tests with one wrong expectation."""
    text = (POLICIES / "refund.test.yaml").read_text(encoding="utf-8")
    text = text.replace("policy: refund.yaml", f"policy: {json.dumps(str(REFUND))}")
    text = text.replace("refund_reference: RF-070007", "refund_reference: RF-000001")
    path = tmp_path / "refund.test.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_tests_pass_with_coverage() -> None:
    """Both shipped files: exit 0, the closing counts, coverage per policy."""
    result = sopagent("test", "policies", "--coverage")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "18 conversations in 2 files\n18 passed, 0 failed\n" in result.stdout
    assert "coverage of refund" in result.stdout
    assert "coverage of merchant_npc" in result.stdout
    assert "  states       14/14   100.0%" in result.stdout


def test_a_failure_is_a_diff_at_the_step(tmp_path: Path) -> None:
    """Exit 1; the failing step's file:line:col and an expected/actual diff; --json too."""
    path = failing_copy(tmp_path)
    result = sopagent("test", path)
    assert result.returncode == 1
    lines = path.read_text(encoding="utf-8").splitlines()
    line = next(i for i, t in enumerate(lines, 1) if "user: yes please" in t)
    assert f'{path}:{line}:9: step 4 ("yes please") of conversation' in result.stdout
    assert '    refund_reference: expected "RF-000001", actual "RF-070007"' in result.stdout
    assert "12 conversations in 1 file\n11 passed, 1 failed\n" in result.stdout
    document = json.loads(sopagent("test", path, "--json").stdout)
    assert document["failed"] == 1
    (failed,) = [c for c in document["conversations"] if not c["passed"]]
    assert failed["failure"]["mismatches"][0]["key"] == "facts"


def test_load_errors_exit_2(tmp_path: Path) -> None:
    """A malformed file: exit 2 with file:line:col; a missing path too."""
    bad = tmp_path / "bad.test.yaml"
    bad.write_text(f"sopagent_test: 1\npolicy: {REFUND}\nconversations:\n  - nme: x\n", "utf-8")
    result = sopagent("test", bad)
    assert result.returncode == 2
    assert f"{bad}:4:5: SOP141 unknown key 'nme' (hint: did you mean 'name'?)" in result.stderr
    assert sopagent("test", tmp_path / "missing.test.yaml").returncode == 2
    assert sopagent("test").returncode == 2


def test_a_real_backend_measures_classification(tmp_path: Path) -> None:
    """--backend nearest (no model): steps are classified by it and its accuracy reported."""
    result = sopagent("test", POLICIES / "refund.test.yaml", "--backend", "nearest", "--json")
    assert result.returncode in (0, 1), result.stderr
    figures = json.loads(result.stdout)["classification"]
    assert figures["backend"].startswith("nearest")
    assert figures["steps"] > 10
    assert 0 <= figures["correct"] <= figures["steps"]
    assert figures["model_answered"] > 0


@pytest.mark.model
def test_the_embedded_model_on_the_shipped_tests() -> None:
    """--backend embedded: the real model classifies; accuracy is reported in the text."""
    result = sopagent("test", POLICIES / "refund.test.yaml", "--backend", "embedded")
    assert result.returncode in (0, 1), result.stderr
    line = next(t for t in result.stdout.splitlines() if t.startswith("intent accuracy ("))
    correct, total = map(int, line.split(": ")[1].split(" ")[0].split("/"))
    assert total > 10
    assert correct > total // 2  # the small model gets most of the shipped messages right


def test_generate_writes_a_suite_that_passes(tmp_path: Path) -> None:
    """--generate -o: every route covered (stderr), the suite passes with full route coverage."""
    out = tmp_path / "gen" / "merchant.test.yaml"
    made = sopagent("test", "--generate", POLICIES / "merchant_npc.yaml", "-o", out)
    assert made.returncode == 0, made.stderr
    assert "cover 28/28 routes of merchant_npc" in made.stderr
    result = sopagent("test", out, "--coverage", "--json")
    assert result.returncode == 0, result.stdout
    (coverage,) = json.loads(result.stdout)["coverage"]
    assert coverage["routes"]["ratio"] == 1.0
    assert sopagent("test", "--generate", POLICIES / "refund.yaml").returncode == 2


def test_saved_counterexamples_run_as_tests(tmp_path: Path) -> None:
    """Counterexamples saved by verify (both engines) pass on the policy they came from."""
    for engine in ("exhaustive", "search"):
        saved = tmp_path / engine
        verified = sopagent(
            "verify",
            BROKEN,
            "--engine",
            engine,
            "--examples",
            "60",
            "--save-counterexamples",
            saved,
        )
        assert verified.returncode == 1, verified.stderr
        result = sopagent("test", saved)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 passed, 0 failed" in result.stdout


# --- the pytest plugin ---------------------------------------------------------------------


def test_pytest_collects_conversations_as_items(tmp_path: Path) -> None:
    """One item per conversation; a failure shows the step and the diff; exit 1."""
    failing_copy(tmp_path)
    result = run(
        "-m", "pytest", "-p", "no:cacheprovider", "-rN", "--rootdir", tmp_path, tmp_path, "-v",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout
    assert "refund.test.yaml::a small refund goes through FAILED" in result.stdout
    assert "refund.test.yaml::three wrong codes hand the customer over PASSED" in result.stdout
    assert '    refund_reference: expected "RF-000001", actual "RF-070007"' in result.stdout
    assert "1 failed, 11 passed" in result.stdout


def test_pytest_reports_a_broken_file_as_a_collection_error(tmp_path: Path) -> None:
    """Every problem of the file at its location, as the collection error."""
    bad = tmp_path / "bad.test.yaml"
    bad.write_text(f"sopagent_test: 1\npolicy: {REFUND}\nconversations:\n  - nme: x\n", "utf-8")
    result = run(
        "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", tmp_path, tmp_path, cwd=tmp_path
    )
    assert result.returncode == 2
    assert f"{bad}:4:5: SOP141 unknown key 'nme'" in result.stdout


def test_pytest_plugin_options(tmp_path: Path) -> None:
    """--sopagent-coverage prints coverage; --sopagent-backend classifies with a backend."""
    result = run(
        "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", tmp_path, "-q",
        POLICIES / "merchant_npc.test.yaml", "--sopagent-coverage", "--sopagent-backend", "nearest",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stdout
    assert "sopagent coverage" in result.stdout
    assert "coverage of merchant_npc" in result.stdout
    bad = run(
        "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", tmp_path,
        POLICIES / "merchant_npc.test.yaml", "--sopagent-backend", "guess(", cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 4
    assert "--sopagent-backend" in bad.stderr


def test_pytest_leaves_other_yaml_tests_alone(tmp_path: Path) -> None:
    """A *.test.yaml of another tool (no sopagent_test key) is not collected."""
    (tmp_path / "other.test.yaml").write_text("cases: [1, 2]\n", encoding="utf-8")
    result = run(
        "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", tmp_path, tmp_path, cwd=tmp_path
    )
    assert result.returncode == 5  # no tests collected
