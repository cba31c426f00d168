"""The techniques the continual method is measured against, each built on one base model and one task template.

``recipes/compare_techniques.py`` trains and evaluates them on the same records, at the same budget, with the same
evaluation code. What each one trains and what the model reads:

| technique | trained | the model reads |
|---|---|---|
| ``zero_shot`` | nothing | the template's text, virtual tokens removed |
| ``few_shot`` | nothing | demonstrations from train, then the template's text |
| ``prompt_tuning`` | one free embedding row per virtual token (``encoder_type="embedding"``) | the template |
| ``p_tuning`` | this library's task-conditioned encoder (NeMo's LSTM by default) | the template |
| ``lora`` | LoRA (PEFT) | the template's text |
| ``ia3`` | IA3 (PEFT) | the template's text |
| ``qlora`` | LoRA (PEFT) on a 4-bit nf4 base (bitsandbytes) | the template's text |
| ``full_fine_tuning`` | every weight of the base model | the template's text |
| ``p_tuning+lora`` | the encoder and LoRA, in one ``PeftModel`` | the template |
| ``peft_prompt_tuning`` | PEFT's ``PROMPT_TUNING``: free rows from the init text's embeddings | its rows, then the template's text |
| ``peft_p_tuning`` | PEFT's ``P_TUNING``: its LSTM (or MLP) encoder on free input rows | its rows, then the template's text |

Virtual tokens sit where the template's markers are, so prompt tuning and p-tuning differ only in how the rows are
made (free parameters against an encoder's output); the text-only techniques read exactly the same text. PEFT's own
prompt learning is the reference implementation: it puts all its virtual tokens in front of the text, and is
evaluated through ``PrependedPrompts`` (its logits aligned with the text; ``evaluation_model``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from peft_continual.data.fewshot import FewShotConfig, fewshot_template
from peft_continual.data.records import TaskRecord
from peft_continual.data.templates import TaskTemplate
from peft_continual.errors import ConfigError, allowed

TECHNIQUES = (
    "zero_shot",
    "few_shot",
    "prompt_tuning",
    "p_tuning",
    "lora",
    "ia3",
    "qlora",
    "full_fine_tuning",
    "p_tuning+lora",
    "peft_prompt_tuning",
    "peft_p_tuning",
)
UNTRAINED = ("zero_shot", "few_shot")
WITH_VIRTUAL_TOKENS = ("prompt_tuning", "p_tuning", "p_tuning+lora")
PEFT_PROMPT_LEARNING = ("peft_prompt_tuning", "peft_p_tuning")
"""PEFT's prompt learning: virtual tokens prepended inside PEFT's ``forward``; the model reads the text-only template."""


@dataclass
class TechniqueArguments:
    """Settings of each technique; the shared budget (steps, batch, seed) is ``ContinualTrainingArguments``'."""

    encoder_type: str = field(
        default="lstm", metadata={"help": "p-tuning's encoder (ours and peft_p_tuning's): `lstm` (NeMo) or `mlp`."}
    )
    encoder_hidden_size: int | None = field(
        default=None, metadata={"help": "p-tuning's encoder width (ours and PEFT's); None = model width, at most 256."}
    )
    prompt_tuning_init_text: str | None = field(
        default=None,
        metadata={
            "help": "prompt_tuning, peft_prompt_tuning: text whose token embeddings start the rows (PEFT's TEXT "
            "init); None: the template's init_text, else random rows."
        },
    )
    prompt_tuning_learning_rate: float = field(
        default=3e-2,
        metadata={
            "help": "prompt_tuning, peft_prompt_tuning: peak learning rate of the rows (p-tuning: learning_rate)."
        },
    )
    p_tuning_start_rows_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "p_tuning, p_tuning+lora: peak learning rate of the text rows the prompts start from (the "
            "encoder's correction trains at learning_rate); None: learning_rate for both."
        },
    )
    peft_p_tuning_learning_rate: float = field(
        default=3e-3, metadata={"help": "peft_p_tuning: peak learning rate of PEFT's encoder (ours: learning_rate)."}
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (lora, qlora, p_tuning+lora)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"], metadata={"help": "Linear layers that get LoRA."}
    )
    lora_learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate of the LoRA weights."})
    ia3_target_modules: list[str] = field(
        default_factory=lambda: ["k_proj", "v_proj", "down_proj"], metadata={"help": "Layers whose output IA3 scales."}
    )
    ia3_feedforward_modules: list[str] = field(
        default_factory=lambda: ["down_proj"], metadata={"help": "Of those, the ones whose input IA3 scales."}
    )
    ia3_learning_rate: float = field(default=3e-3, metadata={"help": "Peak learning rate of the IA3 vectors."})
    full_learning_rate: float = field(
        default=2e-5, metadata={"help": "full_fine_tuning: peak learning rate of the base weights."}
    )


