"""The continual p-tuning recipe end to end on a tiny random model: outputs, frozen old tasks, resume after a kill."""

import json
import os
import platform
import runpy
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import Trainer

from peft_continual.card_metadata import check_card_metadata
from peft_continual.errors import ConfigError
from peft_continual.experiments.cli import parse_config_and_flags
from peft_continual.machine import cpu_bf16_support

ROOT = Path(__file__).resolve().parents[2]
RECIPE = runpy.run_path(str(ROOT / "recipes" / "continual_p_tuning.py"))
TASKS = """
tasks:
  - {taskname: sentiment, round: 1, dataset: financial_phrasebank, total_virtual_tokens: 4, virtual_token_splits: [2, 2],
     prompt_template: "<|VIRTUAL_PROMPT_0|>{sentence}\\n<|VIRTUAL_PROMPT_1|>Sentiment: {label}", answer_field: label,
     train_records: 16, eval_records: 4, fewshot: {k: 1},
     evaluation: {kind: classification, labels: {labels: [positive, negative, neutral]}, max_new_tokens: 3}}
  - {taskname: intent_and_slot, round: 1, dataset: assistant_nlu, total_virtual_tokens: 3, virtual_token_splits: [3],
     prompt_template: "<|VIRTUAL_PROMPT_0|>{utterance}\\n{label}", answer_field: label, train_records: 16,
     eval_records: 4, fewshot: {k: 2, sampling: total}, evaluation: {kind: intent_and_slot, max_new_tokens: 6}}
  - {taskname: sentiment_no, round: 2, dataset: norec_sentence_no, total_virtual_tokens: 4, virtual_token_splits: [4],
     prompt_template: "<|VIRTUAL_PROMPT_0|>{sentence}\\nSentiment: {label}", answer_field: label,
     train_records: 16, eval_records: 4, fewshot: {k: 1},
     evaluation: {kind: classification, labels: {labels: [positive, negative, neutral]}, max_new_tokens: 3}}
"""


def run_recipe(tmp_path, model_dir, output_dir, data_dir, *extra_flags):
    (tmp_path / "tasks.yaml").write_text(TASKS)
    flags = [
        "--config",
        str(ROOT / "recipes/configs/continual_p_tuning/smollm2_135m.yaml"),
        "--tasks",
        str(tmp_path / "tasks.yaml"),
        "--data_dir",
        str(data_dir),
        "--model",
        str(model_dir),
        "--output_dir",
        str(output_dir),
        "--round_max_steps",
        "4",
        "2",
        "--save_steps",
        "2",
        "--eval_steps",
        "2",
        "--validation_records",
        "4",
        "--per_device_train_batch_size",
        "4",
        "--encoder_type",
        "mlp",
        "--learning_rate",
        "0.01",
        "--disable_tqdm",
        "true",
        *extra_flags,
    ]
    return RECIPE["main"](*parse_config_and_flags(RECIPE["ARGUMENTS"], flags))


