"""Continual multi-task p-tuning as a PEFT method (``PeftType.CONTINUAL_PROMPT``).

Importing this package registers the method with PEFT, so ``get_peft_model``, ``PeftModel.from_pretrained`` and
``AutoPeftModelForCausalLM.from_pretrained`` build ``ContinualPromptModel`` from a ``ContinualPromptConfig``, and
patches ``PeftModel.save_pretrained`` (atomic saves) and ``PeftModel.disable_adapter`` for this method only.
"""

from peft_continual.prompting import peft_hooks
from peft_continual.prompting.config import ContinualPromptConfig, EncoderType, PromptInit
from peft_continual.prompting.encoder import TaskPromptEncoder
from peft_continual.prompting.fingerprint import check_fingerprint, fingerprint
from peft_continual.prompting.injection import inject_prompts
from peft_continual.prompting.model import ContinualPromptModel
from peft_continual.prompting.peft_hooks import PEFT_TYPE
from peft_continual.prompting.table import PromptTable

peft_hooks.register(ContinualPromptConfig, ContinualPromptModel)
peft_hooks.patch_peft_model()

__all__ = [
    "PEFT_TYPE",
    "ContinualPromptConfig",
    "ContinualPromptModel",
    "EncoderType",
    "PromptInit",
    "PromptTable",
    "TaskPromptEncoder",
    "check_fingerprint",
    "fingerprint",
    "inject_prompts",
]
