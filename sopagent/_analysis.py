"""Check step, whole: every rule over a set of policy files, as `sopagent check` runs it.

`check_paths` loads each policy with its catalog and decision modules and runs the reference
rules (`sopagent._check`), the decision-module rules (`sopagent._decision_code`), the graph,
data and routing rules (`sopagent._flow`, once the references are sound) and the approval
rules (`sopagent._approval`). It then applies ``--select``/``--ignore`` and the suppression
comments of each file, and returns a `CheckReport` that renders as text or as a stable JSON
document (`sopagent._sarif` renders it as SARIF).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sopagent import __version__
from sopagent._check import check_policy, resolve_decisions
from sopagent._decision_code import (
    ALLOWED_IMPORTS,
    CONSOLE_OR_FILE_CALLS,
    DYNAMIC_CALLS,
    scan_module,
    shown_path,
)
from sopagent._flow import analyze, references
from sopagent._load import collection_paused, load_catalog, load_policy
from sopagent._rules import RULES
from sopagent._yaml import read_source
from sopagent.errors import Location, PolicyLoadError, Problem
from sopagent.policy import Catalog, Policy

__all__ = [
    "CheckReport",
    "PolicyReport",
    "check_loaded",
    "check_paths",
    "codes_matching",
    "render",
    "summary_line",
]

JSON_FORMAT = 1
"""Version of the JSON document `CheckReport.to_json` writes; bumped on incompatible changes."""


@dataclass(frozen=True, slots=True)
class PolicyReport:
    """One policy file checked: its name and catalog, or why it could not be loaded."""

    file: str
    name: str | None = None
    catalog: str | None = None
    loaded: bool = False


@dataclass
class CheckReport:
    """What `sopagent check` found: the policies, the findings kept, and how many were not."""

    policies: list[PolicyReport] = field(default_factory=list)
    findings: list[Problem] = field(default_factory=list)
    suppressed: int = 0
    failed_to_load: bool = False

    @property
    def errors(self) -> int:
        """Findings of severity error."""
        return sum(1 for p in self.findings if p.severity == "error")

    @property
    def warnings(self) -> int:
        """Findings of severity warning."""
        return len(self.findings) - self.errors

    def exit_code(self, *, strict: bool = False) -> int:
        """2 when a file could not be loaded, 1 for errors (or warnings when strict), else 0."""
        if self.failed_to_load:
            return 2
        if self.errors or (strict and self.warnings):
            return 1
        return 0

    def to_json(self, *, strict: bool = False) -> dict[str, Any]:
        """The report as the stable JSON document of ``sopagent check --json``."""
        return {
            "format": JSON_FORMAT,
            "tool": {"name": "sopagent", "version": __version__},
            "policies": [
                {"file": p.file, "name": p.name, "catalog": p.catalog, "loaded": p.loaded}
                for p in self.policies
            ],
            "findings": [_finding(p) for p in self.findings],
            "summary": {
                "policies": len(self.policies),
                "errors": self.errors,
                "warnings": self.warnings,
                "suppressed": self.suppressed,
                "exit_code": self.exit_code(strict=strict),
            },
        }


def _finding(problem: Problem) -> dict[str, Any]:
    loc = problem.location
    rule = RULES.get(problem.code)
    return {
        "code": problem.code,
        "name": rule.name if rule else None,
        "severity": problem.severity,
        "message": problem.message,
        "file": loc.file,
        "line": loc.line or None,
        "column": loc.column or None,
        "hint": problem.hint or None,
    }


def codes_matching(patterns: Iterable[str]) -> set[str]:
    """The rule codes named by ``patterns``: codes, or prefixes such as ``SOP04``.

    Raises:
        ValueError: a pattern names no rule.
    """
    chosen: set[str] = set()
    for raw in patterns:
        for pattern in (p.strip().upper() for p in raw.split(",")):
            if not pattern:
                continue
            found = {code for code in RULES if code.startswith(pattern)}
            if not found:
                raise ValueError(f"{pattern!r} is not a rule code or a prefix of one")
            chosen |= found
    return chosen


# --- suppression comments ----------------------------------------------------------------

_SUPPRESS = re.compile(r"(?:^|\s)#\s*sopagent:\s*ignore(-file)?\[([A-Za-z0-9_,\s]*)\]")


@dataclass(frozen=True)
class _Suppressions:
    lines: dict[int, frozenset[str]]
    file: frozenset[str]

    def covers(self, problem: Problem) -> bool:
        return problem.code in self.file or problem.code in self.lines.get(
            problem.location.line, frozenset()
        )


def _suppressions(path: str) -> _Suppressions:
    try:
        text = read_source(path).decode("utf-8")
    except (PolicyLoadError, UnicodeDecodeError):
        return _Suppressions({}, frozenset())
    lines: dict[int, frozenset[str]] = {}
    whole: set[str] = set()
    if "sopagent:" not in text:
        return _Suppressions({}, frozenset())
    for number, line in enumerate(text.splitlines(), start=1):
        if "sopagent:" not in line:
            continue
        for match in _SUPPRESS.finditer(line):
            found = {c.strip().upper() for c in match.group(2).split(",") if c.strip()}
            if match.group(1):
                whole |= found
            else:
                lines[number] = lines.get(number, frozenset()) | frozenset(found)
    return _Suppressions(lines, frozenset(whole))


# --- running the rules -------------------------------------------------------------------


def _code_problems(policy: Policy) -> list[Problem]:
    """SOP055-SOP057: imports and calls of the declared decision modules."""
    base = policy.source.parent if policy.source else Path.cwd()
    permitted = set(ALLOWED_IMPORTS) | set(policy.allow_imports)
    files: list[tuple[Path, str | None]] = []
    for spec in policy.decisions:
        if spec.endswith(".py"):
            files.append(((base / spec).resolve(), None))
            continue
        permitted.add(spec)
        module = sys.modules.get(spec)
        origin = getattr(module, "__file__", None)
        if origin and origin.endswith(".py"):
            files.append((Path(origin), spec.rpartition(".")[0] or None))
    problems: list[Problem] = []
    for path, package in files:
        scan = scan_module(path, package)
        if scan is None:
            continue  # SOP028 says why it cannot be imported
        shown = str(path)
        for use in scan.imports:
            refused = use.refused(permitted)
            if refused is not None:
                problems.append(
                    Problem(
                        "SOP055",
                        f"decision module imports {refused!r}, which policy"
                        f" {policy.name!r} does not allow",
                        Location(shown, use.line, use.column),
                        f"add {refused.lstrip('.')!r} to allow_imports of policy"
                        f" {policy.name!r} once a reviewer agrees, or remove the import",
                        severity=RULES["SOP055"].severity,
                    )
                )
        for use in scan.calls:
            code = "SOP056" if use.name in DYNAMIC_CALLS else "SOP057"
            assert use.name in DYNAMIC_CALLS | CONSOLE_OR_FILE_CALLS
            what = "runs code by name" if code == "SOP056" else "reaches the console or files"
            problems.append(
                Problem(
                    code,
                    f"decision module calls {use.name}(), which {what}",
                    Location(shown, use.line, use.column),
                    RULES[code].fix,
                    severity=RULES[code].severity,
                )
            )
    return problems


@dataclass
class _Checked:
    """One policy's result before the findings of several policies are merged."""

    report: PolicyReport
    problems: list[Problem]
    catalog: Catalog | None = None
    used: set[str] = field(default_factory=set)


