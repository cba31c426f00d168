"""``check_run_settings``: a rerun in the same output folder resumes only the run that made it."""

import json

import pytest

from peft_continual.errors import ConfigError
from peft_continual.experiments.run_settings import SETTINGS_FILE, check_run_settings, differences

SETTINGS = {"learning_rate": 0.01, "round_max_steps": (300, 150), "tasks": {"sentiment": {"total_virtual_tokens": 20}}}


def test_the_first_run_records_its_settings_and_the_same_settings_pass_again(tmp_path):
    check_run_settings(tmp_path / "out", SETTINGS)
    stored = json.loads((tmp_path / "out" / SETTINGS_FILE).read_text())
    assert stored["round_max_steps"] == [300, 150]  # JSON: compared as stored, so a tuple equals its list
    check_run_settings(tmp_path / "out", json.loads(json.dumps(SETTINGS)))


def test_other_settings_are_refused_with_every_difference_named(tmp_path):
    check_run_settings(tmp_path, SETTINGS)
    other = {"round_max_steps": [300, 200], "tasks": {"sentiment": {"total_virtual_tokens": 40}}, "seed": 1}
    with pytest.raises(ConfigError) as refused:
        check_run_settings(tmp_path, other)
    message = str(refused.value)
    assert message.splitlines()[1:] == [
        "  learning_rate: 0.01 then, not set now",
        "  round_max_steps: [300, 150] then, [300, 200] now",
        "  seed: not set then, 1 now",
        "  tasks.sentiment.total_virtual_tokens: 20 then, 40 now",
        f"Use a new --output_dir, or delete {tmp_path} to start over.",
    ]
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["learning_rate"] == 0.01  # the record is kept


def test_differences_of_equal_nested_values_are_empty():
    assert differences({"a": {"b": [1, 2]}}, {"a": {"b": [1, 2]}}) == []


def test_a_step_of_the_same_rows_in_another_process_count_is_the_same_run(tmp_path):
    from types import SimpleNamespace

    from peft_continual.experiments.run_settings import training_settings

    names = ("learning_rate", "per_device_train_batch_size")
    two_processes = SimpleNamespace(learning_rate=0.01, per_device_train_batch_size=4, world_size=2)
    check_run_settings(tmp_path, training_settings(two_processes, names))
    one_process = SimpleNamespace(learning_rate=0.01, per_device_train_batch_size=8, world_size=1)
    check_run_settings(tmp_path, training_settings(one_process, names))  # resumes: 8 rows a step in both
    one_process_at_half = SimpleNamespace(learning_rate=0.01, per_device_train_batch_size=4, world_size=1)
    with pytest.raises(ConfigError, match="train_batch_size_all_processes: 8 then, 4 now"):
        check_run_settings(tmp_path, training_settings(one_process_at_half, names))


def test_a_setting_added_since_is_the_same_run_at_its_default_and_another_run_otherwise(tmp_path):
    from peft_continual.experiments.run_settings import setting_defaults
    from peft_continual.experiments.task_files import TaskSpec

    older = {"learning_rate": 0.01, "tasks": {"sentiment": {"total_virtual_tokens": 20}}}  # before balance_labels
    check_run_settings(tmp_path, older)
    defaults = setting_defaults(TaskSpec)
    assert defaults["balance_labels"] is False and defaults["fewshot"]["k"] == 1  # a nested config as its dict
    at_default = {"learning_rate": 0.01, "tasks": {"sentiment": {"total_virtual_tokens": 20, "balance_labels": False}}}
    check_run_settings(tmp_path, at_default, defaults)  # resumes: the older run trained unbalanced
    balanced = {"learning_rate": 0.01, "tasks": {"sentiment": {"total_virtual_tokens": 20, "balance_labels": True}}}
    with pytest.raises(ConfigError, match="tasks.sentiment.balance_labels: not set then, True now"):
        check_run_settings(tmp_path, balanced, defaults)
    with pytest.raises(ConfigError, match="balance_labels: not set then, False now"):
        check_run_settings(tmp_path, at_default)  # without the defaults, any new key is a difference


def test_a_field_added_to_a_tasks_evaluation_since_is_the_same_run_at_its_default(tmp_path):
    """``calibrate`` came to ``TaskEvaluation`` (a task's ``evaluation``) after runs had been saved without it."""
    from peft_continual.experiments.run_settings import setting_defaults
    from peft_continual.experiments.task_files import TaskSpec

    evaluation = {"kind": "classification", "labels": {"labels": ["positive", "negative"]}, "max_new_tokens": 4}
    check_run_settings(tmp_path, {"task": {"taskname": "sentiment", "evaluation": evaluation}})
    defaults = setting_defaults(TaskSpec)
    assert defaults["calibrate"] is False and defaults["first_line_only"] is True  # TaskEvaluation, LabelNormalization
    unchanged = {"task": {"taskname": "sentiment", "evaluation": evaluation | {"calibrate": False}}}
    check_run_settings(tmp_path, unchanged, defaults)
    calibrated = {"task": {"taskname": "sentiment", "evaluation": evaluation | {"calibrate": True}}}
    with pytest.raises(ConfigError, match="task.evaluation.calibrate: not set then, True now"):
        check_run_settings(tmp_path, calibrated, defaults)
