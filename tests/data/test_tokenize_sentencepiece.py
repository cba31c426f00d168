"""A Llama-style tokenizer (SentencePiece-like Metaspace, BOS added): BOS first, answer tokens as in running text."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from peft_continual.data.records import TaskRecord
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import IGNORE_INDEX, PromptTokenizer

CORPUS = ["Profit rose sharply in the quarter sentiment: positive", "Sales fell sentiment: negative"] * 20


@pytest.fixture(scope="module")
def llama_style_tokenizer():
    """A tiny BPE tokenizer trained here, with Llama's conventions: ``▁`` for spaces, ``<s>`` added in front."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    backend.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"]))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_bos_comes_first_and_the_answer_is_tokenized_as_in_running_text(llama_style_tokenizer):
    tokenizer = llama_style_tokenizer
    template = TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 3, [3], "label")
    record = TaskRecord("sentiment", {"sentence": "Profit rose", "label": "positive"}, "r[0]")
    prompt_tokenizer = PromptTokenizer(tokenizer, [template])
    example = prompt_tokenizer(record)
    assert example.input_ids[0] == tokenizer.bos_token_id
    assert example.virtual_positions == [1, 2, 3]
    answer = [label for label in example.labels if label != IGNORE_INDEX][:-1]
    running_text = tokenizer("Profit rose sentiment: positive", add_special_tokens=False)["input_ids"]
    assert running_text[-len(answer) :] == answer
    assert tokenizer.convert_ids_to_tokens(answer)[0].startswith("▁")
    generation = prompt_tokenizer(record, include_answer=False)
    assert example.input_ids[: len(generation.input_ids)] == generation.input_ids
    assert tokenizer.decode(generation.input_ids[4:]) == "Profit rose sentiment:"
