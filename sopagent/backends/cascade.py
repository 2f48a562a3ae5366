"""Two backends in a row: a fast one answers when it is sure, a stronger one otherwise.

``cascade(small, large, threshold)`` asks ``small`` first and keeps its answer when its score
reaches ``threshold``; otherwise, or when ``small`` fails, it asks ``large``. The answer says
which backend gave it (``answered_by``, also in the `Turn` and the audit event), and the usage
of both calls is added up. ``counts`` tells how often each answered.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from sopagent.backends import (
    Backend,
    Choice,
    ChooseRequest,
    Classification,
    ClassifyRequest,
    Label,
    Usage,
)
from sopagent.errors import BackendError

__all__ = ["CascadeBackend", "cascade"]

_Answer = TypeVar("_Answer", Classification, Choice)


class CascadeBackend:
    """Ask ``first``; below ``threshold`` or on its failure, ask ``second``.

    Args:
        first: the fast backend.
        second: the backend trusted when the first is unsure.
        threshold: the lowest score of the first backend that is kept.
    """

    name = "cascade"

    def __init__(self, first: Backend, second: Backend, threshold: float) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold {threshold} is not in [0, 1]")
        self.first = first
        self.second = second
        self.threshold = threshold
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def classify(self, request: ClassifyRequest) -> Classification:
        """Classify with the first backend, and with the second when the first is unsure."""
        answer = self._ask(lambda backend: backend.classify(request))
        with self._lock:
            self.counts[answer.answered_by] += 1
        return answer

    def choose(self, request: ChooseRequest) -> Choice:
        """Choose with the first backend, and with the second when the first is unsure."""
        return self._ask(lambda backend: backend.choose(request))

    def warm(self, vocabulary: tuple[Label, ...], key: str = "") -> None:
        """Let both backends evaluate their prompts early, when they can."""
        for backend in (self.first, self.second):
            warm = getattr(backend, "warm", None)
            if callable(warm):
                warm(vocabulary, key)

    def _ask(self, call: Callable[[Backend], _Answer]) -> _Answer:
        spent = Usage()
        try:
            answer = call(self.first)
        except BackendError:
            pass  # the second backend answers instead
        else:
            spent = answer.usage
            if answer.score >= self.threshold:
                return replace(answer, answered_by=self.first.name)
        second = call(self.second)
        return replace(second, usage=spent + second.usage, answered_by=self.second.name)


def cascade(first: Backend, second: Backend, threshold: float = 0.5) -> CascadeBackend:
    """Return a backend that asks ``second`` only when ``first`` scores below ``threshold``."""
    return CascadeBackend(first, second, threshold)
