"""The check before a run: every stage once on a few rows, our error naming the stage and the cause on failure, and
the base model left as it was found."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from peft_continual import ContinualPromptConfig, PromptTokenizer, TaskRecord, TaskTemplate
from peft_continual.errors import PreflightError, UnknownTaskError
from peft_continual.precision import Precision, PrecisionChoice
from peft_continual.preflight import check_continual_run
from tests.conftest import SMOLLM2_TOKENIZER_DIR, build_tiny_model

ROUND_1 = [
    TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|>{sentence}\nSentiment: {label}", 3, [3], "label"),
    TaskTemplate("topic", "{text}<|VIRTUAL_PROMPT_0|>\nTopic: {label}", 2, [2], "label"),
]
ROUND_2 = [TaskTemplate("sentiment_no", "<|VIRTUAL_PROMPT_0|>{sentence}\nSentiment: {label}", 4, [4], "label")]
RECORDS = {
    "sentiment": TaskRecord("sentiment", {"sentence": "Profit rose 5%.", "label": "positive"}, "records[0]"),
    "topic": TaskRecord("topic", {"text": "The match ended 2-1.", "label": "sports"}, "records[1]"),
    "sentiment_no": TaskRecord("sentiment_no", {"sentence": "Filmen var kjedelig.", "label": "negative"}, "records[2]"),
}
FP32 = PrecisionChoice("cpu", Precision.FP32, "test")
BF16 = PrecisionChoice("cpu", Precision.BF16, "test")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(SMOLLM2_TOKENIZER_DIR)


def check(base, tokenizer, choice=FP32):
    prompts = PromptTokenizer(tokenizer, ROUND_1 + ROUND_2)
    config = ContinualPromptConfig(task_type="CAUSAL_LM", templates=ROUND_1, encoder_type="lstm").tokenize_tasknames(
        tokenizer
    )
    plain = PromptTokenizer(tokenizer, [t.without_virtual_tokens() for t in ROUND_1])
    return check_continual_run(
        base,
        tokenizer,
        config,
        [ROUND_1, ROUND_2],
        [prompts.tokenize_records([RECORDS["sentiment"], RECORDS["topic"]]).examples,
         prompts.tokenize_records([RECORDS["sentiment_no"]] * 2).examples],
        [prompts(record, include_answer=False) for record in RECORDS.values()],
        [plain(RECORDS["sentiment"], include_answer=False)],
        choice,
    )  # fmt: skip


@pytest.mark.integration
def test_every_stage_runs_once_and_the_base_is_left_as_found(tokenizer):
    base = build_tiny_model()
    before = {name: (p.requires_grad, p.detach().clone()) for name, p in base.named_parameters()}
    line = check(base, tokenizer)
    stages = ["round 1: build the model", "round 1: one training step (fp32)", "round 2: build the model",
              "round 2: one training step (fp32)", "generate from the frozen table, tasks mixed",
              "generate from the plain base model"]  # fmt: skip
    assert line.startswith("check before the run passed: ") and all(stage in line for stage in stages)
    assert not base.training and "peft_config" not in vars(base)
    for name, parameter in base.named_parameters():
        assert parameter.requires_grad == before[name][0] and parameter.grad is None
        assert torch.equal(parameter, before[name][1]), name


def test_a_machine_that_cannot_run_a_stage_gets_our_error_naming_stage_precision_and_cause(tokenizer, monkeypatch):
    """What a CPU without a bf16 LSTM kernel raised at the demo's first step, now raised by the check."""
    base = build_tiny_model()
    message = "could not create a primitive descriptor for the LSTM forward propagation primitive."

    def crash(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(torch.nn.LSTM, "forward", crash)
    with pytest.raises(PreflightError) as failed:
        check(base, tokenizer, BF16)
    text = str(failed.value)
    assert "'round 1: one training step (bf16)'" in text and "RuntimeError: could not create a primitive" in text
    assert "--precision fp32" in text and "Nothing long has run yet" in text


def test_a_non_finite_loss_fails_the_check(tokenizer, monkeypatch):
    base = build_tiny_model()
    monkeypatch.setattr("peft_continual.preflight.loss_at_positions", lambda logits, *args: logits.sum() * float("nan"))
    with pytest.raises(PreflightError, match=r"gave a loss of nan"):
        check(base, tokenizer)


def test_our_own_errors_pass_through_unchanged(tokenizer):
    base = build_tiny_model()
    prompts = PromptTokenizer(tokenizer, ROUND_1)
    config = ContinualPromptConfig(task_type="CAUSAL_LM", templates=ROUND_1[:1]).tokenize_tasknames(tokenizer)
    examples = prompts.tokenize_records([RECORDS["topic"]]).examples  # a task the model of round 1 does not have
    with pytest.raises(UnknownTaskError):
        check_continual_run(base, tokenizer, config, [ROUND_1[:1]], [examples], [], [], FP32)
