"""Stratified k-fold splits of a task's training records."""

from collections import Counter

import pytest

from peft_continual.data.records import TaskRecord
from peft_continual.errors import ConfigError
from peft_continual.evaluation import LabelNormalization, TaskEvaluation
from peft_continual.experiments.folds import fold_split, stratum

RECORDS = [TaskRecord("s", {"label": label, "i": str(i)}, f"r{i}") for i, label in enumerate("aaaaaabbbbbbbbbccc")]
LABELS = [record.fields["label"] for record in RECORDS]


def test_the_folds_hold_every_record_out_once_each_with_the_labels_shares():
    held_out = []
    for fold in range(3):
        train, test = fold_split(RECORDS, LABELS, 3, fold, seed=7)
        assert sorted(r.source for r in train + test) == sorted(r.source for r in RECORDS)  # a partition
        assert Counter(r.fields["label"] for r in test) == {"a": 2, "b": 3, "c": 1}  # 1/3 of each label
        held_out += [r.source for r in test]
    assert sorted(held_out) == sorted(r.source for r in RECORDS)


def test_the_seed_decides_the_folds():
    first = fold_split(RECORDS, LABELS, 3, 0, seed=7)[1]
    assert fold_split(RECORDS, LABELS, 3, 0, seed=7)[1] == first
    assert fold_split(RECORDS, LABELS, 3, 0, seed=8)[1] != first


@pytest.mark.parametrize(("folds", "fold", "message"), [(1, 0, "2 or more"), (3, 3, "0..2"), (4, 0, "too few")])
def test_bad_folds_are_refused(folds, fold, message):
    with pytest.raises(ConfigError, match=message):
        fold_split(RECORDS, LABELS, folds, fold, seed=0)


def test_an_intent_task_is_stratified_by_its_intent():
    task = TaskEvaluation("nlu", kind="intent_and_slot")
    assert stratum(task, "Intent: alarm_set\nSlots: time(five am)") == "alarm_set"
    assert stratum(TaskEvaluation("s", labels=LabelNormalization(["a", "b"])), "a") == "a"
