"""Every hook into PEFT internals that the continual prompt method needs, in one place.

PEFT 0.21 has no plugin API for new methods: ``PeftType`` is a closed ``Enum`` and ``register_peft_method`` refuses
a name that is not one of its members. The route used here (checked on PEFT 0.21.2, pinned by
``tests/tuners/continual_prompt/test_peft_compat.py``):

1. add the member ``CONTINUAL_PROMPT`` to ``PeftType`` (``add_peft_type``);
2. call ``register_peft_method`` with a ``PeftConfig`` subclass (not a ``PromptLearningConfig``: PEFT's prompt
   learning path dispatches on hard-coded types and refuses ``is_trainable=True`` on load) and a ``BaseTuner``
   subclass (``register``);
3. let the tuner own its state as tuner-level attributes (``PeftTunerBase``): PEFT saves every child module,
   parameter and buffer of a ``BaseTuner`` except ``model``, and ``get_peft_model`` returns a
   ``PeftModelForCausalLM`` whose ``forward``/``generate`` pass unknown keyword arguments to the tuner and whose
   attribute lookup falls through to the tuner's own methods.

State attribute names start with the method prefix and hold one entry per adapter name (``continual_prompt_table
.default...``), because ``PeftModel.load_adapter`` reports a missing key only when it contains both.

Three methods of ``PeftModel`` itself and PEFT's config reader are wrapped (``patch_peft_model``); the first three
leave every other PEFT method untouched:

4. ``save_pretrained`` writes into a staging folder and moves each file into place with ``os.replace``, so a save
   that fails midway leaves the previous files whole (PEFT writes straight into the target);
5. ``disable_adapter`` switches the tuner off and on (PEFT's version looks for adapter layers, and this tuner
   injects none, so it raises "No adapter layers found");
5b. ``load_adapter`` checks a local folder of this method first (``safe_load``: safetensors only, damaged files
   refused with their path), since PEFT falls back to ``torch.load`` of a pickle.
5c. ``PeftConfig.from_json_file`` (PEFT's one reader of ``adapter_config.json``, used by ``PeftModel.from_pretrained``,
   ``PeftConfig.from_pretrained`` and ``AutoPeftModel*`` before anything else) raises ``AdapterFileError`` naming the
   file for a file that is not JSON or not a JSON object, for every PEFT method: PEFT's raw ``JSONDecodeError`` names
   neither. Both are ``ValueError``s.
5d. (in the sibling ``_peft_compat_hub``, with ``PeftModel.push_to_hub``) ``PeftConfig.from_pretrained`` (the same
   entry point) says why a Hub adapter cannot be found (no such repository,
   no such revision, no config in it, not cached while offline) where PEFT says only "Can't find
   'adapter_config.json'"; the ``AdapterFileError`` keeps PEFT's ``ValueError`` as its cause.

LoRA/IA3 stacked under the prompts (``stacked``) are PEFT's own: its ``LoraModel``/``IA3Model`` tuner, built on the
base model that the prompt tuner wraps; the reaches into that tuner are in the sibling ``_peft_compat_stacked``. Here:

6. ``PeftTunerBase._get_adapter_state_dict``/``_remap_adapter_state_dict_for_load`` save the stacked layers only
   with the prompt adapter that owns them, and refuse a file that lacks some of their weights.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peft import PeftModel
from peft.config import PeftConfigMixin
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.tuners.tuners_utils import BaseTuner
from peft.utils import CONFIG_NAME
from peft.utils.peft_types import PeftType, register_peft_method
from torch import nn

from peft_continual._io import files_into_place
from peft_continual.errors import ConfigError
from peft_continual.model_card import write_table_card
from peft_continual.tuners.continual_prompt._peft_compat_stacked import stacked_state_keys
from peft_continual.tuners.continual_prompt.safe_load import (
    check_adapter_weights,
    check_config_object,
    check_table_shapes,
    damaged_config,
    hub_adapter_folder,
    local_adapter_folder,
    read_adapter_config,
)
from peft_continual.version import __version__

METHOD_NAME = "continual_prompt"
"""Name of the method as PEFT knows it (``register_peft_method(name=...)``); ``PeftType`` member is its upper case."""

PREFIX = METHOD_NAME + "_"
"""PEFT's per-method prefix; every saved key of the method contains it."""

TABLE_ATTR = PREFIX + "table"
"""Tuner attribute holding ``{adapter_name: PromptTable}``."""

ENCODER_ATTR = PREFIX + "encoder"
"""Tuner attribute holding ``{adapter_name: TaskPromptEncoder}`` while a training round is open."""


