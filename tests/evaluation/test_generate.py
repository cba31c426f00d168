"""Batched generation: only new tokens, left padding (a batch equals its rows alone), EOS, limits, model keys."""

import pytest
import torch

from peft_continual.data.collate import ContinualPromptCollator
from peft_continual.data.records import TaskRecord
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import PromptTokenizer, TokenizedExample
from peft_continual.errors import PeftContinualError
from peft_continual.evaluation.generate import generate_answers, generate_token_ids, new_tokens
from peft_continual.evaluation.model_inputs import model_inputs

from .fakes import FakeVirtualModel, ScriptedModel

PLAIN = TaskTemplate("sentiment", "Review: {sentence} Sentiment: {label}", 0, [], "label")
VIRTUAL = [
    TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 3, [3], "label"),
    TaskTemplate(
        "intent_and_slot", "<|VIRTUAL_PROMPT_0|> {utterance}\n<|VIRTUAL_PROMPT_1|>{label}", 4, [2, 2], "label"
    ),
]
SENTENCES = ["Up.", "Shares fell 5% after the profit warning.", "Flat quarter for the group", "OK", "Sales rose."]
# initializer_range 0.5: the default 0.02 makes a tiny random model repeat one token whatever the prompt.
SHARP = {"initializer_range": 0.5}


def sentiment_records(sentences=SENTENCES):
    return [TaskRecord("sentiment", {"sentence": s, "label": "neutral"}, f"r[{i}]") for i, s in enumerate(sentences)]


def tokenized(prompt_tokenizer, records):
    return [prompt_tokenizer(record, include_answer=False) for record in records]


def greedy_alone(model, ids, max_new_tokens, eos=2):
    """What transformers' generate gives for one unpadded row, new tokens only, cut at EOS."""
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=eos,
        eos_token_id=eos,
    )
    new = out[0, len(ids) :].tolist()
    return new[: new.index(eos)] if eos in new else new


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_batch_equals_each_row_alone_and_only_new_tokens_come_back(make_tiny_model, smollm2_tokenizer, family):
    model = make_tiny_model(family, **SHARP)
    examples = tokenized(PromptTokenizer(smollm2_tokenizer, [PLAIN]), sentiment_records())
    batched = generate_token_ids(
        model, examples, pad_token_id=2, eos_token_id=2, max_new_tokens=6, batch_size=5, progress=False
    )
    alone = [greedy_alone(model, example.input_ids, 6) for example in examples]
    assert batched == alone
    assert all(len(ids) == 6 for ids in batched)  # a random model does not stop: the limit holds
    assert len({tuple(ids) for ids in batched}) > 1  # the rows really differ


def test_virtual_token_model_mixed_tasks_batch_equals_rows_alone(make_tiny_model, smollm2_tokenizer):
    model = FakeVirtualModel(make_tiny_model(**SHARP), {"sentiment": 3, "intent_and_slot": 4})
    records = sentiment_records(SENTENCES[:3]) + [
        TaskRecord("intent_and_slot", {"utterance": u, "label": "x"}, f"u[{i}]")
        for i, u in enumerate(["wake me up at five am", "turn the lights off please"])
    ]
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, VIRTUAL)
    examples = tokenized(prompt_tokenizer, records)
    batched = generate_token_ids(
        model, examples, pad_token_id=2, eos_token_id=2, max_new_tokens=5, batch_size=8, progress=False
    )
    assert model.calls[0]["rows"] == 5 and set(model.calls[0]["tasknames"]) == {"sentiment", "intent_and_slot"}
    alone = [
        generate_token_ids(model, [e], pad_token_id=2, eos_token_id=2, max_new_tokens=5, progress=False)[0]
        for e in examples
    ]
    assert batched == alone
    # The prompts change the answer: the same model without its virtual rows generates something else.
    plain = [greedy_alone(model.base, e.input_ids, 5) for e in examples]
    assert batched != plain


def test_eos_cut_per_task_limits_and_decoding(tiny_llama, smollm2_tokenizer):
    templates = [PLAIN, TaskTemplate("topic", "Text: {sentence} Topic: {label}", 0, [], "label")]
    records = sentiment_records(SENTENCES[:2]) + [TaskRecord("topic", {"sentence": "Goal!", "label": "x"}, "t[0]")]
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, templates)
    answers = {
        "Review: Up. Sentiment:": " positive",
        "Review: Shares fell 5% after the profit warning. Sentiment:": " negative and more words",
        "Text: Goal! Topic:": " sports news today",
    }
    model = ScriptedModel(tiny_llama, smollm2_tokenizer, answers)
    texts = generate_answers(
        model, prompt_tokenizer, records, max_new_tokens={"sentiment": 3, "topic": 8}, batch_size=8, progress=False
    )
    assert texts == [" positive", " negative and more", " sports news today"]
    (kwargs,) = model.generate_kwargs
    assert kwargs["max_new_tokens"] == 8  # the batch runs to its largest limit; rows are cut to their own
    assert kwargs["do_sample"] is False and kwargs["eos_token_id"] == 2 and kwargs["pad_token_id"] == 2


def test_records_too_long_are_none(tiny_llama, smollm2_tokenizer):
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [PLAIN], max_length=8, on_too_long="skip")
    texts = generate_answers(tiny_llama, prompt_tokenizer, sentiment_records(), max_new_tokens=2, progress=False)
    assert [t is None for t in texts] == [False, True, True, False, False]


def test_max_new_tokens_must_cover_every_task(tiny_llama, smollm2_tokenizer):
    with pytest.raises(PeftContinualError, match=r"no entry for task\(s\) \['sentiment'\]"):
        generate_answers(
            tiny_llama,
            PromptTokenizer(smollm2_tokenizer, [PLAIN]),
            sentiment_records(),
            max_new_tokens={"topic": 3},
            progress=False,
        )


def test_new_tokens_handles_both_output_conventions():
    input_ids = torch.tensor([[2, 5, 6], [7, 8, 9]])
    assert new_tokens(torch.tensor([[2, 5, 6, 10], [7, 8, 9, 11]]), input_ids).tolist() == [[10], [11]]
    assert new_tokens(torch.tensor([[10, 12], [11, 13]]), input_ids).tolist() == [[10, 12], [11, 13]]


def batch_of(*virtual_counts):
    examples = [
        TokenizedExample([5] * 4, [-100] * 4, list(range(n)), f"t{i}", "x") for i, n in enumerate(virtual_counts)
    ]
    return ContinualPromptCollator(pad_token_id=0)(examples)


def test_model_inputs_rule():
    plain, mixed = batch_of(0, 0), batch_of(0, 2)
    assert set(model_inputs(plain)) == {"input_ids", "attention_mask"}
    assert set(model_inputs(mixed)) == {"input_ids", "attention_mask", "virtual_token_mask", "tasknames"}
    assert set(model_inputs(plain, pass_virtual_tokens=True)) == set(model_inputs(mixed))
    assert set(model_inputs(plain, pass_virtual_tokens=False)) == {"input_ids", "attention_mask"}
    with pytest.raises(PeftContinualError, match=r"pass_virtual_tokens=False but task\(s\) \['t1'\] have virtual"):
        model_inputs(mixed, pass_virtual_tokens=False)


def test_model_training_flag_is_restored(tiny_llama, smollm2_tokenizer):
    tiny_llama.train()
    examples = tokenized(PromptTokenizer(smollm2_tokenizer, [PLAIN]), sentiment_records(SENTENCES[:1]))
    generate_token_ids(tiny_llama, examples, pad_token_id=2, eos_token_id=2, max_new_tokens=1, progress=False)
    assert tiny_llama.training
