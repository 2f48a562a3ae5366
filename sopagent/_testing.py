"""Conversation tests: ``*.test.yaml`` files of conversations and what each turn must do.

load (YAML -> `ConversationFile`, every problem at ``file:line:col``) -> check (names against
the compiled policy) -> run (each conversation on a fresh session, with recorded labels or a
real backend) -> results (an expected/actual diff per failing step, coverage, and how well the
backend classified the messages it was asked about).

The format (``sopagent_test: 1``) is described in ``docs/testing.md``. A step's ``expect`` keys
are the rows of `EXPECTATIONS`: each says how the written value is read and checked against
the policy, and what of the turn it is compared with.

With recorded labels (no backend given) no model is called: a step's ``intent`` forces the
label, and for a message the agent would send to the model, the step's expected intent stands
in for the model's answer. With a backend, messages without a forced label are classified by
it, and each step with an expected intent measures it.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from sopagent._agent import Agent
from sopagent._yaml import Document, read_yaml
from sopagent.audit import NullSink
from sopagent.backends import (
    Backend,
    Choice,
    ChooseRequest,
    Classification,
    ClassifyRequest,
    Usage,
)
from sopagent.errors import BackendError, Location, PolicyError, PolicyLoadError, Problem
from sopagent.policy import OUT_OF_SCOPE

if TYPE_CHECKING:
    from sopagent._compile import CompiledPolicy
    from sopagent.session import Session, Turn

__all__ = [
    "EXPECTATIONS",
    "Conversation",
    "ConversationFile",
    "ConversationResult",
    "ConversationStep",
    "Expectation",
    "Mismatch",
    "Observed",
    "StepResult",
    "Suite",
    "SuiteResult",
    "find_test_files",
    "load_test_file",
    "render_failure",
    "render_summary",
]

SUFFIX = ".test.yaml"
FORMAT_VERSION = 1

# Problem codes of conversation test files (SOP140-SOP149).
MALFORMED = "SOP140"
UNKNOWN_KEY = "SOP141"
POLICY_MISSING = "SOP142"
UNKNOWN_INTENT = "SOP143"
UNKNOWN_NAME = "SOP144"
BAD_DECISION = "SOP145"
MISPLACED_OPENING = "SOP146"
BAD_FACT = "SOP147"
DUPLICATE_NAME = "SOP148"
NO_TESTS = "SOP149"


# --- the format ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConversationStep:
    """One step of a conversation: what the user says and what the turn must do.

    Attributes:
        index: position among the conversation's steps, from 0.
        location: where the step is written.
        user: what the user says; ``None`` for the opening turn.
        intent: a forced label (no model call), if given.
        decisions: decision outcomes forced during the step, by function.
        expect: the expected values, by key of `EXPECTATIONS`, as written.
        expect_at: where each expected value is written.
        at: where ``intent`` and each forced decision (``decisions.<function>``) are written.
    """

    index: int
    location: Location
    user: str | None
    intent: str | None = None
    decisions: Mapping[str, str] = field(default_factory=dict)
    expect: Mapping[str, Any] = field(default_factory=dict)
    expect_at: Mapping[str, Location] = field(default_factory=dict)
    at: Mapping[str, Location] = field(default_factory=dict)

    @property
    def opening(self) -> bool:
        """Whether this is the opening turn (no user message)."""
        return self.user is None

    def describe(self) -> str:
        """The step as a reader finds it: its number and what the user says."""
        if self.user is None:
            return f"step {self.index + 1} (opening)"
        said = self.user if len(self.user) <= 60 else self.user[:57] + "..."
        label = f" [{self.intent}]" if self.intent else ""
        return f"step {self.index + 1} ({json.dumps(said, ensure_ascii=False)}{label})"


@dataclass(frozen=True)
class Conversation:
    """A named conversation: facts the host passes at the start, then its steps."""

    name: str
    location: Location
    steps: tuple[ConversationStep, ...]
    facts: Mapping[str, Any] = field(default_factory=dict)
    facts_at: Mapping[str, Location] = field(default_factory=dict)
    seed: int = 0
    """Seeds the session's `vary` picks, so a test's lines are the same on every run."""


@dataclass(frozen=True)
class ConversationFile:
    """A parsed conversation test file.

    Attributes:
        path: the file.
        policy: the policy it tests, resolved from the file's directory.
        policy_at: where the policy is named.
        conversations: in file order.
    """

    path: Path
    policy: Path
    policy_at: Location
    conversations: tuple[Conversation, ...]


def _problem(code: str, message: str, at: Location, hint: str = "") -> Problem:
    return Problem(code, message, at, hint)


def _close(word: str, choices: Iterable[str]) -> str:
    options = sorted(choices)
    found = difflib.get_close_matches(word, options, n=1)
    if found:
        return f"did you mean {found[0]!r}?"
    if len(options) > 8:
        return f"one of {', '.join(options[:8])}, ... ({len(options)} in all)"
    return f"one of {', '.join(options)}"


class _Reader:
    """Reads a test file's data, collecting every problem with its location."""

    def __init__(self, document: Document) -> None:
        self.document = document
        self.problems: list[Problem] = []

    def at(self, *path: str | int) -> Location:
        return self.document.locate(path)

    def bad(self, message: str, *path: str | int, hint: str = "") -> None:
        self.problems.append(_problem(MALFORMED, message, self.at(*path), hint))

    def keys(self, value: Mapping[Any, Any], allowed: Sequence[str], *path: str | int) -> None:
        for key in value:
            if key not in allowed:
                self.problems.append(
                    _problem(
                        UNKNOWN_KEY,
                        f"unknown key {key!r}",
                        self.document.locate_key((*path, key)),
                        hint=_close(str(key), allowed),
                    )
                )

    def mapping(self, value: Any, what: str, *path: str | int) -> dict[Any, Any] | None:
        if isinstance(value, dict):
            return value
        self.bad(f"{what} must be a mapping, not {_kind(value)}", *path)
        return None

    def text(self, value: Any, what: str, *path: str | int) -> str | None:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            # YAML reads an unquoted 10001 as a number; what the user typed is its text.
            return str(value)
        self.bad(f"{what} must be text, not {_kind(value)}", *path, hint="quote it")
        return None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", bool: "a boolean", str: "text"}.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


