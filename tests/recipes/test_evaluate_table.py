"""Evaluating a saved prompt table on a task file's test records, on a tiny model: nothing trains, the template must
be the table's."""

import json
import runpy
from pathlib import Path

import pytest
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from peft_continual import ContinualPromptConfig, PromptTokenizer
from peft_continual.errors import AdapterFileError, ConfigError, TableMismatchError
from peft_continual.evaluation import evaluate_tasks
from peft_continual.experiments import single_task
from peft_continual.experiments.cli import parse_config_and_flags
from peft_continual.experiments.task_files import load_split, load_task_specs
from tests.recipes.test_compare_techniques import TASKS

ROOT = Path(__file__).resolve().parents[2]
RECIPE = runpy.run_path(str(ROOT / "recipes" / "evaluate_table.py"))
CONFIG = ROOT / "recipes/configs/evaluate_table/smollm2_135m.yaml"


def flags(tmp_path, table, model_dir, data_dir, *extra):
    (tmp_path / "tasks.yaml").write_text(TASKS)
    return ["--config", str(CONFIG), "--table", str(table), "--tasks", str(tmp_path / "tasks.yaml"),
            "--data_dir", str(data_dir), "--model", str(model_dir), "--output_dir", str(tmp_path / "out"), *extra]  # fmt: skip


