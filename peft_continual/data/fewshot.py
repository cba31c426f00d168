"""Few-shot prompts: the prompt-engineering baseline that p-tuning has to beat, built from the same templates.

``k`` training records are rendered *with* their answers by the task's own template (virtual-token markers removed)
and joined into a literal prefix; the result is an ordinary ``TaskTemplate`` with no virtual tokens, so the query
goes through the very same ``PromptTokenizer``, generation, normalisation and metrics as the p-tuned model. Only the
prompt differs between the baseline and the method, which is what makes the comparison fair.

The choice is seeded (``random.Random(seed)``, classes visited in sorted order), so a baseline number can be
reproduced. By default one demonstration per class, shuffled so the class order carries no signal (a fixed order
would let the model copy the last label it saw).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from peft_continual.data.records import TaskRecord
from peft_continual.data.templates import TaskTemplate, TextPiece
from peft_continual.errors import ConfigError, RecordError, allowed

logger = logging.getLogger(__name__)


class Sampling(str, Enum):
    """How ``k`` is read: demonstrations per class, or in total."""

    PER_CLASS = "per_class"
    TOTAL = "total"


@dataclass
class FewShotConfig:
    """Which demonstrations a few-shot prompt holds and how they are joined.

    Examples:
        >>> FewShotConfig(k=2, sampling="total", seed=3).sampling
        <Sampling.TOTAL: 'total'>
    """

    k: int = field(default=1, metadata={"help": "Demonstrations per class (`per_class`) or in all (`total`)."})
    sampling: Sampling = field(default=Sampling.PER_CLASS, metadata={"help": "`per_class` or `total`."})
    class_field: str | None = field(
        default=None,
        metadata={"help": "Record field that defines a class for `per_class` (e.g. `intent`); default: the answer."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the choice and order of demonstrations."})
    shuffle: bool = field(default=True, metadata={"help": "Shuffle demonstrations (else: classes in sorted order)."})
    instruction: str | None = field(
        default=None, metadata={"help": "A line put before the demonstrations, e.g. 'Classify the sentiment.'"}
    )
    separator: str = field(default="\n\n", metadata={"help": "Text between demonstrations and before the query."})

    def __post_init__(self) -> None:
        try:
            self.sampling = Sampling(self.sampling)
        except ValueError:
            raise ConfigError(
                f"FewShotConfig.sampling={self.sampling!r} is not one of {allowed(s.value for s in Sampling)}"
            ) from None
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 0:
            raise ConfigError(f"FewShotConfig.k must be an integer >= 0, got {self.k!r}")


def _task_records(template: TaskTemplate, records: Sequence[TaskRecord]) -> list[TaskRecord]:
    mine = [record for record in records if record.taskname == template.taskname]
    if not mine:
        raise RecordError(f"no training records of task {template.taskname!r} to draw demonstrations from")
    return mine


def _class_of(record: TaskRecord, class_field: str) -> str:
    value = record.fields.get(class_field)
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise RecordError(
            f"{record.source}: task {record.taskname!r}: class field {class_field!r} is missing or not a label "
            f"({value!r}); the record has {allowed(record.fields)}"
        )
    return str(value)


def select_demonstrations(
    template: TaskTemplate, records: Sequence[TaskRecord], config: FewShotConfig | None = None
) -> list[TaskRecord]:
    """Choose the demonstrations of ``template``'s task from ``records`` (other tasks' records are ignored).

    Args:
        template: the task's template (its ``answer_field`` is the default class field).
        records: training records.
        config: how many and how; default one per class, seed 0.

    Returns:
        The chosen records in prompt order.

    Raises:
        RecordError: no record of the task, or a record without the class field.
        ConfigError: no class field can be determined, or ``k`` exceeds the records in ``total`` sampling.
    """
    config = config or FewShotConfig()
    mine = _task_records(template, records)
    rng = random.Random(config.seed)
    if config.sampling is Sampling.TOTAL:
        if config.k > len(mine):
            raise ConfigError(
                f"task {template.taskname!r}: FewShotConfig.k={config.k} but only {len(mine)} training records"
            )
        chosen = rng.sample(mine, config.k)
    else:
        class_field = config.class_field or template.answer_field
        if class_field is None:
            raise ConfigError(
                f"task {template.taskname!r}: per-class sampling needs FewShotConfig.class_field (the template has "
                "no answer_field)"
            )
        by_class: dict[str, list[TaskRecord]] = {}
        for record in mine:
            by_class.setdefault(_class_of(record, class_field), []).append(record)
        chosen = []
        for name in sorted(by_class):
            group = by_class[name]
            if len(group) < config.k:
                logger.warning(
                    "task %r: class %r has %d record(s) < k=%d; using all",
                    template.taskname,
                    name,
                    len(group),
                    config.k,
                )
            chosen.extend(rng.sample(group, min(config.k, len(group))))
    if config.shuffle:
        rng.shuffle(chosen)
    return chosen


def render_demonstration(template: TaskTemplate, record: TaskRecord) -> str:
    """A record as the template shows it to the model, answer included, virtual-token markers removed.

    Examples:
        >>> t = TaskTemplate("s", "<|VIRTUAL_PROMPT_0|>{sentence} sentiment: {label}", 3, [3], "label")
        >>> render_demonstration(t, TaskRecord("s", {"sentence": "Up 5%.", "label": "positive"}, "x"))
        'Up 5%. sentiment: positive'
    """
    plain = template.without_virtual_tokens()
    pieces = plain.render(record.values_for(plain, include_answer=True), include_answer=True)
    return "".join(piece.text for piece in pieces if isinstance(piece, TextPiece))


def fewshot_prefix(template: TaskTemplate, demonstrations: Sequence[TaskRecord], config: FewShotConfig) -> str:
    """The literal text before the query: optional instruction, then the demonstrations, each followed by
    ``config.separator``."""
    parts = ([config.instruction] if config.instruction else []) + [
        render_demonstration(template, record) for record in demonstrations
    ]
    return "".join(part + config.separator for part in parts)


def fewshot_template(
    template: TaskTemplate, train_records: Sequence[TaskRecord], config: FewShotConfig | None = None
) -> TaskTemplate:
    """A plain-text template of the same task whose prompt starts with ``k`` demonstrations from ``train_records``.

    Use it with a plain model and the usual path: ``PromptTokenizer(tokenizer, [fewshot_template(...)])`` then
    ``evaluate_tasks``. Demonstrations make prompts long; give the ``PromptTokenizer`` a ``max_length`` that fits them
    (only the query's ``truncate_field`` can be cut, never the demonstrations).

    Examples:
        >>> t = TaskTemplate("s", "<|VIRTUAL_PROMPT_0|>{sentence} sentiment: {label}", 3, [3], "label")
        >>> train = [TaskRecord("s", {"sentence": "Up.", "label": "positive"}, "train:1")]
        >>> fewshot_template(t, train).prompt_template
        'Up. sentiment: positive\\n\\n{sentence} sentiment: {label}'
    """
    config = config or FewShotConfig()
    demonstrations = select_demonstrations(template, train_records, config)
    return template.without_virtual_tokens(prefix=fewshot_prefix(template, demonstrations, config))


def fewshot_templates(
    templates: Sequence[TaskTemplate], train_records: Sequence[TaskRecord], config: FewShotConfig | None = None
) -> list[TaskTemplate]:
    """``fewshot_template`` for each task, with one config (records of all tasks may be mixed)."""
    return [fewshot_template(template, train_records, config) for template in templates]
