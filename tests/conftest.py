"""Shared fixtures: the SmolLM2 tokenizer, tiny random models, and the real embedded SmolLM2.

Test tiers (run from the repository root, in the venv):

- Unit, each test under about a second on the project's 2-core machine, no real model, no extra processes, what to
  run while coding (``--durations`` prints the slowest)::

      python -m pytest -m "not slow and not integration"

- Everything, the real SmolLM2-135M included (builds its cache once, ~25 s, then reuses it)::

      python -m pytest

- CI, from a bare machine: install, lint, every test, strict docs build::

      bash .ci/run

Markers (declared in `pyproject.toml`, `--strict-markers` is on):

- `slow`: uses the real embedded SmolLM2-135M. Tests that take the `embedded_model` or `embedded_model_dir`
  fixture are marked `slow` automatically.
- `integration`: starts processes (``tests/distributed``: 2-process data-parallel training on gloo; the Hub stand-in
  of ``tests/test_hub.py``), runs a whole recipe, fuzzes the loaders (``tests/test_fuzz_loading.py``: 40 loads a
  test), or trains/generates long enough on tiny models to take over a second; seconds to tens of seconds each.
- `bnb`: needs bitsandbytes; skipped automatically when it is not installed.
- `gpu`: needs a CUDA device; skipped automatically when `torch.cuda.is_available()` is False.

Tests never reach the Hugging Face Hub: `HF_HUB_OFFLINE=1` is set here unless the caller set it, the tokenizer comes
from `tests/assets/smollm2_tokenizer/` and the tiny models are built from configs. The embedded model's cache lives
where `peft_continual.models.embedded.default_cache_dir()` says (`$PEFT_CONTINUAL_CACHE` or `~/.cache/peft_continual`).

The tiny models use the SmolLM2 vocabulary (49152) and special ids (bos 1, eos = pad 2), so they run on real
tokenizer output. At hidden size 32 the vocabulary costs little: building one takes ~50 ms and a forward+backward
on a (4, 32) batch ~50 ms on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
import os
import random
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

ASSETS = Path(__file__).parent / "assets"
SMOLLM2_TOKENIZER_DIR = ASSETS / "smollm2_tokenizer"

SMOLLM2_VOCAB_SIZE = 49152
SMOLLM2_SPECIAL_IDS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
TINY_SEED = 0


# --- markers ------------------------------------------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark users of the real model `slow`, and skip `gpu`/`bnb` tests this machine cannot run."""
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    skip_bnb = pytest.mark.skip(reason="needs bitsandbytes (pip install -e '.[bnb]')")
    has_cuda = torch.cuda.is_available()
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    for item in items:
        if {"embedded_model", "embedded_model_dir"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if not has_cuda and item.get_closest_marker("gpu"):
            item.add_marker(skip_gpu)
        if not has_bnb and item.get_closest_marker("bnb"):
            item.add_marker(skip_bnb)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Start every test from the same global RNG state, so a test that forgets to seed is still repeatable."""
    random.seed(TINY_SEED)
    torch.manual_seed(TINY_SEED)


# --- tokenizer ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer, read offline from the committed asset.

    Shared by the whole session: do not add tokens to it or change its padding side; copy it first
    (`copy.deepcopy`) if a test must.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(SMOLLM2_TOKENIZER_DIR)


# --- tiny random models -------------------------------------------------------------------------------------------


def _tiny_config(family: str, **overrides):
    """Config of a tiny model of `family` with the SmolLM2 vocabulary and special ids."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    common = {"vocab_size": SMOLLM2_VOCAB_SIZE, "tie_word_embeddings": True, **SMOLLM2_SPECIAL_IDS}
    if family == "gpt2":
        # Learned absolute positions and Conv1D projections: the layout that differs most from Llama.
        kwargs = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 64, "n_positions": 256}
        kwargs |= {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
        return GPT2Config(**(common | kwargs | overrides))
    # Llama and Qwen2 share names; num_key_value_heads < num_attention_heads keeps SmolLM2's grouped-query attention.
    kwargs = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 256,
    }
    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[family]
    return config_cls(**(common | kwargs | overrides))


