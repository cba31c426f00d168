"""Prompts and LoRA/IA3 adapters on one base model, in one ``PeftModel``.

The API is one config that carries both::

    config = ContinualPromptConfig(templates=[...], stacked_adapters=LoraConfig(r=8, target_modules=["q_proj"]))
    model = get_peft_model(base, config)          # prompts + LoRA, one PeftModel
    model.save_pretrained(path)                   # table/encoder + LoRA weights in one safetensors file
    model = PeftModel.from_pretrained(base, path, is_trainable=True)   # both back, both trainable

Why one config rather than ``add_continual_prompts(get_peft_model(base, LoraConfig(...)), ContinualPromptConfig(...))``:

- PEFT's contract is config -> ``get_peft_model`` -> ``adapter_config.json`` -> ``PeftModel.from_pretrained`` (or
  ``AutoPeftModelForCausalLM``) rebuilding the model from that file alone. To load, the file must say which LoRA
  layers to inject before the weights are read, so the prompt config has to carry the LoRA config whatever the
  building API looks like. With one config, building and loading take the same path; a second entry point would be
  a second path that must keep agreeing with the first.
- Converting a finished LoRA ``PeftModel`` means taking PEFT's wrapper apart (its tuner, adapter names, trainable
  flags and forward hooks): more PEFT internals to pin, for sugar.
- PEFT refuses two peft types in one ``PeftModel`` and ``PeftMixedModel`` refuses prompt methods and bitsandbytes
  (``research/anchors.md`` [P10], [P11]). Here the ``PeftModel`` has one type, ``CONTINUAL_PROMPT``; the LoRA/IA3
  layers are PEFT's own, injected by PEFT's ``LoraModel``/``IA3Model`` into the base model that the prompt tuner
  wraps. LoRA's layers, its bitsandbytes variants, per-row ``adapter_names`` and merging are therefore PEFT's code.

How the pieces fit: the prompt tuner (``ContinualPromptModel``) keeps PEFT's LoRA/IA3 tuner as an unregistered
attribute whose ``model`` is the same base model (registering it would list every base weight twice in
``state_dict``). The LoRA layers sit inside the base, so the prompt tuner's forward (prompts written into
``inputs_embeds``, then ``self.model(...)``) runs through them, in ``generate`` too. The saved file holds the
prompt keys without the prompt adapter's name and the LoRA keys with their LoRA adapter names, so several named
LoRA adapters share one file. ``PeftModel.forward``/``generate`` hand ``adapter_names`` to the tuner's
``_enable_peft_forward_hooks``, which passes it on to LoRA's: one LoRA adapter per row, in eval mode, as in PEFT.

Switches (context managers, nestable, reachable on the ``PeftModel``):

- ``model.disable_adapter()``: plain base model (prompts and LoRA off; PEFT's own name);
- ``model.disable_stacked_adapters()``: prompts only; ``model.disable_prompts()``: LoRA only.

Training: jointly, with separate learning rates from ``param_groups(model, prompt_lr, stacked_lr)`` (pass the
optimizer to ``Trainer(optimizers=(optimizer, None))``); or in stages with PEFT's
``model.set_requires_grad(name, False)``, where ``name`` is the prompt adapter (its encoder) or a stacked adapter.
Switching adapters on and off never changes ``requires_grad`` (PEFT's layer switches would set it).
``merge_and_unload()`` merges the LoRA into the base weights and keeps the prompts: the ``PeftModel`` then serves
the prompts on the merged base, and the merged base is returned as PEFT does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from peft import PeftConfig

from peft_continual.errors import ConfigError, allowed

STACKABLE_TYPES = ("LORA", "IA3")
"""PEFT types that can be stacked under the prompts (tested: LoRA and IA3, bitsandbytes bases included)."""

PER_ROW_TYPES = ("LORA",)
"""Stacked types whose PEFT layers accept per-row ``adapter_names``."""


def stacked_config_dicts(value: PeftConfig | Mapping[str, PeftConfig | Mapping[str, Any]] | None) -> dict[str, dict]:
    """Normalise ``stacked_adapters`` to ``{name: JSON-safe dict}`` (how ``adapter_config.json`` stores it).

    Raises:
        ConfigError: an unsupported PEFT type, two types at once, a bad name, or a LoRA option this method does not
            save (``modules_to_save``, ``trainable_token_indices``).
    """
    if not value:
        return {}
    if isinstance(value, PeftConfig):
        value = {str(value.peft_type.value).lower(): value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"stacked_adapters must be a LoraConfig/IA3Config or a dict name -> config, got {value!r}")
    dicts = {name: _config_dict(name, config) for name, config in value.items()}
    types = {d["peft_type"] for d in dicts.values()}
    if len(types) > 1:
        raise ConfigError(f"stacked_adapters mixes PEFT types {sorted(types)}; stack adapters of one type")
    return dicts


def active_stacked_names(stacked: Mapping[str, Any], active: str | Sequence[str] | None) -> list[str] | None:
    """The active stacked adapters as a list (default: the first; ``adapter_config.json`` sorts dict keys).

    Raises:
        ConfigError: a name is not a stacked adapter.
    """
    if not stacked:
        return None
    if not (
        active is None
        or isinstance(active, str)
        or (isinstance(active, (list, tuple)) and all(isinstance(name, str) for name in active))
    ):
        raise ConfigError(f"active_stacked_adapters must be a name or a list of names, got {active!r}")
    names = [next(iter(stacked))] if active is None else [active] if isinstance(active, str) else list(active)
    unknown = sorted(set(names) - set(stacked))
    if unknown or not names:
        raise ConfigError(f"active_stacked_adapters={names} must name stacked adapters: {allowed(stacked)}")
    return names


def _config_dict(name: Any, config: PeftConfig | Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(name, str) or not name or "." in name or name == "__base__":
        raise ConfigError(f"stacked adapter names must be non-empty strings without '.', not '__base__': {name!r}")
    if isinstance(config, Mapping):
        kind = config.get("peft_type")
        if kind not in STACKABLE_TYPES:
            raise ConfigError(f"stacked adapter {name!r} is {kind!r}; allowed PEFT types: {allowed(STACKABLE_TYPES)}")
        try:
            config = PeftConfig.from_peft_type(**config)
        except (TypeError, ValueError, KeyError) as error:  # fields PEFT's config refuses (from a damaged file)
            raise ConfigError(f"stacked adapter {name!r}: PEFT cannot build its {kind} config: {error}") from error
    if not isinstance(config, PeftConfig) or str(config.peft_type.value) not in STACKABLE_TYPES:
        kind = getattr(getattr(config, "peft_type", None), "value", type(config).__name__)
        raise ConfigError(f"stacked adapter {name!r} is {kind}; allowed PEFT types: {allowed(STACKABLE_TYPES)}")
    for option in ("modules_to_save", "trainable_token_indices"):
        if getattr(config, option, None):
            raise ConfigError(f"stacked adapter {name!r} sets {option}; it is not supported under the prompts")
    data = config.to_dict()
    data.pop("runtime_config", None)  # PEFT drops it from saved configs too
    return json.loads(json.dumps(data, default=lambda v: sorted(v) if isinstance(v, set) else str(v)))


def stacked_configs(dicts: Mapping[str, Mapping[str, Any]], inference_mode: bool) -> dict[str, PeftConfig]:
    """Rebuild PEFT config objects from ``stacked_config_dicts`` output, frozen when ``inference_mode``."""
    configs = {}
    for name, data in dicts.items():
        configs[name] = PeftConfig.from_peft_type(**{**data, "inference_mode": inference_mode})
    return configs