_FILE_KEYS = ("sopagent_test", "policy", "conversations", "description")
_CONVERSATION_KEYS = ("name", "description", "facts", "seed", "steps")
_STEP_KEYS = ("user", "intent", "decisions", "expect")


def load_test_file(path: str | Path) -> ConversationFile:
    """Read a conversation test file and check its structure.

    Names (intents, states, responses, slots, facts, decisions) are checked against the
    policy by `Suite`, which compiles it.

    Raises:
        PolicyLoadError: the file is unreadable, not YAML, or breaks the format; every problem
            is reported at ``file:line:col``.
    """
    document = read_yaml(path)
    reader = _Reader(document)
    data = reader.mapping(document.data, "a conversation test file")
    if data is None:
        raise PolicyLoadError(reader.problems)
    reader.keys(data, _FILE_KEYS)
    version = data.get("sopagent_test")
    if "sopagent_test" not in data:
        reader.bad(
            "missing required key 'sopagent_test'", hint="start the file with sopagent_test: 1"
        )
    elif version != FORMAT_VERSION or isinstance(version, bool):
        reader.bad(
            f"unsupported format version {version!r}", "sopagent_test", hint="use sopagent_test: 1"
        )
    base = Path(path).parent
    policy_path = Path()
    policy = data.get("policy")
    if "policy" not in data:
        reader.bad("missing required key 'policy'", hint="the policy file, relative to this one")
    elif reader.text(policy, "policy", "policy") is not None:
        policy_path = Path(os.path.normpath(base / str(policy)))
    conversations: list[Conversation] = []
    items = data.get("conversations")
    if "conversations" not in data:
        reader.bad("missing required key 'conversations'")
    elif not isinstance(items, list) or not items:
        reader.bad("conversations must be a non-empty list", "conversations")
    else:
        names: dict[str, Location] = {}
        for index, item in enumerate(items):
            conversation = _conversation(reader, item, ("conversations", index))
            if conversation is None:
                continue
            if conversation.name in names:
                reader.problems.append(
                    _problem(
                        DUPLICATE_NAME,
                        f"two conversations are named {conversation.name!r}",
                        conversation.location,
                        hint=f"the first is at {names[conversation.name]}",
                    )
                )
            names.setdefault(conversation.name, conversation.location)
            conversations.append(conversation)
    if reader.problems:
        raise PolicyLoadError(reader.problems)
    return ConversationFile(Path(path), policy_path, reader.at("policy"), tuple(conversations))


