"""Experiment tasks: one YAML entry per task ties its template, its dataset, its round and its evaluation together.

Recipes and benchmarks read the same task files, so every technique trains and evaluates on the same records with
the same templates and metrics. A task file is NeMo-like::

    tasks:
      - taskname: sentiment
        round: 1
        dataset: financial_phrasebank          # folder under --data_dir with train/validation/test.jsonl
        prompt_template: "<|VIRTUAL_PROMPT_0|>{sentence}\\nSentiment: {label}"
        total_virtual_tokens: 20
        virtual_token_splits: [20]
        answer_field: label
        train_records: 800                     # a seeded random subset; null = every record
        eval_records: 226
        evaluation: {kind: classification, labels: {labels: [positive, negative, neutral]}, max_new_tokens: 4}
        fewshot: {k: 1}
"""

from __future__ import annotations

import os
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from peft_continual.data.fewshot import FewShotConfig
from peft_continual.data.records import TaskRecord, read_jsonl
from peft_continual.data.templates import TaskTemplate, check_unique_tasknames
from peft_continual.errors import ConfigError, allowed
from peft_continual.evaluation.tasks import TaskEvaluation

_TEMPLATE_KEYS = {f.name for f in fields(TaskTemplate)}
DATA_DIR_VARIABLE = "PEFT_CONTINUAL_DATA_DIR"


def default_data_dir(repo_root: Path) -> str:
    """Where the datasets are unless ``--data_dir`` says: ``$PEFT_CONTINUAL_DATA_DIR``, else ``../shared/data``.

    Recipes, benchmarks and tests all take their default from here, so one variable points every one of them at a
    copy of the data somewhere else.
    """
    return os.environ.get(DATA_DIR_VARIABLE) or str(repo_root.parent / "shared" / "data")


@dataclass
class TaskSpec:
    """Everything an experiment needs to know about one task."""

    template: TaskTemplate = field(metadata={"help": "The task template (NeMo fields)."})
    dataset: str = field(metadata={"help": "Folder under the data directory holding `{split}.jsonl` files."})
    evaluation: TaskEvaluation = field(metadata={"help": "Kind, label set and generation budget of the task."})
    round: int = field(default=1, metadata={"help": "Continual round in which the task is trained (1, 2, ...)."})
    train_records: int | None = field(default=None, metadata={"help": "Seeded random training subset; None = all."})
    eval_records: int | None = field(default=None, metadata={"help": "Seeded random test subset; None = all."})
    eval_split: str = field(default="test", metadata={"help": "Split evaluated after each round."})
    fewshot: FewShotConfig = field(default_factory=FewShotConfig, metadata={"help": "Few-shot baseline settings."})
    balance_labels: bool | float = field(
        default=False,
        metadata={"help": "Oversample the training records of each answer class (an intent-and-slot task's intents) "
                  "to the most frequent class's count (true), or to at least this fraction of it (a number in (0, 1]), "
                  "seeded: against a prompt that learns only the majority class."},
    )  # fmt: skip

    @property
    def taskname(self) -> str:
        return self.template.taskname

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> TaskSpec:
        """Build from one YAML entry: template keys at top level, the rest as named in the class."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: a task must be a mapping, got {type(data).__name__}")
        known = _TEMPLATE_KEYS | {f.name for f in fields(cls)} - {"template"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {allowed(known)}")
        template = TaskTemplate.from_dict({k: v for k, v in data.items() if k in _TEMPLATE_KEYS}, source=source)
        rest = {k: v for k, v in data.items() if k not in _TEMPLATE_KEYS}
        if "dataset" not in rest:
            raise ConfigError(f"{source} (task {template.taskname!r}): missing key 'dataset'")
        where = f"{source} (task {template.taskname!r})"
        evaluation = _section(rest.pop("evaluation", {}), TaskEvaluation, f"{where}: evaluation", skip={"taskname"})
        fewshot = FewShotConfig(**_section(rest.pop("fewshot", {}), FewShotConfig, f"{where}: fewshot"))
        spec = cls(
            template=template, evaluation=TaskEvaluation(template.taskname, **evaluation), fewshot=fewshot, **rest
        )
        if not isinstance(spec.round, int) or isinstance(spec.round, bool) or spec.round < 1:
            raise ConfigError(f"{where}: round must be 1 or more, got {spec.round!r}")
        for name in ("train_records", "eval_records"):
            value = getattr(spec, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{where}: {name} must be a positive whole number or null (all), got {value!r}")
        fraction = spec.balance_labels
        if not isinstance(fraction, bool) and not (isinstance(fraction, int | float) and 0 < fraction <= 1):
            raise ConfigError(
                f"{where}: balance_labels must be true, false or a fraction in (0, 1] of the largest class, got "
                f"{fraction!r}"
            )
        if not isinstance(spec.dataset, str) or not isinstance(spec.eval_split, str):
            raise ConfigError(
                f"{where}: dataset and eval_split must be names, got {spec.dataset!r}, {spec.eval_split!r}"
            )
        return spec


def _section(value: Any, cls: type, where: str, skip: Collection[str] = ()) -> dict[str, Any]:
    """A nested mapping of a task entry (``evaluation:``, ``fewshot:``), checked against the fields of ``cls``."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    known = {f.name for f in fields(cls)} - set(skip)
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {allowed(known)}")
    return dict(value)


