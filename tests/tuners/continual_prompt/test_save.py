"""Saves of the method are atomic per file: a save that fails midway leaves the previous adapter whole.

The failures are simulated where PEFT writes: ``safetensors``' writer as ``peft.peft_model`` imported it (the
weights) and the config's ``save_pretrained`` (``adapter_config.json``). Each writes part of its file, then raises.
"""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import peft.peft_model
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from peft_continual.tuners.continual_prompt import ContinualPromptConfig
from peft_continual.tuners.continual_prompt import _peft_compat as compat
from tests.tuners.continual_prompt.conftest import (
    MIXED_ROWS,
    TASKNAME_IDS,
    TEMPLATE_A,
    make_batch,
    make_peft_model,
    tiny_model,
)

FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors"]


def write_half_weights(tensors, filename, metadata=None):
    """Stands in for ``safetensors.torch.save_file``: a truncated file, then the error a full disk gives."""
    Path(filename).write_bytes(b"\x00" * 8)
    raise OSError(28, "No space left on device")


def write_half_config(self, save_directory, **kwargs):
    """Stands in for ``PeftConfig.save_pretrained``: half a JSON document, then an error."""
    Path(save_directory, "adapter_config.json").write_text('{"peft_type": "CONTI')
    raise OSError(28, "No space left on device")


FAILURES = [
    pytest.param(lambda mp: mp.setattr(peft.peft_model, "safe_save_file", write_half_weights), id="weights"),
    pytest.param(lambda mp: mp.setattr(ContinualPromptConfig, "save_pretrained", write_half_config), id="config"),
]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``folder`` (staging folders included, if any were left)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def frozen_model():
    model = make_peft_model()
    model.freeze_tasks()
    return model


def test_save_writes_the_usual_files_and_round_trips(tmp_path):
    model = frozen_model()
    model.save_pretrained(tmp_path / "table")
    assert sorted(os.listdir(tmp_path / "table")) == FILES, "no staging folder is left behind"
    loaded = PeftModel.from_pretrained(tiny_model(), tmp_path / "table")
    assert loaded.prompt_table.row_hashes() == model.prompt_table.row_hashes()
    batch = make_batch(MIXED_ROWS)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize("fail", FAILURES)
def test_interrupted_save_leaves_the_previous_files_intact(tmp_path, monkeypatch, fail):
    model = frozen_model()
    model.save_pretrained(tmp_path)
    before, hashes = snapshot(tmp_path), model.prompt_table.row_hashes()
    model.prompt_table.rename("topic", "news_topic")  # the next save would change both the weights and the config
    model.prompt_table.remove("sentiment")
    fail(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(tmp_path)
    assert snapshot(tmp_path) == before, "a file was touched or a staging folder was left"
    monkeypatch.undo()
    assert PeftModel.from_pretrained(tiny_model(), tmp_path).prompt_table.row_hashes() == hashes


@pytest.mark.parametrize("fail", FAILURES)
def test_interrupted_first_save_leaves_no_folder(tmp_path, monkeypatch, fail):
    fail(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        frozen_model().save_pretrained(tmp_path / "table")
    assert list(tmp_path.iterdir()) == []


def test_save_over_a_folder_keeps_other_files_and_updates_the_model_card(tmp_path):
    """Like PEFT: files that the adapter does not write stay (a Trainer checkpoint's optimizer state, notes)."""
    model = frozen_model()
    (tmp_path / "optimizer.pt").write_bytes(b"state")
    (tmp_path / "README.md").write_text("# Sentiment and topic prompts\n\nTrained by the NLU team.\n")
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted([*FILES, "optimizer.pt"])
    card = (tmp_path / "README.md").read_text()
    assert "Trained by the NLU team." in card and "library_name: peft" in card


def test_an_adapter_with_another_name_goes_to_its_subfolder(tmp_path):
    """PEFT saves an adapter not named ``default`` in ``<folder>/<name>/``; the staging folder mirrors that."""
    config = ContinualPromptConfig(templates=[TEMPLATE_A], taskname_token_ids=TASKNAME_IDS)
    model = get_peft_model(tiny_model(), config, adapter_name="round1")
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "round1"]
    assert sorted(os.listdir(tmp_path / "round1")) == FILES[1:]
    loaded = PeftModel.from_pretrained(tiny_model(), tmp_path / "round1", adapter_name="round1", is_trainable=True)
    assert loaded.peft_config["round1"].to_dict() == model.peft_config["round1"].to_dict()
    assert torch.equal(loaded.task_prompts()["sentiment"], model.task_prompts()["sentiment"])


def test_other_processes_of_a_distributed_run_write_nothing(tmp_path):
    frozen_model().save_pretrained(tmp_path / "table", is_main_process=False)
    assert list((tmp_path / "table").iterdir()) == []  # PEFT creates the folder and writes nothing


def test_push_to_hub_uploads_a_complete_adapter_with_its_own_card(hub_server):
    """Against the Hub stand-in, in this process (``tests/test_hub.py`` loads it back in fresh ones)."""
    from huggingface_hub import ModelCard

    frozen_model().push_to_hub("me/prompts", commit_message="first table")
    files = hub_server.files("me/prompts")
    assert sorted(set(files) - {".gitattributes"}) == FILES
    assert list(hub_server.repos["me/prompts"].messages.values()) == ["first table"]
    card = ModelCard(files["README.md"].decode())
    assert "peft-continual" in card.data.tags and "# prompts" in card.text  # ours, titled after the repository


# ---------------------------------------------------------------------------------------------- other PEFT methods


def lora_model():
    return get_peft_model(tiny_model(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))


def test_lora_saves_exactly_as_peft_does(tmp_path):
    model = lora_model()
    with mock.patch.object(compat, "peft_save_pretrained", wraps=compat.peft_save_pretrained) as save:
        model.save_pretrained(tmp_path)
    save.assert_called_once_with(model, tmp_path)
    assert sorted(os.listdir(tmp_path)) == FILES
    loaded = PeftModel.from_pretrained(tiny_model(), tmp_path)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_lora_save_is_left_as_peft_writes_it(tmp_path, monkeypatch):
    """Only this method's saves are staged: an interrupted LoRA save still writes into the folder."""
    monkeypatch.setattr(peft.peft_model, "safe_save_file", write_half_weights)
    with pytest.raises(OSError, match="No space left"):
        lora_model().save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == b"\x00" * 8
    assert sorted(os.listdir(tmp_path)) == ["README.md", "adapter_model.safetensors"]


def test_a_save_removes_staging_folders_of_killed_saves_but_not_of_running_ones(tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "table"
    abandoned = target / f"{compat.STAGING_PREFIX}{dead.pid}-0000"
    running = target / f"{compat.STAGING_PREFIX}{os.getpid()}-0000"  # another save of a live process
    for folder in (abandoned, running):
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"\x00" * 8)
    frozen_model().save_pretrained(target)
    assert sorted(os.listdir(target)) == sorted([*FILES, running.name])