def _conversation(reader: _Reader, item: Any, at: tuple[str | int, ...]) -> Conversation | None:
    data = reader.mapping(item, "a conversation", *at)
    if data is None:
        return None
    reader.keys(data, _CONVERSATION_KEYS, *at)
    name = data.get("name")
    if "name" not in data:
        reader.bad("a conversation needs a 'name'", *at)
        name = None
    else:
        name = reader.text(name, "name", *at, "name")
    facts: dict[str, Any] = {}
    facts_at: dict[str, Location] = {}
    if data.get("facts") is not None:
        given = reader.mapping(data["facts"], "facts", *at, "facts")
        for key, value in (given or {}).items():
            facts[str(key)] = value
            facts_at[str(key)] = reader.at(*at, "facts", key)
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        reader.bad("'seed' is a whole number", *at, "seed")
        seed = 0
    steps: list[ConversationStep] = []
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        reader.bad("a conversation needs a non-empty list of 'steps'", *at)
    else:
        for index, raw in enumerate(raw_steps):
            step = _step(reader, raw, index, (*at, "steps", index))
            if step is None:
                continue
            if step.opening and index > 0:
                reader.problems.append(
                    _problem(
                        MISPLACED_OPENING,
                        "a step without 'user' is the opening turn and must come first",
                        step.location,
                        hint="add what the user says, or move it to the top",
                    )
                )
            steps.append(step)
    if name is None:
        return None
    return Conversation(name, reader.at(*at), tuple(steps), facts, facts_at, seed)


def _step(
    reader: _Reader, raw: Any, index: int, at: tuple[str | int, ...]
) -> ConversationStep | None:
    data = reader.mapping(raw, "a step", *at)
    if data is None:
        return None
    reader.keys(data, _STEP_KEYS, *at)
    user = None
    if "user" in data:
        user = reader.text(data["user"], "user", *at, "user")
        if user is None:
            return None
    intent = None
    if data.get("intent") is not None:
        intent = reader.text(data["intent"], "intent", *at, "intent")
        if user is None and intent is not None:
            reader.bad("the opening turn has no message to force a label on", *at, "intent")
    decisions: dict[str, str] = {}
    if data.get("decisions") is not None:
        given = reader.mapping(data["decisions"], "decisions", *at, "decisions")
        for function, outcome in (given or {}).items():
            if not isinstance(outcome, str):
                reader.bad(
                    f"the outcome forced for {function!r} must be text, not {_kind(outcome)}",
                    *at,
                    "decisions",
                    function,
                )
                continue
            decisions[str(function)] = outcome
    expect: dict[str, Any] = {}
    expect_at: dict[str, Location] = {}
    if data.get("expect") is not None:
        given = reader.mapping(data["expect"], "expect", *at, "expect")
        if given is not None:
            reader.keys(given, tuple(EXPECTATIONS), *at, "expect")
            for key, value in given.items():
                if key in EXPECTATIONS:
                    expect[key] = value
                    expect_at[key] = reader.at(*at, "expect", key)
    where = {"intent": reader.at(*at, "intent")}
    where.update({f"decisions.{f}": reader.at(*at, "decisions", f) for f in decisions})
    return ConversationStep(
        index, reader.at(*at), user, intent, decisions, expect, expect_at, where
    )


# --- expectations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """What a step did, for the expectations to read: its turn and the session after it."""

    turn: Turn
    session: Session
    compiled: CompiledPolicy


Reader = Callable[[Any, "CompiledPolicy"], Any]
"""Checks a written value against the policy and returns it as compared (raises ValueError)."""


@dataclass(frozen=True)
class Expectation:
    """One key of a step's ``expect``.

    Attributes:
        key: the key.
        description: what it compares, for the docs and error messages.
        read: checks the written value against the compiled policy and returns the value to
            compare; raises `ValueError` with a message (and `UnknownNameError` for unknown names).
        actual: what the step did, given what was expected (so a key can compare a part).
    """

    key: str
    description: str
    read: Reader
    actual: Callable[[Observed, Any], Any]


