"""Pins of the PEFT behaviours that ``peft_continual.tuners.continual_prompt._peft_compat`` relies on (checked on PEFT 0.21.2).

Each assertion message says which behaviour changed, so a PEFT upgrade that breaks the method fails here first
and says where to look.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import warnings
from pathlib import Path
from unittest import mock

import peft.peft_model
import pytest
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, PeftModelForCausalLM
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils.peft_types import PeftType, register_peft_method
from safetensors.torch import load_file, save_file

from peft_continual.errors import AdapterFileError, ConfigError
from peft_continual.tuners.continual_prompt import (
    PEFT_TYPE,
    ContinualPromptConfig,
    ContinualPromptModel,
)
from peft_continual.tuners.continual_prompt import (
    _peft_compat as compat,
)
from peft_continual.tuners.continual_prompt import (
    _peft_compat_hub as compat_hub,
)
from peft_continual.tuners.continual_prompt import (
    _peft_compat_stacked as stacked_compat,
)
from tests.tuners.continual_prompt.conftest import TEMPLATE_A, make_batch, make_peft_model, tiny_model

CHANGED = "PEFT changed: "


def test_peft_type_is_still_closed():
    with pytest.raises(ValueError, match="Unknown PEFT type"):
        register_peft_method(name="not_a_member_of_peft_type", config_cls=object, model_cls=object)
    # If this fails, PEFT opened PeftType: add_peft_type may no longer be needed (keep it working either way).


def test_our_member_behaves_like_a_peft_type():
    assert PeftType("CONTINUAL_PROMPT") is PEFT_TYPE, CHANGED + "PeftType(value) lookup"
    assert PeftType["CONTINUAL_PROMPT"] is PEFT_TYPE and PeftType.CONTINUAL_PROMPT is PEFT_TYPE
    assert PEFT_TYPE in list(PeftType), CHANGED + "register_peft_method checks `name.upper() in list(PeftType)`"
    assert isinstance(PEFT_TYPE, PeftType) and PEFT_TYPE == "CONTINUAL_PROMPT"
    assert json.dumps(PEFT_TYPE) == '"CONTINUAL_PROMPT"', "adapter_config.json must hold the plain name"


def test_registration_fills_peft_mappings_and_is_idempotent():
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] is ContinualPromptConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PEFT_TYPE] is ContinualPromptModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PEFT_TYPE] == "continual_prompt_"
    assert compat.add_peft_type() is PEFT_TYPE
    compat.register(ContinualPromptConfig, ContinualPromptModel)  # a second import must not raise
    assert list(PeftType).count(PEFT_TYPE) == 1


def test_get_peft_model_wraps_our_tuner_in_peft_model_for_causal_lm():
    model = make_peft_model()
    assert type(model) is PeftModelForCausalLM, CHANGED + "get_peft_model picks the wrapper by task_type"
    assert isinstance(model.base_model, ContinualPromptModel), (
        CHANGED + "PeftModel builds PEFT_TYPE_TO_TUNER_MAPPING[type]"
    )
    assert model.freeze_tasks.__self__ is model.base_model, CHANGED + "PeftModel.__getattr__ forwards to the tuner"
    assert model.get_base_model() is model.base_model.model


def test_forward_and_generate_pass_our_keys_to_the_tuner():
    model = make_peft_model()
    batch = make_batch([("sentiment", [4, [5, 6]])])
    with mock.patch.object(ContinualPromptModel, "forward", autospec=True, return_value="out") as forward:
        assert model(**batch) == "out"
    assert forward.call_args.kwargs["tasknames"] == ["sentiment"], CHANGED + "PeftModelForCausalLM.forward kwargs"
    assert forward.call_args.kwargs["virtual_token_mask"] is batch["virtual_token_mask"]
    with mock.patch.object(ContinualPromptModel, "generate", autospec=True, return_value="gen") as generate:
        assert model.generate(**batch, max_new_tokens=2) == "gen"
    assert generate.call_args.kwargs["tasknames"] == ["sentiment"], CHANGED + "PeftModelForCausalLM.generate kwargs"


def test_save_writes_tuner_state_without_adapter_name_and_no_base_weights(tmp_path):
    model = make_peft_model()
    model.freeze_tasks()
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert set(saved) == {
        "base_model.continual_prompt_table.task:sentiment",
        "base_model.continual_prompt_table.task:topic",
    }, CHANGED + "save_pretrained selects BaseTuner attributes (BaseTuner._get_adapter_state_dict)"
    assert not (tmp_path / "adapter_model.bin").exists()


def test_from_pretrained_rebuilds_our_config_and_allows_is_trainable(tmp_path):
    model = make_peft_model(encoder_type="mlp", encoder_hidden_size=8)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model(), tmp_path, is_trainable=True)
    config = loaded.peft_config["default"]
    assert type(config) is ContinualPromptConfig, CHANGED + "from_pretrained maps peft_type to our config class"
    assert config.to_dict() == model.peft_config["default"].to_dict(), CHANGED + "config fields dropped on load"
    assert isinstance(loaded.base_model, ContinualPromptModel)


def test_load_reports_missing_keys_that_contain_prefix_and_adapter_name(tmp_path, monkeypatch):
    model = make_peft_model()
    model.freeze_tasks()
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(path)
    del tensors["base_model.continual_prompt_table.task:topic"]
    save_file(tensors, path)
    with pytest.raises(AdapterFileError, match=r"no rows for task\(s\) \['topic'\]"):  # our check, before PEFT
        PeftModel.from_pretrained(tiny_model(), tmp_path)
    monkeypatch.setattr(compat, "check_table_shapes", lambda *args: None)  # PEFT's own report, behind it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(tiny_model(), tmp_path)
    messages = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
    assert messages and "continual_prompt_table.default.task:topic" in messages[0], (
        CHANGED + "PeftModel.load_adapter filters missing keys by method prefix and adapter name"
    )
    loaded(**make_batch([("sentiment", [4, [5, 6]])]))  # the rows that were loaded serve
    with pytest.raises(ConfigError, match="'topic' were never loaded"):
        loaded(**make_batch([("topic", [[5], 2, [6], 3])]))


def test_auto_peft_model_for_causal_lm_loads_from_a_local_base(tmp_path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    tiny_model().save_pretrained(tmp_path / "base")
    config = ContinualPromptConfig(templates=[TEMPLATE_A], taskname_token_ids={"sentiment": [3]})
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), config)
    model.freeze_tasks()
    model.save_pretrained(tmp_path / "adapter")
    assert config.base_model_name_or_path == str(tmp_path / "base")
    loaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")
    assert isinstance(loaded.base_model, ContinualPromptModel), CHANGED + "AutoPeftModelForCausalLM dispatch"
    assert loaded.prompt_table.row_hashes() == model.prompt_table.row_hashes()


def test_peft_model_subclasses_reach_our_peft_model_hooks():
    for name, hook in (
        ("save_pretrained", compat.save_pretrained),
        ("disable_adapter", compat.disable_adapter),
        ("load_adapter", compat.load_adapter),
        ("push_to_hub", compat_hub.push_to_hub),
    ):
        assert getattr(PeftModelForCausalLM, name) is hook, CHANGED + f"PeftModelForCausalLM overrides {name}"
    compat.patch_peft_model()  # a second import must not wrap twice
    assert PeftModel.save_pretrained is compat.save_pretrained
    assert compat.peft_save_pretrained.__module__ == "peft.peft_model"
    assert compat.peft_disable_adapter.__module__ == "peft.peft_model"
    assert (
        compat_hub.peft_push_to_hub.__module__ == "transformers.utils.hub"
    )  # PushToHubMixin's: it overwrites the card
    assert "is_main_process" in inspect.signature(compat.peft_save_pretrained).parameters


def test_peft_save_writes_straight_into_the_folder(tmp_path, monkeypatch):
    """Why ``save_pretrained`` is wrapped: PEFT's own save leaves a truncated file when it fails midway."""

    def write_half(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 8)
        raise OSError("disk full")

    model = make_peft_model()
    monkeypatch.setattr(peft.peft_model, "safe_save_file", write_half)
    with pytest.raises(OSError, match="disk full"):
        compat.peft_save_pretrained(model, tmp_path)
    assert (tmp_path / "adapter_model.safetensors").read_bytes() == b"\x00" * 8, (
        CHANGED + "save_pretrained no longer writes straight into the folder: the staging hook may be unneeded"
    )