def load_task_specs(path: str | Path) -> list[TaskSpec]:
    """Read a task file (a ``tasks:`` list); task names must be unique."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read the task file: {error}") from None
    entries = data.get("tasks") if isinstance(data, Mapping) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: expected a non-empty `tasks:` list")
    specs = [TaskSpec.from_dict(entry, f"{path} tasks[{i}]") for i, entry in enumerate(entries)]
    check_unique_tasknames([spec.template for spec in specs])
    return specs


def rounds_of(specs: Sequence[TaskSpec]) -> list[list[TaskSpec]]:
    """Tasks grouped by round, rounds in order; a gap in the numbering is an error."""
    numbers = sorted({spec.round for spec in specs})
    if numbers != list(range(1, len(numbers) + 1)):
        raise ConfigError(f"rounds must be numbered 1, 2, ... without gaps; found {numbers}")
    return [[spec for spec in specs if spec.round == number] for number in numbers]


def load_split(spec: TaskSpec, data_dir: str | Path, split: str, limit: int | None, seed: int) -> list[TaskRecord]:
    """Records of one split of a task's dataset, or a seeded random subset of ``limit`` of them (in file order).

    The records' ``taskname`` is set to the spec's, so one dataset can serve under another task name; where the task
    has label words (``LabelNormalization.words``), the answers are the words (the metrics map them back).
    """
    path = Path(data_dir) / spec.dataset / f"{split}.jsonl"
    if not path.exists():
        raise ConfigError(
            f"task {spec.taskname!r}: {path} does not exist; is --data_dir (or ${DATA_DIR_VARIABLE}) right?"
        )
    records = read_jsonl(path)
    if limit is not None and limit < len(records):
        keep = sorted(random.Random(f"{seed}:{spec.taskname}:{split}").sample(range(len(records)), limit))
        records = [records[i] for i in keep]
    return [TaskRecord(spec.taskname, _shown_answer(spec, record), record.source) for record in records]


def _shown_answer(spec: TaskSpec, record: TaskRecord) -> dict:
    """The record's fields with its answer as the model reads it: the label word, where the task has label words."""
    labels, answer = spec.evaluation.labels, spec.template.answer_field
    if (
        labels is None
        or not labels.words
        or spec.evaluation.kind.value != "classification"
        or answer not in record.fields
    ):
        return record.fields
    label = labels.normalize_reference(record.fields[answer], record.source, spec.taskname)
    return {**record.fields, answer: labels.word(label)}
