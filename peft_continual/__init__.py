"""peft-continual: continual multi-task p-tuning for Hugging Face PEFT.

Importing the package registers the ``continual_prompt`` method with PEFT, so ``peft.get_peft_model``,
``PeftModel.from_pretrained`` and ``AutoPeftModelForCausalLM`` build and load it like any PEFT method.
The quantized-model helpers (``QuantizationArguments``, ``load_quantized_model``) and ``param_groups`` are imported
on first use.
"""

from typing import Any

from peft_continual.data.collate import ContinualPromptCollator
from peft_continual.data.records import TaskRecord, read_jsonl, records_from_dicts
from peft_continual.data.templates import TaskTemplate, load_templates
from peft_continual.data.tokenize import PromptTokenizer, TokenizedExample
from peft_continual.tuners.continual_prompt import (
    ContinualPromptConfig,
    ContinualPromptModel,
    EncoderType,
    PromptInit,
    PromptTable,
    TaskPromptEncoder,
    inject_prompts,
)
from peft_continual.version import __version__ as __version__

__all__ = [
    "ContinualPromptCollator",
    "ContinualPromptConfig",
    "ContinualPromptModel",
    "EncoderType",
    "PromptInit",
    "PromptTable",
    "PromptTokenizer",
    "QuantizationArguments",
    "TaskPromptEncoder",
    "TaskRecord",
    "TaskTemplate",
    "TokenizedExample",
    "inject_prompts",
    "load_quantized_model",
    "load_templates",
    "param_groups",
    "read_jsonl",
    "records_from_dicts",
]

_LAZY = {
    "QuantizationArguments": "peft_continual.models.quantized",
    "load_quantized_model": "peft_continual.models.quantized",
    "param_groups": "peft_continual.training",  # with transformers' Trainer
}


def __getattr__(name: str) -> Any:
    """Import the quantized-model helpers and ``param_groups`` on first use (PEFT's pattern for its bitsandbytes
    layers): ``import peft_continual`` then stays free of bitsandbytes and ``transformers.Trainer``."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
