"""Fixtures of the prompting tests: tiny random models with a small vocabulary, task templates, hand-built batches.

Batches follow the data contract of ``peft_continual.data.collate`` without using it, so these tests pin the
model's side of the contract on their own: ``input_ids`` hold ``PLACEHOLDER_ID`` (a valid id) at virtual positions,
``virtual_token_mask`` marks them, ``tasknames`` names each row's task.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

import peft_continual.tuners.continual_prompt  # noqa: F401  (registers the method with PEFT)
from peft_continual.data.templates import TaskTemplate

VOCAB_SIZE = 512
PAD_ID = 0
EOS_ID = 1
PLACEHOLDER_ID = 2
HIDDEN = 32

TEMPLATE_A = TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 4, [4], "label")
"""Virtual tokens at the start."""
TEMPLATE_B = TaskTemplate(
    "topic", "{text} <|VIRTUAL_PROMPT_0|> topic <|VIRTUAL_PROMPT_1|> answer: {label}", 5, [2, 3], "label"
)
"""Two groups in the middle."""
TEMPLATE_C = TaskTemplate("intent", "{utterance} <|VIRTUAL_PROMPT_0|>", 3, [3], answer_only_loss=False)
"""Virtual tokens at the end."""
TASKNAME_IDS = {"sentiment": [10, 11], "topic": [12], "intent": [13, 14, 15, 16]}
"""Fake token ids of the task names (the tiny models have no tokenizer)."""


def tiny_model(family: str = "llama", seed: int = 0) -> torch.nn.Module:
    """A tiny random causal LM (hidden 32, 2 layers, vocabulary 512), identical for equal arguments, in eval mode.

    ``initializer_range=0.2`` (10x the default) makes the logits peaked, so greedy decoding has clear winners and
    "same tokens" comparisons are not decided by rounding noise.
    """
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    common = {"vocab_size": VOCAB_SIZE, "initializer_range": 0.2}
    common |= {"pad_token_id": PAD_ID, "bos_token_id": EOS_ID, "eos_token_id": EOS_ID}
    if family == "gpt2":
        config = GPT2Config(
            n_embd=HIDDEN,
            n_layer=2,
            n_head=4,
            n_positions=128,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
    else:
        config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[family]
        config = config_cls(
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
            **common,
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.eval()


def make_peft_model(
    family: str = "llama", templates: Sequence[TaskTemplate] = (TEMPLATE_A, TEMPLATE_B), seed: int = 0, **config_kwargs
):
    """``get_peft_model`` on ``tiny_model(family)`` with a ``ContinualPromptConfig`` over ``templates``."""
    from peft import get_peft_model

    from peft_continual.tuners.continual_prompt import ContinualPromptConfig

    config_kwargs.setdefault("taskname_token_ids", {t.taskname: TASKNAME_IDS[t.taskname] for t in templates})
    config = ContinualPromptConfig(templates=list(templates), **config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(tiny_model(family), config)


Segment = Sequence[int] | int
"""Real token ids, or the number of virtual tokens of one group."""


def make_batch(rows: Sequence[tuple[str, Sequence[Segment]]], padding_side: str = "right") -> dict:
    """Pad hand-written rows into a batch of the data contract.

    Args:
        rows: ``(taskname, segments)`` per row; a segment is a list of real ids or an int (that many virtual tokens).
        padding_side: ``right`` (training) or ``left`` (generation).

    Returns:
        ``input_ids``, ``attention_mask``, ``labels`` (real ids; -100 at virtual and padded positions),
        ``virtual_token_mask`` and ``tasknames``.
    """
    ids_rows, virtual_rows = [], []
    for _, segments in rows:
        ids, virtual = [], []
        for segment in segments:
            if isinstance(segment, int):
                ids += [PLACEHOLDER_ID] * segment
                virtual += [True] * segment
            else:
                ids += list(segment)
                virtual += [False] * len(segment)
        ids_rows.append(ids)
        virtual_rows.append(virtual)
    length = max(len(ids) for ids in ids_rows)
    batch = {key: torch.zeros(len(rows), length, dtype=torch.long) for key in ("input_ids", "attention_mask")}
    batch["input_ids"].fill_(PAD_ID)
    batch["labels"] = torch.full((len(rows), length), -100)
    batch["virtual_token_mask"] = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, (ids, virtual) in enumerate(zip(ids_rows, virtual_rows, strict=True)):
        span = slice(length - len(ids), length) if padding_side == "left" else slice(0, len(ids))
        batch["input_ids"][i, span] = torch.tensor(ids)
        batch["attention_mask"][i, span] = 1
        batch["virtual_token_mask"][i, span] = torch.tensor(virtual)
        batch["labels"][i, span] = torch.tensor([-100 if v else t for t, v in zip(ids, virtual, strict=True)])
    batch["tasknames"] = [taskname for taskname, _ in rows]
    return batch


MIXED_ROWS = [
    ("sentiment", [4, [20, 21, 22, 23, 24], [30, 31]]),
    ("topic", [[40, 41, 42], 2, [50], 3, [60, 61]]),
    ("sentiment", [4, [25, 26]]),
    ("topic", [[43], 2, [51, 52, 53, 54], 3, [62]]),
]
"""Rows of two tasks and different lengths: start, middle, several groups."""


@pytest.fixture
def mixed_rows() -> list:
    return [tuple(row) for row in MIXED_ROWS]


@pytest.fixture
def saved(tmp_path):
    """A folder holding a saved table of two frozen tasks (``sentiment``: 4 rows, ``topic``: 5), as ``save_pretrained``
    writes it."""
    model = make_peft_model()
    model.freeze_tasks()
    model.save_pretrained(tmp_path / "table")
    return tmp_path / "table"