def add_peft_type(name: str = METHOD_NAME.upper()) -> PeftType:
    """Add ``name`` as a member of PEFT's closed ``PeftType`` enum (idempotent) and return the member.

    ``register_peft_method`` checks ``name.upper() in list(PeftType)`` and PEFT reads configs back with
    ``PeftType(value)``, so the member must be visible to iteration, value lookup, name lookup and attribute access.
    """
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    setattr(PeftType, name, member)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    return member


PEFT_TYPE = add_peft_type()
"""``PeftType.CONTINUAL_PROMPT``; importing this module adds it."""


def register(config_cls: type, model_cls: type) -> None:
    """Register the method with PEFT; calling it again with the same classes does nothing.

    A second call with other classes (a re-imported module) replaces the mapping entries, since
    ``register_peft_method`` itself refuses a name twice.
    """
    if (
        PEFT_TYPE_TO_TUNER_MAPPING.get(PEFT_TYPE) is model_cls
        and PEFT_TYPE_TO_CONFIG_MAPPING.get(PEFT_TYPE) is config_cls
    ):
        return
    if PEFT_TYPE in PEFT_TYPE_TO_TUNER_MAPPING:
        PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] = config_cls
        PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] = model_cls
        PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE] = PREFIX
        return
    register_peft_method(name=METHOD_NAME, config_cls=config_cls, model_cls=model_cls, prefix=PREFIX)


class PeftTunerBase(BaseTuner):
    """A ``BaseTuner`` that wraps nothing: its state is a table and an encoder per adapter name.

    PEFT's ``BaseTuner.inject_adapter`` replaces target modules with adapter layers; this method replaces no module,
    so ``inject_adapter`` is overridden to call ``_build_adapter`` instead, and the hooks PEFT calls on tuners that
    walk ``BaseTunerLayer`` modules are given their meaning here (state-dict key mapping, enabling/disabling).
    Subclasses implement ``_build_adapter(adapter_name, config)``.
    """

    prefix = PREFIX
    tuner_layer_cls = nn.Module  # never used to find layers: this tuner injects none
    target_module_mapping: dict[str, list[str]] = {}

    def __init__(self, model: nn.Module, peft_config: Any, adapter_name: str, **kwargs: Any) -> None:
        self._adapters_enabled = True
        super().__init__(model, peft_config, adapter_name, **kwargs)

    def inject_adapter(self, model: nn.Module, adapter_name: str, **_: Any) -> None:
        """Freeze the base model and build this adapter's table and encoder (called by ``BaseTuner.__init__``)."""
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for attr in (TABLE_ATTR, ENCODER_ATTR):
            if not hasattr(self, attr):
                setattr(self, attr, nn.ModuleDict())
        self._build_adapter(adapter_name, self.peft_config[adapter_name])

    def _build_adapter(self, adapter_name: str, config: Any) -> None:
        """Create the state of ``adapter_name`` from its config (the subclass's job)."""
        raise NotImplementedError

    def _create_and_replace(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__} replaces no module of the base model")

    def _enable_adapter_layers(self, enabled: bool = True) -> None:
        """Backs ``disable_adapter_layers()``/``enable_adapter_layers()`` and ``with model.disable_adapter():``.

        Disabled, the base model runs alone (placeholder ids are embedded as ordinary tokens). This is the one switch
        that ``disable_adapter`` uses, so adapters stacked under this tuner can be switched here too.
        """
        self._adapters_enabled = enabled

    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        """Make ``adapter_name`` active; its encoder is trainable unless ``inference_mode``."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        self.active_adapter = adapter_name
        for name in names:
            for parameter in self._adapter_parameters(name):
                parameter.requires_grad_(not inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        """Drop an adapter's config, table and encoder."""
        del self.peft_config[adapter_name]
        for attr in (TABLE_ATTR, ENCODER_ATTR):
            modules = getattr(self, attr)
            if adapter_name in modules:  # ModuleDict.pop takes no default
                del modules[adapter_name]
        remaining = list(self.peft_config)
        self.active_adapter = remaining[0] if remaining else []

    def _adapter_parameters(self, adapter_name: str) -> Iterator[nn.Parameter]:
        encoders = getattr(self, ENCODER_ATTR)
        if adapter_name in encoders:
            yield from encoders[adapter_name].parameters()

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """Encoders are built in float32 whatever the base dtype (PEFT's ``autocast_adapter_dtype`` default)."""

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """``base_model.continual_prompt_table.default.x`` -> ``base_model.continual_prompt_table.x`` (saved key).

        PEFT's default drops the adapter name only when it is the last or second-to-last part of the key, which
        would leave it inside deeper encoder keys; saved files here never hold the adapter name, so an adapter saved
        as ``default`` loads under any name.
        """
        for attr in (TABLE_ATTR, ENCODER_ATTR):
            marker = f"{attr}.{adapter_name}."
            if marker in key:
                return key.replace(marker, f"{attr}.", 1)
        return key

    def _word_embeddings(self) -> nn.Module:
        """The base model's input embedding module (frozen)."""
        return self.model.get_input_embeddings()

    @classmethod
    def _get_adapter_state_dict(cls, model: nn.Module, config: Any, adapter_name: str, **kwargs: Any) -> dict:
        """PEFT's selection (this tuner's attributes and every tuner layer), without stacked layers it does not own.

        The keys of stacked layers keep their own adapter names (``...q_proj.lora_A.lora.weight``): saved as they are,
        they load as they are, whatever name the prompt adapter is loaded under.
        """
        selected = super()._get_adapter_state_dict(model=model, config=config, adapter_name=adapter_name, **kwargs)
        if getattr(config, "stacked_adapters", None):
            return selected
        return {key: value for key, value in selected.items() if f".{TABLE_ATTR}." in key or f".{ENCODER_ATTR}." in key}

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model: nn.Module, config: Any, adapter_name: str, state_dict: dict):
        """PEFT's remapping; a file that lacks weights of a stacked adapter is refused (PEFT would not report them)."""
        remapped = super()._remap_adapter_state_dict_for_load(
            model=model, config=config, adapter_name=adapter_name, state_dict=state_dict
        )
        names = list(getattr(config, "stacked_adapters", None) or ())
        missing = sorted(stacked_state_keys(model, names) - set(remapped)) if names else []
        if missing:
            raise ConfigError(
                f"the file of prompt adapter {adapter_name!r} lacks {len(missing)} weight(s) of its stacked "
                f"adapter(s) {names}, e.g. {missing[0]!r}; it was saved without them or by another model"
            )
        return remapped


