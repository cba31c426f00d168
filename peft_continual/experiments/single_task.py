"""What every single-task recipe shares: its records, its model, the count of what it trains and
stores, and its results files.

The recipes (``recipes/few_shot.py``, ``prompt_tuning.py``, ``p_tuning.py``, ``peft_p_tuning.py``, ``lora.py``,
``ia3.py``, ``full_finetune.py``, ``p_tuning_lora.py``) read one task of a task file, train one technique on its
training records and evaluate it on its test records, all with the same code; ``recipes/compare_techniques.py``
runs them one after the other. A recipe's own steps (template, wrap, train, evaluate, save) stay in the recipe;
the bookkeeping is here.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from peft_continual.data.records import TaskRecord
from peft_continual.errors import ConfigError, allowed
from peft_continual.evaluation.during_training import MODES as ACCURACY_MODES
from peft_continual.evaluation.report import TaskResult
from peft_continual.experiments.folds import fold_split, strata
from peft_continual.experiments.label_balance import training_records
from peft_continual.experiments.recipe_arguments import REPOSITORY, SingleTaskArguments
from peft_continual.experiments.results import ResultRow, result_row, show_results, write_results
from peft_continual.experiments.run_settings import check_run_settings, setting_defaults, training_settings
from peft_continual.experiments.subsets import per_class, stratified_fraction
from peft_continual.experiments.task_files import (
    TaskSpec,
    default_data_dir,
    load_split,
    load_task_specs,
)
from peft_continual.machine import machine_facts
from peft_continual.models import load_base_model
from peft_continual.processes import main_process_only


@dataclass
class SingleTask:
    """Step 1 of a recipe: the task and its records."""

    spec: TaskSpec
    train: list[TaskRecord]
    test: list[TaskRecord]
    validation: list[TaskRecord] = field(default_factory=list)
    """The development records that choose the best checkpoint (empty: none)."""

    @property
    def name(self) -> str:
        return self.spec.taskname


def task_spec(args: SingleTaskArguments) -> TaskSpec:
    """The task file's task named by ``args.taskname``.

    Raises:
        ConfigError: no such task in the file (its tasks named).
    """
    specs = {spec.taskname: spec for spec in load_task_specs(args.tasks)}
    if args.taskname not in specs:
        raise ConfigError(f"task {args.taskname!r} is not in {args.tasks}; tasks there: {allowed(specs)}")
    return specs[args.taskname]


def load_task(args: SingleTaskArguments) -> SingleTask:
    """The task named by ``args.taskname`` and its records: seeded train/test subsets (``records_seed``), and the
    records of one evaluation protocol: ``--folds`` (the training records' other folds train, fold ``--fold`` is
    the test set), ``--train_fraction`` (a share of the training records), ``--k_shot`` (an LM-BFF split folder) or
    ``--k_per_class`` (K per class sampled from train and validation); validation records with
    ``--validation_records``.

    Raises:
        ConfigError: an unknown task, a missing data file, two protocols at once, or an unknown
            ``validation_accuracy``.
    """
    spec = task_spec(args)
    protocols = [flag for flag, value in (("--folds", args.folds), ("--train_fraction", args.train_fraction),
                                          ("--k_shot", args.k_shot), ("--k_per_class", args.k_per_class)) if value]  # fmt: skip
    if len(protocols) > 1:
        raise ConfigError(f"{' and '.join(protocols)}: one evaluation protocol at a time")
    if args.validation_accuracy not in ACCURACY_MODES:
        raise ConfigError(f"--validation_accuracy {args.validation_accuracy!r} is not one of {allowed(ACCURACY_MODES)}")
    data_dir = args.data_dir or default_data_dir(REPOSITORY)

    def split(name: str, count: int | None, dataset: str = spec.dataset) -> list[TaskRecord]:
        return load_split(replace(spec, dataset=dataset), data_dir, name, count, args.records_seed)

    test = [] if args.folds is not None else split(spec.eval_split, args.max_eval_records or spec.eval_records)
    if args.k_shot is not None:  # LM-BFF's own split: K per class to train, K per class to choose the checkpoint
        folder = f"{spec.dataset}/k_shot/{args.k_shot}"
        return SingleTask(spec, split("train", None, folder), test, split("validation", None, folder))
    train = split("train", spec.train_records)
    validation = split("validation", args.validation_records) if args.validation_records else []
    if args.k_per_class is not None:
        validation = split("validation", None)
        train = per_class(train, strata(spec, train), args.k_per_class, args.records_seed)
        validation = per_class(validation, strata(spec, validation), args.k_per_class, args.records_seed)
    if args.folds is not None:  # the held-out fold of the training records is the test set
        train, test = fold_split(train, strata(spec, train), args.folds, args.fold, args.records_seed)
        test = test[: args.max_eval_records]
    if args.train_fraction is not None:
        train = stratified_fraction(train, strata(spec, train), args.train_fraction, args.fraction_seed)
    # after the protocol chose the training records: no copy lands in a held-out fold
    return SingleTask(spec, training_records(spec, train, args.records_seed), test, validation)


TRAINING_RECORD_FLAGS = ("folds", "fold", "train_fraction", "fraction_seed", "k_shot", "k_per_class",
                         "validation_records", "validation_accuracy")  # fmt: skip
"""``SingleTaskArguments`` that choose the training or validation records (``load_task``'s protocols and
``--validation_records``) or how validation is scored."""


def load_test_task(args: SingleTaskArguments) -> SingleTask:
    """The task and its test records alone (its seeded ``eval_records`` subset, ``--max_eval_records`` at most), for
    a recipe that trains nothing: no training split is read or balanced.

    Raises:
        ConfigError: an unknown task, a missing data file, or one of ``TRAINING_RECORD_FLAGS`` set away from its
            default, which such a recipe would otherwise ignore.
    """
    given = flags_set(args, SingleTaskArguments(), TRAINING_RECORD_FLAGS)
    if given:
        raise ConfigError(f"{given}: they choose training or validation records, and this recipe scores the test "
                          "split only")  # fmt: skip
    spec = task_spec(args)
    data_dir = args.data_dir or default_data_dir(REPOSITORY)
    test = load_split(spec, data_dir, spec.eval_split, args.max_eval_records or spec.eval_records, args.records_seed)
    return SingleTask(spec, [], test)


def load_tokenizer(args: SingleTaskArguments) -> Any:
    """The base model's tokenizer (``embedded``: SmolLM2's)."""
    from transformers import AutoTokenizer

    from peft_continual.models import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(args.model))


def tokenize_task(args: SingleTaskArguments, task: SingleTask, template: Any) -> tuple[Any, Any, list]:
    """Step 3: the tokenizer, a ``PromptTokenizer`` of ``template`` and the tokenized training examples
    (answer-only labels, virtual-token positions where the template has markers)."""
    from peft_continual.data.tokenize import PromptTokenizer

    tokenizer = load_tokenizer(args)
    prompts = PromptTokenizer(tokenizer, [template], max_length=args.max_length)
    return tokenizer, prompts, prompts.tokenize_records(task.train).examples


def validation(prompts: Any, task: SingleTask, args: SingleTaskArguments) -> dict[str, Any]:
    """``build_trainer``'s arguments that score the task's development records at each evaluation (``eval_loss``
    and ``eval_task_accuracy``, for ``--metric_for_best_model task_accuracy``); none when the task has none."""
    if not task.validation:
        return {}
    from peft_continual.evaluation import ValidationAccuracy

    accuracy = ValidationAccuracy(prompts, task.validation, [task.spec.evaluation], mode=args.validation_accuracy,
                                  batch_size=args.eval_batch_size)  # fmt: skip
    return {"eval_dataset": prompts.tokenize_records(task.validation).examples, "validation_accuracy": accuracy}


def load_model(args: SingleTaskArguments, training: Any) -> tuple[nn.Module, int]:
    """Step 4: a fresh base model on the training device, after ``set_seed(training.seed)`` (what the recipe builds on
    it starts from this seed), and its parameter count (``count_parameters``). With ``--bits`` it is quantized by
    bitsandbytes (which places it) and prepared for training (gradient checkpointing), as QLoRA does."""
    from transformers import set_seed

    set_seed(training.seed)
    if args.bits is None:
        base = load_base_model(args.model, base_model_id=args.base_model_id)[0].to(training.device)
    else:
        from peft_continual.models.quantized import QuantizationArguments

        base = load_base_model(args.model, QuantizationArguments(bits=args.bits), base_model_id=args.base_model_id)[0]
    return base, count_parameters(base)


def evaluate(model: nn.Module, prompts: Any, task: SingleTask, args: SingleTaskArguments, virtual_tokens: bool):
    """Step 7 of every recipe: free generation and restricted choice on the task's test records (``TaskResult``)."""
    from peft_continual.evaluation import evaluate_tasks

    results = evaluate_tasks(
        model.eval(),
        prompts,
        task.test,
        [task.spec.evaluation],
        batch_size=args.eval_batch_size,
        pass_virtual_tokens=virtual_tokens,
    )
    return results[task.name]


