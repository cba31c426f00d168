"""Metrics on hand-made cases, and against scikit-learn where it defines the same numbers."""

import random
from collections import Counter

import pytest

from peft_continual.errors import PeftContinualError
from peft_continual.evaluation.metrics import classification_metrics, intent_slot_metrics, slot_counts
from peft_continual.evaluation.slots import IntentSlots, parse_intent_and_slots

LABELS = ["positive", "negative", "neutral"]

try:  # scikit-learn is only in the `recipes` extra; imported at collection so its ~1 s import is not a test's time
    from sklearn import metrics as sklearn_metrics
except ImportError:  # pragma: no cover
    sklearn_metrics = None


def test_classification_hand_case():
    # Per class: positive tp1 pred2 gold1 -> 2/3; negative tp1 pred1 gold2 -> 2/3; neutral tp0 pred0 gold1 -> 0.
    predictions = ["positive", "positive", "negative", None]
    references = ["positive", "negative", "negative", "neutral"]
    metrics = classification_metrics(predictions, references, LABELS)
    assert metrics["accuracy"] == 0.5
    assert metrics["f1_per_class"] == pytest.approx({"positive": 2 / 3, "negative": 2 / 3, "neutral": 0.0})
    assert metrics["macro_f1"] == pytest.approx(4 / 9)
    assert (metrics["num_examples"], metrics["num_correct"], metrics["num_outside_label_set"]) == (4, 2, 1)
    assert metrics["recall_per_class"] == {"positive": 1.0, "negative": 0.5, "neutral": 0.0}
    assert metrics["predicted_per_class"] == {"positive": 2, "negative": 1, "neutral": 0}
    assert metrics["gold_per_class"] == {"positive": 1, "negative": 2, "neutral": 1}


def test_classes_absent_from_references_and_predictions_are_left_out_of_macro_f1():
    metrics = classification_metrics(["positive", "negative"], ["positive", "negative"], LABELS)
    assert metrics["macro_f1"] == 1.0
    assert set(metrics["f1_per_class"]) == {"positive", "negative"}


@pytest.mark.skipif(sklearn_metrics is None, reason="needs scikit-learn (pip install -e '.[recipes]')")
def test_classification_matches_scikit_learn():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(1, 30)
        references = [rng.choice(LABELS) for _ in range(n)]
        predictions = [rng.choice([*LABELS, None]) for _ in range(n)]
        ours = classification_metrics(predictions, references, LABELS)
        mapped = ["<outside>" if p is None else p for p in predictions]
        present = [label for label in LABELS if label in references or label in predictions]
        assert ours["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(references, mapped))
        expected = sklearn_metrics.f1_score(references, mapped, labels=present, average="macro", zero_division=0)
        assert ours["macro_f1"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("predictions", "references", "message"),
    [
        ([], [], "no examples"),
        (["positive"], [], "1 predictions but 0 references"),
        (["positive"], ["mixed"], "reference label"),
        (["mixed"], ["positive"], "neither a label nor None"),
    ],
)
def test_classification_refuses_bad_input(predictions, references, message):
    with pytest.raises(PeftContinualError, match=message):
        classification_metrics(predictions, references, LABELS)


def parse_all(texts):
    return [parse_intent_and_slots(text) for text in texts]


def test_intent_slot_hand_case():
    references = parse_all(
        [
            "Intent: alarm_set\nSlots: date(this week), time(five am)",
            "Intent: play_music\nSlots: artist_name(abba), artist_name(abba)",
            "Intent: qa_factoid\nSlots: None",
            "Intent: weather_query\nSlots: date(today)",
        ]
    )
    predictions = parse_all(
        [
            "Intent: alarm_set\nSlots: time(five am), date(this week)",  # exact, order does not matter
            "Intent: play_music\nSlots: artist_name(abba)",  # one of the duplicate pair found
            "Intent: qa_factoid\nSlots: date(now)",  # a spurious slot
            "Intent: weather_query\nSlots: date(today",  # malformed: the slot is dropped
        ]
    )
    metrics = intent_slot_metrics(predictions, references)
    # pairs: gold 2+2+0+1 = 5; predicted 2+1+1+0 = 4; correct 2+1+0+0 = 3
    assert (metrics["num_slots_gold"], metrics["num_slots_predicted"], metrics["num_slots_correct"]) == (5, 4, 3)
    assert metrics["slot_precision"] == pytest.approx(3 / 4)
    assert metrics["slot_recall"] == pytest.approx(3 / 5)
    assert metrics["slot_f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert metrics["intent_accuracy"] == 1.0
    assert metrics["exact_match"] == 0.25
    assert metrics["num_malformed"] == 1


def test_duplicates_count_as_often_as_they_occur():
    assert slot_counts(Counter({("a", "x"): 3}), Counter({("a", "x"): 2})) == (2, 3, 2)
    assert slot_counts(Counter({("a", "x"): 1}), Counter({("a", "x"): 2, ("b", "y"): 1})) == (1, 1, 3)


def test_empty_slots_everywhere_is_perfect_and_missing_intent_is_wrong():
    references = parse_all(["Intent: a\nSlots: None", "Intent: b\nSlots: None"])
    predictions = parse_all(["Intent: a\nSlots: None", "Slots: None"])
    metrics = intent_slot_metrics(predictions, references)
    assert (metrics["slot_precision"], metrics["slot_recall"], metrics["slot_f1"]) == (1.0, 1.0, 1.0)
    assert metrics["intent_accuracy"] == 0.5
    assert metrics["exact_match"] == 0.5


def test_no_predicted_slots_when_some_are_gold_scores_zero():
    metrics = intent_slot_metrics([IntentSlots("a")], parse_all(["Intent: a\nSlots: t(x)"]))
    assert (metrics["slot_precision"], metrics["slot_recall"], metrics["slot_f1"]) == (0.0, 0.0, 0.0)
    metrics = intent_slot_metrics(parse_all(["Intent: a\nSlots: t(x)"]), [IntentSlots("a")])
    # No gold pairs but a predicted one: precision 0/1; recall is 1.0 only when nothing was claimed either.
    assert (metrics["slot_precision"], metrics["slot_recall"], metrics["slot_f1"]) == (0.0, 0.0, 0.0)
