"""PEFT's own prompt tuning and p-tuning, evaluated through ``PrependedPrompts``: the same numbers as PEFT's model."""

import pytest
import torch
from peft import PromptEncoderConfig, PromptTuningConfig, get_peft_model

from peft_continual.data.records import TaskRecord
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.errors import PeftContinualError
from peft_continual.evaluation import restricted
from peft_continual.evaluation.generate import generate_answers
from peft_continual.evaluation.prepended_prompts import PrependedPrompts
from peft_continual.evaluation.restricted import score_candidates

TEMPLATE = TaskTemplate("sentiment", "{sentence} sentiment: {label}", 0, [], "label")
LABELS = {"sentiment": ["positive", "negative", "neutral"]}
RECORDS = [
    TaskRecord("sentiment", {"sentence": "Profits rose 5%.", "label": "positive"}, "r0"),
    TaskRecord("sentiment", {"sentence": "Shares fell sharply after the profit warning.", "label": "negative"}, "r1"),
    TaskRecord("sentiment", {"sentence": "The meeting is on Monday.", "label": "neutral"}, "r2"),
]
CONFIGS = {
    "prompt_tuning": lambda: PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5),
    "p_tuning_lstm": lambda: PromptEncoderConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=5, encoder_reparameterization_type="LSTM", encoder_hidden_size=16
    ),
}


@pytest.fixture(params=sorted(CONFIGS))
def peft_model(request, make_tiny_model):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = get_peft_model(make_tiny_model(initializer_range=0.5), CONFIGS[request.param]())
        for parameter in model.prompt_encoder.parameters():  # away from the init, so the prompts matter
            parameter.data.add_(0.3 * torch.randn_like(parameter))
    return model.eval()


def test_logits_are_peft_forwards_without_the_prompt_rows(peft_model, smollm2_tokenizer):
    ids = smollm2_tokenizer("Profits rose 5%. sentiment:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits[:, 5:]
        got = PrependedPrompts(peft_model)(input_ids=ids).logits
    assert got.shape == ids.shape + (expected.shape[-1],)
    torch.testing.assert_close(got, expected)


def test_restricted_scores_from_candidate_trees_equal_full_forwards(peft_model, smollm2_tokenizer, monkeypatch):
    model = PrependedPrompts(peft_model)
    tokenizer = PromptTokenizer(smollm2_tokenizer, [TEMPLATE])
    trees = score_candidates(model, tokenizer, RECORDS, LABELS, batch_size=8, progress=False)
    monkeypatch.setattr(restricted, "accepts_tree_masks", lambda model: False)  # one full forward per candidate
    full = score_candidates(model, tokenizer, RECORDS, LABELS, batch_size=8, progress=False)
    for tree, forward in zip(trees, full, strict=True):
        torch.testing.assert_close(torch.tensor(tree.scores), torch.tensor(forward.scores), atol=1e-4, rtol=1e-4)
    # the prompts are part of the score: without them the scores differ
    plain = score_candidates(peft_model.get_base_model(), tokenizer, RECORDS, LABELS, batch_size=8, progress=False)
    assert any(
        abs(a - b) > 1e-3 for t, p in zip(trees, plain, strict=True) for a, b in zip(t.scores, p.scores, strict=True)
    )


@pytest.mark.integration
def test_generation_is_greedy_decoding_by_pefts_own_forward_and_a_batch_its_rows_alone(peft_model, smollm2_tokenizer):
    model = PrependedPrompts(peft_model)
    tokenizer = PromptTokenizer(smollm2_tokenizer, [TEMPLATE])
    batched = generate_answers(model, tokenizer, RECORDS, max_new_tokens=4, progress=False)
    alone = [generate_answers(model, tokenizer, [r], max_new_tokens=4, progress=False)[0] for r in RECORDS]
    assert batched == alone
    ids = smollm2_tokenizer("Profits rose 5%. sentiment:", return_tensors="pt")["input_ids"]
    sequence = ids
    with torch.no_grad():
        for _ in range(4):  # the whole sequence through PEFT's forward each time: no cache involved
            sequence = torch.cat([sequence, peft_model(input_ids=sequence).logits[:, -1:].argmax(-1)], dim=1)
    ours = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert ours[0].tolist() == sequence[0, ids.shape[1] :].tolist()


def test_a_model_that_is_not_prompt_learning_is_refused(tiny_llama):
    from peft import LoraConfig

    lora = get_peft_model(tiny_llama, LoraConfig(task_type="CAUSAL_LM", target_modules=["q_proj"]))
    with pytest.raises(PeftContinualError, match="prompt-tuning or p-tuning"):
        PrependedPrompts(lora)


def test_periodic_evaluation_scores_pefts_model_through_the_view_and_leaves_it_training(peft_model, smollm2_tokenizer):
    """``Trainer`` hands ``ValidationAccuracy`` the PEFT model itself, in training mode: it must score the text's
    logits (PEFT's forward on a candidate tree's cache crashed: its 2D prompt mask against the tree's 4D mask)."""
    from peft_continual.evaluation import LabelNormalization, TaskEvaluation, ValidationAccuracy
    from peft_continual.evaluation.prepended_prompts import evaluation_view

    tokenizer = PromptTokenizer(smollm2_tokenizer, [TEMPLATE])
    task = TaskEvaluation("sentiment", labels=LabelNormalization(LABELS["sentiment"]))
    accuracy = ValidationAccuracy(tokenizer, RECORDS, [task], mode="restricted")
    expected = score_candidates(PrependedPrompts(peft_model), tokenizer, RECORDS, LABELS, batch_size=8, progress=False)
    peft_model.train()
    metrics = accuracy(peft_model)
    assert metrics["eval_sentiment_accuracy"] == pytest.approx(
        sum(choice.text == record.fields["label"] for choice, record in zip(expected, RECORDS, strict=True)) / 3
    )
    assert peft_model.training and peft_model.prompt_encoder.training
    assert evaluation_view(peft_model.get_base_model()) is peft_model.get_base_model()
