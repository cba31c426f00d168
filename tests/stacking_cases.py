"""Builders shared by the stacking tests: tiny bases in five precisions, and prompts alone or with LoRA/IA3.

The tiny model here is 64 wide, not the 32 of ``tests/tuners/continual_prompt/conftest.py``: bitsandbytes' CPU 4-bit kernels
reshape each layer's quantization constants per 64-wide block, and a 32-wide layer fails in a no-grad forward
("shape '[32, 0]' is invalid", bitsandbytes 0.50.2). Int8 layers have no such limit; one size serves both.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import IA3Config, LoraConfig, get_peft_model

from peft_continual.tuners.continual_prompt import ContinualPromptConfig
from tests.tuners.continual_prompt.conftest import EOS_ID, PAD_ID, TASKNAME_IDS, TEMPLATE_A, TEMPLATE_B, VOCAB_SIZE

BNB_HIDDEN = 64
BASES = ["fp32", "bf16", "int8", "nf4", "nf4-dq-bf16"]
"""float32, bfloat16, LLM.int8, nf4 with float32 compute, nf4 with double quantization and bfloat16 compute."""
QUANTIZED = {"int8": {"bits": 8}, "nf4": {"compute_dtype": "float32"}, "nf4-dq-bf16": {"double_quant": True}}
METHODS = ["prompts", "prompts+lora", "prompts+ia3"]
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2, "int8": 1e-3, "nf4": 1e-5, "nf4-dq-bf16": 2e-2}
"""Largest logit difference accepted where two runs should agree (computed in the base's precision)."""


def stacked_adapters(method: str) -> dict:
    """The ``stacked_adapters`` of a method; random LoRA B / IA3 vectors, so the adapters change outputs at once."""
    if method == "prompts+lora":
        return {"lora": LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)}
    if method == "prompts+ia3":
        modules = {"target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]}
        return {"ia3": IA3Config(**modules, init_ia3_weights=False)}
    return {}


def save_tiny_base(folder: Path) -> Path:
    """Save a tiny random Llama (hidden 64, 2 layers, vocabulary 512, peaked logits) to ``folder``."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=BNB_HIDDEN,
        intermediate_size=2 * BNB_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,
        pad_token_id=PAD_ID,
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def load_base(folder: Path, base: str, device: str = "cpu", training: bool = True, **quantization) -> torch.nn.Module:
    """Load the saved tiny base in precision ``base``; quantized ones through ``load_quantized_model``."""
    from transformers import AutoModelForCausalLM

    from peft_continual import QuantizationArguments, load_quantized_model

    if base in QUANTIZED:
        arguments = QuantizationArguments(**(QUANTIZED[base] | quantization))
        return load_quantized_model(str(folder), arguments, training=training, device_map={"": device})
    dtype = torch.bfloat16 if base == "bf16" else torch.float32
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()


def make_model(folder: Path, base: str, method: str, device: str = "cpu", seed: int = 0, quantization=None, **kwargs):
    """``get_peft_model`` over a fresh load of the tiny base: tasks A (start) and B (middle) in training.

    ``kwargs`` go to ``ContinualPromptConfig`` (``stacked_adapters`` overrides the method's); ``quantization`` to
    ``QuantizationArguments``.
    """
    kwargs.setdefault("stacked_adapters", stacked_adapters(method))
    config = ContinualPromptConfig(
        templates=[TEMPLATE_A, TEMPLATE_B], taskname_token_ids=dict(TASKNAME_IDS), encoder_type="mlp", **kwargs
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(load_base(folder, base, device, **(quantization or {})), config)


def train(model, batch: dict, steps: int = 3, lr: float = 1e-2) -> list[float]:
    """A few AdamW steps on one batch over the trainable parameters; the losses, step by step."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def to_device(batch: dict, device: str) -> dict:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def alone(batch: dict, row: int) -> dict:
    """Row ``row`` of a batch as a batch of one, padding removed."""
    keep = batch["attention_mask"][row].bool()
    keys = {"input_ids", "attention_mask", "labels", "virtual_token_mask"} & set(batch)
    return {key: batch[key][row, keep].unsqueeze(0) for key in keys} | {"tasknames": [batch["tasknames"][row]]}


def matrix(device: str) -> list:
    """``(device, base, method)`` parameters; quantized bases marked ``bnb``, CUDA ones ``gpu``."""
    params = []
    for base in BASES:
        marks = [pytest.mark.bnb] if base in QUANTIZED else []
        if device == "cuda":
            marks.append(pytest.mark.gpu)
        params += [
            pytest.param(device, base, method, marks=marks, id=f"{device}-{base}-{method}") for method in METHODS
        ]
    return params
