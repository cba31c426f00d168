"""Contextual calibration: the prompt's answer to content-free inputs is measured through the task's own template
and divided out of restricted choice."""

import math

import pytest
import torch

from peft_continual.data.records import TaskRecord
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.errors import ConfigError
from peft_continual.evaluation.calibration import CONTENT_FREE_TEXTS, content_free_log_prior, content_free_records
from peft_continual.evaluation.labels import LabelNormalization
from peft_continual.evaluation.report import evaluate_tasks
from peft_continual.evaluation.restricted import score_candidates
from peft_continual.evaluation.tasks import TaskEvaluation

SENTIMENT = TaskTemplate("sentiment", "Review: {sentence} ({source}) Sentiment: {label}", 0, [], "label")
LABELS = LabelNormalization(["positive", "negative", "neutral"])
SENTENCES = ["Profit rose 5%.", "Shares fell sharply.", "The meeting is on Monday.", "Sales doubled.",
             "The firm cut 300 jobs.", "Results were in line.", "Margins improved.", "Debt grew again."]  # fmt: skip


def records():
    return [
        TaskRecord("sentiment", {"sentence": s, "source": "wire", "label": LABELS.labels[i % 3]}, f"test[{i}]")
        for i, s in enumerate(SENTENCES)
    ]


def leaning_to(model, tokenizer, word, bias=12.0):
    """``model`` with ``bias`` added to the logit of ``word``'s first token at every position: a prompt that learned
    to answer one class whatever the input."""
    token = tokenizer(f" {word}", add_special_tokens=False)["input_ids"][0]
    added = torch.zeros(model.config.vocab_size)
    added[token] = bias
    model.lm_head.register_forward_hook(lambda module, inputs, logits: logits + added.to(logits.dtype))
    return model


def test_each_content_free_text_fills_every_input_field_once(smollm2_tokenizer):
    made = content_free_records(PromptTokenizer(smollm2_tokenizer, [SENTIMENT]), "sentiment")
    assert [record.fields for record in made] == [{"sentence": text, "source": text} for text in CONTENT_FREE_TEXTS]
    assert CONTENT_FREE_TEXTS == ("N/A", "", "[MASK]")  # the paper's three


def test_the_prior_is_the_mean_over_content_free_inputs_of_the_candidates_distribution(tiny_llama, smollm2_tokenizer):
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [SENTIMENT])
    candidates = TaskEvaluation("sentiment", labels=LABELS).candidates()
    prior = content_free_log_prior(tiny_llama, prompt_tokenizer, "sentiment", candidates).exp()
    by_hand = []
    for text in ("N/A", "", "[MASK]"):
        record = TaskRecord("sentiment", {"sentence": text, "source": text}, text)
        (choice,) = score_candidates(tiny_llama, prompt_tokenizer, [record], {"sentiment": candidates}, progress=False)
        by_hand.append(torch.tensor(choice.scores).softmax(dim=0))
    torch.testing.assert_close(prior, torch.stack(by_hand).mean(dim=0))
    assert prior.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_a_prompt_that_answers_one_class_for_every_input_is_corrected(tiny_llama, smollm2_tokenizer):
    """Leaning hard to `neutral`, restricted choice answers `neutral` for all 8 records; calibration divides the lean
    out (the reported prior puts nearly all its mass on `neutral`) and chooses, per record, the candidate whose score
    minus the log prior is highest."""
    model = leaning_to(tiny_llama, smollm2_tokenizer, "neutral")
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [SENTIMENT])
    task = TaskEvaluation("sentiment", labels=LABELS, calibrate=True)
    (result,) = evaluate_tasks(model, prompt_tokenizer, records(), [task], generation=False, progress=False).values()
    assert [p["restricted"] for p in result.predictions] == ["neutral"] * len(SENTENCES)
    prior = result.metrics["calibrated"]["prior"]
    assert prior["neutral"] > 0.99 and sum(prior.values()) == pytest.approx(1.0, abs=1e-6)
    scored = score_candidates(model, prompt_tokenizer, records(), {"sentiment": task.candidates()}, progress=False)
    log_prior = torch.tensor([prior[label] for label in LABELS.labels]).log()
    expected = [LABELS.labels[int(torch.argmax(torch.tensor(c.scores) - log_prior))] for c in scored]
    assert [p["calibrated"] for p in result.predictions] == expected
    assert set(expected) != {"neutral"}
    gold = [r.fields["label"] for r in records()]
    accuracy = sum(e == g for e, g in zip(expected, gold, strict=True)) / len(gold)
    assert result.metrics["calibrated"]["accuracy"] == pytest.approx(accuracy)
    assert result.metrics["restricted"]["accuracy"] == pytest.approx(2 / 8)  # the 2 neutral records


