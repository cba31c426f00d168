"""evaluate_tasks: mixed-task records -> generation and restricted scoring -> metrics split per task."""

import json

import pytest

from peft_continual.data.records import TaskRecord
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.errors import ConfigError, DuplicateTaskError, PeftContinualError, RecordError, UnknownTaskError
from peft_continual.evaluation.labels import LabelNormalization
from peft_continual.evaluation.report import evaluate_task, evaluate_tasks
from peft_continual.evaluation.restricted import score_candidates
from peft_continual.evaluation.tasks import TaskEvaluation, TaskKind

from .fakes import FakeVirtualModel, ScriptedModel

SENTIMENT = TaskTemplate("sentiment", "Review: {sentence} Sentiment: {label}", 0, [], "label")
INTENT = TaskTemplate("intent_and_slot", "Utterance: {utterance}\n{label}", 0, [], "label")
SENTIMENT_LABELS = LabelNormalization(["positive", "negative", "neutral"], variants={"negativ": "negative"})
INTENTS = LabelNormalization(["alarm_set", "iot_hue_lightoff"])
TASKS = [
    TaskEvaluation("sentiment", labels=SENTIMENT_LABELS, max_new_tokens=4),
    TaskEvaluation("intent_and_slot", kind="intent_and_slot", labels=INTENTS, max_new_tokens=20, restricted=True),
]

# (sentence, gold, scripted generation)
SENTIMENT_CASES = [
    ("Up 5%.", "positive", " Positive."),  # case and punctuation -> right
    ("Shares fell.", "negative", " the stock fell sharply today"),  # junk -> outside the set, wrong
    ("Loss widened.", "negative", " negativ"),  # variant -> right
    ("Flat.", "neutral", " positive\nbecause"),  # first line -> positive, wrong
]
INTENT_CASES = [
    ("wake me at five am", "Intent: alarm_set\nSlots: time(five am)", "Intent: alarm_set\nSlots: time(five am)"),
    ("lights off", "Intent: iot_hue_lightoff\nSlots: None", "Intent: lights\nSlots: date(today"),
]


def mixed_records():
    sentiment = [
        TaskRecord("sentiment", {"sentence": s, "label": g}, f"s[{i}]") for i, (s, g, _) in enumerate(SENTIMENT_CASES)
    ]
    intent = [
        TaskRecord("intent_and_slot", {"utterance": u, "label": g}, f"u[{i}]")
        for i, (u, g, _) in enumerate(INTENT_CASES)
    ]
    return [sentiment[0], intent[0], sentiment[1], sentiment[2], intent[1], sentiment[3]]  # tasks interleaved


@pytest.fixture
def scripted(tiny_llama, smollm2_tokenizer):
    answers = {f"Review: {s} Sentiment:": a for s, _, a in SENTIMENT_CASES}
    answers |= {f"Utterance: {u}\n": a for u, _, a in INTENT_CASES}
    return ScriptedModel(tiny_llama, smollm2_tokenizer, answers)


def test_mixed_tasks_generation_metrics_per_task(scripted, smollm2_tokenizer):
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [SENTIMENT, INTENT])
    results = evaluate_tasks(scripted, prompt_tokenizer, mixed_records(), TASKS, batch_size=8, progress=False)
    assert list(results) == ["sentiment", "intent_and_slot"]

    sentiment = results["sentiment"].metrics["generation"]
    assert sentiment["accuracy"] == 0.5
    assert (sentiment["num_examples"], sentiment["num_correct"], sentiment["num_skipped"]) == (4, 2, 0)
    assert sentiment["num_outside_label_set"] == 1
    assert sentiment["outside_label_set_examples"] == [" the stock fell sharply"]  # max_new_tokens=4
    # positive: tp1 pred2 gold1 -> 2/3; negative: tp1 pred1 gold2 -> 2/3; neutral: tp0 pred0 gold1 -> 0
    assert sentiment["macro_f1"] == pytest.approx(4 / 9)

    intent = results["intent_and_slot"].metrics["generation"]
    assert intent["intent_accuracy"] == 0.5
    assert intent["exact_match"] == 0.5
    assert (intent["slot_precision"], intent["slot_recall"]) == (1.0, 1.0)  # the cut-off slot is dropped
    assert intent["num_malformed"] == 1 and intent["malformed_examples"] == ["Intent: lights\nSlots: date(today"]
    assert intent["num_intent_outside_label_set"] == 1

    predictions = results["sentiment"].predictions
    assert [p["prediction"] for p in predictions] == ["positive", None, "negative", "positive"]
    assert [p["source"] for p in predictions] == ["s[0]", "s[1]", "s[2]", "s[3]"]
    assert [p["prediction"] for p in results["intent_and_slot"].predictions] == ["alarm_set", None]
    json.dumps({name: result.to_dict() for name, result in results.items()})  # plain, JSON-ready


def test_restricted_metrics_agree_with_the_scorer(scripted, smollm2_tokenizer):
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [SENTIMENT, INTENT])
    records = mixed_records()
    results = evaluate_tasks(scripted, prompt_tokenizer, records, TASKS, generation=False, progress=False)
    assert "generation" not in results["sentiment"].metrics
    candidates = {task.taskname: task.candidates() for task in TASKS}
    choices = score_candidates(scripted, prompt_tokenizer, records, candidates, progress=False)
    chosen = {r.source: c.index for r, c in zip(records, choices, strict=True)}

    sentiment = [r for r in records if r.taskname == "sentiment"]
    right = sum(SENTIMENT_LABELS.labels[chosen[r.source]] == r.fields["label"] for r in sentiment)
    assert results["sentiment"].metrics["restricted"]["accuracy"] == right / 4
    assert [p["restricted"] for p in results["sentiment"].predictions] == [
        SENTIMENT_LABELS.labels[chosen[r.source]] for r in sentiment
    ]
    intent = [r for r in records if r.taskname == "intent_and_slot"]
    right = sum(f"Intent: {INTENTS.labels[chosen[r.source]]}\n" in r.fields["label"] for r in intent)
    assert results["intent_and_slot"].metrics["restricted"] == {
        "intent_accuracy": right / 2,
        "num_examples": 2,
        "num_intent_correct": right,
        "num_skipped": 0,
    }