# ---------------------------------------------------------------------------------------------- PeftModel hooks

STAGING_PREFIX = ".partial-"
"""Name prefix of the staging folder that ``save_pretrained`` creates inside the target folder (then removes)."""

_ORIGINAL = "_peft_original"


def _peft_method(name: str) -> Any:
    """PEFT's own ``PeftModel.<name>``, even after ``patch_peft_model`` (or a re-import of this module) wrapped it."""
    method = PeftModel.__dict__[name] if name in PeftModel.__dict__ else getattr(PeftModel, name)  # or inherited
    return getattr(method, _ORIGINAL, method)


peft_save_pretrained = _peft_method("save_pretrained")
"""PEFT's ``PeftModel.save_pretrained``, unwrapped."""

peft_disable_adapter = _peft_method("disable_adapter")
"""PEFT's ``PeftModel.disable_adapter``, unwrapped."""

peft_load_adapter = _peft_method("load_adapter")
"""PEFT's own ``PeftModel.load_adapter``, unwrapped."""

_SAVE_SIGNATURE = inspect.signature(peft_save_pretrained)
peft_from_json_file = getattr(
    PeftConfigMixin.__dict__["from_json_file"].__func__, _ORIGINAL, PeftConfigMixin.__dict__["from_json_file"].__func__
)
"""PEFT's ``PeftConfigMixin.from_json_file`` (a classmethod's function), unwrapped."""


def from_json_file(cls: type, path_json_file: str, **kwargs: Any) -> dict[str, Any]:
    """PEFT's reader of ``adapter_config.json``; a file that is not JSON, or holds no JSON object, raises
    ``AdapterFileError`` with its path (PEFT's ``JSONDecodeError`` names no file)."""
    try:
        with open(path_json_file, encoding="utf-8") as file:
            data = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise damaged_config(path_json_file, error) from None
    check_config_object(path_json_file, data)  # PEFT's reader fails on any other JSON value with a TypeError
    return peft_from_json_file(cls, path_json_file, **kwargs)


