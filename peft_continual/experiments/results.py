"""Result tables of an experiment: one row per (task, stage), written as JSON and Markdown, plus PNG plots.

A stage is ``few-shot`` (the untouched base model with demonstrations) or ``round N`` (the continual model after its
N-th round). The headline numbers are the ones a reader compares: accuracy for classification tasks, intent
accuracy and slot F1 for intent-and-slot tasks, each for free generation and for restricted choice.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peft_continual._io import write_atomic
from peft_continual.data.records import TaskRecord
from peft_continual.evaluation.report import TaskResult
from peft_continual.evaluation.tasks import TaskKind
from peft_continual.machine import machine_line
from peft_continual.processes import main_process_only


@dataclass
class ResultRow:
    """The headline numbers of one task at one stage (``None`` where not measured)."""

    task: str
    stage: str
    generation: float | None
    restricted: float | None
    slot_f1: float | None
    outside_label_set: int | None
    examples: int
    trainable_parameters: int | None = None
    stored_parameters: int | None = None
    base_parameters: int | None = None
    per_class: dict[str, dict[str, float]] | None = None
    """Classification: label -> ``gold``, ``predicted`` (generated answers) and ``recall``; shows a collapse onto one
    class that accuracy hides."""
    seed: int | None = None
    """The training seed of this row's model, where one result of several seeds (``peft_continual.experiments.seed_summary``)."""
    carried_from: str | None = None
    """The stage whose evaluation this row repeats (a frozen task whose answers on a sample were rechecked and found
    equal, ``peft_continual.experiments.frozen_recheck``); ``None``: measured at this stage."""
    macro_f1: float | None = None
    """Classification: macro-F1 of the generated answers (classes present in gold or predictions)."""
    fold: int | None = None
    """The held-out fold this row was evaluated on, where one result of a k-fold cross-validation
    (``peft_continual.experiments.folds``)."""
    train_fraction: float | None = None
    """The share of the training records this row's model was trained on (``peft_continual.experiments.subsets``);
    ``None``: all."""
    k_shot: str | None = None
    """The LM-BFF split this row's model was trained on (``16-13``...), where one result of K-shot x seeds."""
    calibrated: float | None = None
    """Restricted-choice accuracy (intent accuracy) after contextual calibration, where the task's evaluation has
    ``calibrate`` (``peft_continual.evaluation.calibration``); its per-class counts are in ``per_class``."""

    @property
    def stored_percent(self) -> float | None:
        if self.stored_parameters is None or not self.base_parameters:
            return None
        return 100.0 * self.stored_parameters / self.base_parameters


@dataclass
class StageMinutes:
    """Wall-clock minutes per stage of a run, for the results file: where its time goes, on the machine that
    ``machine_facts`` names. ``lap(stage)`` books the time since the previous lap (or since creation) to ``stage``;
    a stage read back from an earlier invocation's files books the seconds that took."""

    minutes: dict[str, float] = field(default_factory=dict)
    last: float = field(default_factory=time.perf_counter, repr=False)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.minutes[stage] = round(self.minutes.get(stage, 0.0) + (now - self.last) / 60, 2)
        self.last = now


def result_row(stage: str, result: TaskResult, **counts: int | None) -> ResultRow:
    """Pick the headline metrics of one task's ``TaskResult``."""
    generation = result.metrics.get("generation", {})
    restricted = result.metrics.get("restricted", {})
    calibrated = result.metrics.get("calibrated", {})
    macro_f1 = generation.get("macro_f1") if result.kind is TaskKind.CLASSIFICATION else None
    if result.kind is TaskKind.CLASSIFICATION:
        main, slot_f1, outside = generation.get("accuracy"), None, generation.get("num_outside_label_set")
    else:
        main, slot_f1 = generation.get("intent_accuracy"), generation.get("slot_f1")
        outside = generation.get("num_intent_outside_label_set")
    restricted_main = restricted.get("accuracy", restricted.get("intent_accuracy"))
    examples = generation.get("num_examples", restricted.get("num_examples", 0))
    per_class = None
    if "gold_per_class" in generation:
        per_class = {
            label: {"gold": gold, "predicted": generation["predicted_per_class"][label],
                    "recall": generation["recall_per_class"].get(label)}
            for label, gold in generation["gold_per_class"].items()
        }  # fmt: skip
        if "predicted_per_class" in calibrated:  # the calibrated choices' counts beside the generated answers'
            for label, of_class in per_class.items():
                of_class["calibrated_predicted"] = calibrated["predicted_per_class"][label]
                of_class["calibrated_recall"] = calibrated["recall_per_class"].get(label)
    return ResultRow(
        result.taskname,
        stage,
        main,
        restricted_main,
        slot_f1,
        outside,
        examples,
        **counts,
        per_class=per_class,
        macro_f1=macro_f1,
        calibrated=calibrated.get("accuracy", calibrated.get("intent_accuracy")),
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def standard_error(accuracy: float, examples: int) -> float:
    """Binomial standard error of an accuracy measured on ``examples`` records: ``sqrt(p (1 - p) / n)``; on 226
    records about 0.017 (1.7 points) near 90%."""
    return math.sqrt(accuracy * (1 - accuracy) / examples) if examples else float("nan")


def _percent_with_error(value: float | None, examples: int) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f} ± {100 * standard_error(value, examples):.1f}" if examples else _percent(value)


