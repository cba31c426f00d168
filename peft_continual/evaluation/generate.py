"""Batched free generation over records of any mix of tasks: prompt -> new tokens -> text.

Rows are sorted by prompt length before batching (less padding) and put back in input order afterwards; since
greedy decoding of a row does not depend on the other rows of its batch, the grouping changes no result. Prompts
are left-padded by ``ContinualPromptCollator`` so that every row's new tokens start at the same column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from peft_continual.data.collate import ContinualPromptCollator, PaddingSide
from peft_continual.data.records import TaskRecord
from peft_continual.data.tokenize import PromptTokenizer, TokenizedExample
from peft_continual.errors import PeftContinualError
from peft_continual.evaluation.model_inputs import eval_mode, model_device, model_inputs


def pad_token_id_of(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id (SmolLM2 and most causal LMs pad with EOS)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise PeftContinualError("the tokenizer has neither a pad_token nor an eos_token; set tokenizer.pad_token")
    return pad


def new_tokens(output: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The generated part of ``generate``'s output.

    A model generating from ``input_ids`` returns them followed by the new tokens (``transformers``); one generating
    from ``inputs_embeds`` (as a prompt-injecting model may) returns the new tokens only. The prompt is cut off when
    the output starts with it.

    Args:
        output: (B, L + N) or (B, N) token ids from ``generate``.
        input_ids: (B, L) the prompts, left-padded.

    Returns:
        (B, N) the new tokens.
    """
    length = input_ids.shape[1]
    if output.shape[1] >= length and torch.equal(output[:, :length].to(input_ids.device), input_ids):
        return output[:, length:]
    return output


def generate_token_ids(
    model: Any,
    examples: Sequence[TokenizedExample],
    *,
    pad_token_id: int,
    eos_token_id: int | None,
    max_new_tokens: int | Sequence[int] = 32,
    batch_size: int = 8,
    pass_virtual_tokens: bool | None = None,
    generation_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
    desc: str = "generate",
) -> list[list[int]]:
    """Generate for tokenized prompts (``include_answer=False``) in batches; return each row's new token ids.

    Each row's ids stop before its first ``eos_token_id`` and after its own ``max_new_tokens`` (a batch generates
    up to the largest limit of its rows; cutting the rest afterwards gives what generating alone would).

    Args:
        model: any causal LM with ``generate`` (``transformers`` or our PEFT model).
        examples: tokenized prompts, any mix of tasks.
        pad_token_id: id for left padding (masked out).
        eos_token_id: id that ends an answer; ``None`` to stop only at ``max_new_tokens``.
        max_new_tokens: one limit for all rows, or one per example.
        batch_size: rows per ``generate`` call.
        pass_virtual_tokens: see ``peft_continual.evaluation.model_inputs``.
        generation_kwargs: extra ``generate`` arguments; greedy (``do_sample=False``) unless they say otherwise.
        progress: show a tqdm bar (counts rows).
        desc: the bar's label.

    Returns:
        One list of new token ids per example, in input order.
    """
    limits = [max_new_tokens] * len(examples) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(limits) != len(examples) or min(limits, default=1) < 1:
        raise PeftContinualError(f"max_new_tokens must be >= 1, one value or one per example; got {max_new_tokens}")
    collate = ContinualPromptCollator(pad_token_id=pad_token_id, padding_side=PaddingSide.LEFT)
    kwargs = {"do_sample": False, "pad_token_id": pad_token_id, "eos_token_id": eos_token_id}
    kwargs.update(generation_kwargs or {})
    # Rows with the same limit share batches (a batch decodes up to its largest limit), longest prompts first.
    order = sorted(range(len(examples)), key=lambda i: (limits[i], -len(examples[i].input_ids)))
    device = model_device(model)
    results: list[list[int]] = [[] for _ in examples]
    with eval_mode(model), tqdm(total=len(examples), desc=desc, disable=not progress, unit="row") as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate([examples[i] for i in chunk])
            limit = max(limits[i] for i in chunk)
            inputs = model_inputs(batch, pass_virtual_tokens, device)
            output = model.generate(**inputs, max_new_tokens=limit, **kwargs)
            output = getattr(output, "sequences", output)
            generated = new_tokens(output, inputs["input_ids"]).tolist()
            for row, index in enumerate(chunk):
                ids = generated[row][: limits[index]]
                if eos_token_id is not None and eos_token_id in ids:
                    ids = ids[: ids.index(eos_token_id)]
                results[index] = ids
            bar.update(len(chunk))
    return results


def generate_answers(
    model: Any,
    prompt_tokenizer: PromptTokenizer,
    records: Sequence[TaskRecord],
    *,
    max_new_tokens: int | Mapping[str, int] = 32,
    batch_size: int = 8,
    pass_virtual_tokens: bool | None = None,
    generation_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> list[str | None]:
    """Tokenize the records' prompts with their task templates, generate, and decode only the new tokens.

    Args:
        model: any causal LM with ``generate``.
        prompt_tokenizer: the same ``PromptTokenizer`` (templates, ``max_length``) the model was trained with, or
            one over ``without_virtual_tokens`` templates for a plain model.
        records: records of any mix of tasks; their answer fields are not read.
        max_new_tokens: one limit, or ``{taskname: limit}`` (every task of ``records`` must be present).
        batch_size, pass_virtual_tokens, generation_kwargs, progress: as in ``generate_token_ids``.

    Returns:
        The generated text per record (special tokens removed), ``None`` for a record skipped as too long
        (``on_too_long="skip"``).

    Examples:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from peft_continual.data.templates import TaskTemplate
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, eos_token_id=2, pad_token_id=2))
        >>> template = TaskTemplate("sentiment", "{sentence} sentiment: {label}", 0, [], "label")
        >>> records = [TaskRecord("sentiment", {"sentence": "Up 5%.", "label": "positive"}, "records[0]")]
        >>> texts = generate_answers(model, PromptTokenizer(tokenizer, [template]), records, progress=False)
        >>> len(texts), type(texts[0]).__name__
        (1, 'str')
    """
    tokenizer = prompt_tokenizer.tokenizer
    examples = [prompt_tokenizer(record, include_answer=False) for record in records]
    kept = [i for i, example in enumerate(examples) if example is not None]
    if isinstance(max_new_tokens, Mapping):
        missing = sorted({records[i].taskname for i in kept} - set(max_new_tokens))
        if missing:
            raise PeftContinualError(f"max_new_tokens has no entry for task(s) {missing}")
        limits: int | list[int] = [max_new_tokens[records[i].taskname] for i in kept]
    else:
        limits = max_new_tokens
    ids = generate_token_ids(
        model,
        [examples[i] for i in kept],
        pad_token_id=pad_token_id_of(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        max_new_tokens=limits,
        batch_size=batch_size,
        pass_virtual_tokens=pass_virtual_tokens,
        generation_kwargs=generation_kwargs,
        progress=progress,
    )
    texts: list[str | None] = [None] * len(records)
    for index, row in zip(kept, ids, strict=True):
        texts[index] = tokenizer.decode(row, skip_special_tokens=True)
    return texts
