"""Restricted-choice scoring equals a hand computation on a tiny model, batched over records and candidates."""

import pytest
import torch

from peft_continual.data.records import TaskRecord
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.errors import ConfigError, UnknownTaskError
from peft_continual.evaluation.restricted import CandidateSet, score_candidates

from .fakes import FakeVirtualModel

PLAIN = TaskTemplate("sentiment", "Review: {sentence} Sentiment: {label}", 0, [], "label")
VIRTUAL = TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 3, [3], "label")
LABELS = ["positive", "negative", "neutral"]
SENTENCES = ["Up.", "Shares fell 5% after the profit warning.", "Flat quarter"]
EOS = 2


def records(sentences=SENTENCES, taskname="sentiment"):
    return [TaskRecord(taskname, {"sentence": s, "label": "neutral"}, f"r[{i}]") for i, s in enumerate(sentences)]


def hand_score(forward, prompt_ids, answer_ids):
    """sum_j log p(answer_j | prompt, answer_<j) for one unpadded sequence, straight from the logits."""
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(forward(ids).float(), dim=-1)[0]  # (L, V)
    return sum(log_probs[len(prompt_ids) - 1 + j, token].item() for j, token in enumerate(answer_ids))


def test_plain_model_scores_equal_the_hand_computation(tiny_llama, smollm2_tokenizer):
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [PLAIN])
    choices = score_candidates(
        tiny_llama, prompt_tokenizer, records(), {"sentiment": LABELS}, batch_size=64, progress=False
    )
    for sentence, choice in zip(SENTENCES, choices, strict=True):
        prompt = smollm2_tokenizer(f"Review: {sentence} Sentiment:", add_special_tokens=False)["input_ids"]
        expected = []
        for label in LABELS:
            answer = smollm2_tokenizer(f" {label}", add_special_tokens=False)["input_ids"] + [EOS]  # EOS is scored
            expected.append(hand_score(lambda ids: tiny_llama(ids).logits, prompt, answer))
        assert choice.scores == pytest.approx(expected, abs=1e-4)
        assert choice.index == max(range(3), key=expected.__getitem__)
        assert choice.text == LABELS[choice.index]


def test_virtual_token_model_scores_equal_the_hand_computation(tiny_llama, smollm2_tokenizer):
    model = FakeVirtualModel(tiny_llama, {"sentiment": 3})
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [VIRTUAL])
    candidates = {"sentiment": CandidateSet(tuple(LABELS), score_eos=False)}
    # batch_size 2: the 3 prompts span two forwards with padding inside the first; the labels are one token each and
    # the EOS is not scored, so every score comes from the prompts' last logits and no continuation runs
    choices = score_candidates(model, prompt_tokenizer, records(), candidates, batch_size=2, progress=False)
    assert [(call["rows"], call["cached"]) for call in model.calls] == [(2, False), (1, False)]

    def forward(ids):  # the model on one unpadded row whose first three positions are the virtual tokens
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[0, :3] = True
        return model(ids, torch.ones_like(ids), mask, ["sentiment"]).logits

    for record, choice in zip(records(), choices, strict=True):
        example = prompt_tokenizer(record, include_answer=False)
        assert example.virtual_positions == [0, 1, 2]
        expected = []
        for label in LABELS:
            answer = smollm2_tokenizer(f" {label}", add_special_tokens=False)["input_ids"]  # score_eos=False
            expected.append(hand_score(forward, example.input_ids, answer))
        assert choice.scores == pytest.approx(expected, abs=1e-4)


def test_all_prompts_share_one_forward_and_all_continuations_another(tiny_llama, smollm2_tokenizer):
    model = FakeVirtualModel(tiny_llama, {"sentiment": 3})
    choices = score_candidates(
        model,
        PromptTokenizer(smollm2_tokenizer, [VIRTUAL]),
        records(),
        {"sentiment": LABELS},
        batch_size=64,
        progress=False,
    )
    # 3 prompts once each, then from the cache one tree per prompt: its 3 candidates' one-token answers as 3 nodes,
    # whose logits score the EOS after each
    assert [(call["rows"], call["cached"]) for call in model.calls] == [(3, False), (3, True)]
    assert model.calls[1]["length"] == 3
    assert len(choices) == 3


def test_scores_do_not_depend_on_batching(tiny_llama, smollm2_tokenizer):
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [PLAIN])
    together = score_candidates(tiny_llama, prompt_tokenizer, records(), {"sentiment": LABELS}, progress=False)
    one_by_one = score_candidates(
        tiny_llama, prompt_tokenizer, records(), {"sentiment": LABELS}, batch_size=1, progress=False
    )
    for a, b in zip(together, one_by_one, strict=True):
        assert a.scores == pytest.approx(b.scores, abs=1e-4)


def test_eos_makes_a_difference_between_a_label_and_its_extension(tiny_llama, smollm2_tokenizer):
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [PLAIN])
    with_eos = score_candidates(
        tiny_llama, prompt_tokenizer, records()[:1], {"sentiment": ["pos", "positive"]}, progress=False
    )[0]
    without = score_candidates(
        tiny_llama,
        prompt_tokenizer,
        records()[:1],
        {"sentiment": CandidateSet(("pos", "positive"), score_eos=False)},
        progress=False,
    )[0]
    assert with_eos.scores != pytest.approx(without.scores)


def test_too_long_records_get_none(tiny_llama, smollm2_tokenizer):
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [PLAIN], max_length=9, on_too_long="skip")
    choices = score_candidates(tiny_llama, prompt_tokenizer, records(), {"sentiment": LABELS}, progress=False)
    assert [c is None for c in choices] == [False, True, False]


def test_errors(tiny_llama, smollm2_tokenizer):
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [PLAIN])
    with pytest.raises(UnknownTaskError, match=r"r\[0\]: no candidates for task 'sentiment'"):
        score_candidates(tiny_llama, prompt_tokenizer, records(), {}, progress=False)
    with pytest.raises(UnknownTaskError, match="candidates given for task 'topic', which has no template"):
        score_candidates(tiny_llama, prompt_tokenizer, records(), {"topic": ["a"]}, progress=False)
    with pytest.raises(ConfigError, match="non-empty strings"):
        CandidateSet(("a", ""))
    with pytest.raises(ConfigError, match="got the string"):
        CandidateSet("abc")
    no_answer = TaskTemplate("sentiment", "Review: {sentence}", 0, [], None, answer_only_loss=False)
    with pytest.raises(ConfigError, match="no answer_field"):
        score_candidates(
            tiny_llama,
            PromptTokenizer(smollm2_tokenizer, [no_answer]),
            records(),
            {"sentiment": LABELS},
            progress=False,
        )
