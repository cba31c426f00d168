"""Task files and datasets of the recipes: YAML entry -> TaskSpec, rounds, seeded splits, the data folder default."""

import json
from pathlib import Path

import pytest

from peft_continual.errors import ConfigError, DuplicateTaskError
from peft_continual.experiments.task_files import (
    DATA_DIR_VARIABLE,
    TaskSpec,
    default_data_dir,
    load_split,
    load_task_specs,
    rounds_of,
)

ENTRY = {
    "taskname": "sentiment",
    "prompt_template": "<|VIRTUAL_PROMPT_0|>{sentence}\nSentiment: {label}",
    "total_virtual_tokens": 4,
    "virtual_token_splits": [4],
    "answer_field": "label",
    "dataset": "phrases",
    "evaluation": {"kind": "classification", "labels": {"labels": ["positive", "negative"]}, "max_new_tokens": 3},
    "fewshot": {"k": 2},
}
SOURCE = "tasks.yaml tasks[0]"


def spec(**changes) -> TaskSpec:
    return TaskSpec.from_dict({**ENTRY, **changes}, SOURCE)


def test_entry_becomes_template_evaluation_and_fewshot():
    task = spec(round=2, train_records=10)
    assert task.taskname == "sentiment" and task.template.total_virtual_tokens == 4
    assert task.evaluation.taskname == "sentiment" and task.evaluation.max_new_tokens == 3
    assert task.evaluation.labels.labels == ["positive", "negative"]
    assert task.fewshot.k == 2 and task.round == 2 and task.train_records == 10 and task.eval_records is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"datset": "x"}, r"unknown key\(s\) \['datset'\]"),
        ({"dataset": None}, "dataset and eval_split must be names"),
        ({"evaluation": "classification"}, "evaluation must be a mapping"),
        ({"evaluation": {"kind": "classification", "labelz": ["a"]}}, r"evaluation: unknown key\(s\) \['labelz'\]"),
        ({"evaluation": {"taskname": "other", "labels": {"labels": ["a"]}}}, r"unknown key\(s\) \['taskname'\]"),
        ({"fewshot": 3}, "fewshot must be a mapping, got 3"),
        ({"fewshot": {"shots": 1}}, r"fewshot: unknown key\(s\) \['shots'\]"),
        ({"round": 0}, "round must be 1 or more, got 0"),
        ({"round": True}, "round must be 1 or more"),
        ({"train_records": "all"}, "train_records must be a positive whole number or null"),
        ({"eval_records": 0}, "eval_records must be a positive whole number or null"),
        ({"eval_split": 5}, "dataset and eval_split must be names"),
        (
            {"balance_labels": "yes"},
            r"balance_labels must be true, false or a fraction in \(0, 1\] of the largest class",
        ),
    ],
)
def test_bad_entries_name_the_file_entry_and_task(changes, message):
    with pytest.raises(ConfigError, match=message) as error:
        spec(**changes)
    assert SOURCE in str(error.value)
    if "datset" not in changes:  # unknown top-level keys are caught before the template (and its name) is read
        assert "'sentiment'" in str(error.value)


def test_missing_dataset_is_named():
    entry = {k: v for k, v in ENTRY.items() if k != "dataset"}
    with pytest.raises(ConfigError, match=r"tasks\[0\] \(task 'sentiment'\): missing key 'dataset'"):
        TaskSpec.from_dict(entry, SOURCE)


def test_task_file_errors(tmp_path):
    path = tmp_path / "tasks.yaml"
    path.write_text("tasks: {}\n")
    with pytest.raises(ConfigError, match="expected a non-empty `tasks:` list"):
        load_task_specs(path)
    path.write_text("tasks: [\n")
    with pytest.raises(ConfigError, match="cannot read the task file"):
        load_task_specs(path)
    path.write_text(json.dumps({"tasks": [ENTRY, ENTRY]}))  # JSON is YAML
    with pytest.raises(DuplicateTaskError, match="sentiment"):
        load_task_specs(path)
    path.write_text(json.dumps({"tasks": [ENTRY, {**ENTRY, "fewshot": []}]}))
    with pytest.raises(ConfigError, match=r"tasks\.yaml tasks\[1\] \(task 'sentiment'\): fewshot must be a mapping"):
        load_task_specs(path)


def test_rounds_are_grouped_in_order_and_gaps_refused():
    a, b, c = spec(taskname="a", round=2), spec(taskname="b", round=1), spec(taskname="c", round=2)
    assert [[s.taskname for s in group] for group in rounds_of([a, b, c])] == [["b"], ["a", "c"]]
    with pytest.raises(ConfigError, match=r"without gaps; found \[1, 3\]"):
        rounds_of([b, spec(taskname="d", round=3)])


@pytest.fixture
def data_dir(tmp_path) -> Path:
    folder = tmp_path / "phrases"
    folder.mkdir()
    lines = [json.dumps({"taskname": "phrases", "sentence": f"s{i}", "label": "positive"}) for i in range(20)]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_load_split_takes_a_seeded_subset_in_file_order_under_the_specs_taskname(data_dir):
    task = spec()
    every = load_split(task, data_dir, "train", None, seed=0)
    assert [r.fields["sentence"] for r in every] == [f"s{i}" for i in range(20)]
    assert {r.taskname for r in every} == {"sentiment"}  # the file's own taskname is replaced
    subset = load_split(task, data_dir, "train", 5, seed=0)
    indices = [int(r.fields["sentence"][1:]) for r in subset]
    assert len(indices) == 5 and indices == sorted(indices)
    assert subset == load_split(task, data_dir, "train", 5, seed=0)  # seeded: the same on every run
    assert any(
        [r.fields for r in load_split(task, data_dir, "train", 5, seed=s)] != [r.fields for r in subset]
        for s in range(1, 4)
    )
    assert len(load_split(task, data_dir, "train", 50, seed=0)) == 20  # a cap above the size keeps all


def test_missing_split_names_the_task_the_path_and_both_ways_to_fix_it(data_dir):
    with pytest.raises(ConfigError) as error:
        load_split(spec(), data_dir, "test", None, seed=0)
    message = str(error.value)
    assert "'sentiment'" in message and str(data_dir / "phrases" / "test.jsonl") in message
    assert "--data_dir" in message and f"${DATA_DIR_VARIABLE}" in message


def test_default_data_dir_is_the_variable_else_shared_data_beside_the_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv(DATA_DIR_VARIABLE, raising=False)
    assert default_data_dir(tmp_path / "repo") == str(tmp_path / "shared" / "data")
    monkeypatch.setenv(DATA_DIR_VARIABLE, "/data/shared")
    assert default_data_dir(tmp_path / "repo") == "/data/shared"
    monkeypatch.setenv(DATA_DIR_VARIABLE, "")  # set but empty counts as unset
    assert default_data_dir(tmp_path / "repo") == str(tmp_path / "shared" / "data")