TRAINING_SETTINGS = (
    "seed", "max_steps", "num_train_epochs", "learning_rate", "start_rows_learning_rate", "stacked_learning_rate",
    "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "optim", "bf16", "fp16",
    "per_device_train_batch_size", "gradient_accumulation_steps", "train_sampling_strategy",
)  # fmt: skip
"""The training arguments that decide a run's result: a rerun in the same folder must have the same."""


def refuse_training_flags(training: Any, recipe: str) -> None:
    """Raise ``ConfigError`` naming the ``TRAINING_SETTINGS`` (but the seed) set away from their defaults: a recipe
    that trains nothing refuses them rather than ignore them."""
    default = type(training)(output_dir=training.output_dir, precision=training.precision)
    given = flags_set(training, default, [name for name in TRAINING_SETTINGS if name != "seed"])
    if given:
        raise ConfigError(f"{given}: {recipe} trains nothing")


def flags_set(arguments: Any, default: Any, names: Sequence[str]) -> list[str]:
    """``--name`` of each of ``names`` whose value in ``arguments`` differs from the one in ``default`` (an argument
    dataclass as it is without flags): what a recipe that would ignore them refuses."""
    return [f"--{name}" for name in names if getattr(arguments, name, None) != getattr(default, name, None)]


def start_run(recipe_file: str, training: Any, args: SingleTaskArguments, *more: Any) -> str:
    """Check that ``output_dir`` holds no other run's files (a rerun of the same run resumes from its last
    checkpoint) and return the run's name: ``--technique``, else the recipe file's name.

    Args:
        recipe_file: The recipe's ``__file__``.
        training: ``ContinualTrainingArguments``.
        args: The task and model arguments.
        more: The recipe's other argument dataclasses (encoder, LoRA...).

    Raises:
        ConfigError: ``output_dir`` holds a run made with other settings (each difference named).
    """
    check_run_settings(training.output_dir, *_run_settings(recipe_file, training, args, *more))
    return args.technique or Path(recipe_file).stem