class UnknownNameError(ValueError):
    """An expectation names something the policy does not have."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def _name(kind: str, value: Any, known: Iterable[str]) -> str:
    names = set(known)
    if not isinstance(value, str):
        raise ValueError(f"expected the name of {kind}, not {_kind(value)}")
    if value not in names:
        raise UnknownNameError(f"unknown {kind} {value!r}", _close(value, names))
    return value


def _names(kind: str, value: Any, known: Iterable[str]) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of {kind} names, not {_kind(value)}")
    names = list(known)
    return [_name(kind, item, names) for item in value]


def _read_intent(value: Any, compiled: CompiledPolicy) -> str | None:
    if value is None:
        return None
    return _name("intent", value, [*compiled.policy.intents, OUT_OF_SCOPE])


def _read_bool(value: Any, compiled: CompiledPolicy) -> bool:  # noqa: ARG001 (a Reader)
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, not {_kind(value)}")
    return value


def _read_text(value: Any, compiled: CompiledPolicy) -> str:  # noqa: ARG001 (a Reader)
    if not isinstance(value, str):
        raise ValueError(f"expected text, not {_kind(value)}")
    return value


def _read_values(kind: str, value: Any, types: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of {kind} names to values, not {_kind(value)}")
    out: dict[str, Any] = {}
    for name, raw in value.items():
        _name(kind, name, types)
        if raw is None:
            out[name] = None
            continue
        try:
            out[name] = types[name].to_json(types[name].validate(raw))
        except ValueError as exc:
            raise ValueError(f"{kind} {name!r}: {exc}") from None
    return out


def _read_outcome(value: Any, compiled: CompiledPolicy) -> str | None:
    if value is None:
        return None
    outcomes = {o for s in compiled.states.values() for o in s.outcomes}
    return _name("outcome", value, outcomes)


def _read_decisions(value: Any, compiled: CompiledPolicy) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(
            f"expected a mapping of decision functions to outcomes, not {_kind(value)}"
        )
    used = {s.decide_name for s in compiled.states.values() if s.decide_name}
    out: dict[str, str] = {}
    for function, outcome in value.items():
        _name("decision function", function, used)
        out[function] = _name(
            f"outcome of {function}", outcome, compiled.functions[function].__sopagent_outcomes__
        )
    return out


def _read_effects(value: Any, compiled: CompiledPolicy) -> list[dict[str, dict[str, Any]]]:
    """Effects written as ``[{give_item: {item: silver_key}}, ...]``, in emission order."""
    if not isinstance(value, list):
        raise ValueError(f"expected a list of effects, not {_kind(value)}")
    out: list[dict[str, dict[str, Any]]] = []
    for written in value:
        item = {written: {}} if isinstance(written, str) else written
        if not isinstance(item, dict) or len(item) != 1:
            raise ValueError("each effect is written as {name: {argument: value, ...}}")
        ((name, args),) = item.items()
        _name("effect", name, compiled.effect_types)
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ValueError(f"the arguments of {name!r} are a mapping, not {_kind(args)}")
        out.append({name: dict(args)})
    return out


def _effects(observed: Observed, expected: Any) -> list[dict[str, dict[str, Any]]]:  # noqa: ARG001
    return [{e.name: dict(e.args)} for e in observed.turn.effects]


def _decisions(observed: Observed, expected: Any) -> dict[str, str]:  # noqa: ARG001
    # A function that decides twice in one turn is compared by its last outcome.
    return {d.function: d.outcome for d in observed.turn.decisions}


def _facts(observed: Observed, expected: Any) -> dict[str, Any]:
    facts = observed.session.facts
    return {name: facts.get(name) for name in expected}


EXPECTATIONS: dict[str, Expectation] = {
    e.key: e
    for e in (
        Expectation(
            "intent",
            "the turn's intent (null: none, the message only gave slot values)",
            _read_intent,
            lambda o, _: o.turn.intent,
        ),
        Expectation(
            "state",
            "the state after the turn",
            lambda v, c: _name("state", v, c.states),
            lambda o, _: o.turn.state_after,
        ),
        Expectation(
            "path",
            "the states entered during the turn, in order",
            lambda v, c: _names("state", v, c.states),
            lambda o, _: list(o.turn.path),
        ),
        Expectation(
            "responses",
            "the ids of the responses said, in order",
            lambda v, c: _names("response", v, c.templates),
            lambda o, _: list(o.turn.response_ids),
        ),
        Expectation(
            "text",
            "the text said, every response rendered and joined",
            _read_text,
            lambda o, _: o.turn.text,
        ),
        Expectation(
            "slots",
            "the valid slot values found in the message (JSON form), all of them",
            lambda v, c: _read_values("slot", v, c.slot_types),
            lambda o, _: dict(o.turn.slots),
        ),
        Expectation(
            "facts",
            "the values of the facts named (JSON form; null: no value) after the turn",
            lambda v, c: _read_values("fact", v, c.fact_types),
            _facts,
        ),
        Expectation(
            "outcome",
            "the outcome of the last decision of the turn (null: none decided)",
            _read_outcome,
            lambda o, _: o.turn.outcome,
        ),
        Expectation(
            "decisions",
            "the outcome of each decision function that decided in the turn, all of them",
            _read_decisions,
            _decisions,
        ),
        Expectation(
            "effects",
            "the effects emitted, in order, each as {name: {argument: value}}",
            _read_effects,
            _effects,
        ),
        Expectation(
            "ended",
            "whether the conversation has ended",
            _read_bool,
            lambda o, _: o.turn.ended,
        ),
        Expectation(
            "error",
            "whether the turn took the error route (a backend or decision failure)",
            _read_bool,
            lambda o, _: o.turn.error is not None,
        ),
    )
}


# --- checking a file against its policy ------------------------------------------------------


@dataclass(frozen=True)
class _Checked:
    """A test file with every expected value read against its compiled policy."""

    file: ConversationFile
    compiled: CompiledPolicy
    expected: Mapping[tuple[int, int], Mapping[str, Any]]
    facts: Mapping[int, Mapping[str, Any]]


def _check(file: ConversationFile, compiled: CompiledPolicy) -> tuple[_Checked, list[Problem]]:
    problems: list[Problem] = []
    expected: dict[tuple[int, int], dict[str, Any]] = {}
    facts: dict[int, dict[str, Any]] = {}
    labels = [*compiled.policy.intents, OUT_OF_SCOPE]
    for c, conversation in enumerate(file.conversations):
        given: dict[str, Any] = {}
        for name, value in conversation.facts.items():
            at = conversation.facts_at[name]
            kind = compiled.fact_types.get(name)
            if kind is None:
                problems.append(
                    _problem(
                        BAD_FACT, f"unknown fact {name!r}", at, _close(name, compiled.fact_types)
                    )
                )
                continue
            try:
                given[name] = kind.validate(value)
            except ValueError as exc:
                problems.append(_problem(BAD_FACT, f"fact {name!r}: {exc}", at))
        facts[c] = given
        for step in conversation.steps:
            if step.intent is not None and step.intent not in labels:
                problems.append(
                    _problem(
                        UNKNOWN_INTENT,
                        f"unknown intent {step.intent!r}",
                        step.at["intent"],
                        _close(step.intent, labels),
                    )
                )
            for function, outcome in step.decisions.items():
                declared = compiled.functions.get(function)
                used = {s.decide_name for s in compiled.states.values() if s.decide_name}
                if declared is None or function not in used:
                    problems.append(
                        _problem(
                            BAD_DECISION,
                            f"no state decides with {function!r}",
                            step.at[f"decisions.{function}"],
                            _close(function, used),
                        )
                    )
                elif outcome not in declared.__sopagent_outcomes__:
                    problems.append(
                        _problem(
                            BAD_DECISION,
                            f"{function!r} does not declare outcome {outcome!r}",
                            step.at[f"decisions.{function}"],
                            _close(outcome, declared.__sopagent_outcomes__),
                        )
                    )
            values: dict[str, Any] = {}
            for key, raw in step.expect.items():
                try:
                    values[key] = EXPECTATIONS[key].read(raw, compiled)
                except UnknownNameError as exc:
                    problems.append(
                        _problem(
                            UNKNOWN_NAME, f"expect.{key}: {exc}", step.expect_at[key], exc.hint
                        )
                    )
                except ValueError as exc:
                    problems.append(
                        _problem(MALFORMED, f"expect.{key}: {exc}", step.expect_at[key])
                    )
            expected[(c, step.index)] = values
    return _Checked(file, compiled, expected, facts), problems


# --- running ---------------------------------------------------------------------------------

Route = tuple[str, str, str]
"""A transition of the compiled machine: (trigger, source, dest)."""


@dataclass(frozen=True)
class Mismatch:
    """An expected value the step did not meet."""

    key: str
    expected: Any
    actual: Any
    location: Location


@dataclass(frozen=True)
class StepResult:
    """What one step did and how it compares with its expectations."""

    step: ConversationStep
    turn: Turn | None
    mismatches: tuple[Mismatch, ...] = ()
    problem: str = ""
    routes: tuple[Route, ...] = ()

    @property
    def passed(self) -> bool:
        """No mismatch and nothing kept the step from running."""
        return not self.mismatches and not self.problem


@dataclass(frozen=True)
class ConversationResult:
    """One conversation's steps, up to the first that failed."""

    file: ConversationFile
    conversation: Conversation
    policy: str
    policy_hash: str
    steps: tuple[StepResult, ...]
    opening_turn: Turn | None = None
    opening_routes: tuple[Route, ...] = ()

    @property
    def failed_step(self) -> StepResult | None:
        """The first step that failed, if any."""
        return next((s for s in self.steps if not s.passed), None)

    @property
    def passed(self) -> bool:
        """Every step passed."""
        return self.failed_step is None

    @property
    def location(self) -> Location:
        """Where the failing step is written, else the conversation."""
        failed = self.failed_step
        return failed.step.location if failed else self.conversation.location

    def turns(self) -> Iterator[tuple[Turn, tuple[Route, ...]]]:
        """Every turn that ran (the opening first) with the transitions it fired."""
        if self.opening_turn is not None:
            yield self.opening_turn, self.opening_routes
        for step in self.steps:
            if step.turn is not None:
                yield step.turn, step.routes

    def to_json(self) -> dict[str, Any]:
        """The result as plain JSON."""
        failed = self.failed_step
        return {
            "file": str(self.file.path),
            "conversation": self.conversation.name,
            "location": str(self.conversation.location),
            "policy": self.policy,
            "policy_hash": self.policy_hash,
            "passed": self.passed,
            "steps_run": len(self.steps),
            "steps": len(self.conversation.steps),
            "failure": None
            if failed is None
            else {
                "step": failed.step.index + 1,
                "location": str(failed.step.location),
                "user": failed.step.user,
                "problem": failed.problem or None,
                "mismatches": [
                    {
                        "key": m.key,
                        "expected": m.expected,
                        "actual": m.actual,
                        "location": str(m.location),
                    }
                    for m in failed.mismatches
                ],
                "turn": None if failed.turn is None else _turn_json(failed.turn),
            },
        }


