"""The evaluation path on the real ``ContinualPromptModel`` (tiny Llama base): mixed-task batches, hand-checked."""

import pytest
import torch
from peft import get_peft_model

from peft_continual.data.collate import ContinualPromptCollator
from peft_continual.data.records import TaskRecord
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.evaluation.generate import generate_answers
from peft_continual.evaluation.labels import LabelNormalization
from peft_continual.evaluation.report import evaluate_tasks
from peft_continual.evaluation.restricted import score_candidates
from peft_continual.evaluation.tasks import TaskEvaluation
from peft_continual.tuners.continual_prompt import ContinualPromptConfig

TEMPLATES = [
    TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 4, [4], "label"),
    TaskTemplate("topic", "{text} <|VIRTUAL_PROMPT_0|> topic <|VIRTUAL_PROMPT_1|> answer: {label}", 5, [2, 3], "label"),
]
LABELS = {"sentiment": ["positive", "negative", "neutral"], "topic": ["economy", "sports"]}
RECORDS = [
    TaskRecord("sentiment", {"sentence": "Profits rose 5%.", "label": "positive"}, "r0"),
    TaskRecord("topic", {"text": "The central bank cut rates.", "label": "economy"}, "r1"),
    TaskRecord("sentiment", {"sentence": "Shares fell sharply after the warning.", "label": "negative"}, "r2"),
    TaskRecord("topic", {"text": "A late goal won it.", "label": "sports"}, "r3"),
]


@pytest.fixture
def peft_model(make_tiny_model, smollm2_tokenizer):
    config = ContinualPromptConfig(templates=TEMPLATES).tokenize_tasknames(smollm2_tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return get_peft_model(make_tiny_model(initializer_range=0.5), config).eval()


def test_generation_batch_equals_rows_alone(peft_model, smollm2_tokenizer):
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, TEMPLATES)
    batched = generate_answers(peft_model, prompt_tokenizer, RECORDS, max_new_tokens=4, progress=False)
    alone = [generate_answers(peft_model, prompt_tokenizer, [r], max_new_tokens=4, progress=False)[0] for r in RECORDS]
    assert batched == alone
    assert all(text for text in batched)


def test_restricted_scores_equal_the_hand_computation(peft_model, smollm2_tokenizer):
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, TEMPLATES)
    choices = score_candidates(peft_model, prompt_tokenizer, RECORDS, LABELS, batch_size=64, progress=False)
    collate = ContinualPromptCollator(pad_token_id=smollm2_tokenizer.pad_token_id)
    for record, choice in zip(RECORDS, choices, strict=True):
        expected = []
        for label in LABELS[record.taskname]:
            example = prompt_tokenizer(TaskRecord(record.taskname, {**record.fields, "label": label}, "x"))
            answer = smollm2_tokenizer(f" {label}", add_special_tokens=False)["input_ids"] + [2]  # + EOS
            assert example.input_ids[-len(answer) :] == answer
            batch = collate([example])  # one row, no padding
            batch.pop("labels")
            with torch.no_grad():
                log_probs = torch.log_softmax(peft_model(**batch).logits[0].float(), dim=-1)
            start = len(example.input_ids) - len(answer)
            expected.append(sum(log_probs[start - 1 + j, t].item() for j, t in enumerate(answer)))
        assert choice.scores == pytest.approx(expected, abs=1e-4)


def test_evaluate_tasks_runs_mixed_tasks(peft_model, smollm2_tokenizer):
    tasks = [
        TaskEvaluation(name, labels=LabelNormalization(labels), max_new_tokens=3) for name, labels in LABELS.items()
    ]
    results = evaluate_tasks(peft_model, PromptTokenizer(smollm2_tokenizer, TEMPLATES), RECORDS, tasks, progress=False)
    for name in LABELS:
        assert results[name].metrics["generation"]["num_examples"] == 2
        assert results[name].metrics["restricted"]["num_examples"] == 2
