"""Continual multi-task p-tuning as a PEFT method (``PeftType.CONTINUAL_PROMPT``).

Importing this package registers the method with PEFT, so ``get_peft_model``, ``PeftModel.from_pretrained`` and
``AutoPeftModelForCausalLM.from_pretrained`` build ``ContinualPromptModel`` from a ``ContinualPromptConfig``, and
patches ``PeftModel.save_pretrained`` (atomic saves) and ``PeftModel.disable_adapter`` for this method only.
"""

from peft_continual.tuners.continual_prompt import _peft_compat as compat
from peft_continual.tuners.continual_prompt._peft_compat import PEFT_TYPE
from peft_continual.tuners.continual_prompt.config import ContinualPromptConfig, EncoderType, PromptInit
from peft_continual.tuners.continual_prompt.encoder import TaskPromptEncoder
from peft_continual.tuners.continual_prompt.fingerprint import check_fingerprint, fingerprint
from peft_continual.tuners.continual_prompt.injection import inject_prompts
from peft_continual.tuners.continual_prompt.model import ContinualPromptModel
from peft_continual.tuners.continual_prompt.table import PromptTable

compat.register(ContinualPromptConfig, ContinualPromptModel)
compat.patch_peft_model()

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
