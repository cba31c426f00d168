"""The command-line arguments of the single-task recipes: which task and model (``SingleTaskArguments``), and the
technique's own knobs (``EncoderArguments`` for p-tuning, ``LoraArguments`` for LoRA). Each is a dataclass that
``HfArgumentParser`` turns into flags and YAML keys, beside ``ContinualTrainingArguments``; what the recipes do
with them is in ``peft_continual.experiments.single_task``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_continual.experiments.cli import BASE_MODEL_ID_HELP
from peft_continual.experiments.task_files import DATA_DIR_VARIABLE

REPOSITORY = Path(__file__).resolve().parents[2]


@dataclass
class SingleTaskArguments:
    """One task of a task file, the base model, the evaluation and the run's name in result tables."""

    tasks: str = field(
        default=str(REPOSITORY / "recipes" / "configs" / "continual_p_tuning" / "tasks.yaml"),
        metadata={"help": "Task file (YAML `tasks:` list); the task named by --taskname is used."},
    )
    taskname: str = field(default="sentiment", metadata={"help": "The task to train and evaluate."})
    data_dir: str | None = field(
        default=None,
        metadata={"help": f"Folder of the datasets; None: ${DATA_DIR_VARIABLE}, else ../shared/data."},
    )
    records_seed: int = field(
        default=0,
        metadata={"help": "Seed of the task's train/test subsets: the same records whatever --seed (which sets the "
                  "initialisation and batch order)."},
    )  # fmt: skip
    model: str = field(default="embedded", metadata={"help": "`embedded` (SmolLM2-135M), a Hub id or a folder."})
    base_model_id: str | None = field(default=None, metadata={"help": BASE_MODEL_ID_HELP})
    bits: int | None = field(
        default=None, metadata={"help": "Quantize the base with bitsandbytes: 4 (nf4, QLoRA) or 8 (LLM.int8)."}
    )
    max_length: int = field(
        default=512, metadata={"help": "Longest tokenized example, few-shot prompts included (the text field is cut)."}
    )
    eval_batch_size: int = field(default=16, metadata={"help": "Rows per generate/scoring call."})
    max_eval_records: int | None = field(default=None, metadata={"help": "Cap the test subset (quick runs)."})
    technique: str | None = field(
        default=None, metadata={"help": "The run's name in result tables; None: the recipe's name."}
    )
    save_model: bool = field(
        default=True, metadata={"help": "Save what was trained (adapter, table or model) into output_dir/final."}
    )
    folds: int | None = field(
        default=None,
        metadata={"help": "k-fold cross-validation: train on the other folds of the task's training records and "
                  "evaluate on fold --fold (stratified by label, seeded by --records_seed); None: the test split."},
    )  # fmt: skip
    fold: int = field(default=0, metadata={"help": "With --folds: the held-out fold, 0 to folds - 1."})
    train_fraction: float | None = field(
        default=None,
        metadata={"help": "Train on this share of the training records, stratified by label (at least one of each); "
                  "None: all."},
    )  # fmt: skip
    fraction_seed: int = field(
        default=0, metadata={"help": "With --train_fraction: which draw of the records (repeats use other seeds)."}
    )
    k_shot: str | None = field(
        default=None,
        metadata={"help": "LM-BFF split: the folder <dataset>/k_shot/<k_shot> (e.g. 16-13): its train.jsonl trains, "
                  "its validation.jsonl is the development set; the test split stays the task's."},
    )  # fmt: skip
    k_per_class: int | None = field(
        default=None,
        metadata={"help": "LM-BFF's sampling for any data set: K training and K validation records per class "
                  "(seeded by --records_seed)."},
    )  # fmt: skip
    validation_records: int | None = field(
        default=None,
        metadata={"help": "Validation records scored at each evaluation (eval_loss and per-task accuracy), to choose "
                  "the best checkpoint; None: no validation (--k_shot and --k_per_class bring their own)."},
    )  # fmt: skip
    validation_accuracy: str = field(
        default="auto",
        metadata={"help": "How the validation records are answered for eval_task_accuracy: `auto` (restricted choice "
                  "for classification, generation for intent and slots), `generation` (what a served model writes) "
                  "or `restricted` (see ValidationAccuracy)."},
    )  # fmt: skip


@dataclass
class EncoderArguments:
    """The p-tuning encoder (ours and PEFT's P_TUNING)."""

    encoder_type: str = field(default="lstm", metadata={"help": "`lstm` (NeMo, PEFT), `mlp`, or `embedding` (ours: "
                              "free rows, i.e. prompt tuning inside the continual method)."})  # fmt: skip
    encoder_hidden_size: int | None = field(
        default=None, metadata={"help": "Encoder width; None: the model's width, at most 256."}
    )
    init_text: str | None = field(
        default=None,
        metadata={"help": "Ours: text whose embeddings start every virtual token; None: the template's init_text, "
                  "else the task name."},
    )  # fmt: skip
    prompt_depth: int = field(
        default=1,
        metadata={"help": "Ours: layers whose input holds the virtual tokens; 1 = the input embeddings, k > 1 also "
                  "decoder layers 1..k-1 (deep prompts, P-tuning v2)."},
    )  # fmt: skip
    first_trained_layer: int = field(
        default=0,
        metadata={"help": "Ours, deep prompts: the lowest layer whose slice is trained; the layers below keep the "
                  "init text and the backward pass stops there (a cheaper step unless LoRA/IA3 train below it). "
                  "0: every slice."},
    )  # fmt: skip


@dataclass
class LoraArguments:
    """PEFT's LoRA (alone, on a quantized base, or stacked under the prompts)."""

    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on LoRA's input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"], metadata={"help": "Linear layers that get LoRA."}
    )

    def lora_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            task_type="CAUSAL_LM",
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.lora_target_modules,
        )
