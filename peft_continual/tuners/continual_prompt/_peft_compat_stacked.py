"""The stacked-adapter side of the compat layer (sibling of ``_peft_compat``): PEFT's ``LoraModel``/``IA3Model``
kept as the tuner of LoRA/IA3 layers under the prompts, and every reach into its internals.

1. ``build_stacked_tuner`` constructs the tuner (what ``inject_adapter_in_model`` does, keeping the tuner) and adds
   further names with ``tuner.inject_adapter`` as ``PeftModel.add_adapter`` does;
2. ``PeftModel.forward``/``generate`` strip ``adapter_names`` from the kwargs after passing them to the tuner's
   ``_enable_peft_forward_hooks``, which hands them to LoRA's (``stacked_forward_hooks``);
3. PEFT's layer switch (``enable_adapters``) sets ``requires_grad``; ``enable_stacked`` puts it back;
4. ``_get_tuner_state_dict_key_prefixes(model, adapter_name)`` finds the state of one adapter's tuner layers
   (``stacked_state_keys``, which ``PeftTunerBase`` uses to save and check them).

Pinned by ``tests/tuners/continual_prompt/test_peft_compat.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.tuners_utils import BaseTuner, _filter_state_dict_by_key_prefixes, _get_tuner_state_dict_key_prefixes
from torch import nn


def build_stacked_tuner(model: nn.Module, configs: dict[str, Any]) -> BaseTuner:
    """PEFT's tuner (``LoraModel``, ``IA3Model``) for ``configs``, its layers injected into ``model`` in place.

    ``inject_adapter_in_model`` builds the same tuner and drops it; keeping it keeps PEFT's switches, merging and
    ``adapter_names`` hooks. Further names are added as ``PeftModel.add_adapter`` does.
    """
    (first, config), *rest = configs.items()
    tuner = PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type](model, config, first)
    for name, other in rest:
        tuner.peft_config[name] = other
        tuner.inject_adapter(model, name)
    return tuner


def stacked_type(tuner: BaseTuner) -> str:
    """``LORA`` or ``IA3``: the PEFT type of the stacked adapters."""
    return str(next(iter(tuner.peft_config.values())).peft_type.value)


def stacked_state_keys(model: nn.Module, adapter_names: list[str]) -> set[str]:
    """``state_dict`` keys of the tuner layers of ``adapter_names`` in ``model`` (any PEFT method's layers)."""
    prefixes = set().union(*(_get_tuner_state_dict_key_prefixes(model, adapter_name=name) for name in adapter_names))
    return set(_filter_state_dict_by_key_prefixes(model.state_dict(), prefixes))


def stacked_parameters(model: nn.Module, adapter_names: Any) -> Iterator[nn.Parameter]:
    """Parameters of the tuner layers of ``adapter_names`` in ``model``."""
    keys = stacked_state_keys(model, list(adapter_names))
    for name, parameter in model.named_parameters():
        if name in keys:
            yield parameter


@contextlib.contextmanager
def _keep_requires_grad(model: nn.Module) -> Iterator[None]:
    """PEFT's layer switches set ``requires_grad`` (on when enabled, off when disabled); put every flag back."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def enable_stacked(tuner: BaseTuner, enabled: bool) -> None:
    """Switch the stacked layers on or off; ``requires_grad`` stays as it was."""
    with _keep_requires_grad(tuner.model):
        tuner.enable_adapter_layers() if enabled else tuner.disable_adapter_layers()


def set_stacked_requires_grad(tuner: BaseTuner, adapter_names: list[str], requires_grad: bool) -> None:
    """PEFT's ``set_requires_grad`` on the stacked layers of ``adapter_names``."""
    tuner.set_requires_grad(adapter_names, requires_grad=requires_grad)


def cast_stacked_dtype(tuner: BaseTuner, adapter_names: Any, autocast_adapter_dtype: bool) -> None:
    """PEFT's float32 autocast of adapter weights on a 16-bit base (``PeftModel.__init__`` does it for LoRA alone)."""
    for name in adapter_names:
        tuner._cast_adapter_dtype(adapter_name=name, autocast_adapter_dtype=autocast_adapter_dtype)


@contextlib.contextmanager
def stacked_forward_hooks(tuner: BaseTuner, training: bool, *args: Any, **kwargs: Any) -> Iterator[None]:
    """LoRA's ``_enable_peft_forward_hooks`` (per-row ``adapter_names``, beams); it reads ``training`` off the tuner,
    which is not a registered submodule, so ``model.train()``/``eval()`` never reach it."""
    tuner.training = training
    with tuner._enable_peft_forward_hooks(*args, **kwargs):
        yield
