"""Approvals: the lock file beside a catalog, its status, its rules and the run-time refusal."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from sopagent import (
    MemorySink,
    PolicyError,
    PolicyLoadError,
    ScriptedBackend,
    compile_policy,
    load_agent,
    load_catalog,
    load_policy,
)
from sopagent._analysis import check_paths
from sopagent._approval import approve, lock_path, read_lock, statuses
from sopagent.policy import content_hash

Writer = Callable[..., Path]

WHEN = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC)


def catalog_of(policy: Path) -> Path:
    """The catalog file beside a policy written by ``write_policy``."""
    return policy.with_name("catalog.yaml")


def approval_findings(policy: Path) -> list[tuple[str, str]]:
    """(code, severity) of the approval findings of `sopagent check`."""
    report = check_paths([policy])
    return [(p.code, p.severity) for p in report.findings if p.code.startswith("SOP06")]


def test_approve_writes_the_lock_file_beside_the_catalog(write_policy: Writer) -> None:
    """Every response is recorded with its text, content hash, reviewer and time."""
    policy = write_policy()
    catalog = load_catalog(catalog_of(policy))
    approved, path = approve(catalog, by="Dana Reviewer", now=WHEN)
    assert path == policy.with_name("catalog.approvals.json")
    assert approved == list(catalog.responses)
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["sopagent"] == 1
    assert document["catalog"] == "mini"
    assert list(document["approvals"]) == list(catalog.responses)
    assert document["approvals"]["welcome"] == {
        "hash": content_hash("Welcome."),
        "text": "Welcome.",
        "by": "Dana Reviewer",
        "at": "2024-05-01T12:30:00Z",
    }
    assert {s.status for s in statuses(catalog, read_lock(catalog))} == {"approved"}


def test_approving_again_keeps_the_first_approval(write_policy: Writer) -> None:
    """Approving unchanged wording again records nothing new: who and when stay."""
    catalog = load_catalog(catalog_of(write_policy()))
    approve(catalog, by="Dana", now=WHEN)
    approved, path = approve(catalog, by="Sam", now=WHEN + dt.timedelta(days=1))
    assert approved == []
    assert {a["by"] for a in json.loads(path.read_text())["approvals"].values()} == {"Dana"}


def test_changed_and_new_entries(write_policy: Writer) -> None:
    """After an edit the entry is 'changed', a new one 'unapproved', a removed one 'stale'."""
    policy = write_policy()
    approve(load_catalog(catalog_of(policy)), by="Dana", now=WHEN)
    path = catalog_of(policy)
    text = (
        path.read_text()
        .replace("  bye: Bye.", "  bye: Goodbye!")
        .replace("  oops: Something broke.\n", "")
    )
    path.write_text(text.replace("error: {say: oops}", "") + "  extra: New line.\n")
    catalog = load_catalog(path)
    found = {s.id: s for s in statuses(catalog, read_lock(catalog))}
    assert found["bye"].status == "changed"
    assert (found["bye"].approved_text, found["bye"].text) == ("Bye.", "Goodbye!")
    assert found["extra"].status == "unapproved"
    assert found["oops"].status == "stale"
    assert found["welcome"].status == "approved"


def test_check_reports_approval_problems_once_a_lock_file_exists(write_policy: Writer) -> None:
    """No lock file: nothing. With one: SOP060 new, SOP061 changed, SOP062 stale (warnings)."""
    policy = write_policy(catalog=lambda t: t + "  extra: Spare line.\n")
    assert approval_findings(policy) == []
    approve(load_catalog(catalog_of(policy)), by="Dana", now=WHEN)
    assert approval_findings(policy) == []
    path = catalog_of(policy)
    path.write_text(
        path.read_text()
        .replace("  bye: Bye.", "  bye: Goodbye!")
        .replace("  extra: Spare line.\n", "")
        + "  added: Another line.\n"
    )
    # Sorted by file: the lock file's stale record comes before the catalog's entries.
    assert approval_findings(policy) == [
        ("SOP062", "warning"),
        ("SOP061", "warning"),
        ("SOP060", "warning"),
    ]
    report = check_paths([policy])
    changed = next(p for p in report.findings if p.code == "SOP061")
    assert "Dana approved it on 2024-05-01T12:30:00Z" in changed.message
    assert changed.location.file.endswith("catalog.yaml")
    stale = next(p for p in report.findings if p.code == "SOP062")
    assert stale.location.file.endswith("catalog.approvals.json")


def test_only_named_entries_are_approved(write_policy: Writer) -> None:
    """--entry approves only those responses; stale records stay until a full approval."""
    policy = write_policy()
    catalog = load_catalog(catalog_of(policy))
    approved, path = approve(catalog, by="Dana", entries=["welcome", "bye"], now=WHEN)
    assert approved == ["welcome", "bye"]
    assert list(json.loads(path.read_text())["approvals"]) == ["welcome", "bye"]
    with pytest.raises(ValueError, match="nope"):
        approve(catalog, by="Dana", entries=["nope"])
    with pytest.raises(ValueError, match="printable"):
        approve(catalog, by=" \n ")


def test_policy_requiring_approval_is_refused_until_approved(write_policy: Writer) -> None:
    """require_approved: true makes the findings errors and compile_policy refuses the catalog."""
    policy = write_policy(
        policy=lambda t: t.replace("initial: start", "require_approved: true\ninitial: start")
    )
    assert set(approval_findings(policy)) == {("SOP060", "error")}
    with pytest.raises(PolicyError) as info:
        compile_policy(load_policy(policy))
    assert {p.code for p in info.value.problems} == {"SOP060"}
    assert len(info.value.problems) == 8  # every response of the mini catalog
    assert "catalog.approvals.json" in info.value.problems[0].message
    approve(load_catalog(catalog_of(policy)), by="Dana", now=WHEN)
    assert compile_policy(load_policy(policy)).name == "mini"
    assert check_paths([policy]).findings == []


def test_require_approved_argument_and_changed_wording(write_policy: Writer) -> None:
    """compile_policy and load_agent refuse changed wording when asked to, listing each entry."""
    policy = write_policy()
    approve(load_catalog(catalog_of(policy)), by="Dana", now=WHEN)
    path = catalog_of(policy)
    path.write_text(path.read_text().replace("  bye: Bye.", "  bye: Goodbye!"))
    assert compile_policy(load_policy(policy)).name == "mini"
    with pytest.raises(PolicyError) as info:
        compile_policy(load_policy(policy), require_approved=True)
    (problem,) = info.value.problems
    assert problem.code == "SOP061"
    assert "'bye' changed since Dana approved it" in problem.message
    with pytest.raises(PolicyError):
        load_agent(policy, backend=ScriptedBackend(), audit=MemorySink(), require_approved=True)


def test_in_memory_catalog_cannot_be_approved(write_policy: Writer) -> None:
    """A catalog built in memory has no lock file, so requiring approval refuses it."""
    policy = load_policy(write_policy())
    on_disk = load_catalog(catalog_of(Path(str(policy.source))))
    in_memory = type(on_disk).model_validate(on_disk.model_dump())
    with pytest.raises(PolicyError) as info:
        compile_policy(policy, in_memory, require_approved=True)
    assert "not loaded from a file" in str(info.value)


def test_broken_lock_file_is_a_load_error(write_policy: Writer) -> None:
    """A lock file that is not valid JSON is reported at file:line:col and check exits 2."""
    policy = write_policy()
    lock = lock_path(catalog_of(policy))
    lock.write_text('{"sopagent": 1, "catalog": "mini",\n  "approvals": {\n', encoding="utf-8")
    with pytest.raises(PolicyLoadError) as info:
        read_lock(load_catalog(catalog_of(policy)))
    assert info.value.code == "SOP001"
    assert info.value.problems[0].location.file == str(lock)
    assert check_paths([policy]).exit_code() == 2


def test_lock_file_of_another_catalog_is_refused(write_policy: Writer) -> None:
    """A lock file naming another catalog is refused instead of approving the wrong lines."""
    policy = write_policy()
    lock_path(catalog_of(policy)).write_text(
        '{"sopagent": 1, "catalog": "other", "approvals": {}}\n', encoding="utf-8"
    )
    with pytest.raises(PolicyLoadError) as info:
        read_lock(load_catalog(catalog_of(policy)))
    assert "'other'" in str(info.value)


def test_inline_approved_key_is_checked_on_its_own(write_policy: Writer) -> None:
    """SOP032 (inline pin) and the lock file are independent: each reports its own change."""
    stale = content_hash("Bye!")
    policy = write_policy(
        catalog=lambda t: t.replace("  bye: Bye.", f"  bye: {{text: Bye., approved: '{stale}'}}")
    )
    approve(load_catalog(catalog_of(policy)), by="Dana", now=WHEN)
    codes = [p.code for p in check_paths([policy]).findings]
    assert codes == ["SOP032"]


def test_check_finds_the_lock_file_where_approve_writes_it(tmp_path: Path) -> None:
    """check looks for the lock file without importing the approval models, at the same path."""
    from sopagent._analysis import _lock_file  # noqa: PLC0415 (a private helper under test)

    catalog = tmp_path / "catalogs" / "support_en.yaml"
    assert (
        _lock_file(catalog) == lock_path(catalog) == catalog.with_name("support_en.approvals.json")
    )
