"""The prompting recipe: zero/few-shot as raw text or in the model's chat format, on a tiny model."""

import json
import runpy
from pathlib import Path

import pytest

from peft_continual.errors import ConfigError
from peft_continual.experiments.cli import parse_config_and_flags
from tests.recipes.test_compare_techniques import TASKS

ROOT = Path(__file__).resolve().parents[2]
RECIPE = runpy.run_path(str(ROOT / "recipes" / "few_shot.py"))


def flags(tmp_path, model_dir, data_dir, *extra):
    (tmp_path / "tasks.yaml").write_text(TASKS)
    return ["--config", str(ROOT / "recipes/configs/few_shot/smollm2_135m.yaml"), "--tasks", str(tmp_path / "tasks.yaml"),
            "--data_dir", str(data_dir), "--model", str(model_dir), "--output_dir", str(tmp_path / "out"), *extra]  # fmt: skip


@pytest.mark.slow
def test_the_chat_format_puts_the_system_prompt_and_demonstrations_in_the_models_markup(
    tmp_path, tiny_model_dir, shared_data
):
    system = "Answer with one word."
    arguments = parse_config_and_flags(
        RECIPE["ARGUMENTS"],
        flags(tmp_path, tiny_model_dir, shared_data, "--chat_template", "true", "--system_prompt", system),
    )
    (row,) = RECIPE["main"](*arguments)
    assert row.stage == "few_shot" and row.examples == 6 and row.trainable_parameters == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["rows"][0]["generation"] == row.generation


def test_a_system_prompt_without_the_chat_format_stops_before_any_work(tmp_path):
    arguments = parse_config_and_flags(RECIPE["ARGUMENTS"], flags(tmp_path, "m", "d", "--system_prompt", "Be brief."))
    with pytest.raises(ConfigError, match="--system_prompt needs --chat_template true"):
        RECIPE["main"](*arguments)
    assert not (tmp_path / "out").exists()


def test_training_flags_are_refused_not_ignored(tmp_path):
    arguments = parse_config_and_flags(
        RECIPE["ARGUMENTS"], flags(tmp_path, "m", "d", "--max_steps", "5", "--learning_rate", "0.1")
    )
    with pytest.raises(ConfigError, match=r"\['--max_steps', '--learning_rate'\]: few-shot prompting trains nothing"):
        RECIPE["main"](*arguments)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_similar_demonstrations_give_each_test_input_its_nearest_training_records(
    tmp_path, tiny_model_dir, shared_data, monkeypatch
):
    """With the real all-MiniLM-L6-v2 (offline package): every test record's prompt holds one demonstration of each
    class, the nearest last, drawn from the training records."""
    from peft_continual.data import similar_demonstrations

    seen = {}
    real = similar_demonstrations.with_similar_demonstrations

    def recording(*args, **kwargs):
        seen["template"], seen["records"] = real(*args, **kwargs)
        return seen["template"], seen["records"]

    monkeypatch.setitem(RECIPE["main"].__globals__, "with_similar_demonstrations", recording)
    arguments = parse_config_and_flags(
        RECIPE["ARGUMENTS"], flags(tmp_path, tiny_model_dir, shared_data, "--demonstrations", "similar")
    )
    (row,) = RECIPE["main"](*arguments)
    assert row.examples == 6 and seen["template"].prompt_template.startswith("{demonstrations}")
    prompts = [record.fields["demonstrations"] for record in seen["records"]]
    assert len(prompts) == 6 and len(set(prompts)) > 1  # chosen per input, not one set for all
    for prompt in prompts:
        labels = sorted(line.split(": ")[1] for line in prompt.splitlines() if line.startswith("Sentiment: "))
        assert labels == ["negative", "neutral", "positive"]


def test_an_unknown_demonstration_choice_is_refused(tmp_path):
    arguments = parse_config_and_flags(RECIPE["ARGUMENTS"], flags(tmp_path, "m", "d", "--demonstrations", "best"))
    with pytest.raises(ConfigError, match="--demonstrations must be random or similar"):
        RECIPE["main"](*arguments)