def test_peft_save_writes_only_inside_the_folder_and_updates_its_model_card(tmp_path):
    """The staging folder relies on both: every file lands under the given folder, and ``README.md`` is read there."""
    model = make_peft_model()
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "README.md").write_text("# Notes\n\nkeep me\n")
    compat.peft_save_pretrained(model, str(target))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"], CHANGED + "save_pretrained wrote elsewhere"
    assert sorted(p.name for p in target.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ], CHANGED + "the files save_pretrained writes"
    assert "keep me" in (target / "README.md").read_text(), CHANGED + "create_or_update_model_card reads the folder"


def test_peft_disable_adapter_looks_for_adapter_layers_that_our_tuner_has_not():
    """Why ``disable_adapter`` is wrapped: PEFT's non-prompt-learning branch calls ``get_model_status()``."""
    model = make_peft_model()
    with pytest.raises(ValueError, match="No adapter layers found"), compat.peft_disable_adapter(model):
        pass
    # If this fails, PEFT's disable_adapter works without tuner layers: the disable_adapter hook may be unneeded.
    assert model._adapters_disabled is False, CHANGED + "PeftModel._adapters_disabled (set by our disable_adapter)"
    model._adapters_disabled = True
    assert model.has_active_enabled_adapter is False, CHANGED + "has_active_enabled_adapter reads _adapters_disabled"
    model._adapters_disabled = False


