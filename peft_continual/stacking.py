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

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from peft import PeftConfig
from torch import nn

from peft_continual.errors import ConfigError, allowed
from peft_continual.prompting import stacking_hooks as hooks

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


class StackedAdaptersMixin:
    """The stacked-adapter half of ``ContinualPromptModel``: build, switch, train, merge, forward ``adapter_names``.

    Mixed into the prompt tuner (a ``PeftTunerBase``); every call into PEFT internals goes through
    ``peft_continual.prompting.stacking_hooks``.
    """

    _stacked_tuner: Any = None
    _stacked_owner: str | None = None
    _prompts_enabled: bool = True
    _stacked_enabled: bool = True

    # ------------------------------------------------------------------ inspect
    @property
    def stacked_tuner(self) -> Any:
        """PEFT's tuner of the stacked adapters (``LoraModel``/``IA3Model``), or ``None``."""
        return self._stacked_tuner

    @property
    def stacked_adapter_names(self) -> tuple[str, ...]:
        """Names of the stacked adapters, in config order (the names of ``adapter_names=[...]``)."""
        return tuple(self.peft_config[self._stacked_owner].stacked_adapters) if self._stacked_tuner else ()

    def prompt_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the open rounds' encoders (every prompt adapter), trainable or not."""
        for name in self.peft_config:
            yield from self._adapter_parameters(name)

    def stacked_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the stacked adapters' layers, trainable or not."""
        if self._stacked_tuner is not None:
            yield from hooks.stacked_parameters(self.model, self.stacked_adapter_names)

    @property
    def _prompts_active(self) -> bool:
        return self._adapters_enabled and self._prompts_enabled

    # ------------------------------------------------------------------ build
    def _check_stacked(self, adapter_name: str, config: Any) -> None:
        """Refuse a prompt adapter that clashes with the stacked adapters (before anything of it is built)."""
        if adapter_name in self.stacked_adapter_names:
            raise ConfigError(f"prompt adapter {adapter_name!r} has the name of a stacked adapter; rename one")
        if config.stacked_adapters and self._stacked_tuner is not None:
            raise ConfigError(
                f"prompt adapter {adapter_name!r} declares stacked adapters {list(config.stacked_adapters)}, but "
                f"{self._stacked_owner!r} already stacks {list(self.stacked_adapter_names)}; one adapter may stack"
            )
        clash = sorted(set(config.stacked_adapters) & set(self.peft_config))
        if clash:
            raise ConfigError(f"stacked adapter name(s) {clash} are prompt adapter names; rename them")

    def _build_stacked(self, adapter_name: str, config: Any) -> None:
        """Inject ``config.stacked_adapters`` into the base model with PEFT's own tuner (after the prompts are built)."""
        if not config.stacked_adapters:
            return
        configs = stacked_configs(config.stacked_adapters, config.inference_mode)
        try:
            tuner = hooks.build_stacked_tuner(self.model, configs)
        except (TypeError, ValueError) as error:  # values PEFT's config accepts but its layers do not (e.g. r="8")
            if isinstance(error, ConfigError):
                raise
            raise ConfigError(
                f"stacked adapter(s) {allowed(configs)}: PEFT cannot build them on this model: {error}"
            ) from error
        tuner.set_adapter(config.active_stacked_adapters, inference_mode=config.inference_mode)
        object.__setattr__(self, "_stacked_tuner", tuner)
        self._stacked_owner = adapter_name
        self._sync_stacked()

    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        """Build a prompt adapter (it freezes the base model, and with it any stacked layer: their flags are kept)."""
        flags = [(parameter, parameter.requires_grad) for parameter in self.stacked_parameters()]
        super().inject_adapter(model, adapter_name, **kwargs)
        for parameter, flag in flags:
            parameter.requires_grad_(flag)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """PEFT's cast of LoRA/IA3 weights to float32 on a 16-bit base (what ``PeftModel`` does for LoRA alone)."""
        if self._stacked_tuner is not None and adapter_name == self._stacked_owner:
            hooks.cast_stacked_dtype(self._stacked_tuner, self.stacked_adapter_names, autocast_adapter_dtype)

    # ------------------------------------------------------------------ switches
    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        """The master switch (``disable_adapter()``, ``disable_adapter_layers()``): prompts and stacked adapters."""
        super()._enable_adapter_layers(enabled)
        self._sync_stacked()

    def _sync_stacked(self) -> None:
        if self._stacked_tuner is not None:
            hooks.enable_stacked(self._stacked_tuner, self._adapters_enabled and self._stacked_enabled)

    @contextlib.contextmanager
    def disable_prompts(self) -> Iterator[None]:
        """``with model.disable_prompts():`` runs the base model with the stacked adapters only.

        Placeholder ids at virtual positions are embedded as ordinary tokens, as in ``disable_adapter()``.
        """
        was = self._prompts_enabled
        self._prompts_enabled = False
        try:
            yield
        finally:
            self._prompts_enabled = was

    @contextlib.contextmanager
    def disable_stacked_adapters(self) -> Iterator[None]:
        """``with model.disable_stacked_adapters():`` runs the prompts on the base model without LoRA/IA3.

        Raises:
            ConfigError: the model has no stacked adapters.
        """
        self._require_stacked("disable_stacked_adapters()")
        was = self._stacked_enabled
        self._stacked_enabled = False
        self._sync_stacked()
        try:
            yield
        finally:
            self._stacked_enabled = was
            self._sync_stacked()

    def set_stacked_adapter(self, adapter_name: str | Sequence[str], inference_mode: bool = False) -> None:
        """Make stacked adapter(s) active for rows without ``adapter_names``; several active ones add up.

        As PEFT's ``set_adapter``: the active adapters become trainable unless ``inference_mode``, the others frozen.
        The choice is saved (``active_stacked_adapters``).
        """
        self._require_stacked("set_stacked_adapter()")
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        self._check_stacked_names(names)
        self._stacked_tuner.set_adapter(names, inference_mode=inference_mode)
        self.peft_config[self._stacked_owner].active_stacked_adapters = names

    def set_requires_grad(self, adapter_names: str | Sequence[str], requires_grad: bool = True) -> None:
        """PEFT's ``model.set_requires_grad``: a prompt adapter name means its encoder, a stacked name its layers.

        Staged training freezes one side: ``model.set_requires_grad("lora", False)`` trains the prompts alone,
        ``model.set_requires_grad("default", False)`` (the prompt adapter) trains the LoRA alone.
        """
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        stacked = [name for name in names if name not in self.peft_config]
        self._check_stacked_names(stacked)
        for name in names:
            if name in self.peft_config:
                for parameter in self._adapter_parameters(name):
                    parameter.requires_grad_(requires_grad)
        if stacked:
            hooks.set_stacked_requires_grad(self._stacked_tuner, stacked, requires_grad)

    @contextlib.contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """Called by ``PeftModel.forward``/``generate`` with their kwargs: hands ``adapter_names`` to LoRA's hooks."""
        adapter_names = kwargs.get("adapter_names")
        if adapter_names is None:
            yield
            return
        self._require_stacked("adapter_names")
        kind = hooks.stacked_type(self._stacked_tuner)
        if kind not in PER_ROW_TYPES:
            raise ConfigError(
                f"adapter_names needs LoRA stacked adapters; {list(self.stacked_adapter_names)} are {kind}"
            )
        self._check_stacked_names([name for name in adapter_names if name != "__base__"])
        with hooks.stacked_forward_hooks(self._stacked_tuner, self.training, *args, **kwargs):
            yield

    # ------------------------------------------------------------------ merge / unload / delete
    def merge_and_unload(
        self, progressbar: bool = False, safe_merge: bool = False, adapter_names: list[str] | None = None
    ) -> nn.Module:
        """Merge the stacked LoRA into the base weights and remove its layers; the prompts keep working.

        The ``PeftModel`` goes on serving (and saving) the prompts on the merged base; its config forgets the
        stacked adapters and its fingerprint becomes the merged base's. Returns the merged base model, as PEFT does.
        """
        return self._unload_stacked(True, progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names)

    def unload(self) -> nn.Module:
        """Remove the stacked adapters' layers without merging them; the prompts keep working. Returns the base."""
        return self._unload_stacked(False)

    def _unload_stacked(self, merge: bool, **kwargs: Any) -> nn.Module:
        from peft_continual.prompting.fingerprint import fingerprint

        owner = self._require_stacked("merge_and_unload()" if merge else "unload()")
        tuner = self._stacked_tuner
        with torch.no_grad():
            tuner.merge_and_unload(**kwargs) if merge else tuner.unload()
        object.__setattr__(self, "_stacked_tuner", None)
        self._stacked_owner = None
        self.model.peft_config = self.peft_config  # PEFT's unload deletes it from the base model
        config = self.peft_config[owner]
        config.stacked_adapters, config.active_stacked_adapters = {}, None
        config.base_model_fingerprint = fingerprint(self.model)
        return self.model

    def delete_adapter(self, adapter_name: str) -> None:
        """Drop a prompt adapter; its stacked adapters are unloaded with it (not merged)."""
        if adapter_name == self._stacked_owner:
            self.unload()
        super().delete_adapter(adapter_name)

    def _require_stacked(self, what: str) -> str:
        if self._stacked_tuner is None:
            raise ConfigError(
                f"{what} needs stacked adapters; adapter(s) {allowed(self.peft_config)} have none "
                "(set ContinualPromptConfig(stacked_adapters=LoraConfig(...)))"
            )
        return self._stacked_owner

    def _check_stacked_names(self, names: Sequence[str]) -> None:
        unknown = sorted(set(names) - set(self.stacked_adapter_names))
        if unknown:
            raise ConfigError(
                f"unknown adapter(s) {unknown}; prompt adapters: {allowed(self.peft_config)}, "
                f"stacked adapters: {allowed(self.stacked_adapter_names)}"
            )


