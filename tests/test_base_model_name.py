"""What a saved table records as its base model (``base_model_name_or_path``): a name another machine resolves.

The embedded model's cache folder is recorded as ``embedded`` (read back as that machine's own folder, so
``AutoPeftModelForCausalLM`` finds the base); a local copy of a Hub checkpoint can be named by its Hub id. The embedded
cache is stood in for by a tiny Llama whose ``config.json`` carries the provenance entry, under ``PEFT_CONTINUAL_CACHE``.
"""

import json
import logging
import shutil

import pytest
import torch
from peft import AutoPeftModelForCausalLM, PeftConfig, get_peft_model

from peft_continual.model_card import base_model_id
from peft_continual.models import EMBEDDED, embedded, load_base_model, local_base_name, portable_name
from peft_continual.tuners.continual_prompt import ContinualPromptConfig
from tests.tuners.continual_prompt.conftest import TEMPLATE_A, make_batch

BATCH = make_batch([("sentiment", [4, [5, 6, 7]])])


@pytest.fixture
def embedded_stand_in(tmp_path, tiny_model_dir, monkeypatch):
    """A tiny model as this machine's embedded cache (``$PEFT_CONTINUAL_CACHE/smollm2-135m-instruct``)."""
    folder = tmp_path / "cache" / embedded.CACHE_SUBDIR
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config[embedded.PROVENANCE_KEY] = embedded._gguf_facts(None)
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv(embedded.CACHE_ENV_VAR, str(tmp_path / "cache"))
    return folder


def table_on(base, folder):
    config = ContinualPromptConfig(templates=[TEMPLATE_A], encoder_type="mlp", taskname_token_ids={"sentiment": [10]})
    model = get_peft_model(base, config)
    model.save_pretrained(folder)
    return model


def recorded_base(folder):
    return json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]


def test_a_table_on_the_embedded_cache_records_embedded_and_loads_by_auto_peft_model(embedded_stand_in, tmp_path):
    base, _ = load_base_model(EMBEDDED)
    model = table_on(base, tmp_path / "table")
    assert recorded_base(tmp_path / "table") == "embedded"  # never this machine's path
    assert model.peft_config["default"].base_model_name_or_path == str(embedded_stand_in)  # in memory: the folder
    card = (tmp_path / "table" / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "embedded copy (`embedded`)" in card

    loaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "table")  # the base found through `embedded`
    assert loaded.peft_config["default"].base_model_name_or_path == str(embedded_stand_in)
    with torch.no_grad():
        inputs = {key: BATCH[key] for key in ("input_ids", "attention_mask", "virtual_token_mask", "tasknames")}
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    loaded.save_pretrained(tmp_path / "again")  # read back and saved on: still portable
    assert recorded_base(tmp_path / "again") == "embedded"


def test_the_cache_folder_is_named_embedded_wherever_it_lies(embedded_stand_in, tmp_path):
    moved = shutil.copytree(embedded_stand_in, tmp_path / "copied" / "anything")
    assert portable_name(str(moved)) == portable_name(str(embedded_stand_in)) == EMBEDDED
    assert portable_name(str(tmp_path)) == str(tmp_path) and portable_name("org/model") == "org/model"
    assert portable_name(None) is None and local_base_name("org/model") == "org/model"


def test_a_local_copy_of_a_hub_checkpoint_is_recorded_by_its_hub_id(tiny_model_dir, tmp_path):
    base, _ = load_base_model(str(tiny_model_dir), base_model_id="my-org/tiny-llama")
    table_on(base, tmp_path / "table")
    assert recorded_base(tmp_path / "table") == "my-org/tiny-llama"
    assert "base_model: my-org/tiny-llama" in (tmp_path / "table" / "README.md").read_text()
    unnamed, _ = load_base_model(str(tiny_model_dir))
    table_on(unnamed, tmp_path / "local")
    assert recorded_base(tmp_path / "local") == str(tiny_model_dir)  # PEFT's record: a folder, said so in the card
    assert base_model_id(str(tiny_model_dir)) is None


def test_without_the_embedded_extra_the_name_stays_with_a_warning_and_the_table_still_loads(
    embedded_stand_in, tmp_path, monkeypatch, caplog
):
    base, _ = load_base_model(EMBEDDED)
    table_on(base, tmp_path / "table")

    def missing(*_args, **_kwargs):
        raise embedded.EmbeddedModelError("Reading the GGUF file needs the PyPI package `gguf`.")

    monkeypatch.setattr(embedded, "embedded_model_path", missing)
    with caplog.at_level(logging.WARNING, logger="peft_continual.models"):
        config = PeftConfig.from_pretrained(tmp_path / "table")
    assert isinstance(config, ContinualPromptConfig) and config.base_model_name_or_path == "embedded"
    assert "embedded SmolLM2, not available here" in caplog.text and "gguf" in caplog.text