# ---------------------------------------------------------------------------------------------- stacked adapters
# What ``_peft_compat_stacked`` and the stacking half of ``PeftTunerBase`` (``_peft_compat``) rely on.

STACKED_LORA = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)


def stacked_model(stacked=None):
    return make_peft_model(templates=(TEMPLATE_A,), stacked_adapters=stacked or {"lora": STACKED_LORA})


def test_build_stacked_tuner_builds_what_inject_adapter_in_model_injects():
    from peft import IA3Config, IA3Model, LoraModel, inject_adapter_in_model

    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.LORA] is LoraModel, CHANGED + "the LoRA tuner class"
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.IA3] is IA3Model, CHANGED + "the IA3 tuner class"
    for config in (STACKED_LORA, IA3Config(target_modules=["q_proj"], feedforward_modules=[])):
        ours = stacked_compat.build_stacked_tuner(tiny_model(), {"a": config, "b": config})
        theirs = inject_adapter_in_model(config, tiny_model(), adapter_name="a")
        layer = ours.model.model.layers[0].self_attn.q_proj
        assert type(layer) is type(theirs.model.layers[0].self_attn.q_proj), CHANGED + "inject_adapter_in_model"
        assert ours.active_adapters == ["a"], CHANGED + "the first adapter of a tuner is the active one"
        assert sorted(ours.peft_config) == ["a", "b"] and set(layer.active_adapters) == {"a"}, (
            CHANGED + "tuner.inject_adapter adds a second, inactive adapter"
        )


def test_peft_model_passes_adapter_names_to_the_tuner_hook_and_strips_them():
    model = stacked_model().eval()
    batch = make_batch([("sentiment", [4, [5, 6]])])
    seen = {}

    @contextlib.contextmanager
    def hook(self, *args, **kwargs):
        seen["hook"] = kwargs.get("adapter_names")
        yield

    with (
        mock.patch.object(ContinualPromptModel, "_enable_peft_forward_hooks", hook),
        mock.patch.object(ContinualPromptModel, "forward", autospec=True, return_value="out") as forward,
    ):
        model(**batch, adapter_names=["lora"])
    assert seen["hook"] == ["lora"], (
        CHANGED + "PeftModelForCausalLM.forward calls base_model._enable_peft_forward_hooks"
    )
    assert "adapter_names" not in forward.call_args.kwargs, CHANGED + "special_peft_forward_args are stripped"
    with (
        mock.patch.object(ContinualPromptModel, "_enable_peft_forward_hooks", hook),
        mock.patch.object(ContinualPromptModel, "generate", autospec=True, return_value="gen") as generate,
    ):
        seen.clear()
        model.generate(**batch, adapter_names=["lora"], max_new_tokens=1)
    assert seen["hook"] == ["lora"] and "adapter_names" not in generate.call_args.kwargs, CHANGED + "generate"


def test_lora_forward_hooks_read_the_training_flag_of_the_tuner_itself():
    """Why ``stacked_forward_hooks`` sets ``tuner.training``: the tuner is no submodule, ``eval()`` never reaches it."""
    model = stacked_model().eval()
    assert model.stacked_tuner.training is True, CHANGED + "a tuner starts in training mode"
    with (
        pytest.raises(ValueError, match="training mode"),
        model.stacked_tuner._enable_peft_forward_hooks(adapter_names=["lora"]),
    ):
        pass


