"""A backend that answers from a script: for tests, demos and deterministic replay."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from sopagent.backends import Choice, ChooseRequest, Classification, ClassifyRequest, Usage
from sopagent.errors import BackendError

__all__ = ["ScriptedBackend"]

Answer = str | Callable[[ClassifyRequest], str]
_ONE_CALL = Usage(calls=1)  # immutable, so every answer shares it
_NO_SLOTS: Mapping[str, str] = MappingProxyType({})


class ScriptedBackend:
    """Answer with labels given in advance.

    Args:
        script: either a mapping from user text (matched case-insensitively, stripped) to an
            intent label, or a sequence of labels used one per classification, in order.
        default: the label when the text is not in the mapping or the sequence is used up;
            ``None`` raises `BackendError` instead, as a failing model would.
        choices: response ids to answer `choose` with, in order; by default the first option.
        slots: enum slot values to return with every classification.
    """

    name = "scripted"

    def __init__(
        self,
        script: Mapping[str, str] | Iterable[str] = (),
        *,
        default: str | None = "out_of_scope",
        choices: Iterable[str] = (),
        slots: Mapping[str, str] | None = None,
    ) -> None:
        self._by_text: dict[str, str] = {}
        self._queue: deque[str] = deque()
        if isinstance(script, Mapping):
            self._by_text = {_norm(text): label for text, label in script.items()}
        else:
            self._queue.extend(script)
        self._default = default
        self._choices: deque[str] = deque(choices)
        self._slots = dict(slots or {})
        # Answers are immutable (their scores read-only), so each label's is made once.
        self._answers: dict[str, Classification] = {}
        self.requests: list[ClassifyRequest] = []

    def classify(self, request: ClassifyRequest) -> Classification:
        """Answer with the scripted label; the agent checks it is allowed."""
        self.requests.append(request)
        # A text already in normal form is its own key, found without normalizing it again.
        by_text = self._by_text
        label = by_text.get(request.text) or by_text.get(_norm(request.text))
        if label is None and self._queue:
            label = self._queue.popleft()
        if label is None:
            label = self._default
        if label is None:
            raise BackendError(f"no scripted label for {request.text!r}", provider=self.name)
        if self._slots:
            slots = {k: v for k, v in self._slots.items() if k in request.slot_choices}
            return Classification(label, 1.0, {label: 1.0}, slots, _ONE_CALL)
        answer = self._answers.get(label)
        if answer is None:
            scores = MappingProxyType({label: 1.0})
            answer = self._answers[label] = Classification(label, 1.0, scores, _NO_SLOTS, _ONE_CALL)
        return answer

    def choose(self, request: ChooseRequest) -> Choice:
        """Answer with the next scripted response id, or the first option."""
        response = self._choices.popleft() if self._choices else request.options[0].name
        return Choice(response, 1.0, _ONE_CALL)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())
