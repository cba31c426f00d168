"""A stratified share of a task's training records, drawn per seed."""

from collections import Counter

import pytest

from peft_continual.data.records import TaskRecord
from peft_continual.errors import ConfigError
from peft_continual.experiments.subsets import stratified_fraction

LABELS = "a" * 60 + "b" * 30 + "c" * 10
RECORDS = [TaskRecord("s", {"label": label}, f"r{i}") for i, label in enumerate(LABELS)]


def test_each_label_keeps_its_share_and_at_least_one_record():
    kept = stratified_fraction(RECORDS, LABELS, 0.1, seed=0)
    assert Counter(r.fields["label"] for r in kept) == {"a": 6, "b": 3, "c": 1}
    assert [r.source for r in kept] == sorted((r.source for r in kept), key=lambda s: int(s[1:]))  # file order
    tiny = stratified_fraction(RECORDS, LABELS, 0.01, seed=0)
    assert Counter(r.fields["label"] for r in tiny) == {"a": 1, "b": 1, "c": 1}


def test_another_seed_draws_another_subset_and_all_keeps_everything():
    assert stratified_fraction(RECORDS, LABELS, 0.1, seed=0) == stratified_fraction(RECORDS, LABELS, 0.1, seed=0)
    assert stratified_fraction(RECORDS, LABELS, 0.1, seed=0) != stratified_fraction(RECORDS, LABELS, 0.1, seed=1)
    assert stratified_fraction(RECORDS, LABELS, 1.0, seed=3) == RECORDS


@pytest.mark.parametrize("fraction", [0, 1.5, -0.1])
def test_a_fraction_outside_zero_to_one_is_refused(fraction):
    with pytest.raises(ConfigError, match="--train_fraction"):
        stratified_fraction(RECORDS, LABELS, fraction, seed=0)


def test_with_one_seed_a_smaller_fraction_lies_inside_a_larger_one():
    for seed in range(3):
        shares = [{r.source for r in stratified_fraction(RECORDS, LABELS, f, seed)} for f in (0.05, 0.1, 0.5, 1.0)]
        assert shares[0] <= shares[1] <= shares[2] <= shares[3]


def test_per_class_draws_k_of_each_label_or_all_of_a_smaller_one():
    from peft_continual.experiments.subsets import per_class

    kept = per_class(RECORDS, LABELS, 16, seed=0)
    assert Counter(r.fields["label"] for r in kept) == {"a": 16, "b": 16, "c": 10}
    assert per_class(RECORDS, LABELS, 4, seed=0) == per_class(RECORDS, LABELS, 4, seed=0)
    assert per_class(RECORDS, LABELS, 4, seed=0) != per_class(RECORDS, LABELS, 4, seed=1)
    with pytest.raises(ConfigError, match="--k_per_class"):
        per_class(RECORDS, LABELS, 0, seed=0)
