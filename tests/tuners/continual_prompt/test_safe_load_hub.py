"""Adapters on the Hugging Face Hub get the checks of a local folder: their config and safetensors weights are
fetched into the cache first and checked there, a pickle-only repository is refused unopened. The Hub is faked by
local folders (this machine has no network); PEFT's own downloads go through the same fake."""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch
from peft import PeftModel

from peft_continual.errors import AdapterFileError
from peft_continual.tuners.continual_prompt import safe_load
from tests.tuners.continual_prompt.conftest import MIXED_ROWS, make_batch, tiny_model
from tests.tuners.continual_prompt.test_safe_load import WritesAFile


def test_a_table_on_the_hub_loads_like_the_local_folder(saved, hub):
    repos, fetched = hub
    repos["team/sentiment-table"] = saved
    from_hub = PeftModel.from_pretrained(tiny_model(), "team/sentiment-table")
    local = PeftModel.from_pretrained(tiny_model(), saved)
    batch = make_batch(MIXED_ROWS)
    with torch.no_grad():
        assert torch.equal(from_hub(**batch).logits, local(**batch).logits)
    assert sorted(fetched) == ["adapter_config.json", "adapter_model.safetensors"]  # each once: PEFT used the cache


def test_a_pickle_only_repository_is_refused_and_the_pickle_never_fetched(saved, hub, tmp_path):
    repos, fetched = hub
    proof = tmp_path / "unpickled"
    (saved / "adapter_model.safetensors").unlink()
    (saved / "adapter_model.bin").write_bytes(pickle.dumps(WritesAFile(proof)))
    repos["team/old-table"] = saved
    with pytest.raises(
        AdapterFileError, match="team/old-table on the Hugging Face Hub has no adapter_model.safetensors"
    ):
        PeftModel.from_pretrained(tiny_model(), "team/old-table")
    assert "adapter_model.bin" not in fetched and not proof.exists()


def test_damaged_weights_on_the_hub_are_refused_with_the_cached_file_named(saved, hub):
    repos, _ = hub
    weights = saved / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    repos["team/cut-table"] = saved
    with pytest.raises(AdapterFileError, match=r"cache/team/cut-table/main/adapter_model.safetensors: not a readable"):
        PeftModel.from_pretrained(tiny_model(), "team/cut-table")


def test_a_subfolder_and_a_revision_are_fetched_where_peft_looks(saved, hub, tmp_path):
    repos, _ = hub
    shutil.copytree(saved, tmp_path / "repo" / "tables" / "v1")
    repos["team/tables"] = tmp_path / "repo"
    model = PeftModel.from_pretrained(tiny_model(), "team/tables", subfolder="tables/v1", revision="r2")
    assert set(model.prompt_table.tasks) == {"sentiment", "topic"}
    assert (tmp_path / "cache" / "team/tables" / "r2" / "tables/v1" / "adapter_model.safetensors").is_file()


def test_other_methods_on_the_hub_keep_pefts_loading(hub, tmp_path):
    from peft import LoraConfig, get_peft_model

    repos, fetched = hub
    lora = get_peft_model(tiny_model(), LoraConfig(target_modules=["q_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "lora")
    repos["team/lora"] = tmp_path / "lora"
    loaded = PeftModel.from_pretrained(tiny_model(), "team/lora")
    assert any("lora_A" in name for name, _ in loaded.named_parameters())
    assert "adapter_model.safetensors" in fetched  # by PEFT, not by this library's check


def test_offline_without_the_weights_in_the_cache_says_so(saved, hub, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    repos, _ = hub
    repos["team/table"] = saved
    download = safe_load.hf_hub_download

    def offline(repo_id, filename, **kwargs):
        if filename == "adapter_model.safetensors":
            raise LocalEntryNotFoundError("not in the cache and outgoing traffic is disabled")
        return download(repo_id, filename, **kwargs)

    monkeypatch.setattr(safe_load, "hf_hub_download", offline)
    with pytest.raises(AdapterFileError, match="not in the Hugging Face cache and the Hub cannot be reached"):
        PeftModel.from_pretrained(tiny_model(), "team/table")