def test_virtual_token_model_end_to_end(tiny_llama, smollm2_tokenizer):
    templates = [
        TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 2, [2], "label"),
        TaskTemplate("intent_and_slot", "<|VIRTUAL_PROMPT_0|> {utterance}\n{label}", 3, [3], "label"),
    ]
    model = FakeVirtualModel(tiny_llama, {"sentiment": 2, "intent_and_slot": 3})
    results = evaluate_tasks(
        model, PromptTokenizer(smollm2_tokenizer, templates), mixed_records(), TASKS, progress=False
    )
    assert results["sentiment"].metrics["generation"]["num_examples"] == 4
    assert results["intent_and_slot"].metrics["restricted"]["num_examples"] == 2
    # generation and the restricted prompt forwards mix both tasks; answer continuations run from the KV cache alone
    prompt_calls = [call for call in model.calls if not call.get("cached")]
    assert {frozenset(call["tasknames"]) for call in prompt_calls} == {frozenset({"sentiment", "intent_and_slot"})}
    assert all(call["tasknames"] is None for call in model.calls if call.get("cached"))
    with pytest.raises(PeftContinualError, match="pass_virtual_tokens=False"):
        evaluate_tasks(
            tiny_llama,
            PromptTokenizer(smollm2_tokenizer, templates),
            mixed_records(),
            TASKS,
            pass_virtual_tokens=False,
            progress=False,
        )


def test_intent_task_without_label_set_compares_raw_intents(scripted, smollm2_tokenizer):
    records = [r for r in mixed_records() if r.taskname == "intent_and_slot"]
    result = evaluate_task(
        scripted,
        PromptTokenizer(smollm2_tokenizer, [INTENT]),
        records,
        TaskEvaluation("intent_and_slot", kind=TaskKind.INTENT_AND_SLOT),
        progress=False,
    )
    assert list(result.metrics) == ["generation"]  # no closed set: no restricted scoring
    assert result.metrics["generation"]["intent_accuracy"] == 0.5
    assert "num_intent_outside_label_set" not in result.metrics["generation"]
    assert [p["prediction"] for p in result.predictions] == ["alarm_set", "lights"]


def test_configs_parse_from_dicts():
    task = TaskEvaluation.from_dict(
        {
            "taskname": "sentiment_no",
            "labels": {"labels": ["positive", "negative"], "variants": {"positiv": "positive"}},
            "max_new_tokens": 3,
        }
    )
    assert task.kind is TaskKind.CLASSIFICATION
    assert task.labels.normalize("Positiv") == "positive"
    assert task.candidates().texts == ("positive", "negative")
    assert TaskEvaluation("i", kind="intent_and_slot", labels=INTENTS).candidates() is None  # off by default
    intent = TaskEvaluation("i", kind="intent_and_slot", labels=INTENTS, restricted=True)
    assert intent.candidates().texts == ("Intent: alarm_set\n", "Intent: iot_hue_lightoff\n")
    assert intent.candidates().score_eos is False


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"taskname": "sentiment"}, ConfigError, "classification task without a label set"),
        ({"taskname": "s", "kind": "ner", "labels": SENTIMENT_LABELS}, ConfigError, "kind='ner' is not one of"),
        ({"taskname": "s", "labels": SENTIMENT_LABELS, "max_new_tokens": 0}, ConfigError, "max_new_tokens"),
        ({"taskname": "s", "labels": {"labels": []}}, ConfigError, "labels is empty"),
        ({"taskname": "", "labels": SENTIMENT_LABELS}, ConfigError, "taskname"),
        ({"taskname": "i", "kind": "intent_and_slot", "restricted": True}, ConfigError, "restricted=True needs labels"),
    ],
)
def test_invalid_task_configs(kwargs, error, message):
    with pytest.raises(error, match=message):
        TaskEvaluation(**kwargs)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['label_set'\]"):
        TaskEvaluation.from_dict({"taskname": "s", "label_set": []})


def test_user_errors(scripted, smollm2_tokenizer):
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [SENTIMENT, INTENT])
    with pytest.raises(UnknownTaskError, match=r"records of task\(s\) \['intent_and_slot'\] have no TaskEvaluation"):
        evaluate_tasks(scripted, prompt_tokenizer, mixed_records(), TASKS[:1], progress=False)
    with pytest.raises(DuplicateTaskError, match="more than one TaskEvaluation"):
        evaluate_tasks(scripted, prompt_tokenizer, mixed_records(), [TASKS[0], *TASKS], progress=False)
    odd = [TaskRecord("sentiment", {"sentence": "x", "label": "mixed"}, "test.jsonl:7")]
    with pytest.raises(RecordError, match="test.jsonl:7: task 'sentiment': gold label 'mixed' is not in the label"):
        evaluate_tasks(scripted, prompt_tokenizer, odd, TASKS, progress=False)
    with pytest.raises(UnknownTaskError, match="no records of task 'topic'"):
        evaluate_task(scripted, prompt_tokenizer, [], TaskEvaluation("topic", labels=SENTIMENT_LABELS))
