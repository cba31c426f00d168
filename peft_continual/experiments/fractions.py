"""How much training data can be removed? A stratified share of a task's training records, for the data-fraction
sweep of NeMo's Swedish study (10% kept the accuracy, 5% dropped it, 1% was unstable over 6 runs).

``stratified_fraction`` keeps ``fraction`` of the records with each label in about its share of all of them
and at least one record of every label. The seed decides which records: repeats of a fraction with other seeds draw
other subsets, and with one seed the fractions are **nested** (the 1% subset lies inside the 10% one), so a sweep's
fractions differ by the records removed, not by a new draw.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from peft_continual.data.records import TaskRecord
from peft_continual.errors import ConfigError


def stratified_fraction(
    records: Sequence[TaskRecord], strata: Sequence[str], fraction: float, seed: int
) -> list[TaskRecord]:
    """About ``fraction`` of ``records``: of each label's records that share (rounded, at least one), drawn with
    ``seed``, in file order.

    Raises:
        ConfigError: ``fraction`` not in (0, 1].

    Examples:
        >>> records = [TaskRecord("s", {"label": label}, f"r{i}") for i, label in enumerate("aaaaaaaabb")]
        >>> kept = stratified_fraction(records, [r.fields["label"] for r in records], 0.5, seed=0)
        >>> sorted(r.fields["label"] for r in kept)
        ['a', 'a', 'a', 'a', 'b']
        >>> sorted(r.fields["label"] for r in stratified_fraction(records, "aaaaaaaabb", 0.1, seed=0))
        ['a', 'b']
    """
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ConfigError(f"--train_fraction must be in (0, 1], got {fraction!r}")
    by_label: dict[str, list[int]] = {}
    for index, label in enumerate(strata):
        by_label.setdefault(str(label), []).append(index)
    generator = random.Random(f"{seed}:train_fraction")
    kept = []
    for label in sorted(by_label):
        members = by_label[label]
        generator.shuffle(members)  # the same order for every fraction: a smaller share is a prefix of a larger one
        kept += members[: max(1, round(fraction * len(members)))]
    return [records[i] for i in sorted(kept)]
