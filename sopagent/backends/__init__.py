"""The model seam: one `Backend` Protocol, one module per provider.

A backend does exactly two things, both constrained to labels it is given:

* `Backend.classify` picks one intent from the labels allowed in the current state (global
  intents and ``out_of_scope`` included) and fills the enum slots that need understanding;
* `Backend.choose` picks one response id from an allowed set when the procedure leaves a choice.

Whatever a backend answers is validated again by the agent; an answer outside the allowed set
is a `sopagent.errors.BackendError`, handled like a timeout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "Backend",
    "Choice",
    "ChooseRequest",
    "Classification",
    "ClassifyRequest",
    "Label",
    "Usage",
]


@dataclass(frozen=True, slots=True)
class Label:
    """One allowed answer: its id, what it means, and examples of it."""

    name: str
    description: str
    examples: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    """What answering cost: model calls and tokens (prompt tokens include reused ones)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.calls + other.calls,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
        )


@dataclass(frozen=True, slots=True)
class ClassifyRequest:
    """Classify ``text`` into one of ``labels``.

    Attributes:
        text: what the user said.
        labels: the allowed intents, ``out_of_scope`` last.
        vocabulary: every intent of the policy, ``out_of_scope`` last. A backend may describe
            them all in one prompt shared by every state (so its evaluation is reused), as long
            as it answers with an allowed label; by default the allowed labels.
        slot_choices: enum slots the model should fill, name -> allowed values.
        key: identifies the vocabulary (the policy's hash), so a backend can reuse work that
            depends only on it, such as a prompt prefix already evaluated.
        instructions: what the policy says the assistant is for.
        candidates: a shortlist of ``labels`` (names, ``out_of_scope`` included) that the
            answer must come from, as narrowed by `sopagent.backends.shortlist`. Labels left
            out are ruled out, not folded into ``out_of_scope``. Empty: every label.
    """

    text: str
    labels: tuple[Label, ...]
    vocabulary: tuple[Label, ...] = ()
    slot_choices: Mapping[str, tuple[Label, ...]] = field(default_factory=dict)
    key: str = ""
    instructions: str = ""
    candidates: tuple[str, ...] = ()

    @property
    def choices(self) -> tuple[Label, ...]:
        """The labels the answer may be: ``candidates`` when given, else ``labels``."""
        if not self.candidates:
            return self.labels
        wanted = set(self.candidates)
        return tuple(label for label in self.labels if label.name in wanted)


# A frozen dataclass's __init__ sets each field through object.__setattr__; the turn loop,
# which builds a request on most turns, writes the slots through their descriptors instead.
_new = object.__new__
_set_text, _set_labels, _set_vocabulary, _set_choices, _set_key, _set_instructions = (
    ClassifyRequest.__dict__[name].__set__
    for name in ("text", "labels", "vocabulary", "slot_choices", "key", "instructions")
)
_set_candidates = ClassifyRequest.__dict__["candidates"].__set__


def _new_request(
    text: str,
    labels: tuple[Label, ...],
    vocabulary: tuple[Label, ...],
    slot_choices: Mapping[str, tuple[Label, ...]],
    key: str,
    instructions: str,
) -> ClassifyRequest:
    """``ClassifyRequest(text, labels, ...)`` with no candidates, built in half the time."""
    request = _new(ClassifyRequest)
    _set_text(request, text)
    _set_labels(request, labels)
    _set_vocabulary(request, vocabulary)
    _set_choices(request, slot_choices)
    _set_key(request, key)
    _set_instructions(request, instructions)
    _set_candidates(request, ())
    return request


@dataclass(frozen=True, slots=True)
class Classification:
    """A backend's answer: one allowed intent, its score in [0, 1], and enum slot values."""

    intent: str
    score: float
    scores: Mapping[str, float] = field(default_factory=dict)
    slots: Mapping[str, str] = field(default_factory=dict)
    usage: Usage = Usage()
    answered_by: str = ""
    """Which backend answered, when one backend delegates to others (`cascade`)."""


@dataclass(frozen=True, slots=True)
class ChooseRequest:
    """Pick one of ``options`` (response ids with their texts) as the reply to ``text``."""

    text: str
    options: tuple[Label, ...]
    key: str = ""
    instructions: str = ""


@dataclass(frozen=True, slots=True)
class Choice:
    """A backend's answer to a `ChooseRequest`."""

    response: str
    score: float
    usage: Usage = Usage()
    answered_by: str = ""


@runtime_checkable
class Backend(Protocol):
    """A language model constrained to answer with labels."""

    name: str

    def classify(self, request: ClassifyRequest) -> Classification:
        """Return one of ``request.labels``; raise `BackendError` on failure."""
        ...

    def choose(self, request: ChooseRequest) -> Choice:
        """Return one of ``request.options``; raise `BackendError` on failure."""
        ...
