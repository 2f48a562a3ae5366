"""Approvals of catalog wording: the lock file reviewers sign, its status, and its rules.

A catalog ``catalogs/support_en.yaml`` has its approvals in ``catalogs/support_en.approvals.json``
beside it: for every approved response, the text a reviewer read, its content hash (the hash
audit events carry for each line said), who approved it and when. `sopagent approve` writes it;
`sopagent check` reports responses that are not approved or changed since (SOP060, SOP061) and
approvals of responses that are gone (SOP062); ``compile_policy(..., require_approved=True)``
and a policy's ``require_approved: true`` refuse to run a catalog that is not fully approved.

The catalog's inline ``approved: sha256:...`` key is the author's pin of approved wording and
is checked on its own (SOP032); only the lock file says who approved what.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field

from sopagent._load import load_document
from sopagent._rules import RULES
from sopagent.errors import Location, PolicyError, PolicyLoadError, Problem
from sopagent.policy import Catalog, Identifier, _Model, _Sourced

__all__ = [
    "Approval",
    "ApprovalLock",
    "EntryStatus",
    "approval_problems",
    "approve",
    "fully_approved",
    "lock_path",
    "read_lock",
    "require_approval",
    "status_document",
    "status_lines",
    "statuses",
    "unapproved",
]

LOCK_SUFFIX = ".approvals.json"

Status = Literal["approved", "unapproved", "changed", "stale"]


class Approval(_Model):
    """One reviewer's approval of one response's wording."""

    hash: str = Field(pattern=r"^sha256:[0-9a-f]{16}$", description="content_hash of text.")
    text: str = Field(description="The wording that was approved.")
    by: Annotated[str, Field(min_length=1, max_length=200)]
    at: AwareDatetime


class ApprovalLock(_Sourced):
    """The approvals of one catalog, as written beside it by `sopagent approve`."""

    sopagent: Literal[1]
    catalog: Identifier
    approvals: dict[Identifier, Approval] = Field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EntryStatus:
    """Whether one response is approved, with what the lock file records for it."""

    id: str
    status: Status
    hash: str | None = None
    text: str | None = None
    approved_hash: str | None = None
    approved_text: str | None = None
    by: str | None = None
    at: str | None = None


def lock_path(catalog: Path) -> Path:
    """The lock file of a catalog file: ``NAME.approvals.json`` beside ``NAME.yaml``."""
    return catalog.with_name(catalog.stem + LOCK_SUFFIX)


def _catalog_file(catalog: Catalog) -> Path | None:
    return catalog.source


def read_lock(catalog: Catalog) -> ApprovalLock | None:
    """Read the lock file of ``catalog``; ``None`` when there is none.

    Raises:
        PolicyLoadError: the lock file cannot be read or parsed, breaks the format, or
            belongs to another catalog.
    """
    source = _catalog_file(catalog)
    if source is None:
        return None
    path = lock_path(source)
    if not path.exists():
        return None
    lock = load_document(path, ApprovalLock, "approval lock")
    if lock.catalog != catalog.catalog:
        raise PolicyLoadError(
            [
                Problem(
                    "SOP010",
                    f"this lock file approves catalog {lock.catalog!r}, not {catalog.catalog!r}",
                    lock.locate("catalog"),
                    hint="each catalog file has its own lock file beside it",
                )
            ]
        )
    return lock


def _when(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def statuses(catalog: Catalog, lock: ApprovalLock | None) -> list[EntryStatus]:
    """The approval status of every response, in catalog order, then stale approvals."""
    approvals = lock.approvals if lock is not None else {}
    found: list[EntryStatus] = []
    for name, response in catalog.responses.items():
        record = approvals.get(name)
        if record is None:
            found.append(EntryStatus(name, "unapproved", response.hash, response.text))
            continue
        same = record.hash == response.hash and record.text == response.text
        found.append(
            EntryStatus(
                name,
                "approved" if same else "changed",
                response.hash,
                response.text,
                record.hash,
                record.text,
                record.by,
                _when(record.at),
            )
        )
    for name, record in approvals.items():
        if name not in catalog.responses:
            found.append(
                EntryStatus(
                    name,
                    "stale",
                    approved_hash=record.hash,
                    approved_text=record.text,
                    by=record.by,
                    at=_when(record.at),
                )
            )
    return found


def approval_problems(
    catalog: Catalog, lock: ApprovalLock | None, *, required: bool
) -> list[Problem]:
    """SOP060, SOP061 and SOP062 for a catalog; errors when approval is ``required``.

    Without a lock file and without ``required`` the catalog is not under approval yet and
    nothing is reported.
    """
    if lock is None and not required:
        return []
    source = _catalog_file(catalog)
    where = f" ({lock_path(source)})" if source is not None and lock is None else ""
    problems: list[Problem] = []
    for item in statuses(catalog, lock):
        if item.status == "approved":
            continue
        if item.status == "stale":
            assert lock is not None
            rule = RULES["SOP062"]
            problems.append(
                Problem(
                    rule.code,
                    f"the lock file approves response {item.id!r}, which the catalog no longer has",
                    lock.locate_key("approvals", item.id),
                    "run sopagent approve on the whole catalog to rewrite the lock file",
                    severity=rule.severity,
                )
            )
            continue
        if item.status == "unapproved":
            rule = RULES["SOP060"]
            message = f"response {item.id!r} has not been approved{where}"
        else:
            rule = RULES["SOP061"]
            message = (
                f"response {item.id!r} changed since {item.by} approved it on {item.at}"
                f" (approved {item.approved_hash}, now {item.hash})"
            )
        problems.append(
            Problem(
                rule.code,
                message,
                catalog.locate_key("responses", item.id),
                f"have it reviewed: sopagent approve CATALOG --by NAME --entry {item.id}",
                severity="error" if required else rule.severity,
            )
        )
    return problems


def unapproved(catalog: Catalog) -> list[Problem]:
    """An error for every response that is not approved, as it is now, in the lock file.

    Raises:
        PolicyLoadError: the lock file cannot be read.
    """
    if _catalog_file(catalog) is None:
        return [
            Problem(
                "SOP060",
                f"catalog {catalog.catalog!r} was not loaded from a file, so it has no lock"
                " file of approvals",
                Location("<memory>"),
                hint="load the catalog with load_catalog",
            )
        ]
    found = approval_problems(catalog, read_lock(catalog), required=True)
    return [p for p in found if p.severity == "error"]


def require_approval(catalog: Catalog) -> None:
    """Refuse a catalog with any response that is not approved in its lock file.

    Raises:
        PolicyError: some response is unapproved or changed since its approval; every one is
            listed at its place in the catalog.
        PolicyLoadError: the lock file cannot be read.
    """
    problems = unapproved(catalog)
    if problems:
        raise PolicyError(problems)


def approve(
    catalog: Catalog,
    *,
    by: str,
    entries: list[str] | None = None,
    now: dt.datetime | None = None,
) -> tuple[list[str], Path]:
    """Record ``by``'s approval of the catalog's current wording in its lock file.

    Responses already approved as they are keep their approval (who and when). Approving the
    whole catalog (no ``entries``) also drops approvals of responses that are gone.

    Args:
        catalog: a catalog loaded from a file.
        by: the reviewer's name.
        entries: the response ids to approve; by default every one not approved as it is.
        now: the time recorded; by default the current time.

    Returns:
        The ids newly approved, and the lock file's path.

    Raises:
        ValueError: ``by`` is empty or has control characters, an entry is not in the
            catalog, or the catalog was not loaded from a file.
        PolicyLoadError: the existing lock file cannot be read.
    """
    source = _catalog_file(catalog)
    if source is None:
        raise ValueError("the catalog was not loaded from a file")
    name = by.strip()
    if not name or any(ord(c) < 32 or ord(c) == 127 for c in name) or len(name) > 200:
        raise ValueError("the reviewer's name must be 1 to 200 printable characters")
    unknown = [e for e in entries or () if e not in catalog.responses]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(catalog.responses), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{unknown[0]!r} is not a response of catalog {catalog.catalog!r}{hint}")
    lock = read_lock(catalog)
    current = dict(lock.approvals) if lock is not None else {}
    when = _when(now or dt.datetime.now(dt.UTC))
    chosen = list(dict.fromkeys(entries)) if entries else list(catalog.responses)
    records: dict[str, dict[str, str]] = {
        key: {"hash": value.hash, "text": value.text, "by": value.by, "at": _when(value.at)}
        for key, value in current.items()
    }
    approved: list[str] = []
    for entry in chosen:
        response = catalog.responses[entry]
        held = current.get(entry)
        if held is not None and held.hash == response.hash and held.text == response.text:
            continue
        records[entry] = {"hash": response.hash, "text": response.text, "by": name, "at": when}
        approved.append(entry)
    if not entries:
        records = {k: v for k, v in records.items() if k in catalog.responses}
    ordered = {k: records[k] for k in catalog.responses if k in records}
    ordered.update({k: v for k, v in records.items() if k not in ordered})
    document = {"sopagent": 1, "catalog": catalog.catalog, "approvals": ordered}
    path = lock_path(source)
    _write(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return approved, path


def _write(path: Path, text: str) -> None:
    """Write a file whole or not at all: a reader never sees half a lock file."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        os.chmod(temporary, mode)
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def status_document(
    catalog: Catalog, lock: ApprovalLock | None, approved: list[str] | None = None
) -> dict[str, Any]:
    """The approval status as the JSON document of ``sopagent approve --json``."""
    from sopagent._decision_code import shown_path  # noqa: PLC0415 (display only)

    entries = statuses(catalog, lock)
    source = _catalog_file(catalog)
    counts = dict.fromkeys(("approved", "changed", "unapproved", "stale"), 0)
    for item in entries:
        counts[item.status] += 1
    document: dict[str, Any] = {
        "catalog": catalog.catalog,
        "file": shown_path(source) if source is not None else None,
        "lock": shown_path(lock_path(source)) if source is not None else None,
        "entries": [dataclasses.asdict(item) for item in entries],
        "summary": counts,
    }
    if approved is not None:
        document["approved"] = approved
    return document


def status_lines(catalog: Catalog, lock: ApprovalLock | None) -> list[str]:
    """The approval status for people: one line per response, wording for changed ones."""
    entries = statuses(catalog, lock)
    width = max((len(item.id) for item in entries), default=0)
    lines: list[str] = []
    for item in entries:
        head = f"{item.status:<10}  {item.id:<{width}}"
        if item.status == "approved":
            lines.append(f"{head}  {item.hash}  by {item.by} at {item.at}")
        elif item.status == "unapproved":
            lines.append(f"{head}  {item.hash}")
        elif item.status == "changed":
            lines.append(
                f"{head}  {item.hash}  (approved {item.approved_hash} by {item.by} at {item.at})"
            )
            lines.append(f"{'':<12}  approved: {item.approved_text!r}")
            lines.append(f"{'':<12}  now:      {item.text!r}")
        else:
            lines.append(f"{head}  {item.approved_hash}  (by {item.by}; not in the catalog)")
    return lines


def fully_approved(catalog: Catalog, lock: ApprovalLock | None) -> bool:
    """Whether every response of the catalog is approved as it is now."""
    return all(item.status in ("approved", "stale") for item in statuses(catalog, lock))
