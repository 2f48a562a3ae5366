"""End-to-end tests of the ``sopagent`` command, run as a real subprocess on the refund policy.

The scripted backend stands in for the model (``--backend scripted --script FILE``), so these
tests need no model and run in seconds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from sopagent import compile_policy, load_policy
from sopagent._schema import json_schemas, render
from sopagent._yaml import read_yaml

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "policies" / "refund.yaml"
CATALOG = ROOT / "catalogs" / "support_en.yaml"
DECISIONS = ROOT / "examples" / "support" / "decisions.py"
SCHEMAS = ROOT / "schemas"

_ENV = {
    key: value
    for key, value in os.environ.items()
    if key not in {"FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "PYTHONWARNINGS"}
}
_ENV.update({"NO_COLOR": "1", "COLUMNS": "200", "PYTHONIOENCODING": "utf-8"})


def sopagent(*args: str | Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``python -m sopagent ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "sopagent", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=ROOT,
        env=_ENV,
        timeout=120,
        check=False,
    )


def write_jsonl(path: Path, items: list[Any]) -> Path:
    """Write one JSON value per line."""
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path


@pytest.fixture
def script(tmp_path: Path) -> Path:
    """A scripted-backend file mapping texts the examples do not cover to labels."""
    path = tmp_path / "script.yaml"
    path.write_text(
        "go for it: affirm\nno: deny\nwhat's the weather: out_of_scope\n", encoding="utf-8"
    )
    return path


def policy_copy(tmp_path: Path, old: str = "", new: str = "") -> Path:
    """Copy the refund policy into tmp_path, pointing at the real catalog and decisions."""
    text = POLICY.read_text(encoding="utf-8")
    text = text.replace("../catalogs/support_en.yaml", json.dumps(str(CATALOG)))
    text = text.replace("../examples/support/decisions.py", json.dumps(str(DECISIONS)))
    if old:
        assert old in text
        text = text.replace(old, new, 1)
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def position(path: Path, line_text: str, value: str) -> tuple[int, int]:
    """Return the 1-based line and column of ``value`` on the line containing ``line_text``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    line = next(i for i, text in enumerate(lines, 1) if line_text in text)
    return line, lines[line - 1].index(value) + 1


def test_version() -> None:
    """--version prints the package version."""
    result = sopagent("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == "sopagent 0.1.0"


def test_run_json_records_states_and_responses(tmp_path: Path, script: Path) -> None:
    """run --json prints the opening turn, then one turn record per line until the end."""
    conversation = write_jsonl(
        tmp_path / "conversation.jsonl",
        [
            {"text": "I want a refund"},
            "my order is 10001",
            {"text": "go for it"},
            {"text": "nah, that's everything", "intent": "deny"},
            {"text": "never sent"},
        ],
    )
    result = sopagent("run", POLICY, "--input", conversation, "--json", "--script", script)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["state_after"] for r in records] == [
        "greeting",
        "ask_order",
        "confirm_refund",
        "anything_else",
        "closed",
    ]
    assert [r["response_ids"] for r in records] == [
        ["greet"],
        ["ask_order_id"],
        ["confirm_refund"],
        ["refund_issued", "anything_else"],
        ["goodbye"],
    ]
    assert [r["intent_source"] for r in records] == ["none", "example", "slots", "model", "forced"]
    assert records[2]["path"] == ["lookup_order", "check_eligibility", "confirm_refund"]
    assert records[2]["slots"] == {"order_id": "10001"}
    assert records[3]["intent"] == "affirm"
    assert records[3]["model_calls"] == 1
    assert records[3]["text"].startswith("Done! $45.50 is on its way back to you.")
    assert [r["ended"] for r in records] == [False, False, False, False, True]
    assert len({r["session_id"] for r in records}) == 1
    assert "1 later line not sent" in result.stderr


