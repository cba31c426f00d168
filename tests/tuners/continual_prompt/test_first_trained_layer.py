"""``first_trained_layer``: deep prompts whose lower slices stay at the init text, so that a training step's backward
pass stops at the first trained layer; the held slices never move, the trained ones do, and the table saves, loads
and resumes like any other."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from peft_continual.errors import ConfigError
from peft_continual.tuners.continual_prompt import ContinualPromptConfig
from peft_continual.tuners.continual_prompt.deep_prompts import decoder_layers
from tests.tuners.continual_prompt.conftest import HIDDEN, MIXED_ROWS, TEMPLATE_A, make_batch
from tests.tuners.continual_prompt.test_deep_prompts import deep_model, three_layer_model

DEPTH = 3


def trained(model, steps: int = 3, weight_decay: float = 0.1):
    """``steps`` AdamW steps on the mixed batch (with weight decay, which moves every parameter it is given)."""
    optimizer = torch.optim.AdamW(model.prompt_encoder.parameters(), lr=0.05, weight_decay=weight_decay)
    batch = make_batch(MIXED_ROWS)
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def layers_in_the_backward_pass(model) -> list[int]:
    """Indices of the decoder layers that a backward pass of the mixed batch's loss runs through."""
    reached = []
    handles = [
        layer.register_full_backward_hook(lambda module, grad_in, grad_out, index=index: reached.append(index))
        for index, layer in enumerate(decoder_layers(model.get_base_model()))
    ]
    try:
        model(**make_batch(MIXED_ROWS)).loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    return sorted(set(reached))


def test_old_configs_train_every_slice():
    assert ContinualPromptConfig(templates=[TEMPLATE_A]).first_trained_layer == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt_depth": 3, "first_trained_layer": -1}, "non-negative integer"),
        ({"prompt_depth": 3, "first_trained_layer": 1.5}, "non-negative integer"),
        ({"prompt_depth": 3, "first_trained_layer": 3}, "less than prompt_depth"),
        ({"first_trained_layer": 1}, "less than prompt_depth"),
        ({"prompt_depth": 3, "first_trained_layer": 1, "prompt_init": "random"}, "use prompt_init='text'"),
    ],
)
def test_a_layer_outside_the_deep_prompt_or_without_a_text_start_is_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ContinualPromptConfig(templates=[TEMPLATE_A], **kwargs)


@pytest.mark.parametrize("encoder_type", ["lstm", "embedding"])
def test_at_the_start_the_prompts_are_those_of_the_fully_trained_deep_prompt(encoder_type):
    every_slice = deep_model(depth=DEPTH, encoder_type=encoder_type).task_prompts()
    held = deep_model(depth=DEPTH, encoder_type=encoder_type, first_trained_layer=2).task_prompts()
    for name, rows in every_slice.items():
        assert torch.equal(held[name], rows)


@pytest.mark.parametrize("encoder_type", ["lstm", "embedding"])
def test_held_slices_stay_at_the_init_text_and_the_trained_ones_move(encoder_type):
    model = deep_model(depth=DEPTH, encoder_type=encoder_type, first_trained_layer=2)
    start = {name: rows.detach().clone() for name, rows in model.task_prompts().items()}
    trained(model)
    for name, rows in model.task_prompts().items():
        held, learned = 2 * HIDDEN, slice(2 * HIDDEN, None)
        assert torch.equal(rows[:, :held], start[name][:, :held])  # bit for bit, weight decay included
        assert not torch.equal(rows[:, learned], start[name][:, learned])


@pytest.mark.parametrize(("first_trained_layer", "reached"), [(0, [0, 1, 2]), (1, [1, 2]), (2, [2])])
def test_the_backward_pass_stops_at_the_first_trained_layer(first_trained_layer, reached):
    model = deep_model(depth=DEPTH, first_trained_layer=first_trained_layer)
    assert layers_in_the_backward_pass(model) == reached


def test_the_trained_slices_get_the_gradient_they_get_with_every_slice_trained():
    """Holding the lower slices only cuts the backward pass below them: what reaches the upper slices is unchanged."""

    def upper_gradients(first_trained_layer: int) -> torch.Tensor:
        model = deep_model(depth=DEPTH, encoder_type="embedding", first_trained_layer=first_trained_layer)
        model(**make_batch(MIXED_ROWS)).loss.backward()
        return torch.cat([p.grad[:, 2 * HIDDEN :].flatten() for p in model.prompt_encoder.parameters()])

    torch.testing.assert_close(upper_gradients(2), upper_gradients(0))


def test_frozen_rows_save_and_load_and_a_resumed_encoder_holds_the_same_slices(tmp_path):
    model = trained(deep_model(depth=DEPTH, first_trained_layer=1))
    before = model.task_prompts()
    model.save_pretrained(tmp_path / "open_round")
    saved = json.loads((tmp_path / "open_round" / "adapter_config.json").read_text())
    assert saved["first_trained_layer"] == 1
    resumed = PeftModel.from_pretrained(three_layer_model(), tmp_path / "open_round", is_trainable=True)
    for name, rows in resumed.task_prompts().items():
        assert torch.equal(rows[:, :HIDDEN], before[name][:, :HIDDEN])  # the held slice, read back from the file
        torch.testing.assert_close(rows, before[name])
    model.freeze_tasks()
    model.save_pretrained(tmp_path / "table")
    loaded = PeftModel.from_pretrained(three_layer_model(), tmp_path / "table")
    batch = {k: v for k, v in make_batch(MIXED_ROWS).items() if k != "labels"}
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_a_run_resumed_on_a_base_in_another_dtype_holds_the_slices_it_started_from(tmp_path):
    """The held slices are saved with the encoder: recomputed from a bf16 base's embeddings they would differ."""
    model = trained(deep_model(depth=DEPTH, first_trained_layer=2))
    held = {name: rows[:, : 2 * HIDDEN].detach().clone() for name, rows in model.task_prompts().items()}
    model.save_pretrained(tmp_path / "open_round")
    resumed = PeftModel.from_pretrained(
        three_layer_model().to(torch.bfloat16), tmp_path / "open_round", is_trainable=True
    )
    for name, rows in resumed.task_prompts().items():
        assert torch.equal(rows[:, : 2 * HIDDEN], held[name])
