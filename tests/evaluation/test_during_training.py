"""``ValidationAccuracy``: the per-task scores ``Trainer`` sees at each evaluation equal the final evaluation's."""

import pytest
import torch
from peft import get_peft_model

from peft_continual.data.records import TaskRecord
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.errors import ConfigError, UnknownTaskError
from peft_continual.evaluation.during_training import ValidationAccuracy
from peft_continual.evaluation.report import evaluate_tasks
from peft_continual.evaluation.tasks import TaskEvaluation
from peft_continual.tuners.continual_prompt import ContinualPromptConfig

TEMPLATES = [
    TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 4, [4], "label"),
    TaskTemplate("assistant", "{utterance}<|VIRTUAL_PROMPT_0|>\n{label}", 3, [3], "label"),
]
TASKS = [
    TaskEvaluation("sentiment", labels={"labels": ["positive", "negative", "neutral"]}, max_new_tokens=3),
    TaskEvaluation(
        "assistant", kind="intent_and_slot", labels={"labels": ["alarm_set", "weather_query"]}, max_new_tokens=12
    ),
]
RECORDS = [
    TaskRecord("sentiment", {"sentence": f"Profits rose {i}%.", "label": label}, f"v{i}")
    for i, label in enumerate(["positive", "negative", "neutral"] * 2)  # any constant choice scores 1/3
] + [
    TaskRecord(
        "assistant", {"utterance": f"wake me at {i}", "label": f"Intent: {intent}\nSlots: time({i} am)"}, f"a{i}"
    )
    for i, intent in enumerate(["alarm_set", "weather_query"] * 3)
]


@pytest.fixture
def training_model(make_tiny_model, smollm2_tokenizer):
    """A p-tuning model mid-training: live encoder (not frozen into the table), in train mode."""
    config = ContinualPromptConfig(templates=TEMPLATES, encoder_type="mlp").tokenize_tasknames(smollm2_tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return get_peft_model(make_tiny_model(initializer_range=0.5), config).train()


def test_auto_mode_scores_classification_by_restricted_choice_and_intents_by_generation(
    training_model, smollm2_tokenizer
):
    prompts = PromptTokenizer(smollm2_tokenizer, TEMPLATES)
    metrics = ValidationAccuracy(prompts, RECORDS, TASKS, batch_size=2)(training_model)

    assert training_model.training  # Trainer goes on training after the evaluation
    sentiment = evaluate_tasks(training_model, prompts, RECORDS[:6], TASKS[:1], generation=False, progress=False)
    assistant = evaluate_tasks(training_model, prompts, RECORDS[6:], TASKS[1:], restricted=False, progress=False)
    sentiment_accuracy = sentiment["sentiment"].metrics["restricted"]["accuracy"]
    intent = assistant["assistant"].metrics["generation"]
    assert sentiment_accuracy > 0  # generation from the random model gets none right: the scores are restricted
    assert metrics == {
        "eval_sentiment_accuracy": sentiment_accuracy,
        "eval_assistant_accuracy": intent["intent_accuracy"],
        "eval_assistant_slot_f1": intent["slot_f1"],
        "eval_task_accuracy": (sentiment_accuracy + intent["intent_accuracy"]) / 2,
    }


def test_restricted_mode_scores_every_task_by_its_candidates(training_model, smollm2_tokenizer):
    prompts = PromptTokenizer(smollm2_tokenizer, TEMPLATES)
    tasks = [TASKS[0], TaskEvaluation(**{**vars(TASKS[1]), "restricted": True})]
    metrics = ValidationAccuracy(prompts, RECORDS, tasks, mode="restricted")(training_model, "dev")

    expected = evaluate_tasks(training_model, prompts, RECORDS, tasks, generation=False, progress=False)
    assert expected["assistant"].metrics["restricted"]["intent_accuracy"] > 0  # 2 intents, 3 records each
    assert metrics == {
        "dev_sentiment_accuracy": expected["sentiment"].metrics["restricted"]["accuracy"],
        "dev_assistant_accuracy": expected["assistant"].metrics["restricted"]["intent_accuracy"],
        "dev_task_accuracy": pytest.approx(
            (
                expected["sentiment"].metrics["restricted"]["accuracy"]
                + expected["assistant"].metrics["restricted"]["intent_accuracy"]
            )
            / 2
        ),
    }


def test_bad_settings_are_refused_when_built(smollm2_tokenizer):
    prompts = PromptTokenizer(smollm2_tokenizer, TEMPLATES)
    with pytest.raises(ConfigError, match=r"mode='best'.*auto"):
        ValidationAccuracy(prompts, RECORDS, TASKS, mode="best")
    with pytest.raises(ConfigError, match=r"\['assistant'\] have no restricted scoring"):
        ValidationAccuracy(prompts, RECORDS, TASKS, mode="restricted")  # intents: restricted is off by default
    with pytest.raises(UnknownTaskError, match=r"\['assistant'\] have no TaskEvaluation"):
        ValidationAccuracy(prompts, RECORDS, TASKS[:1])
    with pytest.raises(ConfigError, match="at least one held-out record"):
        ValidationAccuracy(prompts, [], TASKS)
