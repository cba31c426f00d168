"""The records each evaluation protocol gives a single-task recipe (``single_task.load_task``), and the test records
alone of a recipe that trains nothing (``single_task.load_test_task``), on the shared data."""

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from peft_continual.errors import ConfigError
from peft_continual.experiments.recipe_arguments import SingleTaskArguments
from peft_continual.experiments.single_task import load_task

LMBFF = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "compare_techniques" / "tasks_lmbff.yaml"


def test_a_k_shot_split_trains_on_its_folder_and_keeps_the_whole_test_split(shared_data):
    task = load_task(SingleTaskArguments(tasks=str(LMBFF), taskname="sst2", k_shot="16-13", data_dir=str(shared_data)))
    assert Counter(r.fields["label"] for r in task.train) == {"terrible": 16, "great": 16}  # its label words
    assert all("16-13-train" in r.fields["id"] for r in task.train)
    assert len(task.validation) == 32 and all("16-13-dev" in r.fields["id"] for r in task.validation)
    assert len(task.test) == 872


def test_k_per_class_samples_train_and_validation_of_any_data_set(shared_data):
    args = SingleTaskArguments(taskname="sentiment", k_per_class=4, data_dir=str(shared_data), records_seed=3)
    task = load_task(args)
    assert Counter(r.fields["label"] for r in task.train) == {"positive": 4, "negative": 4, "neutral": 4}
    assert Counter(r.fields["label"] for r in task.validation) == {"positive": 4, "negative": 4, "neutral": 4}


def test_two_protocols_at_once_are_refused(shared_data):
    with pytest.raises(ConfigError, match="--folds and --train_fraction"):
        load_task(SingleTaskArguments(folds=5, train_fraction=0.5, data_dir=str(shared_data)))


def test_the_development_records_are_answered_the_way_asked(shared_data, smollm2_tokenizer):
    from peft_continual.data.tokenize import PromptTokenizer
    from peft_continual.experiments.single_task import validation

    args = SingleTaskArguments(tasks=str(LMBFF), taskname="sst2", k_shot="16-13", data_dir=str(shared_data),
                               validation_accuracy="generation")  # fmt: skip
    task = load_task(args)
    prompts = PromptTokenizer(smollm2_tokenizer, [task.spec.template], max_length=128)
    given = validation(prompts, task, args)
    assert given["validation_accuracy"].mode == "generation"
    assert len(given["eval_dataset"]) == len(given["validation_accuracy"].records) == 32


def test_an_unknown_validation_accuracy_is_refused_before_any_work(shared_data):
    with pytest.raises(ConfigError, match="--validation_accuracy 'sampled' is not one of"):
        load_task(SingleTaskArguments(validation_accuracy="sampled", data_dir=str(shared_data)))


def test_the_test_split_alone_is_the_same_test_records_and_reads_no_other_split(shared_data, monkeypatch):
    from peft_continual.experiments import single_task

    args = SingleTaskArguments(taskname="sentiment_no", data_dir=str(shared_data), records_seed=2)
    read, load_split = [], single_task.load_split
    monkeypatch.setattr(single_task, "load_split", lambda spec, folder, split, *a: read.append(split) or
                        load_split(spec, folder, split, *a))  # fmt: skip
    alone = single_task.load_test_task(args)
    assert read == ["test"] and alone.train == [] and alone.validation == []
    assert [r.fields["id"] for r in alone.test] == [r.fields["id"] for r in load_task(args).test]
    assert len(alone.test) == 200  # the task file's eval_records, drawn by records_seed
    capped = replace(args, max_eval_records=50)
    assert len(single_task.load_test_task(capped).test) == 50
    assert [r.fields["id"] for r in single_task.load_test_task(capped).test] == [
        r.fields["id"] for r in load_task(capped).test
    ]


@pytest.mark.parametrize(
    "flag",
    [{"folds": 5}, {"fold": 1}, {"train_fraction": 0.5}, {"k_shot": "16-13"}, {"k_per_class": 4},
     {"validation_records": 0}, {"validation_accuracy": "sampled"}],
)  # fmt: skip
def test_the_test_split_alone_refuses_flags_that_choose_training_records(shared_data, flag):
    from peft_continual.experiments.single_task import load_test_task

    (name,) = flag
    with pytest.raises(ConfigError, match=f"--{name}"):
        load_test_task(SingleTaskArguments(data_dir=str(shared_data), **flag))
