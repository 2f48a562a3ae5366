"""Errors raised by sopagent.

Two families, one for mistakes in what an author wrote and one for faults at run time::

    SopError
    ├── PolicyError               authoring mistakes; each carries one or more Problem records
    │   └── PolicyLoadError       a policy, catalog or conversation file could not be loaded
    └── RuntimeFault              faults while a conversation runs
        ├── BackendError          the model backend failed, timed out or answered off-schema
        │   ├── BackendTimeout        a call did not finish in time
        │   ├── BackendUnavailable    connection error, HTTP 5xx or 429, or an open circuit
        │   └── BackendAnswerError    a refusal, a truncated, off-schema or invalid JSON answer
        ├── DecisionError         a decision function raised or broke its declared contract
        ├── SessionError          a session does not belong to this agent or cannot be restored
        └── StoreError            a session store cannot be reached or refused a write

Authoring errors collect every problem of a file in one pass; `PolicyError.problems` holds
them sorted by location. Each family maps to one exit code of the `sopagent` command.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BackendAnswerError",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "DecisionError",
    "Location",
    "PolicyError",
    "PolicyLoadError",
    "Problem",
    "RuntimeFault",
    "SessionError",
    "SopError",
    "StoreError",
]


@dataclass(frozen=True, order=True)
class Location:
    """A place in a source file, 1-based like editors show it."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class Problem:
    """One authoring mistake: a stable code, where it is, what is wrong and how to fix it."""

    code: str
    message: str
    location: Location
    hint: str = ""
    severity: str = "error"

    def __str__(self) -> str:
        label = self.code if self.severity == "error" else f"{self.code} [{self.severity}]"
        text = f"{self.location}: {label} {self.message}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text

    def sort_key(self) -> tuple[str, int, int, str]:
        """Order problems by file, line, column, then code."""
        loc = self.location
        return (loc.file, loc.line, loc.column, self.code)


class SopError(Exception):
    """Base class of every error sopagent raises on purpose."""

    exit_code = 1


class PolicyError(SopError):
    """A policy, catalog or decision module breaks the rules of the format.

    Attributes:
        problems: every problem found, sorted by location.
    """

    exit_code = 2

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems: tuple[Problem, ...] = tuple(sorted(problems, key=Problem.sort_key))
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid policy")

    @property
    def code(self) -> str:
        """The code of the first problem."""
        return self.problems[0].code if self.problems else "SOP000"


class PolicyLoadError(PolicyError):
    """A file could not be read or parsed at all."""


class RuntimeFault(SopError):  # noqa: N818 (a family name, like PolicyError's)
    """Something failed while a conversation was running."""

    exit_code = 3


class BackendError(RuntimeFault):
    """The model backend failed: timeout, transport error, refusal or an off-schema answer.

    Attributes:
        provider: the backend's name, e.g. ``"llamacpp"`` or ``"scripted"``.
        retryable: whether trying again may help.
    """

    def __init__(self, message: str, *, provider: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.provider = provider
        self.retryable = retryable


class BackendTimeout(BackendError):  # noqa: N818 (named by what happened)
    """A backend call did not finish in time; usually ``retryable``."""


class BackendUnavailable(BackendError):  # noqa: N818 (named by what happened)
    """The backend cannot be reached: connection error, HTTP 5xx or 429, or an open circuit.

    ``retry_after`` is how many seconds the provider asked callers to wait (its
    ``Retry-After`` header), when it said.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, retryable=retryable)
        self.retry_after = retry_after


class BackendAnswerError(BackendError):
    """The backend answered unusably: a refusal, or a truncated, off-schema or bad JSON answer."""


class DecisionError(RuntimeFault):
    """A decision function raised, or returned an outcome or update it did not declare."""

    def __init__(self, message: str, *, function: str) -> None:
        super().__init__(message)
        self.function = function


class SessionError(RuntimeFault):
    """A session cannot be used with this agent (other policy, unknown state, bad JSON)."""


class StoreError(RuntimeFault):
    """A session store cannot be opened or reached, or refused a write."""
