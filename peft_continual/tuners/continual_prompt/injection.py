"""Write each row's task prompt into ``inputs_embeds`` at its virtual-token positions.

Virtual tokens are placed by *position*: the data pipeline leaves placeholder ids where they go and marks those
positions in ``virtual_token_mask``. Replacing the embeddings there, with the sequence length unchanged, needs no
attention-mask, label or position-id surgery, so it works wherever ``inputs_embeds`` does (forward, the prefill of
``generate``, inside other PEFT adapters). Any number of groups, anywhere in the row, in any mix of tasks.

How, without a Python loop over rows: concatenate the prompts of the tasks present, ``P = (sum n_T, D)``; the k-th
virtual position of row b reads row ``offset[task(b)] + k`` of ``P``, where ``k`` comes from a cumulative sum of
the mask; ``masked_scatter`` writes the gathered rows (differentiable with respect to ``P``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from peft_continual.errors import RecordError, UnknownTaskError, allowed


def check_prompt_batch(
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    virtual_token_mask: torch.Tensor | None,
    tasknames: Sequence[str] | None,
) -> None:
    """Refuse a batch that cannot carry prompts: a mask without task names (or the reverse), no inputs, or
    ``tasknames`` that is not a list of names (``inject_prompts`` checks that there is one per row).

    Raises:
        RecordError: naming what is missing or wrong.
    """
    if virtual_token_mask is None or tasknames is None:
        given = "virtual_token_mask" if tasknames is None else "tasknames"
        raise RecordError(f"batch has {given} but not {'tasknames' if tasknames is None else 'virtual_token_mask'}")
    if inputs_embeds is None and input_ids is None:
        raise RecordError("batch has neither input_ids nor inputs_embeds")
    if isinstance(tasknames, str) or not all(isinstance(name, str) for name in tasknames):
        hint = f"; for one task in every row write [{tasknames!r}] * batch_size" if isinstance(tasknames, str) else ""
        raise RecordError(f"tasknames must be a list of task names, one per row, got {tasknames!r}{hint}")


def inject_prompts(
    inputs_embeds: torch.Tensor,
    virtual_token_mask: torch.Tensor,
    tasknames: Sequence[str],
    prompts: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """Return ``inputs_embeds`` with row b's virtual positions replaced by the prompt of ``tasknames[b]``.

    Args:
        inputs_embeds: ``(B, L, D)`` embeddings of the input ids (values at virtual positions are ignored).
        virtual_token_mask: ``(B, L)`` bool; in row b the k-th True position receives row k of its task's prompt.
        tasknames: ``B`` task names, one per row.
        prompts: Task name -> ``(n_T, D)`` prompt, for (at least) every task in ``tasknames``.

    Returns:
        A new ``(B, L, D)`` tensor in ``inputs_embeds``' dtype; gradients flow to ``prompts``.

    Raises:
        RecordError: shapes disagree, or a row's number of virtual positions differs from its task's ``n_T``.
        UnknownTaskError: a row names a task missing from ``prompts``.

    Examples:
        >>> embeds = torch.zeros(2, 4, 1)
        >>> mask = torch.tensor([[True, False, True, False], [False, False, False, True]])
        >>> out = inject_prompts(embeds, mask, ["a", "b"], {"a": torch.tensor([[1.0], [2.0]]), "b": torch.tensor([[3.0]])})
        >>> out[..., 0].tolist()
        [[1.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 3.0]]
    """
    virtual_token_mask = _check_shapes(inputs_embeds, virtual_token_mask, tasknames)
    values = gather_prompt_rows(virtual_token_mask, tasknames, prompts, inputs_embeds.dtype)
    return inputs_embeds.masked_scatter(virtual_token_mask.unsqueeze(-1), values)


def gather_prompt_rows(
    virtual_token_mask: torch.Tensor,
    tasknames: Sequence[str],
    prompts: Mapping[str, torch.Tensor],
    dtype: torch.dtype,
) -> torch.Tensor:
    """The prompt row of every virtual position, in row-major order: ``(M, W)`` for the ``M`` True positions of
    ``virtual_token_mask`` ``(B, L)`` (bool, on the target device), from prompts ``(n_T, W)`` (``W = k * D`` for deep
    prompts, whose slices go to several layers). Raises as ``inject_prompts`` does."""
    present = list(dict.fromkeys(tasknames))  # distinct tasks, in order of first appearance
    unknown = [name for name in present if name not in prompts]
    if unknown:
        raise UnknownTaskError(f"batch rows name unknown task(s) {unknown}; known tasks: {allowed(prompts)}")
    counts = [prompts[name].shape[0] for name in present]
    device = virtual_token_mask.device
    slot = {name: i for i, name in enumerate(present)}
    row_task = torch.tensor([slot[name] for name in tasknames], dtype=torch.long, device=device)  # (B,)
    _check_counts(virtual_token_mask, row_task, torch.tensor(counts, device=device), present)

    table = torch.cat([prompts[name].to(device=device, dtype=dtype) for name in present])  # (P, W)
    offsets = torch.tensor([0, *counts[:-1]], device=device).cumsum(0)  # (T,) first row of each task in `table`
    k = virtual_token_mask.long().cumsum(1) - 1  # (B, L): index of each virtual position within its row
    index = offsets[row_task].unsqueeze(1) + k  # (B, L): row of `table` for each virtual position
    return table.index_select(0, index[virtual_token_mask])  # (M, W), M = virtual positions, in row-major order


def _check_shapes(inputs_embeds: torch.Tensor, mask: torch.Tensor, tasknames: Sequence[str]) -> torch.Tensor:
    if inputs_embeds.ndim != 3 or tuple(mask.shape) != tuple(inputs_embeds.shape[:2]):
        raise RecordError(
            f"virtual_token_mask must have shape (B, L) = {tuple(inputs_embeds.shape[:2])} like input_ids, "
            f"got {tuple(mask.shape)}"
        )
    if isinstance(tasknames, str) or len(tasknames) != inputs_embeds.shape[0]:
        got = repr(tasknames) if isinstance(tasknames, str) else f"{len(tasknames)} names"
        raise RecordError(
            f"tasknames must be a list of one task name per row ({inputs_embeds.shape[0]} rows), got {got}"
        )
    if mask.dtype != torch.bool:
        if mask.dtype.is_floating_point or ((mask != 0) & (mask != 1)).any():
            raise RecordError(f"virtual_token_mask must be a bool (or 0/1 integer) tensor, got dtype {mask.dtype}")
        mask = mask.bool()
    return mask.to(inputs_embeds.device)


def _check_counts(mask: torch.Tensor, row_task: torch.Tensor, counts: torch.Tensor, present: Sequence[str]) -> None:
    """Every row must hold exactly ``n_T`` virtual positions of its task ``T``."""
    found = mask.sum(1)  # (B,)
    expected = counts[row_task]  # (B,)
    bad = (found != expected).nonzero().flatten()
    if bad.numel():
        row = int(bad[0])
        task = present[int(row_task[row])]
        raise RecordError(
            f"row {row} (task {task!r}) has {int(found[row])} virtual-token positions but task {task!r} has "
            f"total_virtual_tokens={int(expected[row])}; {bad.numel()} row(s) disagree. Tokenize the row with "
            f"this task's template."
        )
