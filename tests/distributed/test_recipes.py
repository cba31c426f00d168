"""Every recipe under ``accelerate launch`` with 2 processes (gloo, on the CPU), on a tiny random model: it runs to
its result table, evaluates every test record once between the two processes, and only the main process writes.

Which process wrote which file is logged by ``write_audit/sitecustomize.py`` (on the launched processes'
``PYTHONPATH``). A rank other than 0 may write only its own RNG state in Trainer's checkpoints
(``rng_state_<rank>.pth``, which Trainer saves per process so that a resumed run continues each one's stream).
"""

import json
import os
import re
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[2]
AUDIT = Path(__file__).with_name("write_audit")
CONFIGS = ROOT / "recipes" / "configs"
TASKS = """
tasks:
  - {taskname: sentiment, round: 1, dataset: financial_phrasebank, total_virtual_tokens: 4, virtual_token_splits: [2, 2],
     prompt_template: "<|VIRTUAL_PROMPT_0|>{sentence}\\n<|VIRTUAL_PROMPT_1|>Sentiment: {label}", answer_field: label,
     train_records: 16, eval_records: 7, fewshot: {k: 1},
     evaluation: {kind: classification, labels: {labels: [positive, negative, neutral]}, max_new_tokens: 3}}
  - {taskname: intent_and_slot, round: 2, dataset: assistant_nlu, total_virtual_tokens: 3, virtual_token_splits: [3],
     prompt_template: "<|VIRTUAL_PROMPT_0|>{utterance}\\n{label}", answer_field: label, train_records: 16,
     eval_records: 5, fewshot: {k: 2, sampling: total}, evaluation: {kind: intent_and_slot, max_new_tokens: 6}}
"""
SINGLE_TASK = {  # recipe -> its config; the test records: 7 (an odd count: the processes get 4 and 3)
    "few_shot": "few_shot/smollm2_135m",
    "prompt_tuning": "prompt_tuning/smollm2_135m",
    "p_tuning": "p_tuning/smollm2_135m",
    "peft_p_tuning": "peft_p_tuning/smollm2_135m",
    "lora": "lora/smollm2_135m",
    "ia3": "ia3/smollm2_135m",
    "full_finetune": "full_finetune/smollm2_135m",
    "p_tuning_lora": "p_tuning_lora/smollm2_135m",
}
TRAINING = ["--max_steps", "2", "--save_steps", "1", "--per_device_train_batch_size", "2", "--logging_steps", "1"]
RNG_STATE = re.compile(r"rng_state_(\d+)\.pth$")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(tmp_path, recipe, *flags):
    """``accelerate launch`` 2 processes of ``recipes/<recipe>.py``; return {path: ranks that wrote it}."""
    log = tmp_path / "writes.log"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "WRITE_AUDIT_ROOT": str(tmp_path), "WRITE_AUDIT_LOG": str(log),
                   "PYTHONPATH": os.pathsep.join([str(AUDIT), str(ROOT), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(ROOT / "recipes" / f"{recipe}.py"), *flags]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    writers = defaultdict(set)
    for line in log.read_text().splitlines():
        rank, path = line.split("\t", 1)
        writers[path].add(int(rank))
    assert writers, "the audit logged no write: is write_audit/sitecustomize.py on the processes' PYTHONPATH?"
    return writers, done.stdout


def assert_only_the_main_process_wrote(writers):
    for path, ranks in writers.items():
        own_rng_state = RNG_STATE.search(path)
        if own_rng_state:  # Trainer: each process its own
            assert ranks == {int(own_rng_state.group(1))}, (path, ranks)
        else:
            assert ranks == {0}, f"{path} written by ranks {sorted(ranks)}"


def assert_data_parallel(checkpoint):
    """The processes trained as one (DDP): 2 steps of a global batch of 4 (2 processes x 2 rows) cover half of the
    16 training records. Two processes that each trained alone on all the data would be at epoch 0.25."""
    assert json.loads((checkpoint / "trainer_state.json").read_text())["epoch"] == 0.5


def common_flags(tmp_path, tiny_model_dir, shared_data, output_dir):
    (tmp_path / "tasks.yaml").write_text(TASKS)
    return ["--tasks", str(tmp_path / "tasks.yaml"), "--data_dir", str(shared_data), "--model", str(tiny_model_dir),
            "--output_dir", str(output_dir), "--disable_tqdm", "true"]  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize("recipe", sorted(SINGLE_TASK))
def test_a_technique_recipe_runs_in_two_processes_and_the_main_one_writes(
    tmp_path, recipe, tiny_model_dir, shared_data
):
    output_dir = tmp_path / "out"
    flags = ["--config", str(CONFIGS / f"{SINGLE_TASK[recipe]}.yaml")]
    flags += common_flags(tmp_path, tiny_model_dir, shared_data, output_dir)
    flags += [] if recipe == "few_shot" else TRAINING
    writers, stdout = launch(tmp_path, recipe, *flags)
    assert_only_the_main_process_wrote(writers)
    (row,) = json.loads((output_dir / "results.json").read_text())["rows"]
    assert row["task"] == "sentiment" and row["examples"] == 7  # every test record, split 4 + 3 and gathered
    assert len(re.findall(r"^# .+ on sentiment$", stdout, re.MULTILINE)) == 1  # the result table, printed once
    if recipe != "few_shot":
        assert (output_dir / "final").is_dir()
        assert {p.name for p in output_dir.glob("checkpoint-*")} == {"checkpoint-1", "checkpoint-2"}
        assert_data_parallel(output_dir / "checkpoint-2")
        assert {p.name for p in (output_dir / "checkpoint-2").glob("rng_state_*.pth")} == {
            "rng_state_0.pth",
            "rng_state_1.pth",
        }


@pytest.mark.integration
def test_the_continual_recipe_runs_both_rounds_in_two_processes_and_the_main_one_writes(
    tmp_path, tiny_model_dir, shared_data
):
    output_dir = tmp_path / "out"
    flags = ["--config", str(CONFIGS / "continual_p_tuning" / "smollm2_135m.yaml")]
    flags += common_flags(tmp_path, tiny_model_dir, shared_data, output_dir)
    flags += ["--round_max_steps", "2", "2", "--save_steps", "1", "--eval_steps", "1", "--validation_records", "3",
              "--per_device_train_batch_size", "2", "--encoder_type", "mlp", "--eval_batch_size", "2"]  # fmt: skip
    writers, stdout = launch(tmp_path, "continual_p_tuning", *flags)
    assert_only_the_main_process_wrote(writers)
    rows = json.loads((output_dir / "results.json").read_text())["rows"]
    examples = {(row["stage"], row["task"]): row["examples"] for row in rows}
    assert examples == {
        ("few-shot", "sentiment"): 7,
        ("few-shot", "intent_and_slot"): 5,
        ("round 1", "sentiment"): 7,
        ("round 2", "sentiment"): 7,
        ("round 2", "intent_and_slot"): 5,
    }
    assert stdout.count("# Continual p-tuning results") == 1
    for number in (1, 2):
        assert (output_dir / f"round_{number}" / "table" / "adapter_model.safetensors").is_file()
        assert_data_parallel(output_dir / f"round_{number}" / "checkpoints" / "checkpoint-2")


@pytest.mark.integration
def test_the_template_search_runs_its_trials_in_two_processes_and_the_main_one_writes(
    tmp_path, tiny_model_dir, shared_data
):
    """The main process holds the Optuna study; both processes train every trial with the same choices."""
    output_dir = tmp_path / "out"
    flags = ["--config", str(CONFIGS / "search_template" / "sentiment.yaml")]
    flags += common_flags(tmp_path, tiny_model_dir, shared_data, output_dir)
    flags += ["--taskname", "sentiment", "--n_trials", "3", "--trial_max_steps", "2", "--eval_steps", "1",
              "--validation_records", "3", "--per_device_train_batch_size", "2", "--total_virtual_tokens", "2", "6",
              "--encoder_type", "mlp", "--pruning_warmup_steps", "5"]  # fmt: skip
    writers, stdout = launch(tmp_path, "search_template", *flags)
    assert_only_the_main_process_wrote(writers)
    best = json.loads((output_dir / "best_trial.json").read_text())
    assert best["trials"] == 3 and stdout.count("# Template search on sentiment") == 1
    # every trial ran to its end, evaluated at steps 1 and 2 (the second process followed each one: a process that
    # left a collective call unanswered would have hung the run)
    study = optuna.load_study(study_name="sentiment", storage=f"sqlite:///{output_dir / 'study.db'}")
    assert [trial.state for trial in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert all(sorted(trial.intermediate_values) == [1, 2] for trial in study.trials)


@pytest.mark.integration
def test_evaluating_a_saved_table_runs_in_two_processes_and_the_main_one_writes(tmp_path, tiny_model_dir, shared_data):
    from peft_continual.experiments.task_files import load_task_specs
    from tests.recipes.test_evaluate_table import saved_table

    output_dir = tmp_path / "out"
    flags = ["--config", str(CONFIGS / "evaluate_table" / "smollm2_135m.yaml")]
    flags += common_flags(tmp_path, tiny_model_dir, shared_data, output_dir)
    (sentiment, _) = load_task_specs(tmp_path / "tasks.yaml")
    table = saved_table(tmp_path / "table", tiny_model_dir, sentiment.template)
    writers, stdout = launch(tmp_path, "evaluate_table", *flags, "--table", str(table))
    assert_only_the_main_process_wrote(writers)
    (row,) = json.loads((output_dir / "results.json").read_text())["rows"]
    assert row["task"] == "sentiment" and row["examples"] == 7  # every test record, split 4 + 3 and gathered
    assert len(re.findall(r"^# .+ on sentiment$", stdout, re.MULTILINE)) == 1
