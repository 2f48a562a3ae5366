"""Intent-classification metrics for ``sopagent eval``: pure functions over labelled predictions.

An evaluation classifies labelled examples (``text``, expected ``intent``, optional ``state``)
one per fresh session and compares the agent's intent with the expected one. Everything here
works on plain values (`Example`, `Prediction`), so the figures can be checked by hand:

* `accuracy`, `macro_f1` (over the expected labels), `precision_recall` (of one label, such as
  ``out_of_scope``);
* `expected_calibration_error` of the scores of model-answered turns;
* `confusions` (expected -> predicted, most frequent first) and `percentile`;
* `summarize` gathers all of them, with cost and latency, into one JSON-ready mapping.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sopagent.session import Turn

__all__ = [
    "NO_INTENT",
    "OUT_OF_SCOPE",
    "Example",
    "Prediction",
    "accuracy",
    "confusions",
    "expected_calibration_error",
    "macro_f1",
    "per_label_f1",
    "percentile",
    "precision_recall",
    "prediction",
    "summarize",
]

OUT_OF_SCOPE = "out_of_scope"
NO_INTENT = "(no intent)"
"""The predicted label of a turn that only gave slot values, so no intent was classified."""


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled utterance: what the user says, the intent expected, in which state."""

    text: str
    intent: str
    state: str
    line: int = 0


@dataclass(frozen=True, slots=True)
class Prediction:
    """What the agent made of one `Example`."""

    expected: str
    predicted: str
    score: float = 1.0
    source: str = "model"
    model_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    answered_by: str | None = None
    error: str | None = None
    model_answered: bool = True
    """Whether a backend's classification was used (even if a later decision failed)."""

    @property
    def correct(self) -> bool:
        """Whether the predicted label is the expected one."""
        return self.predicted == self.expected


def prediction(expected: str, turn: Turn) -> Prediction:
    """The `Prediction` of one turn; a turn without an intent is `NO_INTENT` if it only gave slots.

    Any other turn without an intent (an error route) counts as ``out_of_scope``.
    """
    if turn.intent is not None:
        predicted = turn.intent
    elif turn.intent_source == "slots":
        predicted = NO_INTENT
    else:
        predicted = OUT_OF_SCOPE
    return Prediction(
        expected=expected,
        predicted=predicted,
        score=turn.score,
        source=turn.intent_source,
        model_calls=turn.model_calls,
        prompt_tokens=turn.prompt_tokens,
        completion_tokens=turn.completion_tokens,
        latency_ms=turn.latency_ms,
        answered_by=turn.answered_by,
        error=turn.error,
        model_answered=turn.intent is not None and turn.answered_by is not None,
    )


Pair = tuple[str, str]
"""(expected, predicted)."""


def accuracy(pairs: Sequence[Pair]) -> float | None:
    """The share of pairs whose predicted label is the expected one; None without pairs."""
    if not pairs:
        return None
    return sum(1 for expected, predicted in pairs if expected == predicted) / len(pairs)


def precision_recall(pairs: Sequence[Pair], label: str) -> tuple[float | None, float | None]:
    """Precision and recall of ``label``; each None when its denominator is zero."""
    hits = sum(1 for expected, predicted in pairs if expected == predicted == label)
    predicted_n = sum(1 for _, predicted in pairs if predicted == label)
    expected_n = sum(1 for expected, _ in pairs if expected == label)
    precision = hits / predicted_n if predicted_n else None
    recall = hits / expected_n if expected_n else None
    return precision, recall


def _f1(precision: float | None, recall: float | None) -> float:
    if not precision or not recall:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def per_label_f1(pairs: Sequence[Pair]) -> dict[str, float]:
    """F1 of every expected label, in order of first appearance."""
    labels = dict.fromkeys(expected for expected, _ in pairs)
    return {label: _f1(*precision_recall(pairs, label)) for label in labels}


def macro_f1(pairs: Sequence[Pair]) -> float | None:
    """The unweighted mean F1 over the labels that are expected at least once."""
    scores = per_label_f1(pairs)
    return sum(scores.values()) / len(scores) if scores else None


def expected_calibration_error(
    scores: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> float | None:
    """ECE: the size-weighted mean gap between accuracy and mean score over equal-width bins.

    Bin ``i`` holds scores in ``[i/bins, (i+1)/bins)``; a score of 1.0 falls in the last bin.
    None without scores.
    """
    if len(scores) != len(correct):
        raise ValueError("scores and correct differ in length")
    if not scores:
        return None
    members: list[list[int]] = [[] for _ in range(bins)]
    for index, score in enumerate(scores):
        members[min(max(math.floor(score * bins), 0), bins - 1)].append(index)
    total = 0.0
    for group in members:
        if group:
            confidence = sum(scores[i] for i in group) / len(group)
            hit_rate = sum(1 for i in group if correct[i]) / len(group)
            total += len(group) / len(scores) * abs(hit_rate - confidence)
    return total


def confusions(pairs: Sequence[Pair], top: int = 10) -> list[tuple[str, str, int]]:
    """The most frequent mistakes as (expected, predicted, count), ties by label order."""
    counts = Counter((e, p) for e, p in pairs if e != p)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [(e, p, n) for (e, p), n in ordered[:top]]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100), interpolated linearly between ranks; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def summarize(predictions: Sequence[Prediction], *, top: int = 10) -> dict[str, Any]:
    """Every figure of an evaluation as a JSON-ready mapping (ratios rounded to 4 places)."""
    pairs = [(o.expected, o.predicted) for o in predictions]
    oos_precision, oos_recall = precision_recall(pairs, OUT_OF_SCOPE)
    by_model = [o for o in predictions if o.model_answered]
    sources = Counter(o.source for o in predictions)
    answered_by = Counter(o.answered_by for o in predictions if o.answered_by)
    latencies = [o.latency_ms for o in predictions]
    return {
        "examples": len(predictions),
        "correct": sum(1 for o in predictions if o.correct),
        "accuracy": _round(accuracy(pairs)),
        "macro_f1": _round(macro_f1(pairs)),
        "oos_precision": _round(oos_precision),
        "oos_recall": _round(oos_recall),
        "ece": _round(
            expected_calibration_error([o.score for o in by_model], [o.correct for o in by_model])
        ),
        "model_answered": len(by_model),
        "no_intent": sum(1 for o in predictions if o.predicted == NO_INTENT),
        "errors": sum(1 for o in predictions if o.error),
        "without_model_call": sum(1 for o in predictions if o.model_calls == 0),
        "without_model_call_by_source": {
            source: sum(1 for o in predictions if o.source == source and o.model_calls == 0)
            for source in sorted(sources)
            if any(o.source == source and o.model_calls == 0 for o in predictions)
        },
        "by_source": dict(sorted(sources.items())),
        "answered_by": dict(sorted(answered_by.items())),
        "model_calls_mean": _round(_mean([o.model_calls for o in predictions])),
        "prompt_tokens_mean": _round(_mean([o.prompt_tokens for o in predictions]), 1),
        "completion_tokens_mean": _round(_mean([o.completion_tokens for o in predictions]), 1),
        "latency_ms_median": _round(percentile(latencies, 50), 2),
        "latency_ms_p90": _round(percentile(latencies, 90), 2),
        "f1_by_label": {k: round(v, 4) for k, v in per_label_f1(pairs).items()},
        "confusions": [
            {"expected": e, "predicted": p, "count": n} for e, p, n in confusions(pairs, top)
        ],
    }
