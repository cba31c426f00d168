"""Training records with every answer class as frequent as the most frequent one (``balance_labels: true``)."""

from collections import Counter

import pytest

from peft_continual.data.records import TaskRecord
from peft_continual.errors import ConfigError
from peft_continual.experiments.label_balance import balance_labels, training_records
from peft_continual.experiments.recipe_arguments import SingleTaskArguments
from peft_continual.experiments.single_task import load_task
from peft_continual.experiments.task_files import TaskSpec

LABELS = "a" * 10 + "b" * 4 + "c" * 3
RECORDS = [TaskRecord("s", {"label": label}, f"r{i}") for i, label in enumerate(LABELS)]


def test_every_label_reaches_the_largest_count_with_whole_copies_then_a_seeded_draw():
    balanced = balance_labels(RECORDS, LABELS, seed=0)
    assert Counter(r.fields["label"] for r in balanced) == {"a": 10, "b": 10, "c": 10}
    assert balanced[: len(RECORDS)] == RECORDS  # the records first, in their order
    copies = Counter(r.source for r in balanced)
    b_copies = sorted(copies[f"r{i}"] for i in range(10, 14))  # 4 records to 10: each twice more, 2 of them thrice
    assert b_copies == [2, 2, 3, 3]
    assert sorted(copies[f"r{i}"] for i in range(14, 17)) == [3, 3, 4]  # 3 to 10: each 3 times, one a 4th time
    assert balance_labels(RECORDS, LABELS, seed=0) == balanced
    assert [r.source for r in balance_labels(RECORDS, LABELS, seed=1)] != [r.source for r in balanced]


def test_balanced_records_and_empty_records_stay_as_they_are():
    even = RECORDS[:3] + RECORDS[10:13] + RECORDS[14:17]
    assert balance_labels(even, [r.fields["label"] for r in even], seed=0) == even
    assert balance_labels([], [], seed=0) == []


def test_a_fraction_raises_each_rarer_label_to_that_share_of_the_largest_rounded_up():
    half = balance_labels(RECORDS, LABELS, seed=0, fraction=0.5)
    assert Counter(r.fields["label"] for r in half) == {"a": 10, "b": 5, "c": 5}
    assert half[: len(RECORDS)] == RECORDS
    assert Counter(r.fields["label"] for r in balance_labels(RECORDS, LABELS, seed=0, fraction=0.35)) == {
        "a": 10, "b": 4, "c": 4  # ceil(3.5) = 4: b already has 4 and keeps them, c gets one copy
    }  # fmt: skip
    hundred = [f"a{i}" for i in range(100)]
    rare = [TaskRecord("s", {"label": "b"}, "b0")]
    part = balance_labels([TaskRecord("s", {"label": "a"}, s) for s in hundred] + rare, ["a"] * 100 + ["b"], 0, 0.07)
    assert Counter(r.fields["label"] for r in part)["b"] == 7  # 0.07 * 100 in floating point is just above 7
    with pytest.raises(ValueError, match="fraction must be in"):
        balance_labels(RECORDS, LABELS, seed=0, fraction=0.0)


def test_a_task_balances_only_when_its_task_file_says_so():
    entry = {"taskname": "s", "prompt_template": "<|VIRTUAL_PROMPT_0|>{sentence} Sentiment: {label}",
             "total_virtual_tokens": 2, "virtual_token_splits": [2], "answer_field": "label",
             "dataset": "d", "evaluation": {"kind": "classification", "labels": {"labels": ["a", "b", "c"]}}}  # fmt: skip
    records = [TaskRecord("s", {"sentence": "x", "label": label}, f"r{i}") for i, label in enumerate(LABELS)]
    assert training_records(TaskSpec.from_dict(entry, "t"), records, seed=0) == records
    balanced = training_records(TaskSpec.from_dict({**entry, "balance_labels": True}, "t"), records, seed=0)
    assert Counter(r.fields["label"] for r in balanced) == {"a": 10, "b": 10, "c": 10}
    part = training_records(TaskSpec.from_dict({**entry, "balance_labels": 0.7}, "t"), records, seed=0)
    assert Counter(r.fields["label"] for r in part) == {"a": 10, "b": 7, "c": 7}
    whole = training_records(TaskSpec.from_dict({**entry, "balance_labels": 1}, "t"), records, seed=0)  # YAML `1`
    assert whole == balanced
    for wrong in (0, 1.5, -0.2, "yes"):
        with pytest.raises(
            ConfigError, match=r"t \(task .s.\): balance_labels must be true, false or a fraction in \(0, 1\]"
        ):
            TaskSpec.from_dict({**entry, "balance_labels": wrong}, "t")


def test_a_recipe_balances_after_the_fold_is_held_out(shared_data, tmp_path):
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(
        "tasks:\n  - {taskname: sentiment, dataset: financial_phrasebank, answer_field: label,\n"
        '     prompt_template: "<|VIRTUAL_PROMPT_0|>{sentence} {label}", total_virtual_tokens: 2,\n'
        "     virtual_token_splits: [2], train_records: 300, balance_labels: true,\n"
        "     evaluation: {kind: classification, labels: {labels: [positive, negative, neutral]}}}\n"
    )
    task = load_task(SingleTaskArguments(tasks=str(tasks), folds=5, fold=1, data_dir=str(shared_data)))
    counts = Counter(r.fields["label"] for r in task.train)
    assert len(set(counts.values())) == 1  # every class as frequent as the largest
    assert len(task.test) == 60 and not {r.source for r in task.test} & {r.source for r in task.train}
    assert Counter(r.fields["label"] for r in task.test)["neutral"] > 25  # the held-out fold keeps its shares


def test_the_continual_recipe_balances_the_training_records_only(shared_data, tmp_path):
    from peft_continual.experiments.continual_run import ContinualArguments, load_records
    from peft_continual.experiments.task_files import load_task_specs

    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(
        "tasks:\n  - {taskname: sentiment, dataset: financial_phrasebank, answer_field: label,\n"
        '     prompt_template: "<|VIRTUAL_PROMPT_0|>{sentence} {label}", total_virtual_tokens: 2,\n'
        "     virtual_token_splits: [2], train_records: 300, eval_records: 100, balance_labels: true,\n"
        "     evaluation: {kind: classification, labels: {labels: [positive, negative, neutral]}}}\n"
    )
    specs = load_task_specs(tasks)
    records = load_records(specs, ContinualArguments(data_dir=str(shared_data), validation_records=100), seed=0)
    assert len(set(Counter(r.fields["label"] for r in records.train["sentiment"]).values())) == 1
    for held_out in (records.test["sentiment"], records.validation["sentiment"]):
        assert len(held_out) == 100 and Counter(r.fields["label"] for r in held_out)["neutral"] > 45


def test_a_run_saved_with_true_resumes_with_the_fraction_1(tmp_path):
    from peft_continual.experiments.run_settings import check_run_settings

    check_run_settings(tmp_path, {"tasks": {"s": {"balance_labels": True}}})
    check_run_settings(tmp_path, {"tasks": {"s": {"balance_labels": 1.0}}})  # the same records: no difference
    with pytest.raises(ConfigError, match=r"tasks.s.balance_labels: True then, 0.5 now"):
        check_run_settings(tmp_path, {"tasks": {"s": {"balance_labels": 0.5}}})