@collection_paused()
def check_loaded(policy: Policy, catalog: Catalog) -> list[Problem]:
    """Every rule but SOP045 (which looks at all policies sharing the catalog) on one policy.

    Raises:
        PolicyLoadError: the catalog's approval lock file cannot be read; it carries the
            other findings too.
    """
    functions, problems = resolve_decisions(policy)
    problems += check_policy(policy, catalog, functions)
    sound = not any(p.severity == "error" for p in problems)
    problems += _code_problems(policy)
    if sound:
        problems += analyze(policy, catalog, functions, references(policy))
    source = catalog.source
    if policy.require_approved or (source is not None and _lock_file(source).exists()):
        from sopagent._approval import approval_problems, read_lock  # noqa: PLC0415

        try:
            lock = read_lock(catalog)
        except PolicyLoadError as exc:
            raise PolicyLoadError([*problems, *exc.problems]) from exc
        problems += approval_problems(catalog, lock, required=policy.require_approved)
    return problems


def _lock_file(catalog: Path) -> Path:
    """`sopagent._approval.lock_path`, without importing the lock file's models."""
    return catalog.with_name(catalog.stem + ".approvals.json")


def _check_one(path: Path) -> _Checked:
    try:
        policy = load_policy(path)
    except PolicyLoadError as exc:
        return _Checked(PolicyReport(shown_path(path)), list(exc.problems))
    base = policy.source.parent if policy.source else Path.cwd()
    catalog_path = base / policy.catalog
    report = PolicyReport(shown_path(path), policy.name, shown_path(catalog_path))
    try:
        catalog = load_catalog(catalog_path)
        problems = check_loaded(policy, catalog)
    except PolicyLoadError as exc:
        return _Checked(report, list(exc.problems))
    return _Checked(replace(report, loaded=True), problems, catalog, references(policy))


