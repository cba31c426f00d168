"""k-fold cross-validation of a task's training records, stratified by the answer: NeMo's Swedish study reported every
number as the mean of 10 folds.

Fold ``i`` of ``k`` holds out about a k-th of the records, each label in about the same share as in all of them
(scikit-learn's ``StratifiedKFold``, shuffled with a seed); the other folds are its training records. The k folds
cover every record once. The records pooled are the task's training split (its ``train_records`` subset), so the
task file's test split stays untouched for the final evaluation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from peft_continual.data.records import TaskRecord
from peft_continual.errors import ConfigError
from peft_continual.evaluation.slots import parse_intent_and_slots
from peft_continual.evaluation.tasks import TaskEvaluation, TaskKind
from peft_continual.experiments.task_files import TaskSpec


def fold_split(
    records: Sequence[TaskRecord], strata: Sequence[str], folds: int, fold: int, seed: int
) -> tuple[list[TaskRecord], list[TaskRecord]]:
    """``(train, held_out)``: fold ``fold`` (0-based) of a stratified ``folds``-fold split of ``records``, in their
    order.

    Args:
        records: The records pooled for cross-validation.
        strata: Each record's stratum: its label (``stratum`` gives it for a task).
        folds: Number of folds, at least 2.
        fold: The held-out fold, ``0 <= fold < folds``.
        seed: Shuffles the records before they are dealt to folds; the same seed gives the same folds.

    Raises:
        ConfigError: ``folds`` or ``fold`` out of range, or a label with fewer records than folds (it could not be
            in every fold).

    Examples:
        >>> records = [TaskRecord("s", {"label": label}, f"r{i}") for i, label in enumerate("aaaabbbb")]
        >>> train, held_out = fold_split(records, [r.fields["label"] for r in records], folds=4, fold=0, seed=0)
        >>> len(train), sorted(r.fields["label"] for r in held_out)
        (6, ['a', 'b'])
    """
    from sklearn.model_selection import StratifiedKFold

    if not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"--folds must be 2 or more, got {folds!r}")
    if not isinstance(fold, int) or not 0 <= fold < folds:
        raise ConfigError(f"--fold must be one of 0..{folds - 1}, got {fold!r}")
    labels = [str(label) for label in strata]
    rare = {label: count for label, count in Counter(labels).items() if count < folds}
    if rare:
        raise ConfigError(
            f"{folds}-fold cross-validation needs at least {folds} records of each label; too few: {rare} (of "
            f"{len(records)} records); use fewer folds or more training records"
        )
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    train_indices, held_out_indices = list(splitter.split(labels, labels))[fold]
    return [records[i] for i in sorted(train_indices)], [records[i] for i in sorted(held_out_indices)]


def stratum(evaluation: TaskEvaluation, answer: str) -> str:
    """What a record is stratified by: a classification task's label, an intent-and-slot task's intent."""
    if evaluation.kind is TaskKind.CLASSIFICATION:
        return answer
    return str(parse_intent_and_slots(answer).intent)


def strata(spec: TaskSpec, records: Sequence[TaskRecord]) -> list[str]:
    """Each record's ``stratum`` under the task's template: what folds, fractions and label balance go by."""
    return [
        stratum(spec.evaluation, record.values_for(spec.template)[spec.template.answer_field]) for record in records
    ]
