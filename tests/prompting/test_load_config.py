"""Loading ``adapter_config.json`` through PEFT gives this library's errors: a damaged file or an unknown field names
the file and the fault, and a misspelt field names the closest valid one (PEFT alone drops unknown fields)."""

from __future__ import annotations

import json

import pytest
from peft import PeftConfig, PeftModel

from peft_continual.errors import ConfigError
from peft_continual.prompting import ContinualPromptConfig
from tests.prompting.conftest import tiny_model


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


def test_a_field_from_a_newer_version_is_refused_with_the_advice_to_upgrade(saved):
    rewrite_config(saved, lambda d: d.update(prompt_cache_policy="lru"))
    with pytest.raises(
        ConfigError, match="unknown field.s. 'prompt_cache_policy' in a .* config.*upgrade peft-continual"
    ):
        ContinualPromptConfig.from_pretrained(str(saved))


def test_a_cut_short_config_is_refused_with_the_file_line_and_column(saved):
    # (PeftModel.from_pretrained reads the file's peft_type in PEFT's own code first: that read is not wrapped yet)
    path = saved / "adapter_config.json"
    path.write_text(path.read_text()[:40])
    with pytest.raises(
        ConfigError, match=rf"{path}: not valid JSON \(.* at line \d+, column \d+\): the file is damaged"
    ):
        ContinualPromptConfig.from_pretrained(str(saved))


def test_a_valid_config_still_loads_through_peft_config(saved):
    assert isinstance(PeftConfig.from_pretrained(str(saved)), ContinualPromptConfig)
