"""Training records with every answer class as frequent as the most frequent one (``balance_labels: true`` of a task),
or at least a fraction of it (``balance_labels: 0.5``).

A prompt that has learned only the prior answers the majority class for every input: on Norwegian sentiment (3
classes, majority 51.5%) 400 steps of p-tuning ended at 53.5%, answering `negative` for 3 of the 200 test records
(see the results page). Oversampling the rarer classes makes each class weigh the same in the loss, so a model that
cannot yet tell the classes apart gains nothing by always answering one of them.

With a fraction, each rarer class ends with at least that share of the largest class's records (``true`` is
``1.0``): for two classes, imbalanced-learn's ``sampling_strategy`` given as a float. Full balance can overshoot: on
the deep demo's 80-step round 2, balanced `sentiment_no` answered `negative` 117 times for 35 gold records (results
page); a fraction moves the prior only part of the way.

Only the training records are balanced, after the evaluation protocol has chosen them (a fold, a fraction, a K-shot
split): a copy of a record never lands in a held-out fold. Test and validation records keep their natural shares.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from peft_continual.data.records import TaskRecord
from peft_continual.experiments.folds import strata
from peft_continual.experiments.task_files import TaskSpec


def training_records(spec: TaskSpec, records: Sequence[TaskRecord], seed: int) -> list[TaskRecord]:
    """A task's training records as it trains on them: balanced by ``balance_labels`` when its task file says
    ``balance_labels: true`` (or a fraction), else as they are. Every recipe takes its training records through here."""
    if spec.balance_labels is False:
        return list(records)
    fraction = 1.0 if spec.balance_labels is True else float(spec.balance_labels)
    return balance_labels(records, strata(spec, records), seed, fraction=fraction)


def balance_labels(
    records: Sequence[TaskRecord], strata: Sequence[str], seed: int, fraction: float = 1.0
) -> list[TaskRecord]:
    """``records`` plus copies of the rarer labels' records, so that every label has at least ``fraction`` of the
    most frequent one's records (rounded up): whole copies of a label's records first, then a seeded draw without
    repeats for the remainder.

    Args:
        records: The training records (any order).
        strata: Each record's label (an intent-and-slot task's intent), as ``folds.strata`` gives them.
        seed: Decides which records fill the remainder; the same seed gives the same list.
        fraction: In ``(0, 1]``; a label already at or above ``fraction`` of the largest count is left as it is.

    Returns:
        The records in their order, then the copies, label by label (``Trainer`` shuffles them).

    Examples:
        >>> records = [TaskRecord("s", {"label": label}, f"r{i}") for i, label in enumerate("aaaaaab")]
        >>> balanced = balance_labels(records, [r.fields["label"] for r in records], seed=0)
        >>> sorted(r.fields["label"] for r in balanced)
        ['a', 'a', 'a', 'a', 'a', 'a', 'b', 'b', 'b', 'b', 'b', 'b']
        >>> half = balance_labels(records, [r.fields["label"] for r in records], seed=0, fraction=0.5)
        >>> sorted(r.fields["label"] for r in half)
        ['a', 'a', 'a', 'a', 'a', 'a', 'b', 'b', 'b']
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    by_label: dict[str, list[int]] = {}
    for index, label in enumerate(strata):
        by_label.setdefault(str(label), []).append(index)
    largest = max((len(members) for members in by_label.values()), default=0)
    target = math.ceil(round(fraction * largest, 9))  # 0.07 * 100 is 7.000000000000001: 7, not 8
    generator = random.Random(f"{seed}:balance_labels")
    copies: list[int] = []
    for label in sorted(by_label):
        members = by_label[label]
        whole, remainder = divmod(max(target - len(members), 0), len(members))
        copies += members * whole + sorted(generator.sample(members, remainder))
    return [*records, *(records[i] for i in copies)]
