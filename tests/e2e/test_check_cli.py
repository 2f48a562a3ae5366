"""End-to-end tests of ``sopagent check`` and ``sopagent approve`` run as real processes.

The SARIF output is validated against the official SARIF 2.1.0 JSON Schema (tests/data).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import MINI_CATALOG, MINI_DECISIONS, MINI_POLICY

from sopagent._rules import RULES, rules_markdown

ROOT = Path(__file__).resolve().parents[2]
SARIF_SCHEMA = Path(__file__).resolve().parents[1] / "data" / "sarif-schema-2.1.0.json"

_ENV = {
    key: value
    for key, value in os.environ.items()
    if key not in {"FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "PYTHONWARNINGS"}
}
_ENV.update({"NO_COLOR": "1", "COLUMNS": "200", "PYTHONIOENCODING": "utf-8"})


def sopagent(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``python -m sopagent ARGS`` in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "sopagent", *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=cwd,
        env=_ENV,
        timeout=120,
        check=False,
    )


def policy_set(
    directory: Path, policy: str = MINI_POLICY, catalog: str = MINI_CATALOG, decisions: str = ""
) -> Path:
    """Write a policy, its catalog and decision module into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "policy.yaml").write_text(policy, encoding="utf-8")
    (directory / "catalog.yaml").write_text(catalog, encoding="utf-8")
    (directory / "decisions.py").write_text(decisions or MINI_DECISIONS, encoding="utf-8")
    return directory / "policy.yaml"


# A policy with an error (SOP047), a warning (SOP045) and a decision-module error (SOP055).
FLAWED_POLICY = MINI_POLICY.replace("greet: {say: welcome}", "greet: {say: small}")
FLAWED_CATALOG = MINI_CATALOG + "  extra: Never said.\n"
FLAWED_DECISIONS = "import socket\n" + MINI_DECISIONS


def flawed(tmp_path: Path) -> Path:
    """A policy set with findings in all three of its files."""
    return policy_set(tmp_path / "flawed", FLAWED_POLICY, FLAWED_CATALOG, FLAWED_DECISIONS)


def test_text_output_and_exit_code_1(tmp_path: Path) -> None:
    """Findings print as file:line:col lines, sorted; errors exit 1; the summary goes to stderr."""
    flawed(tmp_path)
    result = sopagent("check", "flawed/policy.yaml", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(": ")[1].split()[0] for line in lines] == ["SOP045", "SOP055", "SOP047"]
    assert lines[0] == (
        "flawed/catalog.yaml:12:3: SOP045 [warning] response 'extra' is not used by policy"
        " 'mini' (hint: remove the response from the catalog, or say it somewhere)"
    )
    assert lines[1].startswith("flawed/decisions.py:1:1: SOP055 decision module imports 'socket'")
    assert result.stderr == "1 policy checked: 2 errors, 1 warning\n"


