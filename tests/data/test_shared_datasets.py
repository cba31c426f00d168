"""Every dataset in ``../shared/data`` goes through the whole pipeline (all splits) with a template of its own."""

import pytest

from peft_continual.data.collate import ContinualPromptCollator
from peft_continual.data.records import check_records
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import PromptTokenizer

from .shared_data import read_shared

DATASET_TEMPLATES = {
    "financial_phrasebank": ("<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 10, [10]),
    "fiqa_sentiment": (
        "<|VIRTUAL_PROMPT_0|>Headline or post: {sentence}\n<|VIRTUAL_PROMPT_1|>Sentiment: {label}",
        8,
        [4, 4],
    ),
    "assistant_nlu": ("<|VIRTUAL_PROMPT_0|> {utterance} \n<|VIRTUAL_PROMPT_1|>{label}", 12, [8, 4]),
    "xsid_da": ("Ytring: {utterance}<|VIRTUAL_PROMPT_0|>\n{label}", 6, [6]),
    "norec_sentence_no": ("<|VIRTUAL_PROMPT_0|> Setning: {sentence} Sentiment: {label}", 10, [10]),
    "sst2_lmbff": ("{sentence} <|VIRTUAL_PROMPT_0|> It was {label}", 4, [4]),
    "trec_lmbff": ("Question: {sentence} <|VIRTUAL_PROMPT_0|> Answer type: {label}", 4, [4]),
}


@pytest.mark.parametrize("folder", sorted(DATASET_TEMPLATES))
@pytest.mark.integration
def test_every_split_of_every_dataset_tokenizes_and_collates(smollm2_tokenizer, folder):
    prompt_template, total, splits = DATASET_TEMPLATES[folder]
    for split in ("train", "validation", "test"):
        records = read_shared(folder, split)
        template = TaskTemplate(records[0].taskname, prompt_template, total, splits, "label", truncate_field=None)
        check_records(records, [template])
        prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [template], max_length=256)
        examples = prompt_tokenizer.tokenize_records(records).examples
        assert len(examples) == len(records)
        assert all(len(e.virtual_positions) == total for e in examples)
        batch = ContinualPromptCollator(smollm2_tokenizer.pad_token_id)(examples[:64])
        assert batch["virtual_token_mask"].sum(dim=1).tolist() == [total] * len(examples[:64])