def finished_run(recipe_file: str, training: Any, args: SingleTaskArguments, *more: Any) -> list[ResultRow] | None:
    """The rows of this very run if it finished before in ``output_dir`` (``recipes/compare_techniques.py`` reads
    them back instead of running again); ``None`` if it did not. A folder of another run raises as ``start_run``."""
    results = Path(training.output_dir) / "results.json"
    if not results.exists():
        return None
    check_run_settings(training.output_dir, *_run_settings(recipe_file, training, args, *more))
    return [ResultRow(**{k: v for k, v in row.items() if k != "stored_percent"})
            for row in json.loads(results.read_text(encoding="utf-8"))["rows"]]  # fmt: skip


def _run_settings(
    recipe_file: str, training: Any, args: SingleTaskArguments, *more: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What decides a run's result: the recipe, the task as the task file defines it, the arguments (not where the
    data is or how large evaluation batches are) and the ``TRAINING_SETTINGS``; and the defaults of the task's and
    the arguments' fields (``check_run_settings``)."""
    specs = {spec.taskname: spec for spec in load_task_specs(args.tasks)}
    settings: dict[str, Any] = {"recipe": Path(recipe_file).stem, "task": asdict(specs[args.taskname])
                                if args.taskname in specs else None}  # fmt: skip
    for arguments in (args, *more):
        settings |= {k: v for k, v in asdict(arguments).items() if k not in ("data_dir", "eval_batch_size", "tasks")}
    defaults = setting_defaults(TaskSpec, *(type(arguments) for arguments in (args, *more)))
    return settings | training_settings(training, TRAINING_SETTINGS), defaults


def count_parameters(model: nn.Module) -> int:
    """Parameters of a model, quantized ones as their full-precision count (a 4-bit tensor packs two values in each
    byte; PEFT counts them the same way)."""
    total = 0
    for parameter in model.parameters():
        count = parameter.numel()
        if parameter.__class__.__name__ == "Params4bit":
            count *= 2 * getattr(getattr(parameter, "quant_storage", None), "itemsize", 1)
        total += count
    return total


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def finish(
    technique: str,
    result: TaskResult,
    training: Any,
    args: SingleTaskArguments,
    *,
    trained: tuple[nn.Module, Any] | None,
    trainable: int,
    stored: int,
    base: int,
    started: float,
) -> list[ResultRow]:
    """Step 8 of every recipe: save what was trained (``trained``: model and tokenizer, into ``output_dir/final``
    unless ``--save_model false``) and write ``results.json``/``results.md`` of the run into ``output_dir``: the
    task's row (accuracy, restricted, per class, parameter counts, seed), the command, the machine, the precision
    and the minutes; the table is printed too. Under several processes the main process saves and writes; every
    process returns the row."""
    if trained is not None and args.save_model:
        save_trained(trained, Path(training.output_dir) / "final")
    row = result_row(technique, result, trainable_parameters=trainable, stored_parameters=stored, base_parameters=base)
    row.seed, row.fold = training.seed, args.fold if args.folds is not None else None
    row.train_fraction, row.k_shot = args.train_fraction, args.k_shot
    extra = {
        "command": " ".join(["python", *sys.argv]),
        "precision": str(training.precision_choice),
        "machine": machine_facts(),
        "minutes": round((time.time() - started) / 60, 1),
    }
    write_results(Path(training.output_dir), [row], extra, f"{technique} on {result.taskname}")
    show_results(training.output_dir)
    return [row]


@main_process_only
def save_trained(parts: tuple[nn.Module, Any], folder: Path) -> None:
    """``save_pretrained`` of each part (model or adapter, tokenizer) into ``folder``."""
    for part in parts:
        part.save_pretrained(folder)
