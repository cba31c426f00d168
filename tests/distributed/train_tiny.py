"""Train the continual prompt method on a tiny random model, the way ``accelerate launch`` (DDP) runs a recipe.

Run alone (one process) or under ``accelerate launch --num_processes 2 --cpu`` (gloo): every process trains; the
main process freezes the tasks and saves the table. ``tests/distributed/test_ddp.py`` compares the two tables.

    python tests/distributed/train_tiny.py OUTPUT_DIR PER_DEVICE_BATCH [STOP_AFTER_STEP]

With ``STOP_AFTER_STEP`` the run stops there, as a killed run would after its checkpoint; started again (in any
number of processes) it resumes from its last checkpoint (``train_or_resume``) and trains the remaining steps.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import PartialState
from peft import get_peft_model
from safetensors.torch import save_file
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from peft_continual.data.records import records_from_dicts  # noqa: E402
from peft_continual.data.templates import TaskTemplate  # noqa: E402
from peft_continual.data.tokenize import PromptTokenizer  # noqa: E402
from peft_continual.processes import end_processes  # noqa: E402
from peft_continual.training import ContinualTrainingArguments, build_trainer, train_or_resume  # noqa: E402
from peft_continual.tuners.continual_prompt import ContinualPromptConfig  # noqa: E402
from tests.conftest import SMOLLM2_TOKENIZER_DIR, build_tiny_model  # noqa: E402

TEMPLATES = [
    TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 4, [4], "label"),
    TaskTemplate("intent", "{utterance}<|VIRTUAL_PROMPT_0|>\n{label}", 3, [3], "label"),
]


def training_rows(tokenizer) -> list:
    """32 tokenized rows; the tasks alternate, so each process's half of a batch holds both; answers of 1-4 tokens."""
    rows = []
    labels = ["positive", "very negative indeed", "neutral", "mixed"]
    for i in range(16):
        rows.append({"taskname": "sentiment", "sentence": f"Sales rose {i}% in Q{i % 4}", "label": labels[i % 4]})
        rows.append({"taskname": "intent", "utterance": f"wake me at {i} am", "label": "alarm_set" * (1 + i % 3)})
    return PromptTokenizer(tokenizer, TEMPLATES).tokenize_records(records_from_dicts(rows)).examples


class StopAfter(TrainerCallback):
    """Ends training after ``step`` (its checkpoint saved): an interrupted run."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def main(output_dir: Path, per_device_batch: int, stop_after: int | None = None) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2_TOKENIZER_DIR)
    examples = training_rows(tokenizer)
    config = ContinualPromptConfig(templates=TEMPLATES, encoder_type="mlp").tokenize_tasknames(tokenizer)
    torch.manual_seed(0)  # the encoder's initialisation: the same in every process
    model = get_peft_model(build_tiny_model("llama"), config)
    args = ContinualTrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        per_device_train_batch_size=per_device_batch,
        learning_rate=1e-2,
        max_steps=4,
        save_steps=2,
        logging_steps=1,
        seed=0,
        use_cpu=True,
        precision="fp32",
        disable_tqdm=True,
        report_to=[],
        # this method's sampler: one step's rows are the same whatever the process count (1 x 4 rows or 2 x 2)
        train_sampling_strategy="group_by_length_per_task",
    )
    callbacks = [StopAfter(stop_after)] if stop_after else []
    trainer = build_trainer(model, args, examples, tokenizer.pad_token_id, callbacks=callbacks)
    if PartialState().is_main_process:  # each task's prompt before training, to see that training moved it
        output_dir.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            start = {name: rows.detach().clone().contiguous() for name, rows in model.task_prompts().items()}
        save_file(start, output_dir / "untrained.safetensors")
    train_or_resume(trainer)
    if stop_after is None and PartialState().is_main_process:
        model.freeze_tasks()
        model.save_pretrained(output_dir / "table")
    end_processes()  # as a recipe ends (``run_recipe``): without it gloo could abort a finished process at exit


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
