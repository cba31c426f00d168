"""Base-model fingerprint: a prompt table only means something on the base model that it was trained on.

Table rows are points in the base model's input-embedding space. Loaded into another model of the same hidden size
they still run, and quietly produce nonsense. So the config records a fingerprint of the base model (hidden size,
vocabulary size and a sha256 of the input embedding matrix) and refuses to build on a model with another one.

The hash is taken over the embedding matrix cast to bfloat16, so the same weights served in float32 or bfloat16
match; a float16 copy may not (fp16 loses small values that bf16 keeps).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from peft_continual.errors import TableMismatchError


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """Describe ``model``'s input embedding: ``{"name_or_path", "hidden_size", "vocab_size", "embedding_sha256"}``."""
    weight = model.get_input_embeddings().weight
    data = weight.detach().to(device="cpu", dtype=torch.bfloat16).contiguous()
    digest = hashlib.sha256(data.view(torch.int16).numpy().tobytes()).hexdigest()
    return {
        "name_or_path": model_name(model),
        "hidden_size": int(weight.shape[1]),
        "vocab_size": int(weight.shape[0]),
        "embedding_sha256": digest,
    }


def name_or_path(model: nn.Module) -> str | None:
    """``name_or_path`` of a transformers model; ``None`` for one built from a config."""
    return (
        getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None) or None
    )


def model_name(model: nn.Module) -> str:
    """``name_or_path`` of a transformers model, or its class for one built from a config (for messages)."""
    return name_or_path(model) or f"<{type(model).__name__} built from a config>"


def check_fingerprint(expected: dict[str, Any], model: nn.Module) -> None:
    """Raise unless ``model`` has the fingerprint ``expected`` (its name may differ: paths move).

    Raises:
        TableMismatchError: hidden size, vocabulary size or embedding hash differ; the message names both models.
    """
    actual = fingerprint(model)
    keys = ("hidden_size", "vocab_size", "embedding_sha256")
    differing = [key for key in keys if expected.get(key) != actual[key]]
    if differing:
        raise TableMismatchError(
            f"this prompt table was trained on base model {_describe(expected)} but is being loaded into "
            f"{_describe(actual)}; they differ in {', '.join(differing)}. Load the base model it was trained on."
        )


def _describe(print_: dict[str, Any]) -> str:
    return (
        f"{print_.get('name_or_path')!r} (hidden_size={print_.get('hidden_size')}, vocab_size={print_.get('vocab_size')},"
        f" embedding sha256 {str(print_.get('embedding_sha256'))[:12]}...)"
    )
