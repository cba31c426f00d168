"""The adapter comparison recipe on a tiny random model: every method trains, is evaluated and is resumable."""

import json
import runpy
from pathlib import Path

import pytest
from transformers import Trainer

from peft_continual.experiment import parse_config_and_flags

ROOT = Path(__file__).resolve().parents[2]
RECIPE = runpy.run_path(str(ROOT / "recipes" / "compare_adapters.py"))
CONFIG = ROOT / "recipes" / "configs" / "compare_adapters" / "smollm2_135m.yaml"
TASKS = """
tasks:
  - {taskname: sentiment, dataset: financial_phrasebank, total_virtual_tokens: 4, virtual_token_splits: [2, 2],
     prompt_template: "<|VIRTUAL_PROMPT_0|>{sentence}\\n<|VIRTUAL_PROMPT_1|>Sentiment: {label}", answer_field: label,
     train_records: 16, eval_records: 6,
     evaluation: {kind: classification, labels: {labels: [positive, negative, neutral]}, max_new_tokens: 3}}
"""


def run_recipe(tmp_path, model_dir, output_dir, data_dir):
    (tmp_path / "tasks.yaml").write_text(TASKS)
    flags = ["--config", str(CONFIG), "--tasks", str(tmp_path / "tasks.yaml"), "--data_dir", str(data_dir)]
    flags += ["--model", str(model_dir), "--output_dir", str(output_dir), "--max_steps", "3", "--encoder_type", "mlp"]
    flags += ["--per_device_train_batch_size", "4", "--disable_tqdm", "true"]
    return RECIPE["main"](*parse_config_and_flags(RECIPE["ARGUMENTS"], flags))


@pytest.mark.slow
def test_every_method_trains_and_is_evaluated_on_the_same_records(tmp_path, tiny_model_dir, shared_data):
    rows = run_recipe(tmp_path, tiny_model_dir, tmp_path / "out", shared_data)
    assert [row.stage for row in rows] == ["p_tuning", "lora", "p_tuning+lora"]
    assert all(row.task == "sentiment" and row.examples == 6 for row in rows)
    prompts, lora, both = rows
    assert prompts.stored_parameters == 4 * 32  # the table: 4 virtual tokens of width 32
    assert lora.stored_parameters > 0 and both.stored_parameters == prompts.stored_parameters + lora.stored_parameters
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [row["stage"] for row in results["rows"]] == ["p_tuning", "lora", "p_tuning+lora"]


@pytest.mark.slow
def test_a_rerun_reads_finished_methods_back(tmp_path, tiny_model_dir, shared_data, monkeypatch):
    first = run_recipe(tmp_path, tiny_model_dir, tmp_path / "out", shared_data)

    def no_training(self, *args, **kwargs):
        raise AssertionError("a finished method was trained again")

    monkeypatch.setattr(Trainer, "train", no_training)
    assert run_recipe(tmp_path, tiny_model_dir, tmp_path / "out", shared_data) == first


def test_the_config_parses_and_names_known_methods(monkeypatch):
    monkeypatch.chdir(ROOT)
    arguments, training = parse_config_and_flags(RECIPE["ARGUMENTS"], ["--config", str(CONFIG)])
    assert arguments.methods == ["p_tuning", "lora", "p_tuning+lora"]
    assert training.num_train_epochs == 1 and training.per_device_train_batch_size == 8
