"""The training loss from the logits of labelled positions only: the very loss and gradients of transformers'
full-logits computation, for the models that allow it."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PromptTuningConfig, get_peft_model
from torch import nn
from transformers import Trainer

from peft_continual.answer_loss import accepts_logit_positions, labelled_positions, loss_at_positions
from peft_continual.training import ContinualTrainer, ContinualTrainingArguments
from tests.tuners.continual_prompt.conftest import MIXED_ROWS, make_batch, make_peft_model, tiny_model


def answer_only(batch: dict) -> dict:
    """Keep the labels of each row's last two real tokens only, as an answer-only template does."""
    labels = torch.full_like(batch["labels"], -100)
    for row, length in enumerate(batch["attention_mask"].sum(1).tolist()):
        labels[row, length - 2 : length] = batch["input_ids"][row, length - 2 : length]
    return batch | {"labels": labels}


def trainer_for(model: nn.Module, tmp_path) -> ContinualTrainer:
    args = ContinualTrainingArguments(output_dir=str(tmp_path), precision="fp32", use_cpu=True, report_to=[])
    return ContinualTrainer(model=model, args=args)


def loss_and_grads(compute, model, batch, num_items) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = compute(model, dict(batch), num_items_in_batch=num_items)
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("num_items", [None, torch.tensor(11)], ids=["mean", "num_items_in_batch"])
def test_the_loss_and_gradients_equal_the_full_logits_computation(tmp_path, num_items):
    model = make_peft_model(encoder_type="mlp")
    model.train()
    batch = answer_only(make_batch(MIXED_ROWS))  # right-padded, two tasks: answers end at different columns
    trainer = trainer_for(model, tmp_path)
    ours, our_grads = loss_and_grads(trainer.compute_loss, model, batch, num_items)
    full, full_grads = loss_and_grads(lambda *a, **k: Trainer.compute_loss(trainer, *a, **k), model, batch, num_items)
    assert ours == pytest.approx(full, rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-7, rtol=1e-5) for a, b in zip(our_grads, full_grads, strict=True))


def test_only_the_labelled_positions_reach_the_lm_head(tmp_path):
    model = make_peft_model(encoder_type="mlp")
    batch = answer_only(make_batch(MIXED_ROWS))
    rows = []
    head = model.get_base_model().get_output_embeddings()
    head.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[1]))
    trainer_for(model, tmp_path).compute_loss(model, dict(batch))
    assert rows == [len(labelled_positions(batch["labels"]))] and rows[0] < batch["input_ids"].shape[1] - 1


def test_labelled_positions_and_the_loss_at_them():
    labels = torch.tensor([[-100, -100, 7, 8], [-100, 5, -100, -100]])
    positions = labelled_positions(labels)
    assert positions.tolist() == [0, 1, 2]
    logits = torch.randn(2, 3, 10)
    # row 0: positions 1, 2 predict 7, 8; row 1: position 0 predicts 5 (kept column k holds position positions[k])
    expected = nn.functional.cross_entropy(logits[[0, 0, 1], [1, 2, 0]], torch.tensor([7, 8, 5]))
    assert loss_at_positions(logits, labels, positions).item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss_at_positions(logits, labels, positions, 6).item() == pytest.approx(expected.item() / 2, rel=1e-6)


def test_models_whose_positions_shift_or_that_take_no_positions_get_the_full_logits():
    assert accepts_logit_positions(make_peft_model())
    assert accepts_logit_positions(tiny_model())
    assert accepts_logit_positions(get_peft_model(tiny_model(), LoraConfig(target_modules=["q_proj"])))
    prompt_tuning = get_peft_model(tiny_model(), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert not accepts_logit_positions(prompt_tuning)  # PEFT prepends its virtual tokens
    assert not accepts_logit_positions(nn.Linear(2, 2))
