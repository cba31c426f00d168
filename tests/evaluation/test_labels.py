"""Label normalisation: case, whitespace, punctuation, first line, variants, junk -> None; config errors."""

import pytest

from peft_continual.data.records import TaskRecord
from peft_continual.errors import ConfigError, RecordError
from peft_continual.evaluation.labels import LabelNormalization
from peft_continual.evaluation.metrics import classification_metrics

SENTIMENT = ["positive", "negative", "neutral"]


@pytest.fixture
def norm() -> LabelNormalization:
    # NeMo's Swedish sentiment task mapped grammatical variants onto one label.
    return LabelNormalization(
        SENTIMENT, variants={"positiva": "positive", "positivt": "positive", "negativ": "negative"}
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("positive", "positive"),
        (" positive", "positive"),
        ("Positive", "positive"),
        ("NEUTRAL", "neutral"),
        ("positive.", "positive"),
        ("'negative'!", "negative"),
        ("\n  neutral \t", "neutral"),
        ("positive\nThe company reported ...", "positive"),
        ("\n\nnegative\n", "negative"),  # first non-blank line
        ("positiva", "positive"),
        ("Positivt.", "positive"),
        ("negativ", "negative"),
    ],
)
def test_normalize_recognises_variants_case_and_punctuation(norm, raw, expected):
    assert norm.normalize(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "good", "positive negative", "pos", "positively", "neutral-ish", "\n"])
def test_junk_is_outside_the_label_set(norm, raw):
    assert norm.normalize(raw) is None


def test_junk_outputs_are_counted_as_wrong(norm):
    raw = ["Positive.", "the stock", "negativ", "", "neutral"]
    predictions = [norm.normalize(text) for text in raw]
    metrics = classification_metrics(predictions, ["positive", "neutral", "negative", "negative", "neutral"], SENTIMENT)
    assert metrics["num_outside_label_set"] == 2
    assert metrics["num_correct"] == 3
    assert metrics["accuracy"] == pytest.approx(0.6)


def test_each_step_can_be_turned_off():
    strict = LabelNormalization(
        SENTIMENT, lowercase=False, strip_whitespace=False, strip_punctuation=False, first_line_only=False
    )
    assert strict.normalize("positive") == "positive"
    for raw in ("Positive", " positive", "positive.", "positive\n"):
        assert strict.normalize(raw) is None
    assert LabelNormalization(SENTIMENT, first_line_only=False).normalize("positive\nneutral") is None


def test_labels_with_punctuation_and_case_keep_their_canonical_form():
    norm = LabelNormalization(["alarm_set", "reminder/set_reminder", "IOT_hue"])
    assert norm.normalize("Alarm_Set") == "alarm_set"
    assert norm.normalize("reminder/set_reminder.") == "reminder/set_reminder"
    assert norm.normalize("iot_hue") == "IOT_hue"


def test_normalize_reference_refuses_a_gold_label_outside_the_set(norm):
    assert norm.normalize_reference("Neutral") == "neutral"
    with pytest.raises(
        RecordError, match=r"test.jsonl:3: task 'sentiment': gold label 'mixed' is not in the label set"
    ):
        norm.normalize_reference("mixed", "test.jsonl:3", "sentiment")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": []}, "labels is empty"),
        ({"labels": "positive"}, "must be a list of strings"),
        ({"labels": ["a", 1]}, "must be strings"),
        ({"labels": ["Positive", "positive"]}, "both normalise to 'positive'"),
        ({"labels": ["..."]}, "normalises to an empty string"),
        ({"labels": ["a"], "variants": {"x": "b"}}, "'x' maps to 'b', which is not a label"),
        ({"labels": ["a", "b"], "variants": {"A": "b"}}, "clashes with label 'a'"),
        ({"labels": ["a"], "variants": ["x"]}, "must be a mapping"),
    ],
)
def test_invalid_configs_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LabelNormalization(**kwargs)


def test_from_records_takes_the_sorted_distinct_values():
    records = [TaskRecord("s", {"label": label}, f"r[{i}]") for i, label in enumerate(["b", "a", "b"])]
    norm = LabelNormalization.from_records(records, "label", lowercase=False)
    assert norm.labels == ["a", "b"]
    assert norm.lowercase is False
    with pytest.raises(RecordError, match=r"r\[0\]: task 's': field 'intent' must be a label string"):
        LabelNormalization.from_records(records, "intent")