def check_techniques(techniques: Sequence[str]) -> None:
    """Refuse unknown names before any work."""
    unknown = [name for name in techniques if name not in TECHNIQUES]
    if unknown:
        raise ConfigError(f"unknown technique(s) {unknown}; allowed: {allowed(TECHNIQUES)}")


def technique_template(
    technique: str, template: TaskTemplate, train_records: Sequence[TaskRecord], fewshot: FewShotConfig | None
) -> TaskTemplate:
    """The template a technique reads: with its virtual tokens, without them, or after demonstrations."""
    if technique in WITH_VIRTUAL_TOKENS:
        return template
    if technique == "few_shot":
        return fewshot_template(template, train_records, fewshot)
    return template.without_virtual_tokens()


def load_technique_base(technique: str, model: str) -> tuple[Any, Any]:
    """A fresh base model and tokenizer for one technique: 4-bit nf4 for ``qlora`` (bfloat16 compute, gradient
    checkpointing), the full-precision model otherwise."""
    from peft_continual.models import load_base_model
    from peft_continual.models.quantized import QuantizationArguments

    return load_base_model(model, QuantizationArguments(bits=4) if technique == "qlora" else None)


def build_technique(technique: str, base: nn.Module, template: TaskTemplate, tokenizer: Any, args: TechniqueArguments):
    """The model one technique trains (and serves): a ``PeftModel``, or the base itself (untrained, full).

    ``template`` is the task's own template, with its virtual tokens (their count sizes PEFT's prompt learning too).
    """
    from peft import IA3Config, LoraConfig, get_peft_model

    from peft_continual.tuners.continual_prompt.config import ContinualPromptConfig

    if technique in UNTRAINED:
        return base.requires_grad_(False)
    if technique == "full_fine_tuning":
        return base.requires_grad_(True)
    lora = LoraConfig(
        task_type="CAUSAL_LM", r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=args.lora_target_modules
    )
    if technique in ("lora", "qlora"):
        return get_peft_model(base, lora)
    if technique in PEFT_PROMPT_LEARNING:
        return get_peft_model(base, peft_prompt_learning_config(technique, base, template, tokenizer, args))
    if technique == "ia3":
        ia3 = IA3Config(
            task_type="CAUSAL_LM",
            target_modules=args.ia3_target_modules,
            feedforward_modules=args.ia3_feedforward_modules,
        )
        return get_peft_model(base, ia3)
    prompt_tuning = technique == "prompt_tuning"
    config = ContinualPromptConfig(
        task_type="CAUSAL_LM",
        templates=[template],
        encoder_type="embedding" if prompt_tuning else args.encoder_type,
        encoder_hidden_size=None if prompt_tuning else args.encoder_hidden_size,
        init_text=args.prompt_tuning_init_text if prompt_tuning else None,
        stacked_adapters=lora if technique == "p_tuning+lora" else None,
    )
    return get_peft_model(base, config.tokenize_tasknames(tokenizer))


