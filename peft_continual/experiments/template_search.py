"""The template search's bookkeeping: Optuna's study (stored, resumed), the search space, pruning inside
``Trainer``, and the results (the best template written into a task file, a table of every trial).

What ``recipes/search_template.py`` uses around its trial loop; the recipe keeps the method calls (records, the
template of a trial, a fresh model and encoder, ``Trainer.train``). ``args`` is the recipe's ``SearchArguments``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from transformers import TrainerCallback

from peft_continual._io import write_atomic
from peft_continual.data.templates import TaskTemplate
from peft_continual.errors import ConfigError
from peft_continual.experiments.task_files import load_task_specs
from peft_continual.machine import machine_facts, machine_line
from peft_continual.processes import distributed, main_process_only
from peft_continual.training import ContinualTrainingArguments

OBJECTIVE = "eval_task_accuracy"
"""The metric a trial reports and the study maximises: ``ValidationAccuracy``'s mean task accuracy."""


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

    Examples:
        >>> splits_of(1, 20, None), splits_of(2, 20, 0.25), splits_of(2, 2, 0.25)
        ([20], [5, 15], [1, 1])
    """
    if markers == 1:
        return [total]
    first = min(max(round(total * fraction), 1), total - 1)
    return [first, total - first]


def marker_count(template: str) -> int:
    """How many virtual-token markers (``<|VIRTUAL_PROMPT_i|>``) ``template`` has."""
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


def check_space(args: Any, own: TaskTemplate, training: Any = None) -> SearchSpace:
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


def open_study(output_dir: Path, args: Any, training: ContinualTrainingArguments) -> optuna.Study:
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
    study: optuna.Study, args: Any, spec: Any, training: ContinualTrainingArguments
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
    machine = f"\nMachine: {machine_line(summary['machine'])}; {summary['precision']}.\n"
    write_atomic(output_dir / "trials.md", trials_table(study, args.taskname) + machine)
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