def _turn_json(turn: Turn) -> dict[str, Any]:
    return {
        "state_before": turn.state_before,
        "state_after": turn.state_after,
        "path": list(turn.path),
        "intent": turn.intent,
        "intent_source": turn.intent_source,
        "score": turn.score,
        "responses": list(turn.response_ids),
        "decisions": {d.function: d.outcome for d in turn.decisions},
        "error": turn.error,
        "ended": turn.ended,
    }


class _Recorded:
    """The backend of recorded mode: the step's expected intent is the model's answer."""

    name = "recorded"

    def __init__(self) -> None:
        self.label: str | None = None

    def classify(self, request: ClassifyRequest) -> Classification:  # noqa: ARG002 (Protocol)
        """Answer the recorded label; without one the step needs a real model."""
        if self.label is None:
            raise BackendError(
                "this message needs the model and the step records no label: force one with"
                " 'intent:', expect one with 'expect: {intent: ...}', or run with --backend",
                provider=self.name,
            )
        return Classification(self.label, 1.0, {self.label: 1.0}, {}, Usage())

    def choose(self, request: ChooseRequest) -> Choice:
        """Pick the first option, as a host without a model would."""
        return Choice(request.options[0].name, 1.0, Usage())


class _TestAgent(Agent):
    """An agent that remembers the transitions each turn fires, for route coverage."""

    def __init__(self, compiled: CompiledPolicy, backend: Backend) -> None:
        super().__init__(compiled, backend, audit=NullSink(), audit_text=False)
        self.fired: list[Route] = []

    @override
    def _fire(self, trigger: str, source: str, dest: str) -> None:
        super()._fire(trigger, source, dest)
        self.fired.append((trigger, source, dest))


