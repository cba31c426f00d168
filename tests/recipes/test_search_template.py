"""The template search recipe on a tiny random model: trial 0 is the hand-written template, the best template lands in
a task file the continual recipe reads, the study resumes from its storage, and Optuna's pruning stops a trial."""

import json
import runpy
from pathlib import Path

import optuna
import pytest
from transformers import Trainer, TrainerControl, TrainerState

from peft_continual.errors import ConfigError
from peft_continual.experiments.cli import parse_config_and_flags
from peft_continual.experiments.task_files import load_task_specs
from peft_continual.machine import machine_facts, machine_line

ROOT = Path(__file__).resolve().parents[2]
RECIPE = runpy.run_path(str(ROOT / "recipes" / "search_template.py"))
CONFIG = ROOT / "recipes" / "configs" / "search_template" / "sentiment.yaml"
OWN = "<|VIRTUAL_PROMPT_0|>{sentence}\n<|VIRTUAL_PROMPT_1|>Sentiment: {label}"
TASKS = """
tasks:
  - {taskname: sentiment, dataset: financial_phrasebank, total_virtual_tokens: 4, virtual_token_splits: [2, 2],
     prompt_template: "<|VIRTUAL_PROMPT_0|>{sentence}\\n<|VIRTUAL_PROMPT_1|>Sentiment: {label}", answer_field: label,
     train_records: 16, eval_records: 6,
     evaluation: {kind: classification, labels: {labels: [positive, negative, neutral]}, max_new_tokens: 3}}
  - {taskname: other, dataset: financial_phrasebank, round: 2, total_virtual_tokens: 2, virtual_token_splits: [2],
     prompt_template: "<|VIRTUAL_PROMPT_0|>{sentence} -> {label}", answer_field: label,
     evaluation: {kind: classification, labels: {labels: [positive, negative, neutral]}, max_new_tokens: 3}}
"""


def search(tmp_path, model_dir, data_dir, *extra):
    (tmp_path / "tasks.yaml").write_text(TASKS)
    flags = ["--config", str(CONFIG), "--tasks", str(tmp_path / "tasks.yaml"), "--data_dir", str(data_dir)]
    flags += ["--model", str(model_dir), "--output_dir", str(tmp_path / "out"), "--trial_max_steps", "4"]
    flags += ["--eval_steps", "2", "--validation_records", "4", "--per_device_train_batch_size", "4"]
    flags += ["--total_virtual_tokens", "2", "6", "--encoder_type", "mlp", "--disable_tqdm", "true", *extra]
    return RECIPE["main"](*parse_config_and_flags(RECIPE["ARGUMENTS"], flags))


@pytest.mark.slow
def test_trials_start_from_the_hand_written_template_and_the_best_lands_in_a_task_file(
    tmp_path, tiny_model_dir, shared_data, monkeypatch
):
    summary = search(tmp_path, tiny_model_dir, shared_data, "--n_trials", "3")
    study = optuna.load_study(study_name="sentiment", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    assert len(study.trials) == 3
    first = study.trials[0]
    assert first.params["template"] == OWN and first.params["total_virtual_tokens"] == 4
    assert first.params["learning_rate"] == 0.01 and first.user_attrs["virtual_token_splits"] == [2, 2]
    assert sorted(first.intermediate_values) == [2, 4]  # validation accuracy reported at each evaluation
    best = study.best_trial
    assert summary["best_trial"] == best.number and summary["validation_accuracy"] == best.value
    specs = {spec.taskname: spec for spec in load_task_specs(tmp_path / "out" / "best_tasks.yaml")}
    chosen = specs["sentiment"].template
    assert chosen.prompt_template == best.params["template"]
    assert chosen.total_virtual_tokens == best.params["total_virtual_tokens"]
    assert chosen.virtual_token_splits == best.user_attrs["virtual_token_splits"]
    assert specs["other"].template.prompt_template == "<|VIRTUAL_PROMPT_0|>{sentence} -> {label}"  # untouched
    assert (
        json.loads((tmp_path / "out" / "best_trial.json").read_text())["learning_rate"] == best.params["learning_rate"]
    )
    trials = (tmp_path / "out" / "trials.md").read_text()
    assert trials.count("\n| ") == 1 + 3  # header + one row per trial
    assert f"\nMachine: {machine_line(machine_facts())}; {summary['precision']}.\n" in trials

    # a rerun with the same number of trials trains nothing; one more trial trains one
    def no_training(self, *args, **kwargs):
        raise AssertionError("a finished trial was trained again")

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train", no_training)
        search(tmp_path, tiny_model_dir, shared_data, "--n_trials", "3")
    search(tmp_path, tiny_model_dir, shared_data, "--n_trials", "4")
    assert (
        len(optuna.load_study(study_name="sentiment", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}").trials) == 4
    )
    with pytest.raises(ConfigError, match="trial_max_steps"):
        search(tmp_path, tiny_model_dir, shared_data, "--n_trials", "4", "--trial_max_steps", "6")


def test_a_trial_left_running_by_a_killed_process_runs_again(tmp_path):
    arguments, training = parse_config_and_flags(
        RECIPE["ARGUMENTS"], ["--config", str(CONFIG), "--output_dir", str(tmp_path)]
    )
    study = RECIPE["open_study"](tmp_path, arguments, training)
    killed = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True)})
    resumed = RECIPE["open_study"](tmp_path, arguments, training)
    states = [trial.state for trial in resumed.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]
    retry = resumed.ask()  # the queued trial: the killed one's parameters again
    assert retry.suggest_float("learning_rate", 1e-3, 3e-2, log=True) == killed.params["learning_rate"]


def test_the_pruning_callback_reports_each_evaluation_and_stops_a_pruned_trial():
    class Trial:
        reports = []

        def report(self, value, step):
            self.reports.append((step, value))

        def should_prune(self):
            return len(self.reports) == 2

    trial = Trial()
    callback = RECIPE["OptunaPruning"](trial)
    state = TrainerState()
    state.global_step = 20
    callback.on_evaluate(None, state, TrainerControl(), metrics={"eval_task_accuracy": 0.5, "eval_loss": 1.0})
    callback.on_evaluate(None, state, TrainerControl(), metrics={"eval_loss": 1.0})  # no accuracy: nothing reported
    state.global_step = 40
    with pytest.raises(optuna.TrialPruned, match="0.400 at step 40"):
        callback.on_evaluate(None, state, TrainerControl(), metrics={"eval_task_accuracy": 0.4})
    assert trial.reports == [(20, 0.5), (40, 0.4)]


def test_a_search_space_the_trials_cannot_use_is_refused(tmp_path, shared_data):
    (tmp_path / "tasks.yaml").write_text(TASKS)
    base = ["--config", str(CONFIG), "--tasks", str(tmp_path / "tasks.yaml"), "--output_dir", str(tmp_path / "o")]
    for flags, message in [
        (["--templates", "{sentence} -> {label}"], "needs 1 or 2 virtual-token markers"),
        (["--learning_rate_range", "0.1", "0.01"], "0 < low <= high"),
        (["--first_split_fractions", "0", "0.5"], "strictly between 0 and 1"),
        (["--max_steps", "100"], "each trial trains --trial_max_steps steps"),
    ]:
        with pytest.raises(ConfigError, match=message):
            RECIPE["main"](*parse_config_and_flags(RECIPE["ARGUMENTS"], base + flags))