def test_peft_layer_switch_sets_requires_grad():
    """Why ``enable_stacked`` restores ``requires_grad``: PEFT's ``enable_adapter_layers`` thaws frozen layers."""
    model = stacked_model()
    model.set_requires_grad("lora", False)
    model.stacked_tuner.disable_adapter_layers()
    model.stacked_tuner.enable_adapter_layers()
    assert all(p.requires_grad for p in model.stacked_parameters()), CHANGED + "enable_adapters sets requires_grad"


def test_tuner_state_prefixes_restrict_to_one_adapter_name():
    model = stacked_model({"a": STACKED_LORA, "b": STACKED_LORA})
    keys = stacked_compat.stacked_state_keys(model, ["b"])
    assert keys and all(".lora_A.b." in key or ".lora_B.b." in key for key in keys), (
        CHANGED + "_get_tuner_state_dict_key_prefixes(model, adapter_name)"
    )


def test_peft_does_not_report_missing_stacked_weights(tmp_path, monkeypatch):
    """Why ``_remap_adapter_state_dict_for_load`` checks: PEFT reports missing keys only with the method prefix."""
    stacked_model().save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(path).items() if ".lora_" not in k}, path)
    monkeypatch.setattr(compat, "stacked_state_keys", lambda model, names: set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PeftModel.from_pretrained(tiny_model(), tmp_path)
    assert not [w for w in caught if "lora" in str(w.message)], CHANGED + "PEFT now reports missing LoRA keys"


def test_adapter_config_json_sorts_keys_and_lists_only_top_level_sets(tmp_path):
    """Why the active stacked adapters are saved, and why stacked configs are stored as JSON-safe dicts."""
    config = ContinualPromptConfig(templates=[TEMPLATE_A], stacked_adapters={"z": STACKED_LORA, "a": STACKED_LORA})
    config.save_pretrained(tmp_path)
    assert list(json.loads((tmp_path / "adapter_config.json").read_text())["stacked_adapters"]) == ["a", "z"], (
        CHANGED + "PeftConfig.save_pretrained sorts keys"
    )
    assert isinstance(STACKED_LORA.to_dict()["target_modules"], set), CHANGED + "to_dict keeps sets"


def test_peft_model_forwards_merge_and_set_requires_grad_to_our_tuner():
    model = stacked_model()
    assert "merge_and_unload" not in vars(PeftModel) and model.merge_and_unload.__self__ is model.base_model, (
        CHANGED + "PeftModel defines merge_and_unload"
    )
    with mock.patch.object(ContinualPromptModel, "set_requires_grad", autospec=True) as set_requires_grad:
        model.set_requires_grad("lora", False)
    set_requires_grad.assert_called_once_with(model.base_model, adapter_names="lora", requires_grad=False)


def test_import_peft_imports_bitsandbytes_when_it_is_installed():
    """Why ``python -c "import peft_continual, sys; assert 'bitsandbytes' not in sys.modules"`` fails with
    bitsandbytes installed: PEFT imports it at module level (``peft/helpers.py``). Our own modules never do
    (``tests/tuners/continual_prompt/test_stacking_quantized.py``); if this fails, add that one-line check as a subprocess test."""
    import ast

    import peft.helpers

    tree = ast.parse(Path(peft.helpers.__file__).read_text())
    top_level = [node for node in tree.body if isinstance(node, ast.Try)]
    imported = {
        alias.name for node in top_level for stmt in node.body if isinstance(stmt, ast.Import) for alias in stmt.names
    }
    assert "bitsandbytes" in imported, CHANGED + "peft.helpers no longer imports bitsandbytes at import time"


def test_peft_config_readers_are_wrapped_once_and_a_missing_local_adapter_is_named(tmp_path):
    from peft.config import PeftConfigMixin

    compat.patch_peft_model()  # a second import must not wrap twice
    assert PeftConfigMixin.__dict__["from_pretrained"].__func__ is compat_hub.config_from_pretrained
    assert PeftConfigMixin.__dict__["_get_peft_type"].__func__ is compat_hub.get_peft_type
    assert (
        compat_hub.peft_config_from_pretrained.__module__ == compat_hub.peft_get_peft_type.__module__ == "peft.config"
    )
    # no such folder, and the name is no Hub id: said so, still a ValueError (PEFT's "Can't find" as its cause)
    with pytest.raises(
        ValueError, match="folder: no such folder here, and not a Hugging Face Hub repository id"
    ) as error:
        PeftModel.from_pretrained(tiny_model(), str(tmp_path / "no" / "such" / "folder"))
    assert "Can't find 'adapter_config.json'" in str(error.value.__cause__)
