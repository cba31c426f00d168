"""PEFT's own prompt learning (``PROMPT_TUNING``, ``P_TUNING``) seen as a plain causal LM over the text, for evaluation.

PEFT's prompt-learning models put their virtual tokens in front of every input inside ``forward``: the logits come
back with ``num_virtual_tokens`` extra rows at the front, and a second call on a KV cache (restricted scoring's
candidate trees) would put them in front again. Generation and scoring in this package expect a causal LM whose
logits are aligned with ``input_ids`` and whose cache continues the text. ``PrependedPrompts`` is that view: it asks
the PEFT model for its prompts (``PeftModel.get_prompt``: the trained embedding rows, or PEFT's LSTM/MLP encoder run
on them), puts them where PEFT's ``forward`` puts them (before the text, as real tokens), runs the base model, and
returns the text's logits only. Its numbers are those of the PEFT model's ``forward``, with one difference on
left-padded batches: positions are counted from each row's first real token (PEFT's ``forward`` drops
``position_ids``), so a row scores the same alone as in a batch.

Generation runs the base model's ``generate`` from the prompted embeddings, which is greedy decoding by PEFT's own
``forward`` (tested). ``PeftModel.generate`` is not used: with PEFT 0.21.2 and transformers 5.24 its tokens after the
first differ from greedy decoding by its own ``forward`` (on a tiny Llama, ``tests/evaluation/test_prepended_prompts.py``
checks ours against that decoding).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from peft_continual.errors import PeftContinualError
from peft_continual.evaluation.restricted import CACHE_ARGUMENT

_NOT_PREPENDED = ("PREFIX_TUNING", "CARTRIDGE")
"""Prompt-learning methods whose prompts are key/value caches, not embeddings in front of the text."""


def prepends_prompts(model: Any) -> bool:
    """Whether ``model`` is a PEFT model whose active adapter puts prompt embeddings in front of the text
    (``PROMPT_TUNING``, ``P_TUNING``): the models that evaluation must see through ``PrependedPrompts``."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False)) and str(config.peft_type) not in _NOT_PREPENDED


def evaluation_view(model: Any) -> Any:
    """The model evaluation scores: ``PrependedPrompts(model)`` for PEFT's prompt tuning and p-tuning (their
    ``forward`` returns the prompt rows' logits too and would put the prompts in front of a cached call again),
    every other model as it is. ``Trainer``'s periodic evaluation gets the PEFT model itself and goes through here."""
    return PrependedPrompts(model) if prepends_prompts(model) else model


class PrependedPrompts(nn.Module):
    """Evaluation view of a PEFT ``PROMPT_TUNING``/``P_TUNING`` model (see the module docstring).

    Args:
        peft_model: a ``PeftModelForCausalLM`` whose active adapter is a prompt-learning method that prepends
            embeddings (not prefix tuning, whose prompts are key/value caches).
    """

    def __init__(self, peft_model: Any) -> None:
        super().__init__()
        if not prepends_prompts(peft_model):
            config = getattr(peft_model, "active_peft_config", None)
            raise PeftContinualError(
                "PrependedPrompts needs a PEFT prompt-tuning or p-tuning model, got "
                f"{f'peft_type {config.peft_type}' if config is not None else type(peft_model).__name__}"
            )
        config = peft_model.active_peft_config
        self.peft_model = peft_model
        self.training = peft_model.training  # eval_mode restores the wrapped model's own flag
        self.num_virtual_tokens = config.num_virtual_tokens
        self.base_model = peft_model.get_base_model()
        self.config = self.base_model.config  # attention implementation: whether candidate trees can run

    @property
    def device(self) -> torch.device:
        return self.base_model.device

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.get_input_embeddings()

    def prompted_embeddings(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The text's embeddings after the PEFT prompts, and the mask extended over them.

        Args:
            input_ids: (B, L) token ids.
            attention_mask: (B, L), 0 at padding.

        Returns:
            ``inputs_embeds`` (B, n + L, D) and ``attention_mask`` (B, n + L), ``n = num_virtual_tokens``.
        """
        words = self.get_input_embeddings()(input_ids)  # (B, L, D)
        prompts = self.peft_model.get_prompt(batch_size=input_ids.shape[0]).to(words.dtype)  # (B, n, D)
        ones = attention_mask.new_ones(input_ids.shape[0], self.num_virtual_tokens)
        return torch.cat([prompts, words], dim=1), torch.cat([ones, attention_mask], dim=1)

    def _prompt_columns(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """``attention_mask`` of a call on the cache, with the prompt's columns (always visible) in front.

        A 2D mask (B, Lc + K) gets ones; an additive 4D mask (B, 1, K, Lc + K) gets zeros (0 = attend).
        """
        if attention_mask.dim() == 2:
            return torch.cat(
                [attention_mask.new_ones(attention_mask.shape[0], self.num_virtual_tokens), attention_mask], 1
            )
        shape = (*attention_mask.shape[:-1], self.num_virtual_tokens)
        return torch.cat([attention_mask.new_zeros(shape), attention_mask], dim=-1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> Any:
        """Logits of the text positions (B, L, V), or of the last ``logits_to_keep``; a given KV cache (which holds
        the prompts from the first call) is continued with the prompts' columns and positions added."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        n = self.num_virtual_tokens
        if kwargs.get(CACHE_ARGUMENT) is not None:  # continuing: the prompts are in the cache already
            if position_ids is not None:
                position_ids = position_ids + n
            return self.base_model(
                input_ids=input_ids,
                attention_mask=self._prompt_columns(attention_mask),
                position_ids=position_ids,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        if not isinstance(logits_to_keep, int) or logits_to_keep > input_ids.shape[1]:
            raise PeftContinualError(
                f"PrependedPrompts keeps the last k <= {input_ids.shape[1]} logits, got {logits_to_keep}"
            )
        embeds, mask = self.prompted_embeddings(input_ids, attention_mask)
        if position_ids is None:
            positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        else:
            virtual = torch.arange(n, device=position_ids.device).expand(input_ids.shape[0], n)
            positions = torch.cat([virtual, position_ids + n], dim=1)
        output = self.base_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=logits_to_keep, **kwargs
        )
        if logits_to_keep == 0:
            output["logits"] = output.logits[:, n:]  # (B, L, V): the text's positions only
        return output

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Greedy or sampled generation after the prompts; returns the new tokens only (as ``generate`` does when
        it starts from ``inputs_embeds``)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds, mask = self.prompted_embeddings(input_ids, attention_mask)
        return self.base_model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