def test_run_transcript_with_list_script_and_audit(tmp_path: Path) -> None:
    """run without --json prints a transcript; a list script labels turns in order; --audit logs."""
    script = tmp_path / "labels.json"
    script.write_text(json.dumps(["talk_to_human", "affirm"]), encoding="utf-8")
    conversation = write_jsonl(
        tmp_path / "c.jsonl", ["hmm, something else entirely", "that would be great"]
    )
    audit = tmp_path / "audit" / "events.jsonl"
    result = sopagent(
        "run", POLICY, "-i", conversation, "--backend", "scripted", "--script", script,
        "--audit", audit,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "bot> Hello! I'm the refunds assistant. How can I help you today?",
        "you> hmm, something else entirely",
        "bot> Would you like me to pass you to a colleague?",
        "you> that would be great",
        "bot> I'm passing you to a colleague now. They'll see this conversation and continue"
        " from here.",
        "(conversation ended in handoff)",
    ]
    events = [json.loads(line) for line in audit.read_text(encoding="utf-8").splitlines()]
    assert [e["state_after"] for e in events] == ["greeting", "confirm_handoff", "handoff"]
    assert events[1]["backend"] == "scripted"


def test_run_facts_are_parsed_as_json(tmp_path: Path, script: Path) -> None:
    """--fact values are JSON when they parse and reach the decision functions."""
    conversation = write_jsonl(tmp_path / "c.jsonl", ["I want a refund", "it's order 10002"])
    result = sopagent(
        "run", POLICY, "-i", conversation, "--json", "--script", script,
        "--fact", "verified=true", "--fact", "failed_attempts=0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    last = json.loads(result.stdout.splitlines()[-1])
    assert last["state_after"] == "confirm_refund"
    assert last["response_ids"] == ["confirm_refund"]


def test_run_bad_fact_exits_2(tmp_path: Path, script: Path) -> None:
    """An undeclared fact or a fact without '=' is a usage error."""
    conversation = write_jsonl(tmp_path / "c.jsonl", ["hi"])
    undeclared = sopagent("run", POLICY, "-i", conversation, "--script", script, "--fact", "x=1")
    assert undeclared.returncode == 2
    assert "'x' is not declared" in undeclared.stderr
    malformed = sopagent("run", POLICY, "-i", conversation, "--script", script, "--fact", "gold")
    assert malformed.returncode == 2
    assert "NAME=VALUE" in malformed.stderr


def test_run_malformed_line_exits_2_before_running(tmp_path: Path, script: Path) -> None:
    """Every malformed input line is reported as file:line and nothing runs."""
    conversation = tmp_path / "conversation.jsonl"
    conversation.write_text(
        '{"text": "I want a refund"}\n\n{"text": "oops"\n[1, 2]\n'
        '{"text": "x", "intent": "afirm"}\n',
        encoding="utf-8",
    )
    audit = tmp_path / "audit.jsonl"
    result = sopagent("run", POLICY, "--input", conversation, "--script", script, "--audit", audit)
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{conversation}:3:" in result.stderr
    assert f"{conversation}:4:" in result.stderr
    assert f"{conversation}:5:1: SOP021 unknown intent 'afirm'" in result.stderr
    assert "did you mean 'affirm'?" in result.stderr
    assert "Traceback" not in result.stderr
    assert not audit.exists()


def test_run_unknown_script_label_exits_2(tmp_path: Path) -> None:
    """A script label that is not an intent of the policy is reported at its location."""
    script = tmp_path / "script.yaml"
    script.write_text("hello: greet_user\n", encoding="utf-8")
    conversation = write_jsonl(tmp_path / "c.jsonl", ["hello"])
    result = sopagent("run", POLICY, "-i", conversation, "--script", script)
    assert result.returncode == 2
    assert f"{script}:1:8: SOP021 unknown intent 'greet_user'" in result.stderr


def test_chat_with_piped_stdin(script: Path) -> None:
    """chat reads piped lines, prints each reply and stops when the session ends."""
    result = sopagent(
        "chat", POLICY, "--backend", "scripted", "--script", script, "--show-debug",
        stdin="I want a refund\n\nmy order is 10001\ngo for it\nno\nnot read\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("bot> Hello! I'm the refunds assistant.")
    assert "you> I want a refund\nbot> Could you tell me your five-digit order number?" in out
    assert "path=lookup_order > check_eligibility > confirm_refund" in out
    assert "responses=refund_issued,anything_else" in out
    assert "intent=affirm  score=1.00  source=model" in out
    assert out.rstrip().endswith("(conversation ended)")
    assert "not read" not in out


def test_chat_quit_and_eof(script: Path) -> None:
    """chat stops on /quit, and at the end of input, with exit code 0."""
    quit_ = sopagent("chat", POLICY, "--script", script, stdin="I want a refund\n/quit\nbye\n")
    assert quit_.returncode == 0, quit_.stderr
    assert "five-digit order number" in quit_.stdout
    assert "Goodbye" not in quit_.stdout
    eof = sopagent("chat", POLICY, "--script", script, stdin="what's the weather\n")
    assert eof.returncode == 0, eof.stderr
    assert "bot> Sorry, I didn't get that." in eof.stdout


def test_embedded_backend_missing_exits_3(tmp_path: Path) -> None:
    """Without the embedded extra, chat says how to install it and exits 3."""
    code = (
        "import sys; sys.modules['sopagent.backends.llamacpp'] = None; "
        "sys.argv = ['sopagent', 'chat', sys.argv[1]]; "
        "from sopagent.cli import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(POLICY)],
        input="",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_ENV,
        timeout=120,
        check=False,
    )
    assert result.returncode == 3
    assert "pip install 'sopagent[embedded]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_good_policy_exits_0() -> None:
    """check on the example policy finds nothing and exits 0."""
    result = sopagent("check", POLICY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""
    assert "0 errors" in result.stderr


def test_check_yaml_error_exits_2(tmp_path: Path) -> None:
    """A YAML syntax error is a load error: reported at file:line:col, exit code 2."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("sopagent: 1\nname: refund\nintents: [unclosed\n", encoding="utf-8")
    result = sopagent("check", broken)
    assert result.returncode == 2
    assert re.search(
        rf"^{re.escape(str(broken))}:\d+:\d+: SOP001 invalid YAML", result.stdout, re.M
    )
    assert "Traceback" not in result.stderr


def test_check_unknown_state_exits_1(tmp_path: Path) -> None:
    """An unknown target state is a finding at the exact line and column: exit code 1."""
    path = policy_copy(tmp_path, "request_refund: ask_order\n", "request_refund: ask_ordr\n")
    line, column = position(path, "request_refund: ask_ordr", "ask_ordr")
    result = sopagent("check", path, POLICY)
    assert result.returncode == 1
    assert f"{path}:{line}:{column}: SOP020 unknown state 'ask_ordr'" in result.stdout.splitlines()
    assert "1 error" in result.stderr


def test_check_json_document(tmp_path: Path) -> None:
    """check --json prints one document: policies, findings with locations and hints, summary."""
    path = policy_copy(
        tmp_path,
        "\n  closed:\n",
        "\n  orphan:\n    say: goodbye\n    terminal: true\n\n  closed:\n",
    )
    clean = sopagent("check", path, "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    document = json.loads(clean.stdout)
    assert document["format"] == 1
    assert document["tool"] == {"name": "sopagent", "version": "0.1.0"}
    assert document["policies"] == [
        {"file": str(path), "name": "refund", "catalog": "catalogs/support_en.yaml", "loaded": True}
    ]
    [warning] = document["findings"]
    assert warning == {
        "code": "SOP030",
        "name": "unreachable-state",
        "severity": "warning",
        "message": "state 'orphan' is unreachable",
        "file": str(path),
        "line": position(path, "  orphan:", "orphan")[0],
        "column": 3,
        "hint": "route to the state, or remove it",
    }
    assert document["summary"] == {
        "policies": 1,
        "errors": 0,
        "warnings": 1,
        "suppressed": 0,
        "exit_code": 0,
    }
    strict = sopagent("check", path, "--json", "--strict")
    assert strict.returncode == 1
    assert json.loads(strict.stdout)["summary"]["exit_code"] == 1
    broken = policy_copy(tmp_path, "initial: greeting", "initial: nowhere")
    result = sopagent("check", broken, "--json")
    assert result.returncode == 1
    problems = json.loads(result.stdout)["findings"]
    assert [p["code"] for p in problems if p["severity"] == "error"] == ["SOP020"]
    assert (problems[0]["line"], problems[0]["column"]) == position(broken, "initial:", "nowhere")


def test_run_with_broken_policy_exits_2(tmp_path: Path, script: Path) -> None:
    """run refuses a policy with errors, printing each problem on its own line."""
    broken = policy_copy(tmp_path, "initial: greeting", "initial: nowhere")
    conversation = write_jsonl(tmp_path / "c.jsonl", ["hi"])
    result = sopagent("run", broken, "-i", conversation, "--script", script)
    assert result.returncode == 2
    line, column = position(broken, "initial:", "nowhere")
    expected = f"{broken}:{line}:{column}: SOP020 initial state 'nowhere' is not declared"
    assert result.stderr.splitlines() == [expected]
    assert result.stdout == ""


def test_schema_command_writes_committed_files(tmp_path: Path) -> None:
    """sopagent schema writes exactly the files committed under schemas/."""
    result = sopagent("schema", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    for name in ("policy.schema.json", "catalog.schema.json"):
        written = (tmp_path / "out" / name).read_text(encoding="utf-8")
        assert written == (SCHEMAS / name).read_text(encoding="utf-8"), f"regenerate {name}"


def test_committed_schemas_match_models() -> None:
    """schemas/ holds what json_schemas() generates (run `sopagent schema --out schemas`)."""
    generated = json_schemas()
    assert sorted(generated) == sorted(p.name for p in SCHEMAS.glob("*.json"))
    for name, schema in generated.items():
        assert (SCHEMAS / name).read_text(encoding="utf-8") == render(schema)
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(
    ("schema", "document"),
    [("policy.schema.json", POLICY), ("catalog.schema.json", CATALOG)],
)
def test_examples_validate_against_schemas(schema: str, document: Path) -> None:
    """The example policy and catalog, shorthands included, validate against the schemas."""
    validator = jsonschema.Draft202012Validator(json.loads((SCHEMAS / schema).read_text()))
    errors = [e.message for e in validator.iter_errors(read_yaml(document).data)]
    assert errors == []


def test_policy_schema_rejects_what_the_loader_rejects() -> None:
    """The policy schema rejects bad ids, unknown keys and a malformed route."""
    data = read_yaml(POLICY).data
    data["intents"]["Not_An_Id"] = {"description": "x"}
    data["states"]["greeting"]["on"]["request_refund"] = {"goto": "ask_order"}
    data["global"]["colour"] = "blue"
    validator = jsonschema.Draft202012Validator(json_schemas()["policy.schema.json"])
    paths = sorted("/".join(map(str, e.absolute_path)) for e in validator.iter_errors(data))
    assert paths == ["global", "intents", "states/greeting/on/request_refund"]


def test_graph_mermaid_lists_every_transition() -> None:
    """graph prints a Mermaid stateDiagram with every transition of the compiled machine."""
    result = sopagent("graph", POLICY)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "stateDiagram-v2" in lines
    assert "    [*] --> greeting" in lines
    assert "    greeting --> ask_order : request_refund" in lines
    assert "    ask_order --> lookup_order : provide_order_id, request_refund, filled" in lines
    assert "    lookup_order --> ask_order : not_found" in lines
    assert "    closed --> [*]" in lines
    config = compile_policy(load_policy(POLICY)).machine_config()
    for item in config["transitions"]:
        label = item["trigger"].partition(":")[2] or item["trigger"]
        prefix = f"    {item['source']} --> {item['dest']} : "
        [edge] = [line for line in lines if line.startswith(prefix)]
        assert label in edge.removeprefix(prefix).split(", ")


def test_graph_dot() -> None:
    """graph --format dot prints a Graphviz digraph with labelled edges."""
    result = sopagent("graph", POLICY, "--format", "dot")
    assert result.returncode == 0, result.stderr
    assert 'digraph "refund" {' in result.stdout
    assert '"greeting" -> "ask_order" [label="request_refund"];' in result.stdout
    assert '"lookup_order" [shape=diamond' in result.stdout
    assert result.stdout.rstrip().endswith("}")