def param_groups(
    model: nn.Module,
    prompt_lr: float,
    stacked_lr: float,
    weight_decay: float = 0.0,
    start_rows_lr: float | None = None,
) -> list[dict]:
    """Optimizer parameter groups: the prompt encoders at ``prompt_lr``, everything else trainable at ``stacked_lr``.

    Prompt encoders usually want a rate 5-10x above LoRA's. With ``transformers.Trainer``::

        optimizer = torch.optim.AdamW(param_groups(model, prompt_lr=1e-3, stacked_lr=2e-4))
        trainer = Trainer(model=model, args=args, ..., optimizers=(optimizer, None))  # Trainer adds the scheduler

    Args:
        model: A ``PeftModel`` of this method (or its tuner).
        prompt_lr: Learning rate of the encoders of open rounds.
        stacked_lr: Learning rate of the LoRA/IA3 weights (and of any other trainable parameter, e.g. LoRA biases).
        weight_decay: Weight decay of every group.
        start_rows_lr: Learning rate of the rows the prompts start from (``prompt_init="text"``: the init text's
            embeddings, which the encoder corrects); ``None``: ``prompt_lr``. Free rows move like prompt tuning's,
            which wants a higher rate than an encoder.

    Returns:
        Up to three groups (start rows, encoders, stacked adapters); frozen parameters are left out, empty groups
        dropped.
    """
    tuner = getattr(model, "base_model", model)
    prompt_ids = {id(p) for p in tuner.prompt_parameters()}
    start_ids = {id(p) for p in _start_row_parameters(tuner)} if start_rows_lr is not None else set()
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) in start_ids], "lr": start_rows_lr, "weight_decay": weight_decay},
        {
            "params": [p for p in trainable if id(p) in prompt_ids and id(p) not in start_ids],
            "lr": prompt_lr,
            "weight_decay": weight_decay,
        },
        {"params": [p for p in trainable if id(p) not in prompt_ids], "lr": stacked_lr, "weight_decay": weight_decay},
    ]
    return [group for group in groups if group["params"]]


def _start_row_parameters(tuner: nn.Module) -> Iterator[nn.Parameter]:
    """The start rows of every open round's encoder (none for NeMo's encoder or plain prompt tuning)."""
    for module in tuner.modules():
        start_rows = getattr(module, "start_rows", None)
        if isinstance(start_rows, nn.ParameterDict):
            yield from start_rows.parameters()
