"""Unit tests of the evaluation metrics of ``sopagent eval`` on small hand-computed cases."""

from __future__ import annotations

import pytest

from sopagent._eval import (
    NO_INTENT,
    OUT_OF_SCOPE,
    Prediction,
    accuracy,
    confusions,
    expected_calibration_error,
    macro_f1,
    per_label_f1,
    percentile,
    precision_recall,
    prediction,
    summarize,
)
from sopagent.session import Turn

PAIRS = [
    ("a", "a"),
    ("a", "b"),
    ("b", "b"),
    ("b", OUT_OF_SCOPE),
    (OUT_OF_SCOPE, OUT_OF_SCOPE),
    (OUT_OF_SCOPE, "a"),
]


def test_accuracy_counts_exact_matches() -> None:
    """Accuracy is the share of pairs predicted right, None without pairs."""
    assert accuracy(PAIRS) == pytest.approx(3 / 6)
    assert accuracy([]) is None


def test_precision_recall_of_out_of_scope() -> None:
    """Out-of-scope precision is 1 of 2 predicted, recall 1 of 2 expected."""
    assert precision_recall(PAIRS, OUT_OF_SCOPE) == (pytest.approx(0.5), pytest.approx(0.5))
    assert precision_recall([("a", "a")], OUT_OF_SCOPE) == (None, None)


def test_macro_f1_averages_expected_labels() -> None:
    """Macro-F1 is the mean F1 of the expected labels, unpredicted ones scoring 0."""
    # a: P=1/2 (a predicted twice, once right), R=1/2 -> F1 0.5; b: P=1/2, R=1/2 -> 0.5;
    # out_of_scope: P=1/2, R=1/2 -> 0.5.
    assert macro_f1(PAIRS) == pytest.approx(0.5)
    # a: P=1, R=1/2 -> F1 2/3; b: never predicted right -> 0; "c" is predicted only.
    pairs = [("a", "a"), ("a", "c"), ("b", "c")]
    assert per_label_f1(pairs) == {"a": pytest.approx(2 / 3), "b": 0.0}
    assert macro_f1(pairs) == pytest.approx(1 / 3)
    assert macro_f1([]) is None


def test_ece_of_hand_computed_bins() -> None:
    """ECE weighs each bin's gap between accuracy and mean score by its size."""
    # Bin 0.9-1.0: scores 0.9, 1.0 (both right): mean 0.95, accuracy 1 -> gap 0.05.
    # Bin 0.3-0.4: scores 0.3, 0.3 (one right): mean 0.3, accuracy 0.5 -> gap 0.2.
    scores = [0.9, 1.0, 0.3, 0.3]
    correct = [True, True, True, False]
    assert expected_calibration_error(scores, correct) == pytest.approx(0.5 * 0.05 + 0.5 * 0.2)
    assert expected_calibration_error([1.0, 1.0], [True, True]) == pytest.approx(0.0)
    assert expected_calibration_error([1.0], [False]) == pytest.approx(1.0)
    assert expected_calibration_error([], []) is None
    with pytest.raises(ValueError, match="length"):
        expected_calibration_error([0.5], [])


def test_confusions_most_frequent_first() -> None:
    """Mistakes are counted by (expected, predicted), most frequent first, ties by label."""
    pairs = [("b", "a"), ("a", "b"), ("b", "a"), ("a", "a")]
    assert confusions(pairs) == [("b", "a", 2), ("a", "b", 1)]
    assert confusions(pairs, top=1) == [("b", "a", 2)]


def test_percentile_interpolates() -> None:
    """Percentiles interpolate linearly between the sorted values."""
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile([7.0], 90) == 7.0
    assert percentile([], 50) is None


def _turn(intent: str | None, source: str, *, answered_by: str | None = None) -> Turn:
    return Turn(
        session_id="s",
        index=1,
        user_text="x",
        state_before="a",
        state_after="a",
        path=(),
        intent=intent,
        score=0.5,
        intent_source=source,  # type: ignore[arg-type]
        answered_by=answered_by,
        accepted=True,
        slots={},
        responses=(),
        model_calls=1 if answered_by else 0,
        latency_ms=3.0,
    )


def test_prediction_labels_turns_without_intent() -> None:
    """A slot-only turn predicts NO_INTENT; a failed model turn counts as out of scope."""
    assert prediction("a", _turn(None, "slots")).predicted == NO_INTENT
    assert prediction("a", _turn(None, "error")).predicted == OUT_OF_SCOPE
    answered = prediction("a", _turn("a", "error", answered_by="m"))
    assert answered.correct
    assert answered.model_answered
    assert not prediction("a", _turn("a", "example")).model_answered


def test_summarize_gathers_the_figures() -> None:
    """The summary holds accuracy, cost, latency and the counts of each kind of answer."""
    predictions = [
        Prediction("a", "a", 0.9, "model", 1, 100, 2, 10.0, "m1"),
        Prediction("a", "b", 0.7, "model", 1, 200, 4, 20.0, "m2"),
        Prediction("b", "b", 1.0, "example", 0, 0, 0, 1.0, None, model_answered=False),
        Prediction("b", NO_INTENT, 1.0, "slots", 0, 0, 0, 2.0, None, model_answered=False),
    ]
    figures = summarize(predictions)
    assert figures["examples"] == 4
    assert figures["accuracy"] == 0.5
    assert figures["model_answered"] == 2
    assert figures["ece"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.7)
    assert figures["no_intent"] == 1
    assert figures["without_model_call"] == 2
    assert figures["without_model_call_by_source"] == {"example": 1, "slots": 1}
    assert figures["answered_by"] == {"m1": 1, "m2": 1}
    assert figures["model_calls_mean"] == 0.5
    assert figures["prompt_tokens_mean"] == 75.0
    assert figures["completion_tokens_mean"] == 1.5
    assert figures["latency_ms_median"] == 6.0
    assert figures["oos_precision"] is None
    assert figures["confusions"] == [
        {"expected": "a", "predicted": "b", "count": 1},
        {"expected": "b", "predicted": NO_INTENT, "count": 1},
    ]