class _Policy:
    """A compiled policy under test, with the state its decision modules start from."""

    def __init__(self, compiled: CompiledPolicy) -> None:
        from sopagent._search import ModuleState  # noqa: PLC0415 (only tests need it)

        self.compiled = compiled
        self.modules = ModuleState(compiled.functions)


def _compare(
    expected: Mapping[str, Any], observed: Observed, step: ConversationStep
) -> list[Mismatch]:
    out = []
    for key, value in expected.items():
        actual = EXPECTATIONS[key].actual(observed, value)
        if actual != value:
            out.append(Mismatch(key, value, actual, step.expect_at[key]))
    return out


def _run(
    checked: _Checked,
    index: int,
    policy: _Policy,
    backend: Backend | None,
) -> ConversationResult:
    # The decision modules start from where they were when the policy was loaded, and go
    # back there afterwards, so conversations (and later runs) do not see each other.
    policy.modules.restore()
    try:
        return _converse(checked, index, backend)
    finally:
        policy.modules.restore()


def _converse(checked: _Checked, index: int, backend: Backend | None) -> ConversationResult:
    compiled = checked.compiled
    conversation = checked.file.conversations[index]
    recorded = _Recorded()
    agent = _TestAgent(compiled, backend if backend is not None else recorded)
    session = agent.new_session(facts=checked.facts[index], seed=conversation.seed)
    results: list[StepResult] = []
    opening_turn: Turn | None = None
    opening_routes: tuple[Route, ...] = ()
    steps = list(conversation.steps)
    if not steps or not steps[0].opening:
        opening_turn = agent.start(session)
        opening_routes = () if opening_turn.error else tuple(agent.fired)
    for step in steps:
        expected = checked.expected[(index, step.index)]
        if not step.opening and session.ended:
            results.append(
                StepResult(
                    step, None, problem="the conversation had already ended before this step"
                )
            )
            break
        agent.fired = []
        recorded.label = expected.get("intent") if step.intent is None else step.intent
        if step.opening:
            turn = agent.start(session, decisions=step.decisions)
        else:
            assert step.user is not None
            turn = agent.respond(session, step.user, intent=step.intent, decisions=step.decisions)
        routes = () if turn.error else tuple(agent.fired)
        mismatches = _compare(expected, Observed(turn, session, compiled), step)
        problem = ""
        if turn.error and "error" not in expected:
            problem = f"the turn took the error route: {turn.error}"
        results.append(StepResult(step, turn, tuple(mismatches), problem, routes))
        if mismatches or problem:
            break
    return ConversationResult(
        checked.file,
        conversation,
        compiled.name,
        compiled.hash,
        tuple(results),
        opening_turn,
        opening_routes,
    )


