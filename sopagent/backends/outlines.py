"""A backend over any `outlines` model: labels produced by constrained generation.

outlines compiles the set of allowed labels into a grammar and masks every token outside it
while the model generates, so the answer is always one of the labels. Any outlines model can be
passed in (``outlines.from_llamacpp``, ``outlines.from_transformers``,
``outlines.from_vllm_offline`` ...); compiled generators are cached per label set. Generation
gives no probabilities, so the score of an answer is 1.0; use the llama.cpp scoring backend
where a calibrated score matters.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Literal

from sopagent.backends import (
    Choice,
    ChooseRequest,
    Classification,
    ClassifyRequest,
    Label,
    Usage,
)
from sopagent.backends._prompt import choose_prompt, classify_prompt, message_suffix, slot_prompt
from sopagent.errors import BackendError

__all__ = ["OutlinesBackend", "from_outlines"]


class OutlinesBackend:
    """Constrained generation with an outlines model.

    Args:
        model: an outlines model in completion (not chat) mode.
        max_tokens: a bound on generated tokens; labels are short.
        max_generators: compiled generators kept, one per label set.
    """

    name = "outlines"

    def __init__(self, model: Any, *, max_tokens: int = 24, max_generators: int = 32) -> None:
        self.model = model
        self._max_tokens = max_tokens
        self._generators: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._max_generators = max_generators
        self._lock = threading.Lock()

    def classify(self, request: ClassifyRequest) -> Classification:
        """Generate one allowed intent after the message."""
        prompt = classify_prompt(request.labels)
        intent = self._pick(prompt, request.text, "Intent:", request.choices)
        slots = {
            name: self._pick(
                slot_prompt(name, values, request.instructions), request.text, "Answer:", values
            )
            for name, values in request.slot_choices.items()
        }
        calls = 1 + len(slots)
        return Classification(intent, 1.0, {intent: 1.0}, slots, Usage(calls=calls))

    def choose(self, request: ChooseRequest) -> Choice:
        """Generate one allowed response id after the message."""
        response = self._pick(choose_prompt(request), request.text, "Reply:", request.options)
        return Choice(response, 1.0, Usage(calls=1))

    def _generator(self, labels: tuple[str, ...]) -> Any:
        generator = self._generators.get(labels)
        if generator is None:
            import outlines  # noqa: PLC0415 (optional dependency)

            choices = tuple(" " + label for label in labels)
            generator = outlines.Generator(self.model, Literal[choices])
            self._generators[labels] = generator
            while len(self._generators) > self._max_generators:
                self._generators.popitem(last=False)
        self._generators.move_to_end(labels)
        return generator

    def _pick(self, prefix: str, text: str, answer: str, labels: tuple[Label, ...]) -> str:
        names = tuple(label.name for label in labels)
        with self._lock:
            try:
                generator = self._generator(names)
                raw = generator(prefix + message_suffix(text, answer), max_tokens=self._max_tokens)
            except Exception as exc:
                raise BackendError(
                    f"outlines generation failed: {type(exc).__name__}: {exc}",
                    provider=self.name,
                    retryable=True,
                ) from exc
        label = str(raw).strip()
        if label not in names:
            raise BackendError(f"outlines answered {raw!r}, not a label", provider=self.name)
        return label


def from_outlines(model: Any, *, max_tokens: int = 24) -> OutlinesBackend:
    """Create a backend over an outlines model.

    For the embedded model::

        import llama_cpp, outlines
        from sopagent.backends.llamacpp import default_model_path
        llm = llama_cpp.Llama(str(default_model_path()), n_ctx=4096, verbose=False)
        backend = from_outlines(outlines.from_llamacpp(llm, chat_mode=False))
    """
    return OutlinesBackend(model, max_tokens=max_tokens)