# The columns that tell apart the runs of one comparison: (header, the row's value or None)
_RUN_COLUMNS = (
    ("seed", lambda row: row.seed),
    ("fold", lambda row: row.fold),
    ("train %", lambda row: None if row.train_fraction is None else f"{100 * row.train_fraction:g}"),
    ("K-shot split", lambda row: row.k_shot),
)


def _run_columns(rows: Sequence[ResultRow]) -> tuple[str, Callable[[ResultRow], str]]:
    """The header cells of the run columns some row has a value for, and a function giving a row's cells for them:
    without them, the runs of a sweep over seeds, folds, fractions or splits would read as repeated rows."""
    present = [(name, value) for name, value in _RUN_COLUMNS if any(value(row) is not None for row in rows)]
    header = "".join(f" {name} |" for name, _ in present)
    return header, lambda row: "".join(f" {'-' if value(row) is None else value(row)} |" for _, value in present)


def markdown_table(rows: Sequence[ResultRow]) -> str:
    """A Markdown table of the rows (accuracies in %, each with its binomial standard error on the row's ``n``
    records), with a seed, fold, train % or K-shot split column where some row has one."""
    run_header, run_cells = _run_columns(rows)
    calibrated = any(row.calibrated is not None for row in rows)
    lines = [
        f"| task | stage |{run_header} generation acc. % (± s.e.) | restricted acc. % (± s.e.) |"
        f"{' calibrated acc. % (± s.e.) |' if calibrated else ''} slot F1 % | outside label set | n "
        "| trainable params | stored params | % of base |",
        "|---|---|---|---|---|---|---|---|---|---|" + "---|" * (run_header.count("|") + calibrated),
    ]
    for row in rows:
        stored = "-" if row.stored_percent is None else f"{row.stored_percent:.4f}"
        calibrated_cell = f" {_percent_with_error(row.calibrated, row.examples)} |" if calibrated else ""
        lines.append(
            f"| {row.task} | {row.stage}{f' (= {row.carried_from})' if row.carried_from else ''} |{run_cells(row)} "
            f"{_percent_with_error(row.generation, row.examples)} | {_percent_with_error(row.restricted, row.examples)} "
            f"|{calibrated_cell} {_percent(row.slot_f1)} | {'-' if row.outside_label_set is None else row.outside_label_set} "
            f"| {row.examples} | {row.trainable_parameters or '-'} | {row.stored_parameters or '-'} | {stored} |"
        )
    return "\n".join(lines)