def test_sarif_output_validates_against_the_sarif_schema(tmp_path: Path) -> None:
    """--format sarif is SARIF 2.1.0 with what GitHub code scanning reads, relative URIs."""
    flawed(tmp_path)
    result = sopagent("check", "flawed/policy.yaml", "--format", "sarif", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    log = json.loads(result.stdout)
    schema = json.loads(SARIF_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft4Validator.check_schema(schema)
    errors = [e.message for e in jsonschema.Draft4Validator(schema).iter_errors(log)]
    assert errors == []
    assert log["version"] == "2.1.0"
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "sopagent"
    rules: list[dict[str, Any]] = driver["rules"]
    assert [r["id"] for r in rules] == list(RULES)
    for rule in rules:
        assert set(rule) >= {
            "id",
            "name",
            "shortDescription",
            "fullDescription",
            "help",
            "defaultConfiguration",
        }
        assert rule["defaultConfiguration"]["level"] == RULES[rule["id"]].severity
    by_rule = {r["ruleId"]: r for r in run["results"]}
    assert set(by_rule) == {"SOP045", "SOP047", "SOP055"}
    for result_item in run["results"]:
        assert rules[result_item["ruleIndex"]]["id"] == result_item["ruleId"]
        (location,) = result_item["locations"]
        physical = location["physicalLocation"]
        assert physical["artifactLocation"]["uriBaseId"] == "%SRCROOT%"
        assert physical["region"]["startLine"] >= 1
        assert physical["region"]["startColumn"] >= 1
    placeholder = by_rule["SOP047"]
    assert placeholder["level"] == "error"
    assert placeholder["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == (
        "flawed/policy.yaml"
    )
    assert by_rule["SOP045"]["level"] == "warning"
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == tmp_path.resolve().as_uri() + "/"
    assert run["invocations"] == [{"executionSuccessful": True, "exitCode": 1}]


def test_sarif_to_a_file_of_a_clean_policy(tmp_path: Path) -> None:
    """-o writes the report to a file; a clean policy has no results and exits 0."""
    policy_set(tmp_path / "clean")
    out = tmp_path / "reports" / "check.sarif"
    result = sopagent("check", "clean/policy.yaml", "-f", "sarif", "-o", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    log = json.loads(out.read_text(encoding="utf-8"))
    assert log["runs"][0]["results"] == []
    schema = json.loads(SARIF_SCHEMA.read_text(encoding="utf-8"))
    assert list(jsonschema.Draft4Validator(schema).iter_errors(log)) == []


def test_a_directory_checks_the_policies_in_it() -> None:
    """A directory stands for its policy files; conversation tests beside them are left out."""
    result = sopagent("check", "policies", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    checked = sorted(Path(p["file"]).name for p in report["policies"])
    assert checked == ["merchant_npc.yaml", "refund.yaml", "retail.yaml", "warden_npc.yaml"]


def test_load_failure_exits_2_and_still_reports_the_other_policies(tmp_path: Path) -> None:
    """A file that cannot be parsed exits 2; the findings of the other policies still print."""
    flawed(tmp_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text("sopagent: 1\nname: [unclosed\n", encoding="utf-8")
    result = sopagent("check", "broken.yaml", "flawed/policy.yaml", "--json", cwd=tmp_path)
    assert result.returncode == 2
    document = json.loads(result.stdout)
    assert [p["loaded"] for p in document["policies"]] == [False, True]
    codes = [f["code"] for f in document["findings"]]
    assert codes[0] == "SOP001"
    assert {"SOP045", "SOP047", "SOP055"} <= set(codes)
    assert document["summary"]["exit_code"] == 2


def test_sarif_of_a_file_that_cannot_be_parsed(tmp_path: Path) -> None:
    """A load error is a SARIF result too, and the invocation is marked unsuccessful."""
    (tmp_path / "broken.yaml").write_text("sopagent: 1\nname: [unclosed\n", encoding="utf-8")
    result = sopagent("check", "broken.yaml", "--format", "sarif", cwd=tmp_path)
    assert result.returncode == 2
    log = json.loads(result.stdout)
    schema = json.loads(SARIF_SCHEMA.read_text(encoding="utf-8"))
    assert list(jsonschema.Draft4Validator(schema).iter_errors(log)) == []
    (run,) = log["runs"]
    assert run["invocations"] == [{"executionSuccessful": False, "exitCode": 2}]
    (item,) = run["results"]
    assert item["ruleId"] == "SOP001"
    location = item["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"] == "broken.yaml"
    assert location["region"]["startLine"] == 3


def test_select_and_ignore(tmp_path: Path) -> None:
    """--select keeps only the named codes or prefixes, --ignore drops them."""
    flawed(tmp_path)

    def codes(*options: str) -> list[str]:
        result = sopagent("check", "flawed/policy.yaml", "--json", *options, cwd=tmp_path)
        return [f["code"] for f in json.loads(result.stdout)["findings"]]

    assert codes("--select", "SOP04") == ["SOP045", "SOP047"]
    assert codes("--select", "SOP045,SOP055") == ["SOP045", "SOP055"]
    assert codes("--ignore", "SOP047", "--ignore", "SOP055") == ["SOP045"]
    only_warning = sopagent("check", "flawed/policy.yaml", "--select", "SOP045", cwd=tmp_path)
    assert only_warning.returncode == 0
    strict = sopagent("check", "flawed/policy.yaml", "--select", "SOP045", "--strict", cwd=tmp_path)
    assert strict.returncode == 1


@pytest.mark.parametrize(
    "args",
    [
        ("check",),
        ("check", "policy.yaml", "--select", "SOP999"),
        ("check", "policy.yaml", "--format", "markdown"),
        ("check", "--list-rules", "--format", "sarif"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    """No policy, an unknown code and a format that does not fit are usage errors."""
    policy_set(tmp_path)
    result = sopagent(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_suppression_comments(tmp_path: Path) -> None:
    """`# sopagent: ignore[CODE]` silences its line, `ignore-file[CODE]` its whole file."""
    catalog = FLAWED_CATALOG.replace(
        "  extra: Never said.", "  extra: Never said.  # sopagent: ignore[SOP045]"
    )
    decisions = "# sopagent: ignore-file[SOP055]\n" + FLAWED_DECISIONS
    policy_set(tmp_path / "flawed", FLAWED_POLICY, catalog, decisions)
    result = sopagent("check", "flawed/policy.yaml", "--json", cwd=tmp_path)
    document = json.loads(result.stdout)
    assert [f["code"] for f in document["findings"]] == ["SOP047"]
    assert document["summary"]["suppressed"] == 2
    text = sopagent("check", "flawed/policy.yaml", cwd=tmp_path)
    assert text.stderr == "1 policy checked: 1 error, 0 warnings (2 suppressed)\n"


def test_a_comment_for_another_code_suppresses_nothing(tmp_path: Path) -> None:
    """A suppression names codes: one for another code leaves the finding."""
    catalog = FLAWED_CATALOG.replace(
        "  extra: Never said.", "  extra: Never said.  # sopagent: ignore[SOP046]"
    )
    policy_set(tmp_path / "flawed", FLAWED_POLICY, catalog, FLAWED_DECISIONS)
    result = sopagent("check", "flawed/policy.yaml", "--json", cwd=tmp_path)
    assert "SOP045" in [f["code"] for f in json.loads(result.stdout)["findings"]]


def test_list_rules() -> None:
    """--list-rules prints every rule; as markdown it is docs/rules.md."""
    table = sopagent("check", "--list-rules")
    assert table.returncode == 0
    assert [line.split()[0] for line in table.stdout.splitlines()] == list(RULES)
    listed = json.loads(sopagent("check", "--list-rules", "--json").stdout)
    assert [r["code"] for r in listed] == list(RULES)
    markdown = sopagent("check", "--list-rules", "--format", "markdown")
    assert markdown.stdout == rules_markdown()


# --- approve -------------------------------------------------------------------------------------


def test_approve_status_and_changes(tmp_path: Path) -> None:
    """approve records approvals; --status exits 0 when all is approved, 1 after an edit."""
    policy_set(tmp_path)
    before = sopagent("approve", "--status", "catalog.yaml", cwd=tmp_path)
    assert before.returncode == 1
    assert before.stdout.splitlines()[0].startswith("unapproved  welcome")
    done = sopagent("approve", "catalog.yaml", "--by", "Dana Reviewer", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    responses = ["welcome", "ask_number", "bad_number", "small", "big", "sorry", "oops", "bye"]
    assert done.stdout.split() == responses
    assert done.stderr.startswith("8 responses approved by Dana Reviewer in ")
    lock = json.loads((tmp_path / "catalog.approvals.json").read_text(encoding="utf-8"))
    assert lock["approvals"]["bye"]["by"] == "Dana Reviewer"
    assert sopagent("approve", "--status", "catalog.yaml", cwd=tmp_path).returncode == 0
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(catalog.read_text().replace("  bye: Bye.", "  bye: Farewell."))
    after = sopagent("approve", "--status", "catalog.yaml", cwd=tmp_path)
    assert after.returncode == 1
    changed = [line for line in after.stdout.splitlines() if "bye" in line or "'" in line]
    assert changed[0].startswith("changed     bye")
    assert "approved: 'Bye.'" in after.stdout
    assert "now:      'Farewell.'" in after.stdout
    status = json.loads(
        sopagent("approve", "--status", "catalog.yaml", "--json", cwd=tmp_path).stdout
    )
    assert status["summary"] == {"approved": 7, "changed": 1, "unapproved": 0, "stale": 0}
    assert status["lock"] == "catalog.approvals.json"
    check = sopagent("check", "policy.yaml", cwd=tmp_path)
    assert check.returncode == 0
    assert "SOP061 [warning] response 'bye' changed since Dana Reviewer approved it" in check.stdout
    again = sopagent(
        "approve", "catalog.yaml", "--by", "Sam", "--entry", "bye", "--json", cwd=tmp_path
    )
    assert json.loads(again.stdout)["approved"] == ["bye"]
    assert sopagent("approve", "--status", "catalog.yaml", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("approve", "catalog.yaml"), "--by"),
        (("approve", "catalog.yaml", "--by", "Dana", "--entry", "wellcome"), "'welcome'"),
        (("approve", "missing.yaml", "--by", "Dana"), "SOP001"),
        (("approve", "--status", "catalog.yaml", "--by", "Dana"), "--status only shows"),
    ],
)
def test_approve_usage_errors_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    """Missing --by, an unknown entry, an unreadable catalog: exit 2, nothing written."""
    policy_set(tmp_path)
    result = sopagent(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "catalog.approvals.json").exists()


def test_run_require_approved_refuses_unapproved_wording(tmp_path: Path) -> None:
    """run --require-approved lists every unapproved response and exits 2 before any turn."""
    policy_set(tmp_path)
    (tmp_path / "script.yaml").write_text("- greet\n", encoding="utf-8")
    (tmp_path / "talk.jsonl").write_text('"hello"\n', encoding="utf-8")
    args = ("run", "policy.yaml", "-i", "talk.jsonl", "--script", "script.yaml")
    refused = sopagent(*args, "--require-approved", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stdout == ""
    lines = refused.stderr.splitlines()
    assert len(lines) == 8
    assert all(": SOP060 response " in line for line in lines)
    assert sopagent("approve", "catalog.yaml", "--by", "Dana", cwd=tmp_path).returncode == 0
    allowed = sopagent(*args, "--require-approved", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    assert "bot> Welcome." in allowed.stdout