def _unused(checked: Sequence[_Checked]) -> list[Problem]:
    """SOP045 per catalog file: responses no policy checked with it refers to."""
    users: dict[str, list[_Checked]] = {}
    for item in checked:
        if item.catalog is not None and item.catalog.source is not None:
            users.setdefault(str(item.catalog.source.resolve()), []).append(item)
    problems: list[Problem] = []
    rule = RULES["SOP045"]
    for group in users.values():
        catalog = group[0].catalog
        assert catalog is not None
        used = set().union(*(item.used for item in group))
        names = sorted({item.report.name or "?" for item in group})
        who = f"policy {names[0]!r}" if len(names) == 1 else f"policies {', '.join(names)}"
        for response in catalog.responses:
            if response not in used:
                problems.append(
                    Problem(
                        rule.code,
                        f"response {response!r} is not used by {who}",
                        catalog.locate_key("responses", response),
                        rule.fix,
                        severity=rule.severity,
                    )
                )
    return problems


def _shown(problem: Problem) -> Problem:
    loc = problem.location
    file = shown_path(loc.file) if not loc.file.startswith("<") else loc.file
    return problem if file == loc.file else replace(problem, location=replace(loc, file=file))


def check_paths(
    paths: Sequence[str | Path],
    *,
    select: Iterable[str] = (),
    ignore: Iterable[str] = (),
) -> CheckReport:
    """Run every rule on the policy files at ``paths``.

    Args:
        paths: policy YAML files, or directories: every ``*.yaml`` / ``*.yml`` file in one
            (not its subdirectories), conversation test files (``*.test.yaml``) left out.
        select: rule codes or prefixes to report (default: all).
        ignore: rule codes or prefixes not to report.

    Returns:
        The report; ``exit_code()`` is what `sopagent check` exits with.

    Raises:
        ValueError: a pattern in ``select`` or ``ignore`` names no rule.
    """
    chosen = codes_matching(select) if select else set(RULES)
    chosen -= codes_matching(ignore)
    with collection_paused():
        checked = [_check_one(path) for path in _policy_files(paths)]
        found: dict[tuple[Location, str, str], Problem] = {}
        everything = [p for item in checked for p in item.problems] + _unused(checked)
        for problem in map(_shown, everything):
            found.setdefault((problem.location, problem.code, problem.message), problem)
    report = CheckReport(policies=[item.report for item in checked])
    report.failed_to_load = any(not item.report.loaded for item in checked)
    comments: dict[str, _Suppressions] = {}
    for problem in sorted(found.values(), key=Problem.sort_key):
        # Load problems stay whatever is selected: without the file nothing else was checked.
        is_load = RULES.get(problem.code) is not None and RULES[problem.code].category == "load"
        if problem.code not in chosen and not is_load:
            continue
        file = problem.location.file
        if file not in comments:
            comments[file] = _suppressions(file)
        if not is_load and comments[file].covers(problem):
            report.suppressed += 1
            continue
        report.findings.append(problem)
    return report


def render(report: CheckReport, output_format: str, *, strict: bool = False) -> str:
    """The report as ``text`` (one finding a line), ``json`` or ``sarif``.

    Raises:
        ValueError: an unknown format.
    """
    if output_format == "text":
        return "".join(f"{problem}\n" for problem in report.findings)
    if output_format == "json":
        return json.dumps(report.to_json(strict=strict), indent=2, ensure_ascii=False) + "\n"
    if output_format == "sarif":
        from sopagent._sarif import sarif_log  # noqa: PLC0415 (only this format needs it)

        return json.dumps(sarif_log(report, strict=strict), indent=2, ensure_ascii=False) + "\n"
    raise ValueError(f"findings are written as text, json or sarif, not {output_format}")


def summary_line(report: CheckReport) -> str:
    """``N policies checked: E errors, W warnings`` (and suppressed ones, if any)."""
    count = len(report.policies)
    errors, warnings = report.errors, report.warnings
    line = (
        f"{count} polic{'ies' if count != 1 else 'y'} checked:"
        f" {errors} error{'s' if errors != 1 else ''},"
        f" {warnings} warning{'s' if warnings != 1 else ''}"
    )
    if report.suppressed:
        line += f" ({report.suppressed} suppressed)"
    return line


def _policy_files(paths: Sequence[str | Path]) -> list[Path]:
    """``paths`` with each directory replaced by the policy files in it."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            files.append(path)
            continue
        found = [
            item
            for item in sorted(path.iterdir())
            if item.suffix in {".yaml", ".yml"}
            and not item.stem.endswith(".test")
            and item.is_file()
        ]
        # A directory with no policy in it is reported as the path it is (SOP001).
        files.extend(found or [path])
    return files
