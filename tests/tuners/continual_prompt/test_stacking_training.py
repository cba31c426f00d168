"""LoRA stacked under the prompts, trained: jointly at separate learning rates (``param_groups``, the Trainer's
``--start_rows_learning_rate``/``--stacked_learning_rate``), or in stages with one side frozen."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from peft import PeftModel
from transformers import Trainer, TrainingArguments

from peft_continual import param_groups
from tests.stacking_cases import train
from tests.tuners.continual_prompt.conftest import MIXED_ROWS, TEMPLATE_A, TEMPLATE_B, make_batch, tiny_model
from tests.tuners.continual_prompt.test_stacking import changed, snapshot, stacked_model, trainable_kinds


def test_joint_training_moves_prompts_and_lora_and_leaves_the_base():
    model = stacked_model()
    assert trainable_kinds(model) == {"encoder", "lora"}
    encoder, lora = list(model.prompt_parameters()), list(model.stacked_parameters())
    base = [p for n, p in model.named_parameters() if ".base_layer." in n or "embed_tokens" in n]
    before = [snapshot(encoder), snapshot(lora), snapshot(base)]
    losses = train(model, make_batch(MIXED_ROWS))
    assert losses[-1] < losses[0]
    assert changed(before[0], encoder) and changed(before[1], lora) and not changed(before[2], base)


def test_param_groups_give_prompts_and_lora_their_own_learning_rates():
    model = stacked_model()
    groups = param_groups(model, prompt_lr=1e-3, stacked_lr=2e-4, weight_decay=0.01)
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(1e-3, 0.01), (2e-4, 0.01)]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.prompt_parameters()}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.stacked_parameters()}
    model.set_requires_grad("lora", False)
    assert [g["lr"] for g in param_groups(model, prompt_lr=1e-3, stacked_lr=2e-4)] == [1e-3], "frozen: left out"


def test_param_groups_give_the_start_rows_their_own_learning_rate():
    model = stacked_model()
    start_rows = [p for n, p in model.named_parameters() if ".start_rows." in n]
    assert start_rows, "the default prompt_init='text' trains start rows"
    groups = param_groups(model, prompt_lr=1e-2, stacked_lr=2e-4, start_rows_lr=3e-2)
    assert [g["lr"] for g in groups] == [3e-2, 1e-2, 2e-4]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in start_rows}
    encoder = {id(p) for p in model.prompt_parameters()} - {id(p) for p in start_rows}
    assert {id(p) for p in groups[1]["params"]} == encoder and encoder


def test_trainer_trains_both_with_separate_learning_rates(tmp_path):
    model = stacked_model()
    optimizer = torch.optim.AdamW(param_groups(model, prompt_lr=1e-2, stacked_lr=5e-3))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=8,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=MIXED_ROWS * 2, data_collator=make_batch, optimizers=(optimizer, None)
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0], losses
    assert trainer.optimizer.param_groups[0]["initial_lr"] == 1e-2
    assert trainer.optimizer.param_groups[1]["initial_lr"] == 5e-3


def test_lora_first_then_a_prompt_round_with_lora_frozen(tmp_path):
    model = stacked_model(templates=())  # no prompt task yet: the LoRA trains alone on plain batches
    plain = make_batch([("x", [[20, 21, 22, 23, 24]]), ("x", [[30, 31, 32]])])
    plain = {key: plain[key] for key in ("input_ids", "attention_mask", "labels")}
    assert trainable_kinds(model) == {"lora"}
    losses = train(model, plain)
    assert losses[-1] < losses[0]
    model.set_requires_grad("lora", False)
    lora = list(model.stacked_parameters())
    frozen_lora = snapshot(lora)
    model.add_tasks([TEMPLATE_A, TEMPLATE_B])
    assert trainable_kinds(model) == {"encoder"}
    losses = train(model, make_batch(MIXED_ROWS))
    assert losses[-1] < losses[0] and not changed(frozen_lora, lora)
    model.eval()
    model.freeze_tasks()
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model(), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(**make_batch(MIXED_ROWS)).logits, model(**make_batch(MIXED_ROWS)).logits)


@pytest.mark.integration
def test_prompts_first_then_a_lora_round_with_the_table_frozen():
    model = stacked_model()
    model.set_requires_grad("lora", False)
    train(model, make_batch(MIXED_ROWS))
    model.eval()
    model.freeze_tasks()
    table = model.prompt_table.row_hashes()
    model.set_requires_grad("lora", True)
    assert trainable_kinds(model) == {"lora"}
    lora = list(model.stacked_parameters())
    before = snapshot(lora)
    losses = train(model, make_batch(MIXED_ROWS))
    assert losses[-1] < losses[0] and changed(before, lora)
    assert model.prompt_table.row_hashes() == table


def test_the_trainer_gives_start_rows_and_lora_their_rates_with_the_optimizer_named_by_optim(tmp_path):
    from peft_continual.training import ContinualTrainer, ContinualTrainingArguments

    model = stacked_model()
    args = ContinualTrainingArguments(
        output_dir=str(tmp_path), learning_rate=1e-2, start_rows_learning_rate=3e-2, stacked_learning_rate=1e-3,
        optim="sgd", weight_decay=0.1, precision="fp32", report_to=[],
    )  # fmt: skip
    optimizer = ContinualTrainer(model=model, args=args).create_optimizer()
    assert isinstance(optimizer, torch.optim.SGD)  # --optim is honoured, not replaced by a fixed AdamW
    assert [(group["lr"], group["weight_decay"]) for group in optimizer.param_groups] == [
        (3e-2, 0.1), (1e-2, 0.1), (1e-3, 0.1)
    ]  # fmt: skip
    assert {id(p) for p in optimizer.param_groups[2]["params"]} == {id(p) for p in model.stacked_parameters()}
    plain = ContinualTrainer(
        model=stacked_model(), args=replace(args, start_rows_learning_rate=None, stacked_learning_rate=None)
    ).create_optimizer()
    assert len({group["lr"] for group in plain.param_groups}) == 1  # Trainer's own groups (decay / no decay)
