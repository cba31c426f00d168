"""The pipeline over ``datasets.Dataset.map``: same examples as record by record, errors still name the row."""

import datasets
import pytest

from peft_continual.data.batched import tokenize_dataset
from peft_continual.data.records import records_from_dicts
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.errors import RecordError, UnknownTaskError

TEMPLATES = [
    TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 4, [4], "label"),
    TaskTemplate("intent", "{utterance}<|VIRTUAL_PROMPT_0|>\n{label}", 3, [3], "label"),
]
ROWS = [
    {"taskname": "sentiment", "sentence": "Profit rose", "label": "positive"},
    {"taskname": "intent", "utterance": "wake me at 5", "label": "alarm_set"},
    {"taskname": "sentiment", "sentence": "word " * 40, "label": "neutral"},
] * 4
COLUMNS = ("taskname", "sentence", "utterance", "label")


def as_dataset(rows):
    """Like ``load_dataset("json")``: every column in every row, ``None`` where a task lacks the field."""
    return datasets.Dataset.from_list([{column: row.get(column) for column in COLUMNS} for row in rows])


@pytest.mark.parametrize("num_proc", [None, 2])
def test_map_matches_record_by_record_and_drops_skipped_rows(smollm2_tokenizer, num_proc):
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, TEMPLATES, max_length=24, on_too_long="skip")
    mapped = tokenize_dataset(as_dataset(ROWS), prompt_tokenizer, num_proc=num_proc, batch_size=5)
    expected = prompt_tokenizer.tokenize_records(records_from_dicts(ROWS, name="dataset")).examples
    assert len(mapped) == len(expected) == 8
    assert [row for row in mapped] == [example.to_dict() for example in expected]


def test_map_errors_name_the_row(smollm2_tokenizer):
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, TEMPLATES)
    bad = as_dataset([*ROWS[:2], {"taskname": "intent", "sentence": "x", "label": "y"}])
    with pytest.raises(RecordError, match=r"train\[2\]: task 'intent': field\(s\) \['utterance'\] missing"):
        tokenize_dataset(bad, prompt_tokenizer, name="train")
    unknown = as_dataset([{"taskname": "trec", "sentence": "x", "label": "y"}])
    with pytest.raises(UnknownTaskError, match=r"train\[0\]: unknown task 'trec'"):
        tokenize_dataset(unknown, prompt_tokenizer, name="train")
