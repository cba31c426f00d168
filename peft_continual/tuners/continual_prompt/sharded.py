"""Work on the encoder outside the model's forward when FSDP2 has sharded its parameters.

Under FSDP (``accelerate launch`` with an FSDP config; ``torch.distributed.fsdp.fully_shard``) each process holds a
shard of every parameter (a ``DTensor``) and FSDP gathers the whole ones only around a forward or backward of the
module it wraps. The encoder is part of the model's root unit, so its forward inside the model's gets whole
parameters; ``freeze_tasks`` runs it alone, after training, and gathers them here first. The table's rows are
buffers, which FSDP does not shard: every process holds the whole table.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _is_sharded(tensor: torch.Tensor) -> bool:
    return type(tensor).__name__ == "DTensor" and hasattr(tensor, "full_tensor")


def call_with_whole_parameters(module: nn.Module, *args: Any) -> Any:
    """``module(*args)``, its sharded parameters gathered into whole tensors for the call (a collective call under
    FSDP: every process must make it); a plain call when nothing is sharded."""
    parameters = dict(module.named_parameters())
    if not any(_is_sharded(p) for p in parameters.values()):
        return module(*args)
    whole = {name: p.full_tensor() if _is_sharded(p) else p for name, p in parameters.items()}
    return torch.func.functional_call(module, whole, args)


def whole_embedding(embedding: nn.Module) -> nn.Module:
    """The input embedding module, or a frozen copy of its whole weight when FSDP has sharded it (collective)."""
    if not _is_sharded(embedding.weight):
        return embedding
    return nn.Embedding.from_pretrained(embedding.weight.full_tensor().detach(), freeze=True)
