"""Quantized base models (bitsandbytes 4-bit and 8-bit) for prompts alone or prompts + LoRA (QLoRA).

The method needs no quantized code path of its own: bitsandbytes quantizes the linear layers and keeps the input
embedding in full precision, and that embedding is where the prompt rows are written. So the base-model fingerprint
(taken in bfloat16) matches a float32 load of the same weights, and a table trained on one loads on the other.
What this module adds is the loading recipe in one place: a typed set of arguments (``QuantizationArguments``, so
recipes get ``--help`` from ``HfArgumentParser``) and ``load_quantized_model``, which loads with
``BitsAndBytesConfig`` and prepares the model with PEFT's ``prepare_model_for_kbit_training`` (norms in float32,
gradient checkpointing, input gradients).

It imports no bitsandbytes itself (transformers does, when a quantized model is loaded), and the package imports
this module only on first use of its names. Note that PEFT 0.21 imports bitsandbytes in ``import peft`` whenever
it is installed (``peft/helpers.py``); without bitsandbytes everything except this module works.

Tiny models: bitsandbytes' CPU 4-bit kernels need layers at least 64 wide (its block size); hidden size 64 works.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from peft_continual.errors import ConfigError, allowed

COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class QuantizationArguments:
    """How to quantize the base model with bitsandbytes.

    Args:
        bits: 4 (``nf4``/``fp4``, QLoRA's setting) or 8 (LLM.int8).
        quant_type: 4-bit only: ``nf4`` (normal float, QLoRA's default) or ``fp4``.
        double_quant: 4-bit only: quantize the quantization constants too (about 0.37 bit per weight less, QLoRA).
        compute_dtype: 4-bit only: dtype of the matrix products, ``float32``, ``bfloat16`` or ``float16``.
        gradient_checkpointing: Recompute activations in the backward pass (less activation memory, more compute).
        int8_threshold: 8-bit only: LLM.int8's outlier threshold (bitsandbytes' default 6.0). Outlier columns are
            chosen over the whole batch, so a row's result depends on the other rows; 0.0 turns the decomposition
            off and makes each row independent (a mixed-task batch then equals each row alone).

    Examples:
        >>> QuantizationArguments(bits=4, double_quant=True).bnb_config().bnb_4bit_use_double_quant
        True
    """

    bits: int = field(default=4, metadata={"help": "4 (nf4/fp4) or 8 (LLM.int8)."})
    quant_type: str = field(default="nf4", metadata={"help": "4-bit only: `nf4` or `fp4`."})
    double_quant: bool = field(default=False, metadata={"help": "4-bit only: quantize the quantization constants."})
    compute_dtype: str = field(
        default="bfloat16", metadata={"help": "4-bit only: dtype of the matrix products: float32, bfloat16, float16."}
    )
    gradient_checkpointing: bool = field(
        default=True, metadata={"help": "Recompute activations in the backward pass (less memory, slower)."}
    )
    int8_threshold: float = field(
        default=6.0, metadata={"help": "8-bit only: LLM.int8 outlier threshold; 0 makes rows batch-independent."}
    )

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ConfigError(f"bits={self.bits!r} is not supported; allowed: 4, 8")
        if self.quant_type not in ("nf4", "fp4"):
            raise ConfigError(f"quant_type={self.quant_type!r} is not one of 'fp4', 'nf4'")
        if not isinstance(self.int8_threshold, (int, float)) or self.int8_threshold < 0:
            raise ConfigError(f"int8_threshold={self.int8_threshold!r} must be a number >= 0")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"compute_dtype={self.compute_dtype!r} is not one of {allowed(COMPUTE_DTYPES)}")

    def bnb_config(self) -> Any:
        """The ``transformers.BitsAndBytesConfig`` of these arguments."""
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=self.int8_threshold)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=COMPUTE_DTYPES[self.compute_dtype],
        )


def this_process_device() -> torch.device | int:
    """Where this process's copy of a quantized model goes: its own GPU under ``accelerate launch``/``torchrun``
    (``LOCAL_RANK``; bitsandbytes layers cannot be moved after loading, so DDP needs each copy placed where its
    process trains), the GPU alone, or the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))


def load_quantized_model(
    name_or_path: str, arguments: QuantizationArguments | None = None, training: bool = True, **kwargs: Any
) -> Any:
    """Load a causal LM quantized by bitsandbytes; ready for ``get_peft_model`` when ``training``.

    Args:
        name_or_path: Hub id or folder of the (full-precision) model.
        arguments: Quantization settings; default: nf4, bfloat16 compute, gradient checkpointing.
        training: Prepare for training with PEFT's ``prepare_model_for_kbit_training``; leave False to serve.
        kwargs: Passed to ``AutoModelForCausalLM.from_pretrained`` (``device_map``, ``dtype``...).

    Raises:
        ConfigError: bitsandbytes is not installed.
    """
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"loading {name_or_path!r} quantized needs bitsandbytes: pip install 'peft-continual[bnb]'")
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    arguments = arguments or QuantizationArguments()
    kwargs.setdefault("device_map", {"": this_process_device()})
    model = AutoModelForCausalLM.from_pretrained(name_or_path, quantization_config=arguments.bnb_config(), **kwargs)
    if training:
        with warnings.catch_warnings():  # PEFT 0.21 calls the deprecated name; nothing a user can change
            warnings.filterwarnings("ignore", "`gradient_checkpointing_enable` is deprecated", FutureWarning)
            model = prepare_model_for_kbit_training(
                model,
                use_gradient_checkpointing=arguments.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},  # torch's advice; grads reach the prompts
            )
    return model
