"""Collation of mixed tasks and templates, right and left padding."""

import pytest
import torch

from peft_continual.data.collate import ContinualPromptCollator
from peft_continual.data.tokenize import IGNORE_INDEX, TokenizedExample
from peft_continual.errors import PeftContinualError

EXAMPLES = [
    TokenizedExample([9, 0, 0, 5, 6], [-100, -100, -100, 5, 6], [1, 2], "a", "r[0]"),
    TokenizedExample([0, 7, 0, 0, 8, 3, 4], [-100, -100, -100, -100, -100, 3, 4], [0, 2, 3], "b", "r[1]"),
]


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_keeps_every_row_and_its_virtual_positions(side):
    batch = ContinualPromptCollator(pad_token_id=2, padding_side=side)(EXAMPLES)
    assert batch["tasknames"] == ["a", "b"]
    assert batch["input_ids"].shape == (2, 7)
    for row, example in enumerate(EXAMPLES):
        kept = batch["attention_mask"][row].bool()
        assert batch["input_ids"][row][kept].tolist() == example.input_ids
        assert batch["labels"][row][kept].tolist() == example.labels
        assert (batch["labels"][row][~kept] == IGNORE_INDEX).all()
        assert (batch["input_ids"][row][~kept] == 2).all()
        offset = int((~kept).sum()) if side == "left" else 0
        assert batch["virtual_token_mask"][row].nonzero().flatten().tolist() == [
            p + offset for p in example.virtual_positions
        ]
    padded_first = batch["attention_mask"][0, 0] == 0
    assert padded_first == (side == "left")


def test_accepts_dict_rows_and_pads_to_a_multiple():
    batch = ContinualPromptCollator(pad_token_id=0, pad_to_multiple_of=8)([e.to_dict() for e in EXAMPLES])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["virtual_token_mask"].dtype == torch.bool


def test_unknown_padding_side_is_refused():
    with pytest.raises(PeftContinualError, match=r"padding_side='middle' is not one of 'left', 'right'"):
        ContinualPromptCollator(pad_token_id=0, padding_side="middle")


def test_plain_text_batches_leave_out_the_virtual_token_keys():
    plain = [TokenizedExample([9, 5, 6], [-100, 5, 6], [], "a", "r[0]"), TokenizedExample([8], [-100], [], "b", "r[1]")]
    batch = ContinualPromptCollator(pad_token_id=0, virtual_tokens=False)(plain)
    assert sorted(batch) == ["attention_mask", "input_ids", "labels"]
    assert batch["input_ids"].tolist() == [[9, 5, 6], [8, 0, 0]]


def test_plain_text_batches_refuse_rows_with_virtual_tokens_naming_the_task():
    with pytest.raises(PeftContinualError, match=r"task\(s\) \['a', 'b'\] have virtual tokens"):
        ContinualPromptCollator(pad_token_id=0, virtual_tokens=False)(EXAMPLES)


def test_an_empty_batch_is_refused_with_our_error():
    with pytest.raises(PeftContinualError, match="cannot collate an empty batch"):
        ContinualPromptCollator(pad_token_id=2)([])