@functools.wraps(peft_save_pretrained, assigned=("__name__", "__qualname__"))  # PEFT's signature for help()
def save_pretrained(self: PeftModel, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
    """PEFT's ``save_pretrained``; for this method each file is written in full before it replaces the old one.

    The model card (``README.md``) is this method's own (``peft_continual.model_card``), not PEFT's blank template.

    PEFT writes ``adapter_model.safetensors``, ``adapter_config.json`` and ``README.md`` (plus ``<adapter>/`` folders
    for other adapter names) straight into ``save_directory``. Here it writes them into a staging folder inside
    ``save_directory`` (same file system, so the rename is atomic), then each file is flushed to disk and moved into
    place with ``os.replace``, the ``adapter_config.json`` files last: a save that fails midway leaves the previous
    files intact, and a first save that fails leaves no loadable half adapter. Trainer checkpoints and
    ``push_to_hub`` call this method, so they get the same guarantee. Other processes of a distributed run
    (``is_main_process=False``) and other PEFT methods take PEFT's path unchanged.
    """
    arguments = _SAVE_SIGNATURE.bind(self, save_directory, *args, **kwargs).arguments
    is_main_process = arguments.get("is_main_process", True)
    if not isinstance(self.base_model, PeftTunerBase) or not is_main_process or os.path.isfile(save_directory):
        return peft_save_pretrained(self, save_directory, *args, **kwargs)
    for config in self.peft_config.values():  # the version that wrote the file (ContinualPromptConfig's field)
        if hasattr(config, "peft_continual_version"):
            config.peft_continual_version = __version__
    with files_into_place(Path(save_directory), STAGING_PREFIX, last=[CONFIG_NAME], keep=["README.md"]) as staging:
        peft_save_pretrained(self, str(staging), *args, **kwargs)
        selected = arguments.get("selected_adapters") or list(self.peft_config)
        # PEFT's blank card template is replaced by the table's own card (updated, if one was there)
        write_table_card(staging, self.peft_config[selected[0]], name=Path(save_directory).name)
    return None


@functools.wraps(peft_load_adapter, assigned=("__name__", "__qualname__"))
def load_adapter(self: PeftModel, model_id: str | os.PathLike, adapter_name: str, *args: Any, **kwargs: Any) -> Any:
    """PEFT's ``load_adapter``; an adapter of this method, in a local folder or on the Hub, is checked first
    (``safe_load``): safetensors only, never a pickle, a damaged file refused with its path, table shapes as the
    config says, before anything is loaded."""
    folder = local_adapter_folder(model_id, kwargs.get("subfolder"))
    if folder is None:  # a Hub repository: its files of this method are fetched into the cache and checked there
        folder = hub_adapter_folder(model_id, PEFT_TYPE.value, **kwargs)
    config = read_adapter_config(folder) if folder is not None else {}
    if config.get("peft_type") == PEFT_TYPE.value:
        check_table_shapes(folder, config, check_adapter_weights(folder))
    return peft_load_adapter(self, model_id, adapter_name, *args, **kwargs)


@contextlib.contextmanager
def disable_adapter(self: PeftModel) -> Iterator[None]:
    """``with model.disable_adapter():`` runs the plain base model; the prompts are back after the block.

    For this method it switches the tuner off with ``disable_adapter_layers()`` (placeholder ids are then embedded
    as ordinary tokens) and back on afterwards, unless it was already off. Other PEFT methods take PEFT's path.
    """
    if not isinstance(self.base_model, PeftTunerBase):
        with peft_disable_adapter(self):
            yield
        return
    tuner, was_disabled = self.base_model, self._adapters_disabled
    was_enabled = tuner._adapters_enabled
    try:
        tuner.disable_adapter_layers()
        self._adapters_disabled = True
        yield
    finally:
        if was_enabled:
            tuner.enable_adapter_layers()
        self._adapters_disabled = was_disabled


def patch_peft_model() -> None:
    """Install ``save_pretrained``, ``load_adapter``, ``disable_adapter`` and (``_peft_compat_hub``) ``push_to_hub``
    on ``PeftModel`` (and so on its subclasses), ``from_json_file`` and the Hub-aware config readers on PEFT's
    configs; idempotent."""
    from peft_continual.tuners.continual_prompt import _peft_compat_hub as hub  # it builds on this module

    for name, hook, original in (
        ("save_pretrained", save_pretrained, peft_save_pretrained),
        ("load_adapter", load_adapter, peft_load_adapter),
        ("disable_adapter", disable_adapter, peft_disable_adapter),
        ("push_to_hub", hub.push_to_hub, hub.peft_push_to_hub),
    ):
        setattr(hook, _ORIGINAL, original)
        setattr(PeftModel, name, hook)
    setattr(from_json_file, _ORIGINAL, peft_from_json_file)
    PeftConfigMixin.from_json_file = classmethod(from_json_file)
    for name, hook, original in (
        ("from_pretrained", hub.config_from_pretrained, hub.peft_config_from_pretrained),
        ("_get_peft_type", hub.get_peft_type, hub.peft_get_peft_type),
    ):
        setattr(hook, _ORIGINAL, original)
        setattr(PeftConfigMixin, name, classmethod(hook))
