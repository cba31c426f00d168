"""``inject_prompts``: prompt rows land exactly at the virtual positions, for any layout, in one batch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peft_continual.errors import RecordError, UnknownTaskError
from peft_continual.tuners.continual_prompt import inject_prompts

D = 6


def by_hand(embeds: torch.Tensor, mask: torch.Tensor, tasknames: list[str], prompts: dict) -> torch.Tensor:
    """The reference: a loop over rows and positions."""
    out = embeds.clone()
    for b, name in enumerate(tasknames):
        k = 0
        for position in range(mask.shape[1]):
            if mask[b, position]:
                out[b, position] = prompts[name][k]
                k += 1
    return out


def layout(rows: list[list[int]], length: int) -> torch.Tensor:
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for b, positions in enumerate(rows):
        mask[b, positions] = True
    return mask


PROMPTS = {"a": torch.randn(4, D), "b": torch.randn(5, D), "c": torch.randn(3, D)}


@pytest.mark.parametrize(
    "positions",
    [
        pytest.param([[0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 1, 2]], id="start"),
        pytest.param([[3, 4, 5, 6], [2, 3, 6, 7, 8], [4, 5, 6]], id="middle-several-splits"),
        pytest.param([[6, 7, 8, 9], [5, 6, 7, 8, 9], [7, 8, 9]], id="end"),
        pytest.param([[0, 4, 5, 9], [1, 3, 5, 7, 9], [0, 5, 9]], id="scattered"),
    ],
)
def test_injection_equals_hand_computed_embeddings(positions):
    tasknames = ["a", "b", "c"]
    embeds = torch.randn(3, 10, D)
    mask = layout(positions, 10)
    out = inject_prompts(embeds, mask, tasknames, PROMPTS)
    assert torch.equal(out, by_hand(embeds, mask, tasknames, PROMPTS))
    assert torch.equal(out[~mask], embeds[~mask]), "non-virtual positions must be untouched"


def test_rows_of_one_task_share_its_prompt_and_input_is_not_modified():
    embeds = torch.randn(2, 6, D)
    before = embeds.clone()
    mask = layout([[0, 1, 2], [3, 4, 5]], 6)
    out = inject_prompts(embeds, mask, ["c", "c"], PROMPTS)
    assert torch.equal(out[0, :3], PROMPTS["c"]) and torch.equal(out[1, 3:], PROMPTS["c"])
    assert torch.equal(embeds, before)


def test_gradient_reaches_each_prompt_row_once_per_use():
    prompts = {name: rows.clone().requires_grad_(True) for name, rows in PROMPTS.items()}
    mask = layout([[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5, 6]], 8)
    out = inject_prompts(torch.zeros(3, 8, D), mask, ["a", "a", "b"], prompts)
    out.sum().backward()
    assert torch.equal(prompts["a"].grad, torch.full((4, D), 2.0))
    assert torch.equal(prompts["b"].grad, torch.ones(5, D))
    assert prompts["c"].grad is None


def test_output_has_dtype_of_inputs_embeds():
    out = inject_prompts(torch.zeros(1, 4, D, dtype=torch.bfloat16), layout([[0, 1, 2]], 4), ["c"], PROMPTS)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[0, :3], PROMPTS["c"].to(torch.bfloat16))


def test_integer_mask_is_accepted():
    mask = layout([[1, 2, 3]], 5)
    out = inject_prompts(torch.zeros(1, 5, D), mask.long(), ["c"], PROMPTS)
    assert torch.equal(out, inject_prompts(torch.zeros(1, 5, D), mask, ["c"], PROMPTS))


def test_count_mismatch_names_row_and_task():
    mask = layout([[0, 1, 2, 3], [0, 1]], 6)
    with pytest.raises(RecordError, match=r"row 1 \(task 'b'\) has 2 virtual-token positions.*total_virtual_tokens=5"):
        inject_prompts(torch.zeros(2, 6, D), mask, ["a", "b"], PROMPTS)


def test_unknown_task_names_it_and_the_known_ones():
    with pytest.raises(UnknownTaskError, match=r"\['zzz'\].*'a', 'b', 'c'"):
        inject_prompts(torch.zeros(1, 4, D), layout([[0]], 4), ["zzz"], PROMPTS)


@pytest.mark.parametrize(
    ("mask", "tasknames", "message"),
    [
        (torch.zeros(2, 5, dtype=torch.bool), ["a", "a"], r"shape \(B, L\) = \(2, 4\)"),
        (torch.zeros(2, 4, dtype=torch.bool), ["a"], "one task name per row"),
        (torch.zeros(2, 4, dtype=torch.bool), "ab", "one task name per row"),
        (torch.full((2, 4), 2), ["a", "a"], "bool"),
    ],
)
def test_malformed_batch_is_refused(mask, tasknames, message):
    with pytest.raises(RecordError, match=message):
        inject_prompts(torch.zeros(2, 4, D), mask, tasknames, PROMPTS)


@st.composite
def batches(draw):
    """Random rows: each of tasks a/b/c, its n_T virtual positions scattered anywhere in a row of length L."""
    length = draw(st.integers(5, 12))
    tasknames = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=5))
    rows = [sorted(draw(st.permutations(range(length)))[: PROMPTS[name].shape[0]]) for name in tasknames]
    return tasknames, layout(rows, length)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_any_layout_matches_the_reference(batch):
    tasknames, mask = batch
    embeds = torch.randn(len(tasknames), mask.shape[1], D)
    assert torch.equal(inject_prompts(embeds, mask, tasknames, PROMPTS), by_hand(embeds, mask, tasknames, PROMPTS))


def test_gradients_are_bitwise_repeatable_with_several_threads():
    """Many rows read the same task rows; their gradients must add up in a fixed order. Advanced indexing
    (``table[index]``) adds them with ``index_put_``, whose multi-threaded CPU kernel gave 30 different gradients in
    30 runs at this size, so a seeded training run was not repeatable; ``index_select`` adds them in order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        generator = torch.Generator().manual_seed(0)
        rows, length, dim = 16, 24, 576
        embeds = torch.randn(rows, length, dim, generator=generator)
        mask = torch.zeros(rows, length, dtype=torch.bool)
        mask[:, 2:22] = True  # 20 virtual tokens in every row, all rows of one task
        prompt = torch.randn(20, dim, generator=generator, requires_grad=True)
        upstream = torch.randn(rows, length, dim, generator=generator)
        digests = set()
        for _ in range(20):
            prompt.grad = None
            inject_prompts(embeds, mask, ["a"] * rows, {"a": prompt}).backward(upstream)
            digests.add(prompt.grad.numpy().tobytes())
    finally:
        torch.set_num_threads(threads)
    assert len(digests) == 1
