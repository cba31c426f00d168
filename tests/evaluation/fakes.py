"""Test doubles: a virtual-token-aware wrapper around a tiny model, and a model with scripted generations."""

from __future__ import annotations

import torch
from torch import nn

from peft_continual.evaluation.restricted import CACHE_ARGUMENT


class FakeVirtualModel(nn.Module):
    """Stands in for the PEFT model: takes the collator's batch keys and writes per-task rows at virtual positions.

    Row ``k`` of a task's (V, D) prompt goes to the ``k``-th ``True`` of the row's ``virtual_token_mask``, as the
    real model does. ``generate`` runs from ``inputs_embeds``, so it returns only the new tokens (transformers'
    behaviour), unlike a plain model.
    """

    def __init__(self, base: nn.Module, virtual_tokens: dict[str, int], seed: int = 0) -> None:
        super().__init__()
        self.base = base
        hidden = base.get_input_embeddings().weight.shape[1]
        generator = torch.Generator().manual_seed(seed)
        self.prompts = nn.ParameterDict(
            {name: nn.Parameter(torch.randn(n, hidden, generator=generator)) for name, n in virtual_tokens.items()}
        )
        self.calls: list[dict] = []
        self.config = base.config  # as a PEFT model, whose attributes are the base model's

    def get_input_embeddings(self) -> nn.Module:
        return self.base.get_input_embeddings()

    def _embeds(self, input_ids, virtual_token_mask, tasknames) -> torch.Tensor:
        embeds = self.base.get_input_embeddings()(input_ids).clone()  # (B, L, D)
        for row, name in enumerate(tasknames):
            count = int(virtual_token_mask[row].sum())
            if count:
                embeds[row, virtual_token_mask[row]] = self.prompts[name][:count]
        return embeds

    def forward(self, input_ids, attention_mask, virtual_token_mask=None, tasknames=None, labels=None, **kwargs):
        """Without ``virtual_token_mask``/``tasknames`` (a continuation from a KV cache) the base model runs alone;
        other keyword arguments (``past_key_values``, ``position_ids``, ``use_cache``...) go to the base model."""
        call = {"kind": "forward", "rows": input_ids.shape[0], "length": input_ids.shape[1]}
        call["cached"] = kwargs.get(CACHE_ARGUMENT) is not None
        call["tasknames"] = list(tasknames) if tasknames is not None else None
        self.calls.append(call)
        if virtual_token_mask is None:
            return self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        embeds = self._embeds(input_ids, virtual_token_mask, tasknames)
        return self.base(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)

    def generate(self, input_ids, attention_mask, virtual_token_mask, tasknames, **kwargs):
        self.calls.append({"kind": "generate", "rows": input_ids.shape[0], "tasknames": list(tasknames)})
        embeds = self._embeds(input_ids, virtual_token_mask, tasknames)
        return self.base.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)


class ScriptedModel(nn.Module):
    """Generates a fixed answer per prompt (looked up by the prompt's decoded text); forward is the base model's.

    ``generate`` returns prompt + answer + EOS + padding, like a transformers model in a batch where other rows run
    longer, so the caller must cut at EOS.
    """

    def __init__(self, base: nn.Module, tokenizer, answers: dict[str, str]) -> None:
        super().__init__()
        self.base = base
        self.tokenizer = tokenizer
        self.answers = answers
        self.generate_kwargs: list[dict] = []

    def forward(self, input_ids, attention_mask, **kwargs):
        return self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        self.generate_kwargs.append({"max_new_tokens": max_new_tokens, **kwargs})
        eos = self.tokenizer.eos_token_id
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            prompt = self.tokenizer.decode(ids[mask.bool()])
            answer = self.tokenizer(self.answers[prompt], add_special_tokens=False)["input_ids"] + [eos]
            rows.append((answer + [eos] * max_new_tokens)[:max_new_tokens])
        return torch.cat([input_ids, torch.tensor(rows, dtype=torch.long)], dim=1)
