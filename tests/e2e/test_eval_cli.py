"""End-to-end tests of ``sopagent eval``, run as a real subprocess on the refund policy.

The scripted backend (score 1.0 for every answer) makes the figures exact; one test runs the
embedded model beside it and only checks the figures are consistent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "policies" / "refund.yaml"
DATA = ROOT / "examples" / "support" / "eval.jsonl"
SLOT_ONLY = "my order is number 40123"  # only an order number: no intent is classified
WRONG = {"ok bye for now": "greet", "tell me a joke about cats": "talk_to_human"}

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


def examples() -> list[dict[str, Any]]:
    """The labelled examples of the shipped evaluation file."""
    lines = DATA.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture
def script(tmp_path: Path) -> Path:
    """A scripted mapping answering every example right except the two in WRONG."""
    mapping = {item["text"]: WRONG.get(item["text"], item["intent"]) for item in examples()}
    path = tmp_path / "script.json"
    path.write_text(json.dumps(mapping), encoding="utf-8")
    return path


def test_eval_scripted_figures(script: Path) -> None:
    """On the scripted backend the figures follow exactly from the two scripted mistakes."""
    result = sopagent(
        "eval", POLICY, "--data", DATA, "--backend", "scripted", "--script", script, "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    n = len(examples())
    assert report["examples"] == n
    [figures] = report["backends"]
    assert figures["backend"] == "scripted"
    assert figures["correct"] == n - 3
    assert figures["accuracy"] == round((n - 3) / n, 4)
    assert figures["model_answered"] == n - 1
    assert figures["no_intent"] == 1
    assert figures["without_model_call"] == 1
    assert figures["without_model_call_by_source"] == {"slots": 1}
    assert figures["model_calls_mean"] == round((n - 1) / n, 4)
    assert figures["prompt_tokens_mean"] == 0.0
    assert figures["answered_by"] == {"scripted": n - 1}
    oos = sum(1 for item in examples() if item["intent"] == "out_of_scope")
    assert figures["oos_precision"] == 1.0
    assert figures["oos_recall"] == round((oos - 1) / oos, 4)
    assert figures["ece"] == round(2 / (n - 1), 4)  # score 1.0: each mistake is a full gap
    assert figures["f1_by_label"]["request_refund"] == 1.0
    assert 0.0 < figures["macro_f1"] < 1.0
    assert figures["latency_ms_median"] <= figures["latency_ms_p90"]
    assert sorted((c["expected"], c["predicted"], c["count"]) for c in figures["confusions"]) == [
        ("goodbye", "greet", 1),
        ("out_of_scope", "talk_to_human", 1),
        ("provide_order_id", "(no intent)", 1),
    ]


def test_eval_table(script: Path) -> None:
    """Without --json the figures are a readable table with the confusions."""
    result = sopagent("eval", POLICY, "--data", DATA, "--script", script)
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout
    assert "macro-F1" in result.stdout
    assert "top confusions: scripted" in result.stdout


def test_eval_state_option(tmp_path: Path) -> None:
    """--state places examples without a state there; affirm is then scored as expected."""
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "sure thing", "intent": "affirm"}\n\n', encoding="utf-8")
    script = tmp_path / "s.yaml"
    script.write_text("sure thing: affirm\n", encoding="utf-8")
    args = ("eval", POLICY, "--data", data, "--script", script, "--json")
    result = sopagent(*args, "--state", "confirm_handoff")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["backends"][0]["accuracy"] == 1.0
    result = sopagent(*args, "--state", "nowhere")
    assert result.returncode == 2
    assert "nowhere" in result.stderr


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "hi", "intent": "greet"', "invalid JSON"),
        ('{"text": "hi", "intent": "gret"}', "did you mean 'greet'?"),
        ('{"text": "hi"}', '"intent" (the expected label) is required'),
        ('{"text": "hi", "intent": "greet", "state": "lookup_order"}', "does not wait"),
        ('{"text": "hi", "intent": "greet", "mood": "happy"}', "unknown key 'mood'"),
        ('["hi", "greet"]', "a line is a JSON object"),
    ],
)
def test_eval_bad_data_exits_2(tmp_path: Path, line: str, message: str) -> None:
    """A malformed or wrongly labelled line is reported as file:line before anything runs."""
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "hello", "intent": "greet"}\n' + line + "\n", encoding="utf-8")
    result = sopagent("eval", POLICY, "--data", data, "--backend", "embedded", "--json")
    assert result.returncode == 2
    assert f"{data}:2:" in result.stderr
    assert message in result.stderr
    assert result.stdout == ""


def test_eval_script_needs_scripted_backend(script: Path) -> None:
    """--script with only other backends is a usage error."""
    result = sopagent("eval", POLICY, "--data", DATA, "--backend", "openai", "--script", script)
    assert result.returncode == 2


@pytest.mark.model
def test_eval_embedded_beside_scripted(script: Path) -> None:
    """The embedded model and the scripted backend are reported side by side, consistently."""
    result = sopagent(
        "eval", POLICY, "--data", DATA, "--backend", "embedded", "--backend", "scripted",
        "--script", script, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    embedded, scripted = report["backends"]
    assert scripted["backend"] == "scripted"
    n = report["examples"]
    assert embedded["examples"] == n == len(examples())
    for key in ("accuracy", "macro_f1", "ece", "oos_precision", "oos_recall"):
        assert embedded[key] is None or 0.0 <= embedded[key] <= 1.0, key
    assert embedded["correct"] + sum(c["count"] for c in embedded["confusions"]) <= n
    assert sum(embedded["by_source"].values()) == n
    assert embedded["model_answered"] + embedded["without_model_call"] >= n - embedded["errors"]
    assert embedded["model_calls_mean"] > 0
    assert embedded["prompt_tokens_mean"] > 0
    assert 0 < embedded["latency_ms_median"] <= embedded["latency_ms_p90"]


def test_eval_compares_backend_specs_side_by_side(script: Path) -> None:
    """Specs name the compared backends; a cascade reports which backend answered."""
    result = sopagent(
        "eval", POLICY, "--data", DATA, "--backend", "nearest",
        "--backend", "cascade(nearest, scripted, threshold=0.9)", "--script", script, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    alone, chained = json.loads(result.stdout)["backends"]
    assert alone["backend"] == "nearest"
    assert chained["backend"] == "cascade(nearest, scripted, threshold=0.9)"
    assert alone["model_calls_mean"] == 0
    answered = chained["answered_by"]
    assert set(answered) <= {"nearest-lexical", "scripted"}
    assert answered.get("scripted", 0) > 0
    assert chained["accuracy"] >= alone["accuracy"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [("gpt(", "not a backend spec"), ("cascade(embedded)", "needs two backends")],
)
def test_eval_bad_backend_spec_exits_2(spec: str, message: str) -> None:
    """A backend spec that cannot be read or built is a usage error that says why."""
    result = sopagent("eval", POLICY, "--data", DATA, "--backend", spec)
    assert result.returncode == 2
    assert message in result.stderr