def saved_table(folder, model_dir, template):
    """A round's table as a continual run saves it: the task frozen into rows (random, untrained), then saved."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = ContinualPromptConfig(task_type="CAUSAL_LM", templates=[template], encoder_hidden_size=16)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config.tokenize_tasknames(tokenizer))
    model.freeze_tasks()
    model.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_saved_table_answers_the_test_records_as_the_loaded_model_does(
    tmp_path, tiny_model_dir, shared_data, monkeypatch
):
    (tmp_path / "tasks.yaml").write_text(TASKS)
    (spec,) = load_task_specs(tmp_path / "tasks.yaml")
    table = saved_table(tmp_path / "table", tiny_model_dir, spec.template)
    evaluated, evaluate = [], single_task.evaluate  # the model the recipe evaluates, and its per-record answers

    def keep(model, *arguments, **keywords):
        evaluated.append((model, keywords, evaluate(model, *arguments, **keywords)))
        return evaluated[-1][-1]

    monkeypatch.setattr(RECIPE["single_task"], "evaluate", keep)
    (row,) = RECIPE["main"](*parse_config_and_flags(RECIPE["ARGUMENTS"], flags(tmp_path, table, tiny_model_dir,
                                                                             shared_data)))  # fmt: skip
    hidden = AutoModelForCausalLM.from_pretrained(tiny_model_dir).config.hidden_size
    assert (row.stage, row.examples, row.trainable_parameters) == ("evaluate_table", 6, 0)
    assert row.stored_parameters == 4 * hidden  # the task's 4 virtual tokens
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rows"][0]["restricted"] == row.restricted

    # it evaluated the saved rows, with the virtual tokens, and answers as the same table loaded by hand does on the
    # same 6 records (the task file's seeded subset)
    ((model, keywords, result),) = evaluated
    by_hand = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), table).eval()
    assert model.prompt_table.row_hashes() == by_hand.prompt_table.row_hashes() and keywords["virtual_tokens"]
    records = load_split(spec, shared_data, "test", spec.eval_records, 0)
    prompts = PromptTokenizer(AutoTokenizer.from_pretrained(tiny_model_dir), [spec.template], max_length=256)
    expected = evaluate_tasks(by_hand, prompts, records, [spec.evaluation], batch_size=16)["sentiment"]
    assert [(p["generated"], p["restricted"]) for p in result.predictions] == [
        (p["generated"], p["restricted"]) for p in expected.predictions
    ]


@pytest.mark.slow
def test_a_task_file_whose_template_is_not_the_tables_is_refused(tmp_path, tiny_model_dir, shared_data):
    (tmp_path / "tasks.yaml").write_text(TASKS)
    (spec,) = load_task_specs(tmp_path / "tasks.yaml")
    other = spec.template.to_dict() | {"prompt_template": "<|VIRTUAL_PROMPT_0|>{sentence}\n<|VIRTUAL_PROMPT_1|>{label}"}
    table = saved_table(tmp_path / "other", tiny_model_dir, other)
    arguments = parse_config_and_flags(RECIPE["ARGUMENTS"], flags(tmp_path, table, tiny_model_dir, shared_data))
    with pytest.raises(ConfigError, match=r"task 'sentiment': the task file's template is not the table's "
                                          r"\(prompt_template: .*\{label\}' in the table, .*Sentiment: \{label\}' in"):  # fmt: skip
        RECIPE["main"](*arguments)
    assert not (tmp_path / "out").exists()  # refused before any output
    wrong_name = saved_table(tmp_path / "topic", tiny_model_dir, spec.template.to_dict() | {"taskname": "topic"})
    arguments = parse_config_and_flags(RECIPE["ARGUMENTS"], flags(tmp_path, wrong_name, tiny_model_dir, shared_data))
    with pytest.raises(ConfigError, match=r"has no frozen task 'sentiment'; its frozen tasks: \['topic'\]"):
        RECIPE["main"](*arguments)


@pytest.mark.slow
def test_a_folder_of_another_method_or_with_the_task_still_in_training_is_refused(
    tmp_path, tiny_model_dir, shared_data
):
    from peft import LoraConfig

    (tmp_path / "tasks.yaml").write_text(TASKS)
    (spec,) = load_task_specs(tmp_path / "tasks.yaml")
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(target_modules=["q_proj"]))
    lora.save_pretrained(tmp_path / "lora")
    arguments = parse_config_and_flags(RECIPE["ARGUMENTS"], flags(tmp_path, tmp_path / "lora", tiny_model_dir,
                                                                  shared_data))  # fmt: skip
    with pytest.raises(ConfigError, match=r"lora holds a LORA adapter, not a prompt table of this method"):
        RECIPE["main"](*arguments)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = ContinualPromptConfig(task_type="CAUSAL_LM", templates=[spec.template], encoder_hidden_size=16)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config.tokenize_tasknames(tokenizer)
                   ).save_pretrained(tmp_path / "open_round")  # fmt: skip
    arguments = parse_config_and_flags(RECIPE["ARGUMENTS"], flags(tmp_path, tmp_path / "open_round", tiny_model_dir,
                                                                  shared_data))  # fmt: skip
    with pytest.raises(ConfigError, match=r"no frozen task 'sentiment'; its frozen tasks: \[\] \(in training, not"):
        RECIPE["main"](*arguments)
    assert not (tmp_path / "out").exists()


def test_training_flags_are_refused_not_ignored(tmp_path):
    arguments = parse_config_and_flags(RECIPE["ARGUMENTS"], flags(tmp_path, "t", "m", "d", "--learning_rate", "0.1"))
    with pytest.raises(ConfigError, match=r"\['--learning_rate'\]: evaluating a saved table trains nothing"):
        RECIPE["main"](*arguments)
    assert not (tmp_path / "out").exists()


def test_a_table_path_that_holds_no_table_is_named_before_any_output(tmp_path, shared_data):
    missing = tmp_path / "outputs" / "run" / "round_1" / "table"
    arguments = parse_config_and_flags(RECIPE["ARGUMENTS"], flags(tmp_path, missing, "m", shared_data))
    with pytest.raises(AdapterFileError, match=r"round_1/table: no such folder here, and not a Hugging Face Hub"):
        RECIPE["main"](*arguments)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_table_of_another_base_model_stops_before_any_output(tmp_path, tiny_model_dir, tiny_qwen2, shared_data):
    (tmp_path / "tasks.yaml").write_text(TASKS)
    (spec,) = load_task_specs(tmp_path / "tasks.yaml")
    table = saved_table(tmp_path / "table", tiny_model_dir, spec.template)  # trained on the tiny Llama
    other = tmp_path / "tiny-qwen2"
    tiny_qwen2.save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(other)
    arguments = parse_config_and_flags(RECIPE["ARGUMENTS"], flags(tmp_path, table, other, shared_data))
    with pytest.raises(TableMismatchError):
        RECIPE["main"](*arguments)
    assert not (tmp_path / "out").exists()
