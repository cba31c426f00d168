"""Which keys of a collated batch a model is called with: the one rule shared by generation and scoring.

The collator always builds ``virtual_token_mask`` and ``tasknames``, but only a virtual-token-aware model (our PEFT
model) accepts them; a plain ``transformers`` model (the few-shot baseline) rejects unknown keyword arguments in
``generate`` and would read the placeholder ids at virtual positions as real text. The rule, by
``pass_virtual_tokens``:

- ``None`` (default, automatic): pass them exactly when some row of the batch has a virtual token. Right for a
  plain model on plain-text templates and for our model on p-tuned tasks; a batch mixing both is passed to the
  model as a virtual-token batch.
- ``True``: always pass them, for a virtual-token-aware model that also wants ``tasknames`` on rows without
  virtual tokens.
- ``False``: never pass them; a batch that has virtual tokens then raises, because a plain model cannot run it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from peft_continual.errors import PeftContinualError

VIRTUAL_KEYS = ("virtual_token_mask", "tasknames")


def model_device(model: Any) -> torch.device:
    """Where the model's inputs must go: ``model.device`` (transformers, PEFT), else its first parameter's device."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return parameter.device if parameter is not None else torch.device("cpu")


def model_inputs(
    batch: Mapping[str, Any], pass_virtual_tokens: bool | None = None, device: torch.device | str | None = None
) -> dict[str, Any]:
    """The ``input_ids``, ``attention_mask`` and (by the rule above) virtual-token keys of a collated batch.

    ``labels`` is left out: evaluation computes its own log-probabilities and needs no loss.

    Args:
        batch: a ``ContinualPromptCollator`` batch: ``input_ids``/``attention_mask`` (B, L) long,
            ``virtual_token_mask`` (B, L) bool, ``tasknames`` (B strings).
        pass_virtual_tokens: ``None`` (automatic), ``True`` or ``False``; see the module docstring.
        device: move the tensors there (the model's device); ``None`` leaves them where they are.

    Raises:
        PeftContinualError: ``pass_virtual_tokens=False`` but the batch has virtual tokens.

    Examples:
        >>> batch = {"input_ids": torch.ones(1, 2, dtype=torch.long), "attention_mask": torch.ones(1, 2),
        ...          "virtual_token_mask": torch.zeros(1, 2, dtype=torch.bool), "tasknames": ["a"]}
        >>> sorted(model_inputs(batch))
        ['attention_mask', 'input_ids']
    """
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    has_virtual = bool(torch.as_tensor(batch["virtual_token_mask"]).any())
    if pass_virtual_tokens is False and has_virtual:
        tasks = sorted(
            {t for t, row in zip(batch["tasknames"], batch["virtual_token_mask"], strict=True) if bool(row.any())}
        )
        raise PeftContinualError(
            f"pass_virtual_tokens=False but task(s) {tasks} have virtual tokens: a plain model would read their "
            "placeholder ids as text; evaluate them with the p-tuned model, or use "
            "template.without_virtual_tokens() for a plain model"
        )
    if pass_virtual_tokens or (pass_virtual_tokens is None and has_virtual):
        inputs.update({key: batch[key] for key in VIRTUAL_KEYS})
    if device is not None:
        inputs = {key: value.to(device) if torch.is_tensor(value) else value for key, value in inputs.items()}
    return inputs


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Run ``model`` in eval mode (dropout off) without grad, restoring its training flag afterwards.

    Evaluation in the middle of training (``Trainer``'s periodic evaluation) must not leave the model in eval mode.
    """
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            model.train()
