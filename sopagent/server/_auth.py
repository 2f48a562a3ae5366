"""API keys: hashed at rest, each owned by one tenant and scoped to named policies.

A keys file (YAML or JSON) lists the keys a service accepts::

    keys:
      - id: acme-web            # shown in audit events, never secret
        tenant: acme            # sessions created with this key belong to acme
        policies: [retail]      # policy names it may use; ["*"] for every served policy
        hash: sha256:9f86d0...  # sha256 of the key; the key itself is never stored

`sopagent new-key` makes a key, prints it once and appends its entry to the file.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sopagent.errors import Location, PolicyLoadError, Problem

__all__ = ["ApiKey", "KeyRing", "hash_key", "new_key"]

_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def new_key() -> str:
    """Return a new random API key (256 bits)."""
    return "sk_" + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """Return the hash a keys file stores for ``key``.

    Keys are random 256-bit strings, so one round of SHA-256 cannot be reversed; a slow
    password hash would only add latency to every request.
    """
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One accepted key: its public id, its tenant, the policies it may use, its hash."""

    id: str
    tenant: str
    policies: frozenset[str]
    hash: str

    def allows(self, policy: str) -> bool:
        """Whether the key may use policy ``policy``."""
        return "*" in self.policies or policy in self.policies


class KeyRing:
    """The keys a service accepts, found by the hash of what a client presents."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._by_hash = {key.hash: key for key in keys}

    def __len__(self) -> int:
        return len(self._by_hash)

    def find(self, presented: str) -> ApiKey | None:
        """Return the key whose hash matches ``presented``, or ``None``."""
        return self._by_hash.get(hash_key(presented))

    @classmethod
    def from_file(cls, path: str | Path) -> KeyRing:
        """Read a keys file.

        Raises:
            PolicyLoadError: the file cannot be read or an entry is malformed; every problem
                is reported at ``file:line:col``.
        """
        from sopagent._yaml import read_yaml  # noqa: PLC0415 (PyYAML, only when serving)

        document = read_yaml(path)
        data = document.data
        problems: list[Problem] = []
        entries: Any = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            problem = Problem(
                "SOP012", "a keys file is a mapping with a 'keys' list", document.locate(())
            )
            raise PolicyLoadError([problem])
        keys: list[ApiKey] = []
        seen_ids: set[str] = set()
        seen_hashes: set[str] = set()
        for index, entry in enumerate(entries):
            at = ("keys", index)
            found = _entry(entry, document.locate(at), lambda *p, at=at: document.locate((*at, *p)))
            if isinstance(found, list):
                problems += found
                continue
            if found.id in seen_ids or found.hash in seen_hashes:
                problems.append(
                    Problem("SOP003", f"key {found.id!r} is listed twice", document.locate(at))
                )
                continue
            seen_ids.add(found.id)
            seen_hashes.add(found.hash)
            keys.append(found)
        if problems:
            raise PolicyLoadError(problems)
        return cls(keys)


def _entry(entry: Any, where: Location, locate: Any) -> ApiKey | list[Problem]:
    if not isinstance(entry, dict):
        return [Problem("SOP010", "a key entry is a mapping: id, tenant, policies, hash", where)]
    problems: list[Problem] = []
    for name in ("id", "tenant", "policies", "hash"):
        if name not in entry:
            problems.append(Problem("SOP012", f"missing required key {name!r}", where))
    for name in sorted(set(entry) - {"id", "tenant", "policies", "hash"}):
        problems.append(Problem("SOP011", f"unknown key {name!r}", locate(name)))
    if problems:
        return problems
    for name in ("id", "tenant"):
        value = entry[name]
        if not isinstance(value, str) or not _NAME.match(value):
            message = f"{name} must be a short name (letters, digits, _ . -)"
            problems.append(Problem("SOP010", message, locate(name)))
    policies = entry["policies"]
    if (
        not isinstance(policies, list)
        or not policies
        or not all(isinstance(p, str) and p for p in policies)
    ):
        message = 'policies is a non-empty list of policy names, or ["*"]'
        problems.append(Problem("SOP010", message, locate("policies")))
    digest = entry["hash"]
    if not isinstance(digest, str) or not _HASH.match(digest):
        problems.append(
            Problem(
                "SOP010",
                "hash must be sha256: and 64 hex digits",
                locate("hash"),
                hint="never put the key itself in the file; sopagent new-key writes the hash",
            )
        )
    if problems:
        return problems
    return ApiKey(entry["id"], entry["tenant"], frozenset(policies), digest)