# --- suites ----------------------------------------------------------------------------------


def find_test_files(paths: Iterable[str | Path]) -> tuple[list[Path], list[Problem]]:
    """The conversation test files of ``paths``: files as given, directories searched.

    Returns:
        The files, in order, and a problem for each path that is neither.
    """
    files: list[Path] = []
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob(f"*{SUFFIX}") if p.is_file())
            if not found:
                problems.append(
                    _problem(
                        NO_TESTS,
                        f"no conversation tests (*{SUFFIX}) in {path}",
                        Location(str(path)),
                    )
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append(
                _problem("SOP001", "cannot read file: no such file", Location(str(path)))
            )
    return list(dict.fromkeys(files)), problems


class Suite:
    """Conversation test files loaded and checked against their compiled policies.

    Policies are compiled once each, however many files test them.
    """

    def __init__(self) -> None:
        self.files: list[_Checked] = []
        self.policies: dict[Path, _Policy] = {}
        self._policy_problems: dict[Path, list[Problem]] = {}

    @classmethod
    def load(cls, paths: Iterable[str | Path]) -> Suite:
        """Load every test file of ``paths`` (directories are searched for ``*.test.yaml``).

        Raises:
            PolicyLoadError: a file, its policy or an expectation is invalid; every problem of
                every file is reported.
        """
        suite = cls()
        files, problems = find_test_files(paths)
        for path in files:
            problems += suite.add(path)
        if problems:
            raise PolicyLoadError(problems)
        return suite

    def policy(self, path: Path, named_at: Location) -> tuple[_Policy | None, list[Problem]]:
        """The compiled policy at ``path`` (once per path), or why it cannot be compiled."""
        from sopagent._compile import compile_policy  # noqa: PLC0415 (pydantic, transitions)
        from sopagent._load import load_policy  # noqa: PLC0415

        key = path.resolve()
        if key in self.policies:
            return self.policies[key], []
        if key in self._policy_problems:
            return None, []
        if not path.is_file():
            problem = _problem(
                POLICY_MISSING,
                f"the policy {path} does not exist",
                named_at,
                hint="'policy' is relative to the test file",
            )
            self._policy_problems[key] = [problem]
            return None, [problem]
        try:
            compiled = compile_policy(load_policy(path))
        except PolicyError as exc:
            self._policy_problems[key] = list(exc.problems)
            return None, list(exc.problems)
        self.policies[key] = _Policy(compiled)
        return self.policies[key], []

    def add(self, path: str | Path) -> list[Problem]:
        """Load one test file into the suite; return its problems (nothing added then)."""
        try:
            file = load_test_file(path)
        except PolicyError as exc:
            return list(exc.problems)
        policy, problems = self.policy(file.policy, file.policy_at)
        if policy is None:
            return problems
        checked, problems = _check(file, policy.compiled)
        if problems:
            return problems
        self.files.append(checked)
        return []

    def items(self) -> Iterator[tuple[_Checked, int]]:
        """Every conversation, as (file, index)."""
        for checked in self.files:
            for index in range(len(checked.file.conversations)):
                yield checked, index

    def run_one(
        self, checked: _Checked, index: int, backend: Backend | None = None
    ) -> ConversationResult:
        """Run one conversation of a loaded file."""
        policy = self.policies[checked.file.policy.resolve()]
        return _run(checked, index, policy, backend)

    def run(
        self,
        backend: Backend | None = None,
        progress: Callable[[ConversationResult], None] | None = None,
    ) -> SuiteResult:
        """Run every conversation; ``backend`` classifies messages without a forced label."""
        results = []
        for checked, index in self.items():
            result = self.run_one(checked, index, backend)
            results.append(result)
            if progress is not None:
                progress(result)
        return SuiteResult(self, results, backend.name if backend is not None else None)

    def compiled(self) -> list[CompiledPolicy]:
        """The policies under test, in the order they were loaded."""
        return [p.compiled for p in self.policies.values()]


@dataclass
class SuiteResult:
    """The results of a suite, with classification figures when a backend classified."""

    suite: Suite
    results: list[ConversationResult]
    backend: str | None = None

    @property
    def failed(self) -> list[ConversationResult]:
        """The conversations that failed."""
        return [r for r in self.results if not r.passed]

    def classification(self) -> dict[str, Any] | None:
        """Intent accuracy over the steps the backend classified, or None in recorded mode.

        A step counts when its label was not forced, it expects an intent and it ran.
        """
        if self.backend is None:
            return None
        total = correct = model = 0
        by_source: dict[str, int] = {}
        misses: list[dict[str, Any]] = []
        for result in self.results:
            for step in result.steps:
                turn = step.turn
                if step.step.intent is not None or step.step.opening or turn is None:
                    continue
                if "intent" not in step.step.expect:
                    continue
                expected = step.step.expect["intent"]
                total += 1
                by_source[turn.intent_source] = by_source.get(turn.intent_source, 0) + 1
                model += turn.intent_source == "model"
                if turn.intent == expected:
                    correct += 1
                else:
                    misses.append(
                        {
                            "location": str(step.step.location),
                            "text": step.step.user,
                            "expected": expected,
                            "actual": turn.intent,
                            "source": turn.intent_source,
                            "score": turn.score,
                        }
                    )
        return {
            "backend": self.backend,
            "steps": total,
            "correct": correct,
            "accuracy": round(correct / total, 4) if total else None,
            "model_answered": model,
            "by_source": dict(sorted(by_source.items())),
            "misclassified": misses,
        }


# --- failures as text ------------------------------------------------------------------------


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _diff_lines(mismatch: Mismatch) -> list[str]:
    key = mismatch.key
    lines = [f"  {key}:"]
    expected, actual = mismatch.expected, mismatch.actual
    if isinstance(expected, dict) and isinstance(actual, dict):
        for name in dict.fromkeys([*expected, *actual]):
            if expected.get(name, _ABSENT) != actual.get(name, _ABSENT):
                was, now = _absent(expected, name), _absent(actual, name)
                lines.append(f"    {name}: expected {was}, actual {now}")
        return lines
    if isinstance(expected, list) and isinstance(actual, list):
        lines.append(f"    expected {_show(expected)}")
        lines.append(f"    actual   {_show(actual)}")
        matcher = difflib.SequenceMatcher(a=expected, b=actual, autojunk=False)
        for op, a0, a1, b0, b1 in matcher.get_opcodes():
            if op == "equal":
                continue
            gone, new = expected[a0:a1], actual[b0:b1]
            if gone:
                lines.append(f"    - {', '.join(map(str, gone))}")
            if new:
                lines.append(f"    + {', '.join(map(str, new))}")
        return lines
    lines.append(f"    expected {_show(expected)}")
    lines.append(f"    actual   {_show(actual)}")
    return lines


_ABSENT = object()


def _absent(values: Mapping[str, Any], name: str) -> str:
    return "(none)" if name not in values else _show(values[name])


def render_failure(result: ConversationResult) -> str:
    """A failing conversation as text: where, what the turn did, and a diff per key."""
    failed = result.failed_step
    if failed is None:
        return ""
    step = failed.step
    lines = [
        f"{step.location}: {step.describe()} of conversation {result.conversation.name!r} failed"
    ]
    turn = failed.turn
    if turn is not None:
        moved = " > ".join(turn.path) if turn.path else f"stays in {turn.state_after}"
        intent = f"intent {turn.intent or '-'} ({turn.intent_source}"
        intent += f", {turn.score:.2f})" if turn.intent_source == "model" else ")"
        lines.append(f"  turn: {turn.state_before} -> {moved}; {intent}")
        said = ", ".join(turn.response_ids) or "nothing"
        lines.append(f"  said: {said}")
        if turn.decisions:
            decided = ", ".join(
                f"{d.function}={d.outcome}" + (" (forced)" if d.forced else "")
                for d in turn.decisions
            )
            lines.append(f"  decided: {decided}")
    if failed.problem:
        lines.append(f"  {failed.problem}")
    for mismatch in failed.mismatches:
        lines.extend(_diff_lines(mismatch))
    return "\n".join(lines)


def render_summary(result: SuiteResult, coverages: Sequence[Any] | None = None) -> str:
    """A suite's results as text: each failure, the backend's accuracy, coverage, the counts."""
    lines: list[str] = []
    for failed in result.failed:
        lines += [render_failure(failed), ""]
    figures = result.classification()
    if figures is not None:
        accuracy = "-" if figures["accuracy"] is None else f"{figures['accuracy']:.1%}"
        lines.append(
            f"intent accuracy ({figures['backend']}): {figures['correct']}/{figures['steps']}"
            f" steps not forced ({accuracy}); {figures['model_answered']} answered by the model"
        )
        lines += [
            f"  {miss['location']}: {json.dumps(miss['text'], ensure_ascii=False)}:"
            f" expected {miss['expected']}, got {miss['actual']} ({miss['source']})"
            for miss in figures["misclassified"]
        ]
    for item in coverages or ():
        lines += item.render()
    passed = len(result.results) - len(result.failed)
    files = len({str(r.file.path) for r in result.results})
    lines.append(
        f"{len(result.results)} conversation{'s' if len(result.results) != 1 else ''} in"
        f" {files} file{'s' if files != 1 else ''}"
    )
    lines.append(f"{passed} passed, {len(result.failed)} failed")
    return "\n".join(lines)
