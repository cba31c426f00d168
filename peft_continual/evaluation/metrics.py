"""Metrics: classification accuracy and macro-F1; intent accuracy, slot precision/recall/F1 and exact match.

Computed here with plain Python and numpy rather than ``evaluate``: ``evaluate.load("accuracy")`` fetches the
metric's script from the Hugging Face Hub (the ``evaluate`` wheel ships none), so it fails offline and on machines
that can only reach PyPI (checked with evaluate 0.4.6). The definitions below match scikit-learn's
(``accuracy_score``; ``f1_score(average="macro", zero_division=0)`` over the classes present), which the tests check.

Every function returns a plain ``dict`` of floats and integer counts, ready for ``json.dump``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from peft_continual.errors import PeftContinualError
from peft_continual.evaluation.slots import IntentSlots


def _check_lengths(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise PeftContinualError(f"{len(predictions)} predictions but {len(references)} references")
    if not references:
        raise PeftContinualError("no examples to score; a metric of zero examples is undefined")


def _f1(true_positives: float, predicted: float, gold: float) -> float:
    return 2 * true_positives / (predicted + gold) if predicted + gold else 0.0


def classification_metrics(
    predictions: Sequence[str | None], references: Sequence[str], labels: Sequence[str]
) -> dict[str, float | int | dict[str, float]]:
    """Accuracy and macro-F1 of normalised predictions against gold labels.

    ``None`` (an output outside the label set) is always wrong: it lowers its gold class's recall but is not a class
    of its own, so it cannot earn F1. Macro-F1 averages the per-class F1 over the classes of ``labels`` that occur in
    the references or the predictions: a class absent from both says nothing about the model and is left out (as
    scikit-learn does when passed the classes present).

    Args:
        predictions: one canonical label or ``None`` per example.
        references: the gold canonical labels.
        labels: the task's closed label set.

    Returns:
        ``accuracy``, ``macro_f1``, ``f1_per_class`` ({label: F1}), ``recall_per_class`` ({label: recall}, classes
        present in the references), ``predicted_per_class`` and ``gold_per_class`` (counts: a model that collapses
        onto one class shows it here), ``num_examples``, ``num_correct``, ``num_outside_label_set``.

    Examples:
        >>> m = classification_metrics(["a", None, "b"], ["a", "b", "b"], labels=["a", "b", "c"])
        >>> round(m["accuracy"], 3), round(m["macro_f1"], 3), m["num_outside_label_set"]
        (0.667, 0.833, 1)
    """
    _check_lengths(predictions, references)
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({r for r in references if r not in index})
    if unknown:
        raise PeftContinualError(f"reference label(s) {unknown} are not in the label set {sorted(index)}")
    outside = [p for p in predictions if p is not None and p not in index]
    if outside:
        raise PeftContinualError(f"prediction(s) {sorted(set(outside))} are neither a label nor None")
    gold = np.array([index[r] for r in references])
    pred = np.array([-1 if p is None else index[p] for p in predictions])  # -1: outside the label set
    correct = gold == pred
    per_class: dict[str, float] = {}
    recall: dict[str, float] = {}
    for label, i in index.items():
        true_positives = int(np.sum(correct & (gold == i)))
        predicted, actual = int(np.sum(pred == i)), int(np.sum(gold == i))
        if predicted or actual:
            per_class[label] = _f1(true_positives, predicted, actual)
        if actual:
            recall[label] = true_positives / actual
    return {
        "accuracy": float(correct.mean()),
        "macro_f1": float(np.mean(list(per_class.values()))),
        "f1_per_class": per_class,
        "recall_per_class": recall,
        "predicted_per_class": {label: int(np.sum(pred == i)) for label, i in index.items()},
        "gold_per_class": {label: int(np.sum(gold == i)) for label, i in index.items()},
        "num_examples": len(references),
        "num_correct": int(correct.sum()),
        "num_outside_label_set": int(np.sum(pred == -1)),
    }


def slot_counts(predicted: Counter, gold: Counter) -> tuple[int, int, int]:
    """``(true positives, predicted, gold)`` pair counts of one example; duplicates count as often as they occur."""
    return sum((predicted & gold).values()), sum(predicted.values()), sum(gold.values())


def intent_slot_metrics(predictions: Sequence[IntentSlots], references: Sequence[IntentSlots]) -> dict[str, float]:
    """Intent accuracy, micro slot precision/recall/F1 over ``(type, value)`` pairs, and exact match.

    Pairs are counted as a multiset per example (a pair predicted twice but present once earns one true positive).
    With no predicted pairs at all, precision is 1.0 when there were no gold pairs either (nothing claimed, nothing
    to find) and 0.0 otherwise; recall likewise. An example matches exactly when its intent is right and its slot
    multiset equals the gold one. A prediction whose intent is ``None`` is wrong.

    Returns:
        ``intent_accuracy``, ``slot_precision``, ``slot_recall``, ``slot_f1``, ``exact_match``, ``num_examples``,
        ``num_intent_correct``, ``num_exact_match``, ``num_malformed``, and the pair counts ``num_slots_predicted``,
        ``num_slots_gold``, ``num_slots_correct``.

    Examples:
        >>> from peft_continual.evaluation.slots import parse_intent_and_slots as parse
        >>> m = intent_slot_metrics([parse("Intent: a\\nSlots: t(x)")], [parse("Intent: a\\nSlots: t(x), u(y)")])
        >>> m["intent_accuracy"], m["slot_precision"], m["slot_recall"], m["exact_match"]
        (1.0, 1.0, 0.5, 0.0)
    """
    _check_lengths(predictions, references)
    intent_correct = exact = true_positives = predicted = gold = 0
    for prediction, reference in zip(predictions, references, strict=True):
        tp, n_pred, n_gold = slot_counts(prediction.slots, reference.slots)
        true_positives, predicted, gold = true_positives + tp, predicted + n_pred, gold + n_gold
        right_intent = prediction.intent is not None and prediction.intent == reference.intent
        intent_correct += right_intent
        exact += right_intent and prediction.slots == reference.slots
    precision = true_positives / predicted if predicted else float(gold == 0)
    recall = true_positives / gold if gold else float(predicted == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(references)
    return {
        "intent_accuracy": intent_correct / n,
        "slot_precision": precision,
        "slot_recall": recall,
        "slot_f1": f1,
        "exact_match": exact / n,
        "num_examples": n,
        "num_intent_correct": intent_correct,
        "num_exact_match": exact,
        "num_malformed": sum(p.malformed for p in predictions),
        "num_slots_predicted": predicted,
        "num_slots_gold": gold,
        "num_slots_correct": true_positives,
    }