def build_tiny_model(family: str = "llama", seed: int = TINY_SEED, **overrides) -> torch.nn.Module:
    """Build a tiny random causal LM, identical for the same arguments, without touching the global RNG.

    Args:
        family: "llama", "qwen2" or "gpt2".
        seed: Seed of the weight initialisation.
        **overrides: Config fields to change (for example `num_hidden_layers=1`).

    Returns:
        The model in eval mode, like a model from `from_pretrained`.
    """
    from transformers import AutoModelForCausalLM

    config = _tiny_config(family, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.eval()


@pytest.fixture
def make_tiny_model() -> Callable[..., torch.nn.Module]:
    """`build_tiny_model` as a fixture, for tests that need two copies or a changed config."""
    return build_tiny_model


@pytest.fixture
def tiny_llama() -> torch.nn.Module:
    """A fresh tiny random `LlamaForCausalLM` (hidden 32, 2 layers, 4 heads, 2 KV heads, vocabulary 49152)."""
    return build_tiny_model("llama")


@pytest.fixture
def tiny_qwen2() -> torch.nn.Module:
    """A fresh tiny random `Qwen2ForCausalLM` (as `tiny_llama`, plus biases on q/k/v)."""
    return build_tiny_model("qwen2")


@pytest.fixture
def tiny_gpt2() -> torch.nn.Module:
    """A fresh tiny random `GPT2LMHeadModel` (learned positions, Conv1D layers, dropout off)."""
    return build_tiny_model("gpt2")


# --- the real embedded SmolLM2 (slow) -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """Folder of the cached SmolLM2-135M-Instruct, built on first use; load a private copy from it in ~0.3 s
    (`load_embedded_model(embedded_model_dir)`)."""
    from peft_continual.models.embedded import embedded_model_path

    return embedded_model_path()


@pytest.fixture(scope="session")
def embedded_model(embedded_model_dir: Path):
    """`(model, tokenizer)` of the real SmolLM2-135M-Instruct, fp32, shared by the session.

    Read-only by convention: a test that injects layers (LoRA, IA3) or trains must load its own copy from
    `embedded_model_dir` instead.
    """
    from peft_continual.models.embedded import load_embedded_model

    return load_embedded_model(embedded_model_dir)


# --- a faked Hugging Face Hub (this machine has no network) --------------------------------------------------------
@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hub of local folders: ``repos[repo_id] = folder`` publishes a folder; downloads are copied into a cache
    folder, as the Hub does, and an unknown repository raises ``RepositoryNotFoundError``. Returns ``(repos,
    fetched)``: ``fetched`` lists every file copied into the cache."""
    import shutil

    import peft.config
    import peft.utils.save_and_load
    import requests
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    from peft_continual.tuners.continual_prompt import safe_load

    repos: dict[str, Path] = {}
    fetched: list[str] = []

    def hf_hub_download(repo_id, filename, subfolder=None, revision=None, **_):
        if repo_id not in repos:
            response = requests.Response()
            response.status_code = 404
            raise RepositoryNotFoundError(f"{repo_id} is not on the (faked) Hub", response=response)
        source = repos[repo_id] / (subfolder or "") / filename
        if not source.is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        target = tmp_path / "cache" / repo_id / (revision or "main") / (subfolder or "") / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            shutil.copy(source, target)
            fetched.append(filename)
        return str(target)

    def file_exists(repo_id, filename, **_):
        return (repos[repo_id] / filename).is_file()

    for module in (safe_load, peft.config, peft.utils.save_and_load):
        monkeypatch.setattr(module, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(peft.utils.save_and_load, "file_exists", file_exists)
    monkeypatch.setattr(peft.utils.save_and_load.huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return repos, fetched


@pytest.fixture
def hub_server(monkeypatch):
    """The Hub stand-in of ``tests/hub_stand_in.py`` on 127.0.0.1, with this process's ``huggingface_hub`` pointed at
    it (as ``HF_ENDPOINT`` does in a fresh process) and a token set."""
    import huggingface_hub.constants as constants

    from tests.hub_stand_in import HubStandIn

    with HubStandIn() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tests run offline otherwise
        monkeypatch.setenv("HF_TOKEN", "hf_stand_in")
        yield hub


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_llama):
    """A tiny Llama saved like a Hub model, with the real tokenizer (the recipes tokenize real records)."""
    from transformers import AutoTokenizer

    path = tmp_path / "tiny-model"
    tiny_llama.save_pretrained(path)
    AutoTokenizer.from_pretrained(SMOLLM2_TOKENIZER_DIR).save_pretrained(path)
    return path


@pytest.fixture
def shared_data():
    """The ``../shared/data`` folder; the tests that read it are skipped where it is absent."""
    from tests.data.shared_data import SHARED_DATA

    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is not here")
    return SHARED_DATA