@pytest.mark.slow
def test_recipe_writes_results_and_keeps_round_1_tasks_bit_identical(tmp_path, tiny_model_dir, shared_data):
    output_dir = tmp_path / "out"
    rows = run_recipe(tmp_path, tiny_model_dir, output_dir, shared_data, "--recheck_records", "3",
                      "--base_model_id", "my-org/tiny-llama", "--card_license", "apache-2.0", "--card_languages", "en",
                      "nb", "--card_datasets", "takala/financial_phrasebank")  # fmt: skip
    assert [(r.task, r.stage) for r in rows] == [
        ("sentiment", "few-shot"),
        ("intent_and_slot", "few-shot"),
        ("sentiment_no", "few-shot"),
        ("sentiment", "round 1"),
        ("intent_and_slot", "round 1"),
        ("sentiment", "round 2"),
        ("intent_and_slot", "round 2"),
        ("sentiment_no", "round 2"),
    ]
    results = json.loads((output_dir / "results.json").read_text())
    frozen = results["round_1_tasks_after_last_round"]
    assert set(frozen) == {"sentiment", "intent_and_slot"}
    assert all(v["rows_identical"] and v["predictions_identical"] for v in frozen.values())
    assert {v["predictions_rechecked"] for v in frozen.values()} == {3}  # of 4 test records: the rest carried over
    for before, after in zip(rows[3:5], rows[5:7], strict=True):
        assert after == replace(before, stage="round 2", trainable_parameters=0, carried_from="round 1")
        assert after.examples == 4
    saved = json.loads((output_dir / "round_2" / "table" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "my-org/tiny-llama"  # --base_model_id, not the local folder
    check_card_metadata(output_dir / "round_2" / "table" / "README.md")  # the Hub's checks, before any push
    metadata = ModelCard.load(output_dir / "round_2" / "table" / "README.md").data.to_dict()
    assert (metadata["license"], metadata["language"], metadata["base_model"]) == ("apache-2.0", ["en", "nb"],
                                                                                  "my-org/tiny-llama")  # fmt: skip
    card = metadata["peft_continual"]
    assert {name: task["round"] for name, task in card["tasks"].items()} == {
        "sentiment": 1, "intent_and_slot": 1, "sentiment_no": 2
    }  # fmt: skip
    assert set(card["results"]) == {"sentiment", "intent_and_slot", "sentiment_no"} and card["training"]["steps"] == 2
    for name in ("results.md", "training_loss.png", "accuracy.png", "round_2/table/adapter_model.safetensors"):
        assert (output_dir / name).exists(), name
    assert rows[-1].stored_parameters == 4 * 32 and rows[-1].trainable_parameters > 0

    # The same folder with other settings: refused before any work, naming what changed.
    (tmp_path / "tasks.yaml").write_text(
        TASKS.replace(
            "total_virtual_tokens: 3, virtual_token_splits: [3]", "total_virtual_tokens: 5, virtual_token_splits: [5]"
        )
    )
    flags = ["--config", str(ROOT / "recipes/configs/continual_p_tuning/smollm2_135m.yaml")]
    flags += ["--tasks", str(tmp_path / "tasks.yaml"), "--output_dir", str(output_dir), "--learning_rate", "0.02"]
    flags += ["--round_max_steps", "4", "2", "--per_device_train_batch_size", "4", "--encoder_type", "mlp"]
    flags += ["--model", str(tiny_model_dir), "--validation_records", "4", "--eval_steps", "2", "--save_steps", "2"]
    flags += ["--base_model_id", "my-org/tiny-llama"]
    with pytest.raises(ConfigError) as refused:
        RECIPE["main"](*parse_config_and_flags(RECIPE["ARGUMENTS"], flags))
    assert str(refused.value).splitlines()[1:3] == [
        "  learning_rate: 0.01 then, 0.02 now",
        "  tasks.intent_and_slot.template.total_virtual_tokens: 3 then, 5 now",
    ]


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_with_the_same_table(tmp_path, tiny_model_dir, shared_data, monkeypatch):
    straight = tmp_path / "straight"
    run_recipe(tmp_path, tiny_model_dir, straight, shared_data)

    original = Trainer.training_step

    def killed_at_step_3(self, *args, **kwargs):
        if self.state.global_step == 3:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(tmp_path, tiny_model_dir, tmp_path / "resumed", shared_data)
    monkeypatch.setattr(Trainer, "training_step", original)
    torch.manual_seed(1234)  # a different RNG state than a fresh run: the checkpoint must decide
    run_recipe(tmp_path, tiny_model_dir, tmp_path / "resumed", shared_data)
    hashes = [
        json.loads((d / "results.json").read_text())["round_1_tasks_after_last_round"]
        for d in (straight, tmp_path / "resumed")
    ]
    assert {k: v["sha256"] for k, v in hashes[0].items()} == {k: v["sha256"] for k, v in hashes[1].items()}


@pytest.mark.slow
def test_validation_accuracy_of_each_round_task_chooses_the_best_checkpoint(tmp_path, tiny_model_dir, shared_data):
    output_dir = tmp_path / "out"
    flags = ["--validation_accuracy", "auto", "--metric_for_best_model", "task_accuracy", "--fewshot", "false"]
    run_recipe(tmp_path, tiny_model_dir, output_dir, shared_data, *flags)
    for number, tasks in [(1, ["sentiment", "intent_and_slot"]), (2, ["sentiment_no"])]:
        log = json.loads((output_dir / f"round_{number}" / "train_log.json").read_text())
        evaluations = [entry for entry in log if "eval_loss" in entry]
        assert len(evaluations) == {1: 2, 2: 1}[number]
        for entry in evaluations:  # only the tasks being trained: the frozen ones cannot change
            scores = {key for key in entry if key.endswith("_accuracy")}
            assert scores == {f"eval_{name}_accuracy" for name in tasks} | {"eval_task_accuracy"}


def test_an_accuracy_metric_without_validation_accuracy_stops_before_any_work(tmp_path):
    flags = ["--config", str(ROOT / "recipes/configs/continual_p_tuning/smollm2_135m.yaml")]
    flags += ["--metric_for_best_model", "task_accuracy", "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ConfigError, match="needs --validation_accuracy auto"):
        RECIPE["main"](*parse_config_and_flags(RECIPE["ARGUMENTS"], flags))
    with pytest.raises(ConfigError, match="--validation_accuracy must be one of none, auto, generation, restricted"):
        RECIPE["main"](*parse_config_and_flags(RECIPE["ARGUMENTS"], [*flags, "--validation_accuracy", "autoo"]))
    assert not (tmp_path / "out").exists()


def test_card_metadata_the_hub_would_refuse_stops_before_any_work(tmp_path):
    flags = ["--config", str(ROOT / "recipes/configs/continual_p_tuning/smollm2_135m.yaml")]
    flags += ["--output_dir", str(tmp_path / "out"), "--card_license", "Apache 2.0", "--card_languages", "english"]
    with pytest.raises(ConfigError) as refused:
        RECIPE["main"](*parse_config_and_flags(RECIPE["ARGUMENTS"], flags))
    assert "license: 'Apache 2.0' is not a Hub licence identifier" in str(refused.value)
    assert "language: 'english' is not an ISO 639 code" in str(refused.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config", ["smollm2_135m.yaml", "smollm2_135m_deep.yaml", "smollm2_135m_full.yaml"])
def test_every_config_and_task_file_parses(config, monkeypatch):
    from peft_continual.experiments.task_files import load_task_specs, rounds_of

    monkeypatch.chdir(ROOT)
    recipe, training = parse_config_and_flags(
        RECIPE["ARGUMENTS"], ["--config", str(ROOT / "recipes/configs/continual_p_tuning" / config)]
    )
    specs = load_task_specs(recipe.tasks)
    assert [[s.taskname for s in r] for r in rounds_of(specs)] == [["sentiment", "intent_and_slot"], ["sentiment_no"]]
    assert len(recipe.round_max_steps) == 2 and training.remove_unused_columns is False


def test_the_intent_only_task_file_parses_as_one_round_of_the_default_intent_task():
    from peft_continual.experiments.task_files import load_task_specs

    directory = ROOT / "recipes/configs/continual_p_tuning"
    (intent,) = load_task_specs(directory / "tasks_intent.yaml")
    default = {s.taskname: s for s in load_task_specs(directory / "tasks.yaml")}["intent_and_slot"]
    assert intent == default  # the same template, data, subsets and evaluation as in the demo


def test_the_deep_demo_differs_from_the_default_in_depth_rates_and_sentiments_balance_only(monkeypatch):
    from dataclasses import replace

    from peft_continual.experiments.task_files import load_task_specs

    monkeypatch.chdir(ROOT)
    directory = ROOT / "recipes/configs/continual_p_tuning"
    default, deep = (
        parse_config_and_flags(RECIPE["ARGUMENTS"], ["--config", str(directory / name)])
        for name in ("smollm2_135m.yaml", "smollm2_135m_deep.yaml")
    )
    assert (deep[0].prompt_depth, deep[1].learning_rate, deep[1].start_rows_learning_rate) == (30, 1e-3, 1e-2)
    assert deep[0].round_max_steps == default[0].round_max_steps
    assert deep[1].per_device_train_batch_size == default[1].per_device_train_batch_size
    balanced, plain = load_task_specs(deep[0].tasks), load_task_specs(default[0].tasks)
    assert [spec.balance_labels for spec in balanced] == [True, False, False]
    assert [replace(spec, balance_labels=False) for spec in balanced] == plain


@pytest.mark.slow
def test_a_run_killed_in_round_2_has_written_the_results_of_round_1(tmp_path, tiny_model_dir, shared_data, monkeypatch):
    original = Trainer.training_step

    def killed_in_round_2(self, *args, **kwargs):
        if Path(self.args.output_dir).parent.name == "round_2":  # (the test's own folder name has round_2 in it)
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", killed_in_round_2)
    output_dir = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_recipe(tmp_path, tiny_model_dir, output_dir, shared_data)
    results = json.loads((output_dir / "results.json").read_text())
    assert [(r["task"], r["stage"]) for r in results["rows"]][-2:] == [
        ("sentiment", "round 1"),
        ("intent_and_slot", "round 1"),
    ]
    assert results["rounds_finished"] == "1 of 2" and "round_1_tasks_after_last_round" not in results
    assert "| intent_and_slot | round 1 |" in (output_dir / "results.md").read_text()


@pytest.mark.slow
def test_a_rerun_reads_back_the_evaluation_of_finished_rounds_unless_the_test_records_changed(
    tmp_path, tiny_model_dir, shared_data, monkeypatch
):
    output_dir = tmp_path / "out"
    run_recipe(tmp_path, tiny_model_dir, output_dir, shared_data)
    first = json.loads((output_dir / "results.json").read_text())
    evaluated = []
    real_evaluate = RECIPE["main"].__globals__["evaluate_tasks"]

    def recording_evaluate(model, prompts, records, *args, **kwargs):
        evaluated.append(sorted({r.taskname for r in records}))
        return real_evaluate(model, prompts, records, *args, **kwargs)

    monkeypatch.setitem(RECIPE["main"].__globals__, "evaluate_tasks", recording_evaluate)
    run_recipe(tmp_path, tiny_model_dir, output_dir, shared_data)
    again = json.loads((output_dir / "results.json").read_text())
    assert evaluated == []  # the few-shot baseline and both rounds read back
    assert again["rows"] == first["rows"]
    assert again["round_1_tasks_after_last_round"] == first["round_1_tasks_after_last_round"]
    assert len(again["minutes_per_invocation"]) == 2 == len(first["minutes_per_invocation"]) + 1
    assert again["minutes"] == round(sum(again["minutes_per_invocation"]), 1)

    # Other test records of `sentiment` (the data folder is not part of a run's settings): the few-shot baseline and
    # every round that serves it are evaluated again.
    changed = tmp_path / "data"
    for dataset in ("financial_phrasebank", "assistant_nlu", "norec_sentence_no"):
        (changed / dataset).mkdir(parents=True)
        for split in ("train", "validation", "test"):
            (changed / dataset / f"{split}.jsonl").symlink_to(shared_data / dataset / f"{split}.jsonl")
    (changed / "financial_phrasebank" / "test.jsonl").unlink()
    lines = (shared_data / "financial_phrasebank" / "test.jsonl").read_text().splitlines(keepends=True)
    (changed / "financial_phrasebank" / "test.jsonl").write_text("".join(lines[1:]))
    run_recipe(tmp_path, tiny_model_dir, output_dir, changed)
    every_task = ["intent_and_slot", "sentiment", "sentiment_no"]
    assert evaluated == [every_task, ["intent_and_slot", "sentiment"], every_task]


def recipe_flags(tmp_path, model_dir, output_dir, data_dir) -> list[str]:
    """The default config as a user runs it (LSTM encoder, precision auto), on a tiny model for 2 + 1 steps."""
    (tmp_path / "tasks.yaml").write_text(TASKS)
    flags = ["--config", str(ROOT / "recipes/configs/continual_p_tuning/smollm2_135m.yaml")]
    flags += ["--tasks", str(tmp_path / "tasks.yaml"), "--data_dir", str(data_dir), "--model", str(model_dir)]
    flags += ["--output_dir", str(output_dir), "--round_max_steps", "2", "1", "--save_steps", "2", "--eval_steps", "2"]
    return flags + ["--validation_records", "4", "--per_device_train_batch_size", "4", "--disable_tqdm", "true"]


@pytest.mark.slow
def test_the_default_config_trains_its_lstm_encoder_in_the_precision_this_machine_chooses(
    tmp_path, tiny_model_dir, shared_data
):
    recipe, training = parse_config_and_flags(
        RECIPE["ARGUMENTS"], recipe_flags(tmp_path, tiny_model_dir, tmp_path / "out", shared_data)
    )
    assert recipe.encoder_type == "lstm" and training.precision == "auto"
    RECIPE["main"](recipe, training)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["rounds_finished"] == "2 of 2"
    assert results["precision"] == str(training.precision_choice)
    assert {"cpu", "torch_threads", "device", "torch", "transformers", "peft"} <= set(results["machine"])


@pytest.mark.slow
@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available(),
    reason="ONEDNN_MAX_CPU_ISA caps oneDNN's x86-64 instruction sets; this is not an x86-64 torch build with oneDNN",
)
def test_on_a_cpu_without_bf16_the_demo_trains_in_fp32_and_forced_bf16_stops_in_seconds(
    tmp_path, tiny_model_dir, shared_data
):
    """The reference machine of the demo's clock (AVX2 only), on any x86-64 CPU through oneDNN's cap; each run is
    the command line of the README's demo, in a fresh interpreter (oneDNN reads the cap once)."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    command = [sys.executable, str(ROOT / "recipes/continual_p_tuning.py")]
    flags = recipe_flags(tmp_path, tiny_model_dir, tmp_path / "forced", shared_data)
    started = time.monotonic()
    forced = subprocess.run([*command, *flags, "--precision", "bf16"], env=env, capture_output=True, text=True)
    assert forced.returncode == 2 and time.monotonic() - started < 60
    assert forced.stderr.strip().splitlines()[-1].startswith("error: bf16 was asked for")
    assert "Traceback" not in forced.stderr and not (tmp_path / "forced").exists()

    flags = recipe_flags(tmp_path, tiny_model_dir, tmp_path / "auto", shared_data)
    done = subprocess.run([*command, *flags, "--fewshot_eval_records", "2"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training precision: fp32 on cpu (auto" in done.stderr and "check before the run passed" in done.stdout
    results = json.loads((tmp_path / "auto" / "results.json").read_text())
    assert results["rounds_finished"] == "2 of 2" and results["machine"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"


@pytest.mark.slow
@pytest.mark.skipif(
    not cpu_bf16_support().onednn,
    reason="bf16 training on the CPU needs oneDNN's bf16 (AVX512 or AMX); this CPU has none",
)
def test_bf16_asked_for_trains_the_default_config_under_autocast(tmp_path, tiny_model_dir, shared_data):
    flags = recipe_flags(tmp_path, tiny_model_dir, tmp_path / "out", shared_data) + ["--precision", "bf16"]
    recipe, training = parse_config_and_flags(RECIPE["ARGUMENTS"], flags)
    assert training.bf16 and training.use_cpu
    RECIPE["main"](recipe, training)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["precision"].startswith("training precision: bf16 on cpu (asked for bf16")


def test_max_steps_is_refused_since_each_round_has_its_own(tmp_path):
    flags = ["--config", str(ROOT / "recipes/configs/continual_p_tuning/smollm2_135m.yaml")]
    flags += ["--max_steps", "20", "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ConfigError, match="each round trains --round_max_steps steps"):
        RECIPE["main"](*parse_config_and_flags(RECIPE["ARGUMENTS"], flags))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_push_to_hub_uploads_each_rounds_table_with_its_card(tmp_path, tiny_model_dir, shared_data, hub_server):
    from huggingface_hub import ModelCard
    from safetensors.torch import load

    output_dir = tmp_path / "out"
    run_recipe(
        tmp_path, tiny_model_dir, output_dir, shared_data, "--push_to_hub", "true", "--hub_model_id", "team/demo"
    )
    repo = hub_server.repos["team/demo"]
    messages = [repo.messages[sha] for sha in repo.commits if sha in repo.messages]
    assert messages == ["Round 1: sentiment, intent_and_slot", "Round 2: sentiment_no"]
    files = hub_server.files("team/demo")
    local = output_dir / "round_2" / "table"
    assert files["adapter_model.safetensors"] == (local / "adapter_model.safetensors").read_bytes()
    assert set(load(files["adapter_model.safetensors"])) == {
        f"base_model.continual_prompt_table.task:{name}" for name in ("sentiment", "intent_and_slot", "sentiment_no")
    }
    card = ModelCard(files["README.md"].decode()).data.to_dict()["peft_continual"]
    assert set(card["results"]) == {"sentiment", "intent_and_slot", "sentiment_no"}
    assert not any(path.startswith("checkpoint") for path in files)  # Trainer pushed nothing of its own


def test_first_trained_layer_reaches_the_method_config(monkeypatch, smollm2_tokenizer):
    from peft_continual.experiments.task_files import load_task_specs

    monkeypatch.chdir(ROOT)
    config = str(ROOT / "recipes/configs/continual_p_tuning/smollm2_135m_deep.yaml")
    recipe, _ = parse_config_and_flags(RECIPE["ARGUMENTS"], ["--config", config, "--first_trained_layer", "15"])
    round_1 = [spec for spec in load_task_specs(recipe.tasks) if spec.round == 1]
    method = RECIPE["first_round_config"](recipe, round_1, smollm2_tokenizer)
    assert (method.prompt_depth, method.first_trained_layer) == (30, 15)
    recipe.first_trained_layer = 30
    with pytest.raises(ConfigError, match="less than prompt_depth"):
        RECIPE["first_round_config"](recipe, round_1, smollm2_tokenizer)
