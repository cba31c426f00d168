"""Deep prompts (P-tuning v2): a task's virtual tokens act at the input of several decoder layers, not only the first.

With ``prompt_depth = k`` a task's prompt is ``(n_T, k * D)``. Slice 0 (columns ``0:D``) is written into the input
embeddings as for shallow prompts (``injection``); slice ``j`` (columns ``j*D:(j+1)*D``, ``j = 1..k-1``) is *added* to
the hidden states at the same positions just before decoder layer ``j`` runs (a forward pre-hook on each layer). Only
the virtual positions change, so positions, masks, labels and the KV cache need no surgery, templates keep their
placement, and rows of several tasks mix in a batch as before. Each layer's keys and values at those positions get a
learned term of their own, which is what lets prompts alone reach fine-tuning on small models (Liu et al. 2022,
P-tuning v2, who prepend per-layer key/value prefixes; acting on the layer inputs keeps the template's positions).

Why added, and in units of each layer's scale: the deep slices start at zero, so at step 0 a deep prompt *is* the
shallow prompt (the init text's embeddings, read through every layer as usual): it starts where prompt
tuning starts. A first version replaced the layer inputs instead (P-tuning v2's way, started from the init
text's own layer inputs): its first loss was about three times the shallow prompt's, and it ended below it. The
residual stream grows with depth (SmolLM2-135M: RMS ~0.13 per element at the input, ~7 at layer 15), so one Adam
rate would barely move the deep slices: the encoder multiplies slice ``j`` by ``layer_scales[j]``, the RMS of layer
``j``'s input relative to the embeddings', and every slice moves by the same fraction of its layer's scale.

Why ``first_trained_layer``: the base model is frozen, so the backward pass of a training step only has to run down
to the lowest layer that holds a trained value. Slice 0 is that value for every layer, so by default the step runs
back through all of them. With ``first_trained_layer = s`` the slices of layers ``0..s-1`` are held at their start
(the init text at the input, zero added above) and reach the layers without a gradient, so autograd records nothing
below layer ``s``: on SmolLM2-135M (30 layers) a step of the deep demo with ``s = 15`` took 0.77 of the time with
every slice trained (``bench/deep_step.py``). Liu et al. (2022) found the prompts of the upper layers the ones that
matter most.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from peft_continual.errors import ConfigError


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a transformers model, in order: the modules whose class the model names in
    ``_no_split_modules`` (``LlamaDecoderLayer`` for Llama), the unit every transformers model is split by.

    Raises:
        ConfigError: the model names no such class, or holds none.
    """
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        raise ConfigError(
            f"prompt_depth > 1 needs the decoder layers of the base model, but {type(model).__name__} names none in "
            "_no_split_modules; use prompt_depth=1"
        )
    return layers


def check_prompt_depth(depth: int, model: nn.Module) -> None:
    """Refuse a depth larger than the base model's number of decoder layers."""
    layers = len(decoder_layers(model)) if depth > 1 else 1
    if depth > layers:
        raise ConfigError(
            f"prompt_depth={depth} but the base model has {layers} decoder layers; "
            "prompt_depth counts the layers whose input holds the virtual tokens, at most that number"
        )


@dataclass
class _Placement:
    """What the hooks add: ``mask`` ``(B, L)`` bool, ``values`` ``(M, k-1, D)`` for the ``M`` virtual positions
    (row-major), slice ``j-1`` for layer ``j``."""

    mask: torch.Tensor
    values: torch.Tensor
    first_trained_layer: int = 0
    """Layers below it get their slice without its gradient (held slices: no backward pass below this layer)."""
    expanded: dict = field(default_factory=dict)
    """Row count -> ``(mask, values)`` for it: computed by the first layer that sees it, reused by the others."""


