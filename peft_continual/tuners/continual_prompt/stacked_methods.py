"""The tuner's methods for LoRA/IA3 stacked under the prompts: switches, per-row adapters, training flags, merging.

``ContinualPromptModel`` inherits them (``class ContinualPromptModel(StackedAdapterMethods, PeftTunerBase)``), so
PEFT's calls (``disable_adapter()``, ``set_requires_grad``, ``merge_and_unload``, ``adapter_names=[...]``) reach the
stacked adapters through one override chain; the state they act on is one ``StackedAdapters`` object
(``stacked.py``), and the prompts' own methods stay in ``model.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from torch import nn

from peft_continual.errors import ConfigError, allowed
from peft_continual.tuners.continual_prompt.fingerprint import fingerprint
from peft_continual.tuners.continual_prompt.stacked import StackedAdapters, check_stacked_names


class StackedAdapterMethods:
    """What a ``ContinualPromptModel`` offers for its stacked LoRA/IA3 adapters (none of it needs any).

    A mixin placed before PEFT's ``BaseTuner``: its overrides (``inject_adapter``, ``_enable_adapter_layers``,
    ``delete_adapter``...) call ``super()``, which is PEFT's.
    """

    _stacked: StackedAdapters | None = None  # PEFT's LoraModel/IA3Model on the same base, and its switch
    _prompts_enabled: bool = True

    @property
    def stacked_tuner(self) -> Any:
        """PEFT's tuner of the stacked adapters (``LoraModel``/``IA3Model``), or ``None``."""
        return self._stacked.tuner if self._stacked else None

    @property
    def stacked_adapter_names(self) -> tuple[str, ...]:
        """Names of the stacked adapters, in config order (the names of ``adapter_names=[...]``)."""
        return self._stacked.names if self._stacked else ()

    def stacked_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the stacked adapters' layers, trainable or not."""
        if self._stacked:
            yield from self._stacked.parameters()

    def inject_adapter(self, model: nn.Module, adapter_name: str, **kwargs: Any) -> None:
        """Build a prompt adapter (it freezes the base model, and with it any stacked layer: their flags are kept)."""
        flags = [(parameter, parameter.requires_grad) for parameter in self.stacked_parameters()]
        super().inject_adapter(model, adapter_name, **kwargs)
        for parameter, flag in flags:
            parameter.requires_grad_(flag)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """PEFT's cast of LoRA/IA3 weights to float32 on a 16-bit base (what ``PeftModel`` does for LoRA alone)."""
        if self._stacked and adapter_name == self._stacked.owner:
            self._stacked.cast_dtype(autocast_adapter_dtype)

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        """The master switch (``disable_adapter()``, ``disable_adapter_layers()``): prompts and stacked adapters."""
        super()._enable_adapter_layers(enabled)
        if self._stacked:
            self._stacked.sync(self._adapters_enabled)

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
        stacked = self._require_stacked("disable_stacked_adapters()")
        was = stacked.enabled
        stacked.enabled = False
        stacked.sync(self._adapters_enabled)
        try:
            yield
        finally:
            stacked.enabled = was
            if self._stacked is stacked:  # not unloaded inside the block
                stacked.sync(self._adapters_enabled)

    def set_stacked_adapter(self, adapter_name: str | Sequence[str], inference_mode: bool = False) -> None:
        """Make stacked adapter(s) active for rows without ``adapter_names``; several active ones add up.

        As PEFT's ``set_adapter``: the active adapters become trainable unless ``inference_mode``, the others frozen.
        The choice is saved (``active_stacked_adapters``).
        """
        stacked = self._require_stacked("set_stacked_adapter()")
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        check_stacked_names(names, stacked, list(self.peft_config))
        stacked.set_active(names, inference_mode)
        self.peft_config[stacked.owner].active_stacked_adapters = names

    def set_requires_grad(self, adapter_names: str | Sequence[str], requires_grad: bool = True) -> None:
        """PEFT's ``model.set_requires_grad``: a prompt adapter name means its encoder, a stacked name its layers.

        Staged training freezes one side: ``model.set_requires_grad("lora", False)`` trains the prompts alone,
        ``model.set_requires_grad("default", False)`` (the prompt adapter) trains the LoRA alone.
        """
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        stacked = [name for name in names if name not in self.peft_config]
        check_stacked_names(stacked, self._stacked, list(self.peft_config))
        if stacked:
            self._stacked.set_requires_grad(stacked, requires_grad)
        for name in names:
            if name in self.peft_config:
                for parameter in self._adapter_parameters(name):
                    parameter.requires_grad_(requires_grad)

    @contextlib.contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """Called by ``PeftModel.forward``/``generate`` with their kwargs: hands ``adapter_names`` to LoRA's hooks."""
        adapter_names = kwargs.get("adapter_names")
        if adapter_names is None:
            yield
            return
        stacked = self._require_stacked("adapter_names")
        stacked.check_per_row()
        check_stacked_names([name for name in adapter_names if name != "__base__"], stacked, list(self.peft_config))
        with stacked.per_row_hooks(self.training, *args, **kwargs):
            yield

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
        stacked = self._require_stacked("merge_and_unload()" if merge else "unload()")
        stacked.remove(merge, **kwargs)
        self._stacked = None
        self.model.peft_config = self.peft_config  # PEFT's unload deletes it from the base model
        config = self.peft_config[stacked.owner]
        config.stacked_adapters, config.active_stacked_adapters = {}, None
        config.base_model_fingerprint = fingerprint(self.model)
        return self.model

    def delete_adapter(self, adapter_name: str) -> None:
        """Drop a prompt adapter; its stacked adapters are unloaded with it (not merged)."""
        if self._stacked and adapter_name == self._stacked.owner:
            self.unload()
        super().delete_adapter(adapter_name)

    def _require_stacked(self, what: str) -> StackedAdapters:
        if self._stacked is None:
            raise ConfigError(
                f"{what} needs stacked adapters; adapter(s) {allowed(self.peft_config)} have none "
                "(set ContinualPromptConfig(stacked_adapters=LoraConfig(...)))"
            )
        return self._stacked
