"""SARIF 2.1.0 output of `sopagent check`, the format code-scanning tools read.

The log has one run whose tool driver carries every rule of the catalogue (id, name, short and
full description, help, default level) and one result per finding, located by a URI relative to
the working directory (``%SRCROOT%``) and a region with a start line and column, as GitHub code
scanning expects. Fingerprints hash the code, file and message, so that a finding keeps its
identity when lines above it move.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sopagent import __version__
from sopagent._analysis import CheckReport
from sopagent._rules import RULES, Rule

__all__ = ["SARIF_SCHEMA", "sarif_log"]

SARIF_SCHEMA = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
SARIF_VERSION = "2.1.0"
_ROOT = "%SRCROOT%"


def _level(severity: str) -> str:
    return "error" if severity == "error" else "warning"


def _rule(item: Rule) -> dict[str, Any]:
    return {
        "id": item.code,
        "name": item.name,
        "shortDescription": {"text": item.title},
        "fullDescription": {"text": item.description},
        "help": {
            "text": f"{item.description}\n\nFix: {item.hint}",
            "markdown": f"**{item.title}**\n\n{item.description}\n\n**Fix:** {item.hint}",
        },
        "defaultConfiguration": {"level": _level(item.severity)},
        "properties": {
            "tags": ["sopagent", item.category],
            "problem.severity": item.severity,
        },
    }


def _artifact(file: str) -> dict[str, str]:
    path = Path(file)
    if path.is_absolute():
        return {"uri": path.as_uri()}
    return {"uri": quote(path.as_posix()), "uriBaseId": _ROOT}


def sarif_log(report: CheckReport, *, strict: bool = False) -> dict[str, Any]:
    """The report as a SARIF 2.1.0 log (a JSON-ready dictionary)."""
    rules = list(RULES.values())
    index = {item.code: position for position, item in enumerate(rules)}
    results: list[dict[str, Any]] = []
    for problem in report.findings:
        loc = problem.location
        region: dict[str, int] = {"startLine": max(loc.line, 1)}
        if loc.column > 0:
            region["startColumn"] = loc.column
        message = problem.message + (f" (hint: {problem.hint})" if problem.hint else "")
        digest = hashlib.sha256(f"{problem.code}\0{loc.file}\0{problem.message}".encode())
        result: dict[str, Any] = {
            "ruleId": problem.code,
            "level": _level(problem.severity),
            "message": {"text": message},
            "locations": [
                {"physicalLocation": {"artifactLocation": _artifact(loc.file), "region": region}}
            ],
            "partialFingerprints": {"sopagentFinding/v1": digest.hexdigest()[:32]},
        }
        if problem.code in index:
            result["ruleIndex"] = index[problem.code]
        results.append(result)
    root = Path.cwd().as_uri().rstrip("/") + "/"
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "sopagent",
                        "version": __version__,
                        "semanticVersion": __version__,
                        "rules": [_rule(item) for item in rules],
                    }
                },
                "originalUriBaseIds": {_ROOT: {"uri": root}},
                "invocations": [
                    {
                        "executionSuccessful": not report.failed_to_load,
                        "exitCode": report.exit_code(strict=strict),
                    }
                ],
                "columnKind": "unicodeCodePoints",
                "results": results,
            }
        ],
    }
