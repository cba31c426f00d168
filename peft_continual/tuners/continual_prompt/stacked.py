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

How the pieces fit: the prompt tuner (``ContinualPromptModel``) keeps PEFT's LoRA/IA3 tuner, whose ``model`` is the
same base model, in a ``StackedAdapters`` object, unregistered (registering the tuner would list every base weight
twice in ``state_dict``). The LoRA layers sit inside the base, so the prompt tuner's forward (prompts written into
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

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from peft import PeftConfig

from peft_continual.errors import ConfigError, allowed
from peft_continual.tuners.continual_prompt import _peft_compat_stacked as stacked_compat

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


class StackedAdapters:
    """The LoRA/IA3 adapters stacked under one prompt adapter: PEFT's tuner on the same base model, and its switch.

    A plain object, not an ``nn.Module``: the tuner's ``model`` is the base model that the prompt tuner wraps, and
    registering it would list every base weight twice in ``state_dict``. ``ContinualPromptModel`` holds one (or
    ``None``) and its public methods (``set_stacked_adapter``, ``merge_and_unload``...) call these.

    Attributes:
        tuner: PEFT's ``LoraModel``/``IA3Model``.
        owner: The prompt adapter whose config declares these adapters (and whose file saves them).
        names: The stacked adapters' names, in config order.
        enabled: False inside ``disable_stacked_adapters()``.
    """

    def __init__(self, tuner: Any, owner: str, names: Sequence[str]) -> None:
        self.tuner = tuner
        self.owner = owner
        self.names = tuple(names)
        self.enabled = True

    @classmethod
    def build(cls, base_model: Any, owner: str, config: Any) -> StackedAdapters:
        """Inject ``config.stacked_adapters`` into ``base_model`` with PEFT's own tuner and activate them.

        Raises:
            ConfigError: PEFT cannot build them on this model (values its config accepts but its layers do not).
        """
        configs = stacked_configs(config.stacked_adapters, config.inference_mode)
        try:
            tuner = stacked_compat.build_stacked_tuner(base_model, configs)
        except (TypeError, ValueError) as error:  # e.g. r="8"
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(
                f"stacked adapter(s) {allowed(configs)}: PEFT cannot build them on this model: {error}"
            ) from error
        tuner.set_adapter(config.active_stacked_adapters, inference_mode=config.inference_mode)
        return cls(tuner, owner, configs)

    def parameters(self) -> Iterator[Any]:
        """Parameters of the stacked layers, trainable or not."""
        return stacked_compat.stacked_parameters(self.tuner.model, self.names)

    def sync(self, adapters_enabled: bool) -> None:
        """Switch the layers on when the master switch and ``enabled`` both say so; ``requires_grad`` is kept."""
        stacked_compat.enable_stacked(self.tuner, adapters_enabled and self.enabled)

    def set_active(self, names: Sequence[str], inference_mode: bool) -> None:
        """PEFT's ``set_adapter``: the active adapters trainable unless ``inference_mode``, the others frozen."""
        self.tuner.set_adapter(list(names), inference_mode=inference_mode)

    def set_requires_grad(self, names: Sequence[str], requires_grad: bool) -> None:
        stacked_compat.set_stacked_requires_grad(self.tuner, list(names), requires_grad)

    def cast_dtype(self, autocast_adapter_dtype: bool) -> None:
        stacked_compat.cast_stacked_dtype(self.tuner, self.names, autocast_adapter_dtype)

    def check_per_row(self) -> None:
        """Raise ``ConfigError`` unless the stacked type takes per-row ``adapter_names`` (LoRA does, IA3 not)."""
        kind = stacked_compat.stacked_type(self.tuner)
        if kind not in PER_ROW_TYPES:
            raise ConfigError(f"adapter_names needs LoRA stacked adapters; {list(self.names)} are {kind}")

    @contextlib.contextmanager
    def per_row_hooks(self, training: bool, *args: Any, **kwargs: Any) -> Iterator[None]:
        """LoRA's ``adapter_names`` hooks (one adapter per row) for one forward/generate."""
        with stacked_compat.stacked_forward_hooks(self.tuner, training, *args, **kwargs):
            yield

    def remove(self, merge: bool, **kwargs: Any) -> None:
        """Take the layers out of the base model: merged into its weights (LoRA) or dropped."""
        with torch.no_grad():
            self.tuner.merge_and_unload(**kwargs) if merge else self.tuner.unload()


def check_prompt_adapter(
    adapter_name: str, config: Any, stacked: StackedAdapters | None, prompt_adapters: Sequence[str]
) -> None:
    """Refuse a new prompt adapter that clashes with the stacked adapters (before anything of it is built).

    Raises:
        ConfigError: its name is a stacked adapter's, it stacks adapters where another already does, or it names a
            stacked adapter like a prompt adapter.
    """
    if stacked is not None and adapter_name in stacked.names:
        raise ConfigError(f"prompt adapter {adapter_name!r} has the name of a stacked adapter; rename one")
    if config.stacked_adapters and stacked is not None:
        raise ConfigError(
            f"prompt adapter {adapter_name!r} declares stacked adapters {list(config.stacked_adapters)}, but "
            f"{stacked.owner!r} already stacks {list(stacked.names)}; one adapter may stack"
        )
    clash = sorted(set(config.stacked_adapters) & set(prompt_adapters))
    if clash:
        raise ConfigError(f"stacked adapter name(s) {clash} are prompt adapter names; rename them")


def check_stacked_names(names: Sequence[str], stacked: StackedAdapters | None, prompt_adapters: Sequence[str]) -> None:
    """Raise ``ConfigError`` for a name that is not a stacked adapter (the prompt adapters are named for help)."""
    known = stacked.names if stacked is not None else ()
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown adapter(s) {unknown}; prompt adapters: {allowed(prompt_adapters)}, "
            f"stacked adapters: {allowed(known)}"
        )
