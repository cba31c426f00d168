"""Loading ``adapter_config.json`` through PEFT gives this library's errors: a damaged file or an unknown field names
the file and the fault, and a misspelt field names the closest valid one (PEFT alone drops unknown fields)."""

from __future__ import annotations

import json

import pytest
from peft import AutoPeftModelForCausalLM, PeftConfig, PeftModel

from peft_continual import __version__
from peft_continual.errors import AdapterFileError, ConfigError
from peft_continual.tuners.continual_prompt import ContinualPromptConfig
from tests.tuners.continual_prompt.conftest import tiny_model


def rewrite_config(folder, change):
    path = folder / "adapter_config.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def test_a_misspelt_field_is_refused_with_the_file_and_the_closest_name(saved):
    path = rewrite_config(saved, lambda d: d.update(encoder_typ=d.pop("encoder_type")))
    with pytest.raises(ConfigError) as error:
        PeftModel.from_pretrained(tiny_model(), saved)
    message = str(error.value)
    assert str(path) in message and "'encoder_typ' (did you mean 'encoder_type'?)" in message


def test_an_unknown_field_of_a_config_from_a_newer_version_names_the_version_to_install(saved):
    rewrite_config(saved, lambda d: d.update(prompt_cache_policy="lru", peft_continual_version="9.1.0"))
    with pytest.raises(ConfigError) as error:
        ContinualPromptConfig.from_pretrained(str(saved))
    message = str(error.value)
    assert "unknown field(s) 'prompt_cache_policy'" in message
    assert f"peft-continual 9.1.0 wrote it and this is {__version__}" in message
    assert "pip install -U 'peft-continual>=9.1.0'" in message


def test_an_unknown_field_without_a_newer_version_suggests_both_causes(saved):
    rewrite_config(saved, lambda d: d.update(prompt_cache_policy="lru"))
    with pytest.raises(ConfigError, match="fix the name, or, if a newer peft-continual wrote it, upgrade"):
        ContinualPromptConfig.from_pretrained(str(saved))


def test_every_saved_config_records_the_version_and_a_newer_one_alone_still_loads(saved):
    assert json.loads((saved / "adapter_config.json").read_text())["peft_continual_version"] == __version__
    rewrite_config(saved, lambda d: d.update(peft_continual_version="9.1.0"))
    assert PeftModel.from_pretrained(tiny_model(), saved).peft_config["default"].peft_continual_version == "9.1.0"


@pytest.mark.parametrize(
    "load",
    [
        pytest.param(lambda folder: ContinualPromptConfig.from_pretrained(str(folder)), id="config"),
        pytest.param(lambda folder: PeftConfig.from_pretrained(str(folder)), id="peft-config"),
        pytest.param(lambda folder: PeftModel.from_pretrained(tiny_model(), folder), id="peft-model"),
        pytest.param(lambda folder: AutoPeftModelForCausalLM.from_pretrained(folder), id="auto-peft-model"),
    ],
)
@pytest.mark.parametrize(
    ("content", "fault"),
    [
        pytest.param(lambda text: text[:40], r"not valid JSON \(.* at line \d+, column \d+\)", id="cut-short"),
        pytest.param(
            lambda text: "\udcff".encode("utf-8", "surrogateescape") * 3,
            r"not valid JSON \(not UTF-8 text",
            id="not-text",
        ),
        pytest.param(lambda text: "[1, 2]", "holds a JSON list, not an object", id="a-list"),
        pytest.param(lambda text: "0", "holds a JSON int, not an object", id="a-number"),
    ],
)
def test_a_damaged_config_is_refused_with_the_file_by_every_loader(saved, load, content, fault):
    path = saved / "adapter_config.json"
    damaged = content(path.read_text())
    path.write_bytes(damaged if isinstance(damaged, bytes) else damaged.encode())
    with pytest.raises(AdapterFileError, match=rf"{path}: {fault}"):
        load(saved)


def test_a_valid_config_still_loads_through_peft_config(saved):
    assert isinstance(PeftConfig.from_pretrained(str(saved)), ContinualPromptConfig)


def test_tuples_and_paths_given_in_code_are_kept_as_json_would_hold_them(tmp_path):
    from peft_continual.data.templates import TaskTemplate

    template = TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|> {sentence}: {label}", 2, [2], "label")
    config = ContinualPromptConfig(
        templates=[template],
        training_tasks=("sentiment",),
        taskname_token_ids={"sentiment": (5, 6)},
        tokenizer_name_or_path=tmp_path,
    )
    assert (config.training_tasks, config.taskname_token_ids) == (["sentiment"], {"sentiment": [5, 6]})
    assert config.tokenizer_name_or_path == str(tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("frozen_tasks", ["sentiment"], "frozen_tasks must be an object of task name -> number of virtual tokens"),
        ("token_dim", "576", "token_dim must be a positive integer or null"),
        ("taskname_token_ids", {"sentiment": "5 6"}, "taskname_token_ids must be an object of task name -> list"),
        ("base_model_fingerprint", [], "base_model_fingerprint must be an object or null"),
    ],
)
def test_a_field_of_the_wrong_shape_is_refused_with_the_file_and_the_field(saved, field, value, expected):
    path = rewrite_config(saved, lambda d: d.update({field: value}))
    with pytest.raises(ConfigError, match=rf"{path}: {expected}"):
        PeftModel.from_pretrained(tiny_model(), saved)