def per_class_table(rows: Sequence[ResultRow]) -> str:
    """A Markdown table of the classification rows' classes: gold count, generated predictions, recall (with the
    run columns of ``markdown_table``), and the calibrated choices' predictions and recall where a row has them."""
    run_header, run_cells = _run_columns(rows)
    calibrated = any("calibrated_predicted" in counts for row in rows for counts in (row.per_class or {}).values())
    calibrated_header = " calibrated predicted | calibrated recall % |" if calibrated else ""
    lines = [f"| task | stage |{run_header} class | gold | predicted | recall % |{calibrated_header}",
             "|---|---|---|---|---|---|" + "---|" * (run_header.count("|") + 2 * calibrated)]  # fmt: skip
    for row in rows:
        for label, counts in (row.per_class or {}).items():
            calibrated_cells = (
                f" {counts.get('calibrated_predicted', '-')} | {_percent(counts.get('calibrated_recall'))} |"
                if calibrated
                else ""
            )
            lines.append(
                f"| {row.task} | {row.stage} |{run_cells(row)} {label} | {counts['gold']} | {counts['predicted']} "
                f"| {_percent(counts['recall'])} |{calibrated_cells}"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


@main_process_only
def write_results(
    output_dir: Path, rows: Sequence[ResultRow], extra: Mapping[str, Any], title: str, summary: str = ""
) -> None:
    """``results.json`` (rows + ``extra``) and ``results.md`` (title, ``summary`` (a Markdown block, e.g. means over
    seeds), the rows' table, ``extra`` notes, the machine in one line) in ``output_dir``."""
    payload = {"rows": [asdict(row) | {"stored_percent": row.stored_percent} for row in rows], **extra}
    write_atomic(output_dir / "results.json", json.dumps(payload, indent=2, sort_keys=False) + "\n")
    notes = [f"- **{key}**: {value}" for key, value in extra.items() if not isinstance(value, (dict, list))]
    if isinstance(extra.get("machine"), Mapping):  # ``machine_facts()``: one line, so the Markdown names the machine
        notes.append(f"- **machine**: {machine_line(extra['machine'])}")
    notes_block = "\n".join(notes)
    classes = per_class_table(rows)
    classes = f"\n\nPer class (generated answers):\n\n{classes}" if classes else ""
    table = f"{summary}\n\nEvery run:\n\n{markdown_table(rows)}" if summary else markdown_table(rows)
    write_atomic(output_dir / "results.md", f"# {title}\n\n{table}{classes}\n\n{notes_block}\n")


@main_process_only
def show_results(output_dir: Path) -> None:
    """Print ``results.md``: a recipe's result table, at the end of its run (once, by the main process)."""
    print((Path(output_dir) / "results.md").read_text(encoding="utf-8"), flush=True)


def evaluation_key(records: Sequence[TaskRecord], *inputs: Any) -> str:
    """sha256 of an evaluation's records (tasks and fields, not where they were read) and other inputs (table row
    hashes, template texts): rows saved by ``save_rows`` are read back only under the very same key."""
    content = [[[record.taskname, record.fields] for record in records], inputs]
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


@main_process_only
def save_rows(path: Path, key: str, rows: Sequence[ResultRow]) -> None:
    """Save result rows with the ``evaluation_key`` of what they were measured on (atomically)."""
    write_atomic(path, json.dumps({"evaluation_key": key, "rows": [asdict(row) for row in rows]}, indent=2) + "\n")


def read_saved_rows(path: Path, key: str) -> list[ResultRow] | None:
    """The rows ``save_rows`` wrote at ``path`` under ``key``; ``None`` when absent or measured on other inputs."""
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    if not isinstance(saved, dict) or saved.get("evaluation_key") != key:
        return None
    return [ResultRow(**row) for row in saved["rows"]]


@main_process_only
def plot_results(
    output_dir: Path, losses: Mapping[str, Sequence[tuple[int, float]]], rows: Sequence[ResultRow]
) -> list[Path]:
    """``training_loss.png`` (loss per step, one line per round) and ``accuracy.png`` (per task across stages)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for name, points in losses.items():
        if points:
            axis.plot([p[0] for p in points], [p[1] for p in points], label=name)
    axis.set(xlabel="step", ylabel="training loss", title="Training loss per round")
    if axis.get_legend_handles_labels()[0]:
        axis.legend()
    figure.tight_layout()
    written.append(output_dir / "training_loss.png")
    figure.savefig(written[-1], dpi=120)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 3.5))
    stages = list(dict.fromkeys(row.stage for row in rows))
    for task in dict.fromkeys(row.task for row in rows):
        points = [
            (stages.index(r.stage), r.restricted if r.restricted is not None else r.generation)
            for r in rows
            if r.task == task
        ]
        points = [(x, 100 * y) for x, y in points if y is not None]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=task)
    axis.set_xticks(range(len(stages)), stages)
    axis.set(ylabel="accuracy % (restricted, else generation)", title="Per-task accuracy across stages", ylim=(0, 100))
    axis.legend()
    figure.tight_layout()
    written.append(output_dir / "accuracy.png")
    figure.savefig(written[-1], dpi=120)
    plt.close(figure)
    return written
