"""Task accuracy on held-out records at every ``Trainer`` evaluation: a best-checkpoint metric that ranks checkpoints
by what the results report.

``eval_loss`` averages the loss over every answer token, slots and formatting included, so it can rank models the
other way round from the accuracies that matter: in the full-data demo, 2000 round-1 steps ended at eval_loss 0.170
and 73.2% intent accuracy, 3000 steps at 0.180 and 71.7% (see ``docs/content/results.md``).
``ValidationAccuracy`` scores the records the way the final evaluation does and returns ``eval_<task>_accuracy``
per task and their mean ``eval_task_accuracy``, for ``metric_for_best_model: task_accuracy``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from peft_continual.data.records import TaskRecord
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.errors import ConfigError, UnknownTaskError, allowed
from peft_continual.evaluation.prepended_prompts import evaluation_view
from peft_continual.evaluation.report import evaluate_tasks
from peft_continual.evaluation.tasks import TaskEvaluation, TaskKind

MODES = ("auto", "generation", "restricted")


@dataclass
class ValidationAccuracy:
    """Per-task accuracy of a model on held-out records, as ``Trainer`` metrics.

    The accuracy of a classification task is label accuracy; of an intent-and-slot task, intent accuracy (its slot F1
    is reported beside it when the task is generated). ``mode`` chooses how each task is answered:

    - ``generation``: greedy generation, as a user would serve the model;
    - ``restricted``: the likeliest candidate (every task needs a label set with restricted scoring on);
    - ``auto`` (default): restricted for classification tasks (a few candidate labels: cheap), generation for
      intent-and-slot tasks (their candidate tree of 64 intents costs ~3x generation, and generation also gives the
      slot F1).

    Examples:
        >>> accuracy = ValidationAccuracy(prompt_tokenizer, validation_records, task_evaluations)  # doctest: +SKIP
        >>> accuracy(model)  # doctest: +SKIP
        {'eval_sentiment_accuracy': 0.9, 'eval_intent_accuracy': 0.7, 'eval_intent_slot_f1': 0.4,
         'eval_task_accuracy': 0.8}
    """

    prompt_tokenizer: PromptTokenizer = field(metadata={"help": "Tokenizer and templates the model was trained with."})
    records: Sequence[TaskRecord] = field(metadata={"help": "Held-out records of any mix of the tasks."})
    tasks: Sequence[TaskEvaluation] = field(metadata={"help": "One TaskEvaluation per task of the records."})
    mode: str = field(default="auto", metadata={"help": "`auto`, `generation` or `restricted` (see above)."})
    batch_size: int = field(default=16, metadata={"help": "Rows per generate call and per scoring pass."})

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"ValidationAccuracy.mode={self.mode!r} is not one of {allowed(MODES)}")
        self.tasks = [t if isinstance(t, TaskEvaluation) else TaskEvaluation.from_dict(t) for t in self.tasks]
        if self.mode == "restricted":
            unscored = [t.taskname for t in self.tasks if t.candidates() is None]
            if unscored:
                raise ConfigError(
                    f"ValidationAccuracy(mode='restricted'): task(s) {unscored} have no restricted scoring (it needs "
                    "a label set and restricted=True); use mode='auto' or 'generation'"
                )
        if not self.records:
            raise ConfigError("ValidationAccuracy needs at least one held-out record")
        unknown = sorted({r.taskname for r in self.records} - {t.taskname for t in self.tasks})
        if unknown:
            raise UnknownTaskError(
                f"ValidationAccuracy: records of task(s) {unknown} have no TaskEvaluation; "
                f"given: {allowed(t.taskname for t in self.tasks)}"
            )

    def mode_of(self, task: TaskEvaluation) -> str:
        """``generation`` or ``restricted``: how ``task`` is answered in this ``mode``."""
        if self.mode != "auto":
            return self.mode
        cheap = task.kind is TaskKind.CLASSIFICATION and task.candidates() is not None
        return "restricted" if cheap else "generation"

    def __call__(self, model: Any, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Score ``model`` (left in the train/eval mode it had); keys are ``<prefix>_<task>_accuracy`` and more."""
        metrics: dict[str, float] = {}
        accuracies: list[float] = []
        model = evaluation_view(model)  # PEFT's prompt tuning / p-tuning: the text's logits, prompts in front once
        for mode in ("restricted", "generation"):
            tasks = [t for t in self.tasks if self.mode_of(t) == mode]
            names = {t.taskname for t in tasks}
            records = [r for r in self.records if r.taskname in names]
            if not records:
                continue
            results = evaluate_tasks(
                model,
                self.prompt_tokenizer,
                records,
                tasks,
                generation=mode == "generation",
                restricted=mode == "restricted",
                batch_size=self.batch_size,
                scoring_batch_size=self.batch_size,
                progress=False,
            )
            for name, result in results.items():
                scores = result.metrics[mode]
                accuracy = scores.get("accuracy" if result.kind is TaskKind.CLASSIFICATION else "intent_accuracy")
                if accuracy is None:  # every record of the task was too long to score
                    continue
                metrics[f"{metric_key_prefix}_{name}_accuracy"] = accuracy
                accuracies.append(accuracy)
                if "slot_f1" in scores:
                    metrics[f"{metric_key_prefix}_{name}_slot_f1"] = scores["slot_f1"]
        if accuracies:
            metrics[f"{metric_key_prefix}_task_accuracy"] = sum(accuracies) / len(accuracies)
        return metrics