def test_without_calibrate_nothing_is_calibrated(tiny_llama, smollm2_tokenizer):
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [SENTIMENT])
    task = TaskEvaluation("sentiment", labels=LABELS)
    (result,) = evaluate_tasks(
        tiny_llama, prompt_tokenizer, records(), [task], generation=False, progress=False
    ).values()
    assert "calibrated" not in result.metrics and "calibrated" not in result.predictions[0]


def test_calibration_needs_restricted_choice():
    with pytest.raises(ConfigError, match="calibrate=True corrects restricted choice"):
        TaskEvaluation("intent", kind="intent_and_slot", calibrate=True)
    with pytest.raises(ConfigError, match="calibrate must be true or false"):
        TaskEvaluation("sentiment", labels=LABELS, calibrate="yes")


def test_a_candidate_far_below_the_others_on_content_free_inputs_keeps_a_finite_prior(monkeypatch, smollm2_tokenizer):
    """Summed log-probabilities of long candidates (64 intents) can differ by hundreds of nats: exp() of the
    difference underflows, and a log prior of -inf would make that candidate win every record."""
    from peft_continual.evaluation import calibration
    from peft_continual.evaluation.restricted import CandidateSet, RestrictedChoice

    scores = {"N/A": [0.0, -200.0], "": [0.0, -300.0], "[MASK]": [0.0, -250.0]}
    monkeypatch.setattr(
        calibration, "score_candidates",
        lambda model, tokenizer, records, candidates, **kwargs: [
            RestrictedChoice(0, "a", scores[record.fields["sentence"]]) for record in records
        ],
    )  # fmt: skip
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [SENTIMENT])
    candidates = CandidateSet(("a", "b"))
    prior = calibration.content_free_log_prior(None, prompt_tokenizer, "sentiment", candidates)
    assert torch.isfinite(prior).all()
    assert prior[1].item() == pytest.approx(-200.0 - math.log(3), abs=1e-3)  # the largest of the three dominates
    choice = calibration.calibrate_choice(RestrictedChoice(0, "a", [0.0, -150.0]), prior, candidates)
    assert choice.text == "b"  # 150 nats under `a` here, 200 under it with no content: the input speaks for `b`


def test_batch_calibration_divides_out_the_mean_answer_of_the_records_evaluated(tiny_llama, smollm2_tokenizer):
    """``calibration_prior: inputs``: the prior is the mean over the task's own records of the candidates' softmax
    (their inputs, never their labels), so no content-free input is scored."""
    model = leaning_to(tiny_llama, smollm2_tokenizer, "neutral")
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [SENTIMENT])
    task = TaskEvaluation("sentiment", labels=LABELS, calibrate=True, calibration_prior="inputs")
    (result,) = evaluate_tasks(model, prompt_tokenizer, records(), [task], generation=False, progress=False).values()
    scored = score_candidates(model, prompt_tokenizer, records(), {"sentiment": task.candidates()}, progress=False)
    mean = torch.stack([torch.tensor(c.scores, dtype=torch.float64).softmax(dim=0) for c in scored]).mean(dim=0)
    prior = result.metrics["calibrated"]["prior"]
    assert result.metrics["calibrated"]["prior_from"] == "inputs"
    torch.testing.assert_close(torch.tensor([prior[label] for label in LABELS.labels], dtype=torch.float64), mean)
    expected = [LABELS.labels[int(torch.argmax(torch.tensor(c.scores) - mean.log().float()))] for c in scored]
    assert [p["calibrated"] for p in result.predictions] == expected and set(expected) != {"neutral"}
    with pytest.raises(ConfigError, match="calibration_prior='test' is not one of"):
        TaskEvaluation("sentiment", labels=LABELS, calibrate=True, calibration_prior="test")
