"""peft-continual: continual multi-task p-tuning for Hugging Face PEFT.

Importing the package registers the ``continual_prompt`` method with PEFT, so ``peft.get_peft_model``,
``PeftModel.from_pretrained`` and ``AutoPeftModelForCausalLM`` build and load it like any PEFT method.
"""

from peft_continual.data.collate import ContinualPromptCollator
from peft_continual.data.records import TaskRecord, read_jsonl, records_from_dicts
from peft_continual.data.templates import TaskTemplate, load_templates
from peft_continual.data.tokenize import PromptTokenizer, TokenizedExample
from peft_continual.prompting import (
    ContinualPromptConfig,
    ContinualPromptModel,
    EncoderType,
    PromptTable,
    TaskPromptEncoder,
    inject_prompts,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "ContinualPromptCollator",
    "ContinualPromptConfig",
    "ContinualPromptModel",
    "EncoderType",
    "PromptTable",
    "PromptTokenizer",
    "TaskPromptEncoder",
    "TaskRecord",
    "TaskTemplate",
    "TokenizedExample",
    "inject_prompts",
    "load_templates",
    "read_jsonl",
    "records_from_dicts",
]
