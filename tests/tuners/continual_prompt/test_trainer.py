"""``transformers.Trainer`` drives the method: the loss falls, and a resumed run ends where an uninterrupted one does."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from tests.tuners.continual_prompt.conftest import MIXED_ROWS, make_batch, make_peft_model

ROWS = MIXED_ROWS * 4  # 16 examples of two tasks


def collate(rows: list) -> dict:
    """Rows -> a padded batch; ``tasknames`` (a list of str) passes through to the model."""
    return make_batch(rows)


def arguments(output_dir, **overrides) -> TrainingArguments:
    settings = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "max_steps": 12,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "remove_unused_columns": False,  # keep `tasknames` and `virtual_token_mask`
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
    }
    return TrainingArguments(**(settings | overrides))


@pytest.mark.integration
def test_trainer_lowers_the_loss(tmp_path):
    model = make_peft_model()
    trainer = Trainer(model=model, args=arguments(tmp_path), train_dataset=ROWS, data_collator=collate)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 12
    assert sum(losses[-3:]) < 0.9 * sum(losses[:3]), losses


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.integration
def test_resumed_training_ends_with_the_table_of_an_uninterrupted_run(tmp_path):
    settings = {"max_steps": 6, "save_strategy": "steps", "save_steps": 3}
    straight = make_peft_model(encoder_type="mlp", seed=1)
    Trainer(
        model=straight, args=arguments(tmp_path / "straight", **settings), train_dataset=ROWS, data_collator=collate
    ).train()
    straight.freeze_tasks()

    interrupted = make_peft_model(encoder_type="mlp", seed=1)
    Trainer(
        model=interrupted,
        args=arguments(tmp_path / "resumed", **settings),
        train_dataset=ROWS,
        data_collator=collate,
        callbacks=[StopAt(3)],
    ).train()
    checkpoint = tmp_path / "resumed" / "checkpoint-3"  # Trainer saves the adapter through our atomic save
    saved = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt"} <= saved
    assert not [name for name in saved if name.startswith(".partial-")]
    resumed = make_peft_model(encoder_type="mlp", seed=2)  # other initial weights: the checkpoint must overwrite them
    trainer = Trainer(
        model=resumed, args=arguments(tmp_path / "resumed", **settings), train_dataset=ROWS, data_collator=collate
    )
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 6
    resumed.freeze_tasks()
    assert resumed.prompt_table.row_hashes() == straight.prompt_table.row_hashes()
    assert all(torch.equal(resumed.prompt_table[t], straight.prompt_table[t]) for t in straight.prompt_table)
