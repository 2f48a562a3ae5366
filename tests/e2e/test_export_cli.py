"""From a conversation's audit log to labelled examples to fine-tuning data, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def sopagent(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sopagent ARGS`` from the repository root."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run(
        [sys.executable, "-m", "sopagent", *map(str, args)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_audit_log_to_labels_to_fine_tuning(tmp_path: Path, reset_refunds: None) -> None:
    """run --audit, export-labels and export-finetune chain into valid fine-tuning records."""
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"money back for a broken lamp please": "request_refund"}))
    conversation = tmp_path / "c.jsonl"
    conversation.write_text(
        '{"text": "money back for a broken lamp please"}\n{"text": "10001"}\n{"text": "bye"}\n'
    )
    audit = tmp_path / "audit.jsonl"
    result = sopagent(
        "run", "policies/refund.yaml", "-i", conversation, "--script", script, "--audit", audit
    )
    assert result.returncode == 0, result.stderr

    labels = tmp_path / "labels.jsonl"
    result = sopagent("export-labels", audit, "--out", labels)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    assert rows == [
        {"text": "money back for a broken lamp please", "intent": "request_refund",
         "state": "greeting"},
        {"text": "bye", "intent": "goodbye", "state": "confirm_refund"},
    ]  # fmt: skip

    result = sopagent("export-finetune", "policies/refund.yaml", "--data", labels)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 2
    for record, row in zip(records, rows, strict=True):
        roles = [m["role"] for m in record["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert record["messages"][1]["content"] == row["text"]
        assert json.loads(record["messages"][2]["content"]) == {"intent": row["intent"]}
    assert "2 fine-tuning records" in result.stderr


def test_bad_audit_line_is_reported_with_its_location(tmp_path: Path) -> None:
    """A corrupt audit line is named by file and line, and nothing is exported."""
    audit = tmp_path / "audit.jsonl"
    audit.write_text('{"intent": "x"}\n{not json\n')
    result = sopagent("export-labels", audit)
    assert result.returncode == 2
    assert f"{audit}:2:" in result.stderr
    assert result.stdout == ""
