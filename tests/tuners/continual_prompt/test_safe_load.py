"""Loading an adapter folder of this method: safetensors only, never a pickle, and every damaged file refused with our
error naming the file (PEFT alone falls back to ``torch.load`` and passes safetensors' raw errors up)."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from peft import PeftModel

from peft_continual.errors import AdapterFileError
from tests.tuners.continual_prompt.conftest import MIXED_ROWS, make_batch, make_peft_model, tiny_model

WEIGHTS = "adapter_model.safetensors"


class WritesAFile:
    """Unpickling this runs ``open(path, 'w')``: the proof that a pickle was opened."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_pickle_only_folder_is_refused_and_the_pickle_never_opened(saved, tmp_path):
    proof = tmp_path / "unpickled"
    (saved / WEIGHTS).unlink()
    (saved / "adapter_model.bin").write_bytes(pickle.dumps(WritesAFile(proof)))
    with pytest.raises(
        AdapterFileError, match=r"no adapter_model.safetensors; \['adapter_model.bin'\] would be torch pickles"
    ):
        PeftModel.from_pretrained(tiny_model(), saved)
    assert not proof.exists()


def test_a_pickle_renamed_to_safetensors_is_refused_unopened(saved, tmp_path):
    proof = tmp_path / "unpickled"
    torch.save({"x": WritesAFile(proof)}, saved / WEIGHTS, _use_new_zipfile_serialization=True)
    with pytest.raises(AdapterFileError, match="a torch pickle renamed to .safetensors"):
        PeftModel.from_pretrained(tiny_model(), saved)
    (saved / WEIGHTS).write_bytes(pickle.dumps(WritesAFile(proof)))
    with pytest.raises(AdapterFileError, match="a torch pickle renamed to .safetensors"):
        PeftModel.from_pretrained(tiny_model(), saved)
    assert not proof.exists()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="cut-in-half"),
        pytest.param(lambda data: data[:5], id="cut-in-the-header"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: os.urandom(len(data)).replace(b"\x80", b"\x00", 1), id="random-bytes"),
    ],
)
def test_damaged_weights_are_refused_with_the_file_named(saved, damage):
    path = saved / WEIGHTS
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(AdapterFileError, match=rf"{path}: not a readable safetensors file .*save the adapter again"):
        PeftModel.from_pretrained(tiny_model(), saved)


def test_a_damaged_config_is_refused_with_the_file_named_before_peft_reads_the_weights(saved):
    path = saved / "adapter_config.json"
    path.write_text(path.read_text()[:30])
    model = make_peft_model()
    with pytest.raises(AdapterFileError, match=rf"{path}: not valid JSON"):
        model.load_adapter(saved, adapter_name="other")


def test_an_intact_folder_loads_as_before(saved):
    loaded = PeftModel.from_pretrained(tiny_model(), saved)
    reference = PeftModel.from_pretrained(tiny_model(), saved)
    batch = make_batch(MIXED_ROWS)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, reference(**batch).logits)


@pytest.mark.parametrize("header_bytes", [0x180, 0x280, 0x580])
def test_a_safetensors_header_whose_length_starts_like_a_pickle_loads(saved, header_bytes):
    """The demo's round-2 table had a 384-byte header: its file starts with 0x80 0x01, as a pickle starts with 0x80."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(saved / WEIGHTS)
    for pad in range(2000):  # safetensors pads the header to a multiple of 8: one pad length hits the size
        save_file(tensors, saved / WEIGHTS, metadata={"format": "pt", "pad": "x" * pad})
        if int.from_bytes((saved / WEIGHTS).read_bytes()[:8], "little") == header_bytes:
            break
    assert (saved / WEIGHTS).read_bytes()[:1] == b"\x80"
    loaded = PeftModel.from_pretrained(tiny_model(), saved)
    assert set(loaded.prompt_table.tasks) == {"sentiment", "topic"}


def test_other_methods_keep_pefts_loading(tmp_path):
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(tiny_model(), LoraConfig(target_modules=["q_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "lora")
    loaded = PeftModel.from_pretrained(tiny_model(), tmp_path / "lora")
    saved_weights = {k: v for k, v in lora.state_dict().items() if "lora_" in k}
    loaded_weights = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    assert saved_weights.keys() == loaded_weights.keys() and saved_weights
    assert all(torch.equal(saved_weights[k], loaded_weights[k]) for k in saved_weights)


def rewrite_weights(folder, change):
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / WEIGHTS)
    change(tensors)
    save_file(tensors, folder / WEIGHTS)


TABLE = "base_model.continual_prompt_table.task:"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.update({f"{TABLE}topic": t[f"{TABLE}topic"][:3]}), r"'topic' have shape \[3, 32\], but .* says 5"),
        (lambda t: t.pop(f"{TABLE}topic"), r"holds no rows for task\(s\) \['topic'\], which .* lists as frozen"),
        (
            lambda t: t.update({f"{TABLE}extra": torch.zeros(2, 32)}),
            r"rows for task\(s\) \['extra'\], which .* not list",
        ),
    ],
    ids=["fewer-rows", "missing-task", "extra-task"],
)
def test_table_rows_that_disagree_with_the_config_are_refused_before_loading(saved, change, message):
    rewrite_weights(saved, change)
    with pytest.raises(AdapterFileError, match=message):
        PeftModel.from_pretrained(tiny_model(), saved)
