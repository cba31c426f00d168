"""The causal-LM loss computed from logits at labelled positions only: the same loss, the LM head on fewer rows.

With an answer-only loss most positions of a batch carry the label ``-100``, yet a causal LM computes its
vocabulary-sized logits (``L x V``; SmolLM2: ``V = 49152``, a fifth of the model's weights) at every position and
backpropagates through all of them. Asking the model for the logits of the positions that predict a label
(transformers' ``logits_to_keep`` with a tensor of positions) gives the same loss and gradients, and took a training
step of the continual demo's round 1 to 0.76x its time on a 2-core Intel Xeon, 0.89x with oneDNN and ATen capped
to AVX2 (``bench/train_step_precision.py``, fp32).

The kept positions are the union over the batch's rows (one index tensor for the whole batch), so a batch whose
answers end at different columns keeps more of them; the saving is largest for short answers.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.nn import functional

IGNORE_INDEX = -100


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose logits predict a label in some row: ``t`` such that ``labels[:, t + 1] != -100``.

    Args:
        labels: ``(B, L)``, ``-100`` where no loss.

    Returns:
        ``(K,)`` sorted positions in ``[0, L - 1)``.

    Examples:
        >>> labels = torch.tensor([[-100, -100, 7, 8], [-100, 5, -100, -100]])
        >>> labelled_positions(labels).tolist()
        [0, 1, 2]
    """
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().flatten()


def loss_at_positions(
    logits: torch.Tensor,
    labels: torch.Tensor,
    positions: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``logits`` kept at ``positions`` against the next-token labels, as transformers computes it.

    Args:
        logits: ``(B, K, V)`` logits at ``positions``.
        labels: ``(B, L)`` labels of the whole rows.
        positions: ``(K,)`` from ``labelled_positions``.
        num_items_in_batch: labelled tokens of the whole (accumulated) batch: the loss is then their sum divided by
            it (``Trainer``'s gradient-accumulation-exact loss); ``None`` averages over this batch's labelled tokens.

    Returns:
        A scalar float32 loss.
    """
    targets = labels[:, positions + 1].to(logits.device)  # (B, K)
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction=reduction,
    )
    if num_items_in_batch is not None:
        loss = loss / (
            num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
        )
    return loss


def accepts_logit_positions(model: Any) -> bool:
    """Whether the causal LM under ``model`` (a PEFT wrapper, or the model itself) takes ``logits_to_keep``, and every
    position of its output is the same position of its input.

    PEFT's own prompt-learning methods (prompt tuning, P_TUNING, prefix tuning) prepend virtual tokens, which shifts
    the positions: they get the full logits.
    """
    config = getattr(model, "active_peft_config", None)
    if config is not None and getattr(config, "is_prompt_learning", False):
        return False
    causal_lm = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    try:
        parameters = inspect.signature(causal_lm.forward).parameters
    except (TypeError, ValueError):
        return False
    return "logits_to_keep" in parameters
