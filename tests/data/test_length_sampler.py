"""``TaskMixedLengthSampler``: every row once, the task mix kept in each batch, little padding, a seeded order."""

import random

import pytest

from peft_continual.data.length_sampler import TaskMixedLengthSampler
from peft_continual.errors import ConfigError


def rows(seed=0, long_rows=300, short_rows=700):
    """Two tasks of different lengths, like the demo's round 1 (sentiment ~58 tokens, intents ~46)."""
    rng = random.Random(seed)
    lengths = [rng.randint(30, 135) for _ in range(long_rows)] + [rng.randint(25, 87) for _ in range(short_rows)]
    return lengths, ["long"] * long_rows + ["short"] * short_rows


def batches(order, size):
    return [order[i : i + size] for i in range(0, len(order), size)]


def padded_share(lengths, order, size):
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches(order, size))
    return 1 - sum(lengths) / padded


def test_every_row_once_in_batches_that_keep_the_task_mix():
    lengths, tasks = rows()
    order = list(TaskMixedLengthSampler(lengths, tasks, batch_size=8))
    assert sorted(order) == list(range(len(lengths)))
    counts = [sum(tasks[i] == "long" for i in b) for b in batches(order, 8)]
    assert sum(counts) / len(counts) == pytest.approx(0.3 * 8, abs=0.05)
    assert set(counts) <= {1, 2, 3, 4}  # a random order puts 0 to 7 long rows in a batch


def test_less_padding_than_a_random_order():
    lengths, tasks = rows()
    shuffled = list(range(len(lengths)))
    random.Random(1).shuffle(shuffled)
    grouped = list(TaskMixedLengthSampler(lengths, tasks, batch_size=8))
    assert padded_share(lengths, grouped, 8) < 0.6 * padded_share(lengths, shuffled, 8)


def test_one_task_is_plain_length_grouping():
    lengths, _ = rows()
    order = list(TaskMixedLengthSampler(lengths, ["only"] * len(lengths), batch_size=8))
    assert padded_share(lengths, order, 8) < 0.05


def test_seeded_by_seed_and_epoch_so_a_resumed_run_sees_the_same_order():
    lengths, tasks = rows()
    sampler = TaskMixedLengthSampler(lengths, tasks, batch_size=8, seed=3)
    first = list(sampler)
    assert list(TaskMixedLengthSampler(lengths, tasks, batch_size=8, seed=3)) == first
    assert list(TaskMixedLengthSampler(lengths, tasks, batch_size=8, seed=4)) != first
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_longest_batch_first_and_a_short_last_batch_stays_last():
    lengths, tasks = rows(long_rows=301)  # 1001 rows: 125 batches of 8 and one of 1
    order = list(TaskMixedLengthSampler(lengths, tasks, batch_size=8))
    parts = batches(order, 8)
    assert len(parts[-1]) == 1
    assert max(lengths[i] for i in parts[0]) == max(lengths[i] for b in parts[:-1] for i in b)


@pytest.mark.parametrize(
    ("lengths", "tasks", "size", "words"),
    [([1, 2], ["a"], 8, "2 lengths but 1 task names"), ([1], ["a"], 0, "must be >= 1")],
)
def test_bad_arguments_are_refused(lengths, tasks, size, words):
    with pytest.raises(ConfigError, match=words):
        TaskMixedLengthSampler(lengths, tasks, batch_size=size)