class DeepPromptHooks:
    """Forward pre-hooks on decoder layers ``1..`` that add the deep slices of the current batch's prompts.

    The model sets a placement around each call of the base model (``placing``); outside it, and for layers past
    the placement's depth, the hooks change nothing. A layer input whose shape does not match the placement (the
    decoding steps of ``generate``, which hold no virtual position) is left as it is; rows repeated by ``generate``
    (beams, ``num_return_sequences``) get their row's values.
    """

    def __init__(self, model: nn.Module) -> None:
        self._placement: _Placement | None = None
        for index, layer in enumerate(decoder_layers(model)):
            if index > 0:
                layer.register_forward_pre_hook(self._hook(index), with_kwargs=True)

    @contextlib.contextmanager
    def placing(
        self, mask: torch.Tensor | None, values: torch.Tensor | None, first_trained_layer: int = 0
    ) -> Iterator[None]:
        """Add ``values`` ``(M, k-1, D)`` at ``mask`` ``(B, L)`` to the inputs of layers ``1..k-1`` during the block;
        detached below ``first_trained_layer``, so autograd records no layer under it."""
        placed = values is not None and values.shape[1] > 0
        self._placement = _Placement(mask, values, first_trained_layer) if placed else None
        try:
            yield
        finally:
            self._placement = None

    def _hook(self, index: int) -> Any:
        def write(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            placement = self._placement
            if placement is None or index > placement.values.shape[1]:
                return None
            in_kwargs = "hidden_states" in kwargs
            hidden = kwargs["hidden_states"] if in_kwargs else args[0]  # (B', L, D)
            rows = hidden.shape[0]
            if rows not in placement.expanded:
                placement.expanded[rows] = _expanded(placement, rows)
            mask, values = placement.expanded[rows]
            if mask is None or tuple(hidden.shape[:2]) != tuple(mask.shape):
                return None
            slice_values = values[:, index - 1]
            if index < placement.first_trained_layer:
                slice_values = slice_values.detach()
            added = torch.zeros_like(hidden).masked_scatter(mask.unsqueeze(-1), slice_values.to(hidden.dtype))
            written = hidden + added
            if in_kwargs:
                return args, {**kwargs, "hidden_states": written}
            return (written, *args[1:]), kwargs

        return write


def _expanded(placement: _Placement, rows: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The placement for ``rows`` layer-input rows: as is, or each row repeated ``rows / B`` times in place (how
    ``generate`` expands inputs for beams and several return sequences); ``None`` when ``rows`` is no multiple."""
    mask, values = placement.mask, placement.values
    batch = mask.shape[0]
    if rows == batch:
        return mask, values
    if rows % batch:
        return None, values
    repeats = rows // batch
    counts = mask.sum(1)  # (B,)
    starts = counts.cumsum(0) - counts
    index = torch.cat(
        [
            torch.arange(int(s), int(s + n), device=values.device).repeat(repeats)
            for s, n in zip(starts, counts, strict=True)
        ]
    )
    return mask.repeat_interleave(repeats, 0), values.index_select(0, index)


def layer_input_scales(model: nn.Module, init_token_ids: Mapping[str, Sequence[int]], depth: int) -> torch.Tensor:
    """``(depth,)`` float32: the RMS of the hidden states at the input of layers ``0..depth-1`` over the init texts'
    tokens, relative to the input embeddings' (so entry 0 is 1). Each text is read after one copy of itself, so that
    no position is the first one, whose attention-sink activations are ~100 times larger (SmolLM2-135M, layer 15);
    without init texts, 8 random vocabulary tokens."""
    embedding = model.get_input_embeddings()
    texts = [list(ids) for ids in init_token_ids.values() if ids] or [
        torch.randint(embedding.weight.shape[0], (8,)).tolist()
    ]
    squares = torch.zeros(depth, dtype=torch.float64)
    count = 0
    for ids in texts:
        sequence = torch.tensor([ids + ids], device=embedding.weight.device)
        with torch.no_grad():  # PEFT's k-bit preparation marks the embeddings' output as needing grad even here
            hidden = model(input_ids=sequence, output_hidden_states=True, use_cache=False).hidden_states
            for j in range(depth):
                squares[j] += hidden[j][0, len(ids) :].detach().double().pow(2).mean(-1).sum().cpu()
        count += len(ids)
    rms = (squares / count).sqrt()
    return (rms / rms[0]).float()
