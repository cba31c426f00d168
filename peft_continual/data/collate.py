"""Collation: tokenized examples of any mix of tasks and templates -> one padded batch of tensors.

The batch carries ``virtual_token_mask`` instead of a list of positions, so padding on either side moves the
virtual tokens with their row and the model needs no offsets: in each row the k-th ``True`` is virtual token k.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from peft_continual.data.tokenize import IGNORE_INDEX, TokenizedExample
from peft_continual.errors import PeftContinualError, RecordError, allowed


class PaddingSide(str, Enum):
    """Right padding for training and scoring; left padding for generation (new tokens follow the prompt)."""

    RIGHT = "right"
    LEFT = "left"


@dataclass
class ContinualPromptCollator:
    """Pads a list of ``TokenizedExample`` (or dicts with the same keys, e.g. rows of a tokenized ``Dataset``).

    Returns a dict with ``input_ids``, ``attention_mask``, ``labels`` (B, L) long tensors, ``virtual_token_mask``
    (B, L) bool and ``tasknames`` (a list of B strings); it plugs into ``transformers.Trainer`` as ``data_collator``.
    With ``virtual_tokens=False`` the last two are left out, for models that take only the text (LoRA, IA3 or full
    fine-tuning baselines on ``template.without_virtual_tokens()``); a row with virtual tokens then raises.

    Examples:
        >>> collate = ContinualPromptCollator(pad_token_id=0, padding_side="left")
        >>> batch = collate([TokenizedExample([5, 6, 7], [-100] * 3, [0], "a", "x"), TokenizedExample([8], [-100], [0], "b", "y")])
        >>> batch["virtual_token_mask"].tolist()
        [[True, False, False], [False, False, True]]
    """

    pad_token_id: int = field(metadata={"help": "Id written at padded positions (the attention mask hides them)."})
    padding_side: PaddingSide = field(default=PaddingSide.RIGHT, metadata={"help": "`right` or `left`."})
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "Round the batch length up to a multiple of this (helps GPU kernels)."}
    )
    virtual_tokens: bool = field(
        default=True, metadata={"help": "Emit `virtual_token_mask` and `tasknames` (False for plain-text models)."}
    )

    def __post_init__(self) -> None:
        try:
            self.padding_side = PaddingSide(self.padding_side)
        except ValueError:
            raise PeftContinualError(
                f"padding_side={self.padding_side!r} is not one of {allowed(s.value for s in PaddingSide)}"
            ) from None

    def __call__(self, features: Sequence[TokenizedExample | Mapping[str, Any]]) -> dict[str, Any]:
        rows = [f.to_dict() if isinstance(f, TokenizedExample) else f for f in features]
        if not rows:
            raise RecordError("cannot collate an empty batch: give the collator at least one example")
        length = max(len(row["input_ids"]) for row in rows)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch_size = len(rows)
        input_ids = torch.full((batch_size, length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, length), dtype=torch.long)
        virtual_token_mask = torch.zeros((batch_size, length), dtype=torch.bool)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            start = length - n if self.padding_side is PaddingSide.LEFT else 0
            input_ids[i, start : start + n] = torch.tensor(row["input_ids"], dtype=torch.long)
            labels[i, start : start + n] = torch.tensor(row["labels"], dtype=torch.long)
            attention_mask[i, start : start + n] = 1
            positions = torch.tensor(row["virtual_positions"], dtype=torch.long) + start
            virtual_token_mask[i, positions] = True
        if not self.virtual_tokens:
            if virtual_token_mask.any():
                tasks = sorted({row["taskname"] for row in rows if len(row["virtual_positions"])})
                raise PeftContinualError(
                    f"virtual_tokens=False but task(s) {tasks} have virtual tokens: a plain model would read their "
                    "placeholder ids as text; use template.without_virtual_tokens() for it"
                )
            return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "virtual_token_mask": virtual_token_mask,
            "tasknames": [row["taskname"] for row in rows],
        }