def peft_prompt_learning_config(technique: str, base: nn.Module, template: TaskTemplate, tokenizer: Any, args):
    """PEFT's ``PromptTuningConfig`` (TEXT init from the init text, else RANDOM) or ``PromptEncoderConfig`` (the same
    encoder kind and width as our p-tuning), with the template's number of virtual tokens."""
    from peft import PromptEncoderConfig, PromptTuningConfig

    count = template.total_virtual_tokens
    if technique == "peft_prompt_tuning":
        text = args.prompt_tuning_init_text or template.init_text
        return PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=count,
            prompt_tuning_init="TEXT" if text else "RANDOM",
            prompt_tuning_init_text=text,
            tokenizer_name_or_path=tokenizer.name_or_path if text else None,
        )
    if args.encoder_type not in ("lstm", "mlp"):
        raise ConfigError(f"peft_p_tuning has an `lstm` or `mlp` encoder, got encoder_type={args.encoder_type!r}")
    from peft_continual.tuners.continual_prompt.config import default_encoder_hidden_size

    width = args.encoder_hidden_size or default_encoder_hidden_size(base.config.hidden_size)
    return PromptEncoderConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=count,
        encoder_reparameterization_type=args.encoder_type.upper(),
        encoder_hidden_size=width,
    )


def evaluation_model(technique: str, model: nn.Module) -> nn.Module:
    """The model evaluation runs: PEFT's prompt learning through ``PrependedPrompts``, any other model as it is."""
    if technique in PEFT_PROMPT_LEARNING:
        from peft_continual.evaluation.prepended_prompts import PrependedPrompts

        return PrependedPrompts(model)
    return model


def technique_param_groups(technique: str, model: nn.Module, args: TechniqueArguments, prompt_lr: float) -> list[dict]:
    """Optimizer groups: prompts at their rate (``prompt_lr`` for p-tuning), adapters or base weights at theirs."""
    from peft_continual.training import param_groups

    trainable = [p for p in model.parameters() if p.requires_grad]
    rates = {
        "lora": args.lora_learning_rate,
        "qlora": args.lora_learning_rate,
        "ia3": args.ia3_learning_rate,
        "full_fine_tuning": args.full_learning_rate,
        "peft_prompt_tuning": args.prompt_tuning_learning_rate,
        "peft_p_tuning": args.peft_p_tuning_learning_rate,
    }
    if technique in rates:
        return [{"params": trainable, "lr": rates[technique]}]
    if technique == "prompt_tuning":
        return param_groups(model, prompt_lr=args.prompt_tuning_learning_rate, stacked_lr=args.lora_learning_rate)
    return param_groups(
        model,
        prompt_lr=prompt_lr,
        stacked_lr=args.lora_learning_rate,
        start_rows_lr=args.p_tuning_start_rows_learning_rate,
    )


def count_parameters(model: nn.Module) -> int:
    """Parameters of a model, quantized ones as their full-precision count (a 4-bit tensor packs two values in each
    byte; PEFT counts them the same way)."""
    total = 0
    for parameter in model.parameters():
        count = parameter.numel()
        if parameter.__class__.__name__ == "Params4bit":
            count *= 2 * getattr(getattr(parameter, "quant_storage", None), "itemsize", 1)
        total += count
    return total


def stored_parameters(technique: str, model: nn.Module, taskname: str) -> int:
    """Values a technique stores for the task beside the base model: prompt-table rows, adapter weights, or the
    whole model for a full fine-tune (0 for the untrained ones)."""
    if technique in UNTRAINED:
        return 0
    if technique == "full_fine_tuning":
        return count_parameters(model)
    if technique in PEFT_PROMPT_LEARNING:  # PEFT saves the prompt rows alone (p-tuning: the encoder's output)
        config = model.active_peft_config
        return config.num_virtual_tokens * config.token_dim
    adapter = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n or "ia3_" in n)
    if technique in WITH_VIRTUAL_TOKENS:
        adapter += model.prompt_table.counts()[taskname] * model.prompt_table.token_dim
    return adapter
