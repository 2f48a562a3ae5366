"""Tests of the review document: what it gathers and how HTML and Markdown show it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from sopagent._compile import compile_policy
from sopagent._load import load_policy
from sopagent._review import approvals, build_review, render_html, render_markdown, state_routes
from sopagent.policy import content_hash

ROOT = Path(__file__).resolve().parents[2]
REFUND = ROOT / "policies" / "refund.yaml"


def test_the_refund_review_gathers_everything() -> None:
    """Hash, findings, verify, the tests beside the policy and their coverage."""
    compiled = compile_policy(load_policy(REFUND))
    review = build_review(compiled, REFUND, layout="builtin", examples=20)
    summary = review.summary()
    assert summary["policy_hash"] == compiled.hash
    assert summary["properties"] == 9
    assert summary["violated"] == 0
    assert summary["test_files"] == [str(ROOT / "policies" / "refund.test.yaml")]
    assert summary["conversations"] == summary["conversations_passed"] == 12
    assert summary["coverage"]["states"]["ratio"] == 1.0
    assert summary["diagram"] == "builtin"
    assert [role for role, _, _ in review.files] == ["policy", "catalog", "decisions"]
    assert all(digest.startswith("sha256:") and len(digest) == 71 for _, _, digest in review.files)


def test_html_is_self_contained_and_complete() -> None:
    """Every state, response and property is in the page; nothing is loaded from outside."""
    compiled = compile_policy(load_policy(REFUND))
    page = render_html(build_review(compiled, REFUND, layout="builtin", examples=20))
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page
    assert not re.search(r'(?:href|src)="(?!#)', page)
    assert "@import" not in page
    assert "url(" not in page.replace("url(#", "")
    for state in compiled.states:
        assert f'id="state-{state}"' in page
    for rid, template in compiled.templates.items():
        assert f"<code>{rid}</code>" in page
        assert template.hash in page
    for prop in compiled.policy.properties:
        assert f"<code>{prop}</code>" in page
    assert page.count(compiled.hash) >= 3  # head, title, sign-off
    assert "I have reviewed policy <code>refund</code>" in page
    assert "intent talk_to_human (global)" in page


def test_markdown_has_the_mermaid_diagram() -> None:
    """The Markdown version draws the diagram as a mermaid code block."""
    compiled = compile_policy(load_policy(REFUND))
    text = render_markdown(build_review(compiled, REFUND, layout="builtin", examples=20))
    block = text.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert block.startswith("stateDiagram-v2\n")
    assert "greeting --> ask_order : request_refund" in block
    assert "## Sign-off" in text
    assert f"**`{compiled.hash}`**" in text


def test_approval_statuses(write_policy) -> None:  # type: ignore[no-untyped-def]
    """Approved, changed since approval and not approved, from the catalog's hashes."""
    path = write_policy(
        catalog=lambda text: text.replace(
            "  welcome: Welcome.\n",
            f"  welcome: {{text: Welcome., approved: '{content_hash('Welcome.')}'}}\n",
        ).replace(
            "  bye: Bye.\n", f"  bye: {{text: Bye., approved: '{content_hash('Goodbye.')}'}}\n"
        )
    )
    compiled = compile_policy(load_policy(path))
    status = approvals(compiled.catalog)
    assert status["welcome"].status == "approved"
    assert status["bye"].status == "changed"
    assert status["sorry"].status == "unapproved"
    review = build_review(compiled, path, layout="builtin", examples=5)
    page = render_html(review)
    assert "changed since approval" in page
    assert "SOP032" in page  # the check's finding for the changed wording
    assert review.tests.files == ()


def test_state_routes_mark_global_ones() -> None:
    """A state's routes in turn order, inherited ones marked global."""
    compiled = compile_policy(load_policy(REFUND))
    rows = {row.when: row for row in state_routes(compiled, "ask_order")}
    assert rows["intent deny"].scope == "state"
    assert rows["intent goodbye"].scope == "global"
    assert rows["every slot collected (filled)"].to == "lookup_order"
    assert rows["anything else (fallback)"].say == ("not_understood",)


def test_graphviz_is_used_when_installed() -> None:
    """layout=auto draws with dot when it is on the PATH."""
    compiled = compile_policy(load_policy(REFUND))
    review = build_review(compiled, REFUND, examples=5)
    assert review.diagram_engine == ("graphviz" if shutil.which("dot") else "builtin")
