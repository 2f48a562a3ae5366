"""The rule registry: complete, consistent, documented in docs/rules.md, and tested."""

from __future__ import annotations

import re
from pathlib import Path

from sopagent._rules import CATEGORIES, RULES, rules_listing, rules_markdown

ROOT = Path(__file__).resolve().parents[2]
CODE = re.compile(r"\bSOP\d{3}\b")


def test_docs_rules_md_is_written_from_the_registry() -> None:
    """docs/rules.md is what the registry writes (sopagent check --list-rules -f markdown)."""
    assert (ROOT / "docs" / "rules.md").read_text(encoding="utf-8") == rules_markdown()


RANGES = {
    **dict.fromkeys(("graph", "data", "routing", "code", "approval"), (40, 69)),
    "properties": (70, 89),
    "game": (100, 119),
    "testing": (140, 159),
}


def test_every_code_the_package_reports_is_in_the_registry() -> None:
    """Each SOPnnn code written in the package's source has a rule."""
    written = {
        code
        for path in (ROOT / "sopagent").rglob("*.py")
        for code in CODE.findall(path.read_text(encoding="utf-8"))
    }
    # SOP000 is only the code of a PolicyError raised without problems.
    assert written - set(RULES) == {"SOP000"}


def test_rules_are_well_formed() -> None:
    """Codes are in order, names unique kebab-case, categories known, texts filled in."""
    codes = list(RULES)
    assert codes == sorted(codes)
    names = [r.name for r in RULES.values()]
    assert len(set(names)) == len(names)
    for rule in RULES.values():
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", rule.name), rule.name
        assert rule.category in CATEGORIES
        assert rule.severity in ("error", "warning")
        assert rule.title
        assert rule.description
        assert rule.hint
        # Each category outside load and reference keeps to its own range of codes.
        low, high = RANGES.get(rule.category, (1, 999))
        assert low <= int(rule.code[3:]) <= high, rule.code


def test_every_rule_has_a_test() -> None:
    """Every code of the registry is asserted somewhere in the test suite."""
    tested = {
        code
        for path in (ROOT / "tests").rglob("test_*.py")
        if path.name != Path(__file__).name
        for code in CODE.findall(path.read_text(encoding="utf-8"))
    }
    assert set(RULES) - tested == set()


def test_listing_formats() -> None:
    """--list-rules prints a table, a JSON list or the markdown page."""
    table = rules_listing("text").splitlines()
    assert len(table) == len(RULES)
    assert table[0].startswith("SOP001  error")
    assert '"code": "SOP040"' in rules_listing("json")
    assert rules_listing("markdown") == rules_markdown()
