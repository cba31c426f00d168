"""Subsets of a task's records for the evaluation protocols: a stratified share (the data-fraction sweep) and K records
per class (LM-BFF's few-shot sampling).

How much training data can be removed? NeMo's Swedish study asked it: 10% kept the accuracy, 5% dropped it, 1% was
unstable over 6 runs.

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
    generator = random.Random(f"{seed}:train_fraction")
    kept = []
    for members in _indices_by_label(strata):
        generator.shuffle(members)  # the same order for every fraction: a smaller share is a prefix of a larger one
        kept += members[: max(1, round(fraction * len(members)))]
    return [records[i] for i in sorted(kept)]


def per_class(records: Sequence[TaskRecord], strata: Sequence[str], k: int, seed: int) -> list[TaskRecord]:
    """``k`` records of each label (all of a label with fewer), drawn with ``seed``, in file order: LM-BFF's sampling
    of a K-shot training set and of its equally small development set, for any data set.

    Raises:
        ConfigError: ``k`` below 1.

    Examples:
        >>> records = [TaskRecord("s", {"label": label}, f"r{i}") for i, label in enumerate("aaaaaaaabb")]
        >>> sorted(r.fields["label"] for r in per_class(records, "aaaaaaaabb", 2, seed=0))
        ['a', 'a', 'b', 'b']
    """
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"--k_per_class must be 1 or more, got {k!r}")
    generator = random.Random(f"{seed}:per_class")
    kept = []
    for members in _indices_by_label(strata):
        kept += generator.sample(members, min(k, len(members)))
    return [records[i] for i in sorted(kept)]


def _indices_by_label(strata: Sequence[str]) -> list[list[int]]:
    """The record indices of each label, labels in sorted order (so a seed gives the same draw in any file order of
    labels)."""
    by_label: dict[str, list[int]] = {}
    for index, label in enumerate(strata):
        by_label.setdefault(str(label), []).append(index)
    return [by_label[label] for label in sorted(by_label)]
