"""The technique comparison on a tiny random model: every technique's own recipe is run, trained if it trains,
evaluated on the same records, and read back on a rerun."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer, Trainer

from peft_continual.errors import ConfigError
from peft_continual.experiments.cli import parse_and_pass_on, parse_config_and_flags
from tests.conftest import SMOLLM2_TOKENIZER_DIR, build_tiny_model

ROOT = Path(__file__).resolve().parents[2]
RECIPE = runpy.run_path(str(ROOT / "recipes" / "compare_techniques.py"))
CONFIG = ROOT / "recipes" / "configs" / "compare_techniques" / "smollm2_135m.yaml"
CONFIGS = ROOT / "recipes" / "configs"
TASKS = """
tasks:
  - {taskname: sentiment, dataset: financial_phrasebank, total_virtual_tokens: 4, virtual_token_splits: [2, 2],
     prompt_template: "<|VIRTUAL_PROMPT_0|>{sentence}\\n<|VIRTUAL_PROMPT_1|>Sentiment: {label}", answer_field: label,
     train_records: 16, eval_records: 6, fewshot: {k: 1},
     evaluation: {kind: classification, labels: {labels: [positive, negative, neutral]}, max_new_tokens: 3}}
"""
RUNS = {  # technique -> its recipe config
    "zero_shot": "few_shot/zero_shot",
    "few_shot": "few_shot/smollm2_135m",
    "prompt_tuning": "p_tuning/prompt_tuning",
    "p_tuning": "p_tuning/smollm2_135m",
    "lora": "lora/smollm2_135m",
    "ia3": "ia3/smollm2_135m",
    "full_fine_tuning": "full_finetune/smollm2_135m",
    "p_tuning+lora": "p_tuning_lora/smollm2_135m",
    "peft_prompt_tuning": "prompt_tuning/smollm2_135m",
    "peft_p_tuning": "peft_p_tuning/smollm2_135m",
    "qlora": "lora/qlora",
}
WITHOUT_QLORA = [name for name in RUNS if name != "qlora"]


def run_recipe(tmp_path, model_dir, output_dir, data_dir, techniques=WITHOUT_QLORA, *extra):
    (tmp_path / "tasks.yaml").write_text(TASKS)
    flags = ["--config", str(CONFIG), "--tasks", str(tmp_path / "tasks.yaml"), "--data_dir", str(data_dir)]
    flags += ["--model", str(model_dir), "--output_dir", str(output_dir), "--max_steps", "3"]
    flags += ["--per_device_train_batch_size", "4", "--disable_tqdm", "true", "--seeds", "0"]  # extra may override
    flags += ["--runs", *[str(CONFIGS / f"{RUNS[name]}.yaml") for name in techniques], *extra]
    return RECIPE["main"](*parse_and_pass_on(RECIPE["ARGUMENTS"], flags))


@pytest.mark.slow
def test_every_technique_is_evaluated_on_the_same_records(tmp_path, tiny_model_dir, shared_data):
    rows = run_recipe(tmp_path, tiny_model_dir, tmp_path / "out", shared_data, WITHOUT_QLORA, "--save_model", "true")
    by_name = {row.stage: row for row in rows}
    assert [row.stage for row in rows] == WITHOUT_QLORA
    assert all(row.task == "sentiment" and row.examples == 6 for row in rows)
    base = by_name["zero_shot"].base_parameters
    assert by_name["zero_shot"].trainable_parameters == 0 == by_name["few_shot"].stored_parameters
    assert by_name["prompt_tuning"].trainable_parameters == by_name["prompt_tuning"].stored_parameters == 4 * 32
    assert by_name["p_tuning"].stored_parameters == 4 * 32 < by_name["p_tuning"].trainable_parameters
    lora = by_name["lora"].stored_parameters
    assert 0 < lora == by_name["lora"].trainable_parameters
    assert by_name["p_tuning+lora"].stored_parameters == 4 * 32 + lora
    assert 0 < by_name["ia3"].stored_parameters < lora
    assert by_name["full_fine_tuning"].trainable_parameters == by_name["full_fine_tuning"].stored_parameters == base
    # PEFT's own prompt learning: 4 virtual tokens in front, stored as 4 rows (its p-tuning: the encoder's output)
    assert (
        by_name["peft_prompt_tuning"].trainable_parameters == by_name["peft_prompt_tuning"].stored_parameters == 4 * 32
    )
    assert by_name["peft_p_tuning"].stored_parameters == 4 * 32 < by_name["peft_p_tuning"].trainable_parameters
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [row["stage"] for row in results["rows"]] == WITHOUT_QLORA
    # each run is its recipe's own: its folder has its results and what it trained
    lora_run = tmp_path / "out" / "lora" / "seed_0"
    assert json.loads((lora_run / "results.json").read_text())["rows"][0]["stage"] == "lora"
    assert (lora_run / "final" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "out" / "p_tuning" / "seed_0" / "final" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_every_trained_technique_runs_with_each_seed_and_the_table_gives_mean_and_std(
    tmp_path, tiny_model_dir, shared_data
):
    techniques = ["zero_shot", "p_tuning", "peft_prompt_tuning"]
    rows = run_recipe(tmp_path, tiny_model_dir, tmp_path / "out", shared_data, techniques, "--seeds", "3", "4")
    assert [(row.stage, row.seed) for row in rows] == [
        ("zero_shot", 3), ("p_tuning", 3), ("p_tuning", 4), ("peft_prompt_tuning", 3), ("peft_prompt_tuning", 4)
    ]  # fmt: skip
    tables = [
        (tmp_path / "out" / name / f"seed_{seed}" / "checkpoint-3" / "adapter_model.safetensors")
        for name, seed in [("p_tuning", 3), ("p_tuning", 4)]
    ]
    assert tables[0].read_bytes() != tables[1].read_bytes()  # another seed, another model
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    over = {summary["stage"]: summary for summary in results["over_seeds"]}
    assert over["zero_shot"]["seeds"] == [3] and over["zero_shot"]["generation_std"] is None
    p_tuning = [row["generation"] for row in results["rows"] if row["stage"] == "p_tuning"]
    assert over["p_tuning"]["seeds"] == [3, 4]
    assert over["p_tuning"]["generation_mean"] == pytest.approx(sum(p_tuning) / 2)
    assert over["p_tuning"]["generation_std"] == pytest.approx(abs(p_tuning[0] - p_tuning[1]) / 2**0.5)
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "mean ± std" in markdown and "| sentiment | p_tuning | 3, 4 |" in markdown


@pytest.mark.slow
def test_a_rerun_reads_finished_runs_back_and_refuses_other_settings(
    tmp_path, tiny_model_dir, shared_data, monkeypatch
):
    first = run_recipe(tmp_path, tiny_model_dir, tmp_path / "out", shared_data, ["few_shot", "lora"])

    def no_training(self, *args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(Trainer, "train", no_training)
    assert run_recipe(tmp_path, tiny_model_dir, tmp_path / "out", shared_data, ["few_shot", "lora"]) == first
    with pytest.raises(ConfigError, match="lora_r: 8 then, 4 now"):
        run_recipe(tmp_path, tiny_model_dir, tmp_path / "out", shared_data, ["lora"], "--lora_r", "4")


@pytest.mark.slow
def test_qlora_trains_lora_on_a_4bit_base(tmp_path, shared_data):
    pytest.importorskip("bitsandbytes")
    model_dir = tmp_path / "tiny-64"  # bitsandbytes' CPU 4-bit kernels need layers at least 64 wide
    build_tiny_model("llama", hidden_size=64, intermediate_size=128).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(SMOLLM2_TOKENIZER_DIR).save_pretrained(model_dir)
    (row,) = run_recipe(tmp_path, model_dir, tmp_path / "out", shared_data, ["qlora"])
    assert row.stage == "qlora" and row.examples == 6
    assert 0 < row.stored_parameters == row.trainable_parameters
    full_precision = sum(
        p.numel() for p in build_tiny_model("llama", hidden_size=64, intermediate_size=128).parameters()
    )
    assert row.base_parameters == full_precision  # 4-bit weights counted as the values they hold


@pytest.mark.integration
def test_a_recipe_runs_alone_from_the_command_line(tmp_path, tiny_model_dir, shared_data):
    (tmp_path / "tasks.yaml").write_text(TASKS)
    command = [sys.executable, str(ROOT / "recipes" / "lora.py"), "--config", str(CONFIGS / "lora/smollm2_135m.yaml")]
    command += ["--tasks", str(tmp_path / "tasks.yaml"), "--data_dir", str(shared_data), "--model", str(tiny_model_dir)]
    command += ["--output_dir", str(tmp_path / "lora"), "--max_steps", "2", "--disable_tqdm", "true"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "lora" / "results.json").read_text())["rows"][0]["examples"] == 6
    assert "| sentiment | lora | 0 |" in done.stdout  # the result table, printed at the end
    # a flag the recipe cannot honour is refused, with its name, not ignored
    done = subprocess.run([*command, "--encoder_type", "mlp"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 2 and "unknown flag(s) ['--encoder_type', 'mlp']" in done.stderr


def test_every_run_of_the_config_parses_with_its_own_learning_rate(monkeypatch):
    monkeypatch.chdir(ROOT)
    comparison, passed_on = parse_and_pass_on(RECIPE["ARGUMENTS"], ["--config", str(CONFIG)])
    assert sorted(comparison.runs) == sorted(f"recipes/configs/{config}.yaml" for config in RUNS.values())
    rates, start_rates = {}, {}
    for run in comparison.runs:
        recipe_file, technique = RECIPE["recipe_of"](run)
        recipe = runpy.run_path(str(recipe_file))
        *_, training = parse_config_and_flags(recipe["ARGUMENTS"], ["--config", run, *passed_on])
        assert training.num_train_epochs == 1 and training.per_device_train_batch_size == 8
        rates[technique] = training.learning_rate
        start_rates[technique] = getattr(training, "start_rows_learning_rate", None)
    assert rates["lora"] == rates["qlora"] == 1e-3 and rates["full_fine_tuning"] == 2e-5
    assert rates["peft_prompt_tuning"] == 3e-2 == rates["prompt_tuning"]
    assert rates["p_tuning"] == 3e-4 and start_rates["p_tuning"] == 3e-2  # the encoder slow, the start rows at 3e-2
    assert set(rates) == set(RUNS)
    assert yaml.safe_load(CONFIG.read_text())["seeds"] == [0, 1, 2]


def test_a_run_that_is_not_a_recipe_config_stops_before_any_work(tmp_path):
    (tmp_path / "adapterfusion").mkdir()
    (tmp_path / "adapterfusion" / "x.yaml").write_text("learning_rate: 0.1\n")
    comparison, passed_on = parse_and_pass_on(
        RECIPE["ARGUMENTS"], ["--runs", str(tmp_path / "adapterfusion" / "x.yaml"), "--output_dir", str(tmp_path)]
    )
    with pytest.raises(ConfigError, match="not a recipe config"):
        RECIPE["main"](comparison, passed_on)


@pytest.mark.slow
def test_folds_evaluate_every_technique_on_each_held_out_fold_of_the_training_records(
    tmp_path, tiny_model_dir, shared_data
):
    (tmp_path / "folds.yaml").write_text(TASKS.replace("train_records: 16", "train_records: 45"))
    rows = run_recipe(tmp_path, tiny_model_dir, tmp_path / "out", shared_data, ["zero_shot", "lora"],
                      "--tasks", str(tmp_path / "folds.yaml"), "--folds", "3", "--max_steps", "1")  # fmt: skip
    assert [(row.stage, row.fold) for row in rows] == [("zero_shot", f) for f in range(3)] + [
        ("lora", f) for f in range(3)
    ]
    assert [row.examples for row in rows[:3]] == [15, 15, 15]  # the 45 training records, each held out once
    assert all(row.macro_f1 is not None for row in rows)
    assert (tmp_path / "out" / "lora" / "fold_2" / "results.json").is_file()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [summary["folds"] for summary in results["over_folds"]] == [[0, 1, 2], [0, 1, 2]]
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "Mean ± sample standard deviation over 3 folds" in markdown and "| sentiment | lora | 0, 1, 2 |" in markdown


def test_folds_take_one_seed(tmp_path):
    comparison, passed_on = parse_and_pass_on(
        RECIPE["ARGUMENTS"],
        [
            "--runs",
            str(CONFIGS / "lora" / "smollm2_135m.yaml"),
            "--folds",
            "3",
            "--seeds",
            "0",
            "1",
            "--output_dir",
            str(tmp_path),
        ],  # fmt: skip
    )
    with pytest.raises(ConfigError, match="one seed"):
        RECIPE["main"](comparison, passed_on)


@pytest.mark.slow
def test_a_fraction_sweep_trains_every_technique_on_each_share_with_each_seed(tmp_path, tiny_model_dir, shared_data):
    (tmp_path / "sweep.yaml").write_text(TASKS.replace("train_records: 16", "train_records: 40"))
    rows = run_recipe(tmp_path, tiny_model_dir, tmp_path / "out", shared_data, ["zero_shot", "lora"], "--tasks",
                      str(tmp_path / "sweep.yaml"), "--train_fractions", "1.0", "0.25", "--seeds", "0", "1",
                      "--max_steps", "1")  # fmt: skip
    assert [(row.stage, row.train_fraction, row.seed) for row in rows] == [
        ("zero_shot", 1.0, 0), ("zero_shot", 0.25, 0),
        ("lora", 1.0, 0), ("lora", 1.0, 1), ("lora", 0.25, 0), ("lora", 0.25, 1),
    ]  # fmt: skip
    assert all(row.examples == 6 for row in rows)  # the same test records at every fraction
    assert (tmp_path / "out" / "lora" / "fraction_0.25" / "seed_1" / "results.json").is_file()
    assert (tmp_path / "out" / "fraction_sweep.png").stat().st_size > 0
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| task | stage | train % | seeds |" in markdown and "| sentiment | lora | 25 | 0, 1 |" in markdown


@pytest.mark.slow
def test_lmbff_trains_on_each_k_shot_split_chooses_on_its_development_records_and_tests_on_the_test_split(
    tmp_path, tiny_model_dir, shared_data
):
    flags = ["--config", str(CONFIGS / "compare_techniques" / "lmbff_sst2.yaml"), "--data_dir", str(shared_data),
             "--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "out"), "--k_shot_splits", "16-13",
             "16-21", "--runs", str(CONFIGS / "few_shot" / "zero_shot.yaml"), str(CONFIGS / "lora" / "smollm2_135m.yaml"),
             "--max_steps", "2", "--eval_steps", "1", "--save_steps", "1", "--max_eval_records", "10",
             "--per_device_train_batch_size", "4", "--disable_tqdm", "true"]  # fmt: skip
    rows = RECIPE["main"](*parse_and_pass_on(RECIPE["ARGUMENTS"], flags))
    assert [(row.stage, row.k_shot, row.seed) for row in rows] == [
        ("zero_shot", "16-13", 13), ("zero_shot", "16-21", 21), ("lora", "16-13", 13), ("lora", "16-21", 21),
    ]  # fmt: skip
    assert all(row.task == "sst2" and row.examples == 10 for row in rows)
    state = json.loads(next((tmp_path / "out" / "lora" / "k_shot_16-21").glob("checkpoint-2/trainer_state.json"))
                       .read_text())  # fmt: skip
    evaluations = [entry for entry in state["log_history"] if "eval_task_accuracy" in entry]
    assert [entry["step"] for entry in evaluations] == [1, 2]  # the 32 development records, at every evaluation
    assert state["best_model_checkpoint"] and state["best_metric"] == max(e["eval_task_accuracy"] for e in evaluations)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [summary["k_shots"] for summary in results["over_k_shots"]] == [["16-13", "16-21"]] * 2


@pytest.mark.slow
def test_every_trained_technique_chooses_its_checkpoint_by_accuracy_on_development_records(
    tmp_path, tiny_model_dir, shared_data
):
    trained = [name for name in WITHOUT_QLORA if name not in ("zero_shot", "few_shot")]
    rows = run_recipe(tmp_path, tiny_model_dir, tmp_path / "out", shared_data, trained, "--max_steps", "2",
                      "--validation_records", "4", "--eval_strategy", "steps", "--eval_steps", "1", "--save_strategy",
                      "steps", "--save_steps", "1", "--load_best_model_at_end", "true", "--metric_for_best_model",
                      "task_accuracy")  # fmt: skip
    assert [row.stage for row in rows] == trained
    for technique in trained:
        states = list((tmp_path / "out" / technique.replace("+", "_")).glob("**/checkpoint-2/trainer_state.json"))
        assert len(states) == 1, technique
        log = json.loads(states[0].read_text())["log_history"]
        assert [entry["step"] for entry in log if "eval_task_accuracy" in entry] == [1, 2], technique


@pytest.mark.slow
def test_every_recipe_runs_on_the_embedded_smollm2_from_its_own_config(tmp_path, embedded_model_dir, shared_data):
    """The comparison's config as it is (every run's config, the embedded model, the real task file), cut to two steps
    and four test records: each recipe loads, trains, evaluates and saves on the real model, QLoRA's 4-bit base too."""
    flags = ["--config", str(CONFIG), "--data_dir", str(shared_data), "--output_dir", str(tmp_path / "out"),
             "--seeds", "0", "--max_steps", "2", "--max_eval_records", "4", "--disable_tqdm", "true"]  # fmt: skip
    rows = RECIPE["main"](*parse_and_pass_on(RECIPE["ARGUMENTS"], flags))
    assert sorted(row.stage for row in rows) == sorted(RUNS)  # in the config's order
    assert all(row.task == "sentiment" and row.examples == 4 and row.base_parameters > 134_000_000 for row in rows)
    assert all(row.trainable_parameters > 0 for row in rows if row.stage not in ("zero_shot", "few_shot"))


@pytest.mark.parametrize("flag", [["--prompt_depth", "2"], ["--first_trained_layer", "1"]])
def test_peft_p_tuning_refuses_deep_prompt_flags_before_any_work(monkeypatch, flag):
    monkeypatch.chdir(ROOT)
    recipe = runpy.run_path(str(ROOT / "recipes" / "peft_p_tuning.py"))
    config = str(CONFIGS / "peft_p_tuning" / "smollm2_135m.yaml")
    with pytest.raises(ConfigError, match="places its tokens at the input only"):
        recipe["main"](*parse_config_and_flags(recipe["ARGUMENTS"], ["--config", config, *flag]))
