"""The encoder under several processes: the same parameters get gradients in every process, and work outside the
model's forward sees whole parameters when FSDP2 has sharded them.

Under FSDP (``accelerate launch`` with an FSDP config; ``torch.distributed.fsdp.fully_shard``) each process holds a
shard of every parameter (a ``DTensor``) and FSDP gathers the whole ones only around a forward or backward of the
module it wraps. The encoder is part of the model's root unit, so its forward inside the model's gets whole
parameters; ``freeze_tasks`` runs it alone, after training, and gathers them here first. The table's rows are
buffers, which FSDP does not shard: every process holds the whole table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

try:
    from torch.distributed.tensor import DTensor  # torch >= 2.5; FSDP2's sharded parameters
except ImportError:  # an older torch, or a build without distributed: nothing is ever sharded
    DTensor = ()

from peft_continual.processes import distributed


def _is_sharded(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, DTensor)


def with_absent_tasks_in_the_graph(
    embeds: torch.Tensor, encoder: nn.Module | None, tasknames: Sequence[str], word_embeddings: nn.Module
) -> torch.Tensor:
    """``embeds`` ``(B, L, D)``; under several processes, plus 0 times the rows of the tasks in training that this
    micro-batch lacks, so every process has a gradient (0 for them) for the same parameters: DDP and FSDP reduce
    gradients across the processes by position, and FSDP2 would otherwise mix the gradients of different parameters
    without an error when one process's rows hold a task and another's do not. Alone, an absent task's parameters
    keep no gradient (the optimizer leaves them as they are), as before."""
    if encoder is None or not torch.is_grad_enabled() or not distributed():
        return embeds
    absent = [name for name in encoder.tasks if name not in set(tasknames)]
    if not absent:
        return embeds
    rows = encoder(absent, word_embeddings)  # a few rows per task: cheap
    return embeds + 0.0 * sum(row.sum() for row in rows.values()).to(embeds.dtype)


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
