"""Prompts + LoRA/IA3 in one ``PeftModel`` (``ContinualPromptConfig(stacked_adapters=...)``), on the fp32 tiny model.

Training jointly and in stages, one save and one load for both, the switches, merging, per-row ``adapter_names``
and the errors. The precision matrix (bf16, int8, nf4) is ``test_stacking_matrix.py``.
"""

from __future__ import annotations

import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel, PromptTuningConfig, get_peft_model
from safetensors.torch import load_file, save_file

from peft_continual import ContinualPromptConfig
from peft_continual.errors import ConfigError
from peft_continual.tuners.continual_prompt._peft_compat import ENCODER_ATTR, TABLE_ATTR
from tests.stacking_cases import alone, train
from tests.tuners.continual_prompt.conftest import (
    MIXED_ROWS,
    TASKNAME_IDS,
    TEMPLATE_A,
    TEMPLATE_B,
    make_batch,
    tiny_model,
)

LORA = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
TWO_LORAS = {"formal": LORA, "casual": LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)}
IA3 = IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"], init_ia3_weights=False)


def stacked_model(stacked=LORA, templates=(TEMPLATE_A, TEMPLATE_B), seed: int = 0, **kwargs):
    config = ContinualPromptConfig(
        templates=list(templates), taskname_token_ids=dict(TASKNAME_IDS), stacked_adapters=stacked, **kwargs
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(tiny_model(), config)


def snapshot(parameters) -> list[torch.Tensor]:
    return [p.detach().clone() for p in parameters]


def changed(before: list[torch.Tensor], parameters) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, parameters, strict=True))


def trainable_kinds(model) -> set[str]:
    kinds = set()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            kinds.add("encoder" if f".{ENCODER_ATTR}." in name else name.split(".")[-2])  # ...lora_A.<name>.weight
    return kinds


# ---------------------------------------------------------------------------------------------- config


def test_config_stores_stacked_adapters_as_json_dicts_that_round_trip(tmp_path):
    config = ContinualPromptConfig(templates=[TEMPLATE_A], taskname_token_ids=TASKNAME_IDS, stacked_adapters=LORA)
    assert list(config.stacked_adapters) == ["lora"] and config.active_stacked_adapters == ["lora"]
    stored = config.stacked_adapters["lora"]
    assert stored["peft_type"] == "LORA" and stored["target_modules"] == ["q_proj", "v_proj"], "sets become lists"
    config.save_pretrained(tmp_path)
    loaded = ContinualPromptConfig.from_pretrained(tmp_path)
    assert loaded.stacked_adapters == config.stacked_adapters
    assert loaded.active_stacked_adapters == ["lora"]


def test_a_recipe_config_can_stack_a_lora_as_plain_data():
    """YAML/JSON recipe configs give the stacked adapters as dicts with a ``peft_type``; QLoRA is then a config."""
    from transformers import HfArgumentParser

    lora = {"peft_type": "LORA", "r": 8, "target_modules": ["q_proj", "v_proj"]}
    (config,) = HfArgumentParser(ContinualPromptConfig).parse_dict(
        {"templates": [TEMPLATE_A.to_dict()], "stacked_adapters": {"adapter": lora}}
    )
    assert config.stacked_adapters["adapter"]["r"] == 8 and config.active_stacked_adapters == ["adapter"]


@pytest.mark.parametrize(
    ("stacked", "message"),
    [
        pytest.param(PromptTuningConfig(num_virtual_tokens=2), "is PROMPT_TUNING; allowed PEFT types", id="type"),
        pytest.param({"a": LORA, "b": IA3}, r"mixes PEFT types \['IA3', 'LORA'\]", id="two-types"),
        pytest.param({"x.y": LORA}, "without '.'", id="dotted-name"),
        pytest.param({"__base__": LORA}, "not '__base__'", id="base-name"),
        pytest.param(
            LoraConfig(target_modules=["q_proj"], modules_to_save=["lm_head"]), "sets modules_to_save", id="to-save"
        ),
    ],
)
def test_config_refuses_what_cannot_be_stacked(stacked, message):
    with pytest.raises(ConfigError, match=message):
        ContinualPromptConfig(templates=[TEMPLATE_A], stacked_adapters=stacked)


def test_active_stacked_adapters_must_name_stacked_adapters():
    with pytest.raises(ConfigError, match=r"active_stacked_adapters=\['nope'\] must name.*'casual', 'formal'"):
        ContinualPromptConfig(templates=[TEMPLATE_A], stacked_adapters=TWO_LORAS, active_stacked_adapters="nope")


# ---------------------------------------------------------------------------------------------- training


def test_set_requires_grad_refuses_unknown_names():
    with pytest.raises(ConfigError, match=r"unknown adapter\(s\) \['lore'\].*prompt adapters: 'default'.*'lora'"):
        stacked_model().set_requires_grad("lore", False)


# ---------------------------------------------------------------------------------------------- save / load


@pytest.mark.integration
def test_one_save_writes_both_and_one_load_restores_both(tmp_path):
    model = stacked_model(stacked=TWO_LORAS)
    train(model, make_batch(MIXED_ROWS), steps=2)
    model.eval()
    model.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert any(f".{ENCODER_ATTR}." in key for key in keys)
    assert {key.split(".")[-2] for key in keys if ".lora_" in key} == {"formal", "casual"}, "LoRA keys keep names"
    for trainable in (False, True):
        loaded = PeftModel.from_pretrained(tiny_model(), tmp_path, is_trainable=trainable)
        assert trainable_kinds(loaded) == ({"encoder", "formal"} if trainable else set())
        with torch.no_grad():
            assert torch.equal(loaded.eval()(**make_batch(MIXED_ROWS)).logits, model(**make_batch(MIXED_ROWS)).logits)


def test_the_active_stacked_adapter_is_saved(tmp_path):
    model = stacked_model(stacked=TWO_LORAS).eval()
    model.set_stacked_adapter("casual")
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model(), tmp_path).eval()
    assert loaded.stacked_tuner.active_adapters == ["casual"]
    with torch.no_grad():
        assert torch.equal(loaded(**make_batch(MIXED_ROWS)).logits, model(**make_batch(MIXED_ROWS)).logits)


def test_a_file_without_the_lora_weights_is_refused(tmp_path):
    stacked_model().save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(path).items() if ".lora_" not in k}, path)
    with pytest.raises(ConfigError, match=r"prompt adapter 'default' lacks 8 weight\(s\).*\['lora'\]"):
        PeftModel.from_pretrained(tiny_model(), tmp_path)


def test_a_second_prompt_adapter_is_saved_without_the_lora_and_may_not_stack(tmp_path):
    model = stacked_model()
    other = ContinualPromptConfig(templates=[TEMPLATE_A], taskname_token_ids=TASKNAME_IDS)
    model.add_adapter("other", other)
    assert "lora" in trainable_kinds(model), "building another prompt adapter leaves the LoRA trainable"
    model.save_pretrained(tmp_path, selected_adapters=["other"])
    assert not [key for key in load_file(tmp_path / "other" / "adapter_model.safetensors") if ".lora_" in key]
    with pytest.raises(ConfigError, match="'default' already stacks"):
        model.add_adapter("third", ContinualPromptConfig(templates=[TEMPLATE_A], stacked_adapters={"more": LORA}))
    assert "third" not in model.peft_config and "third" not in getattr(model.base_model, TABLE_ATTR)
    with pytest.raises(ConfigError, match="has the name of a stacked adapter"):
        model.add_adapter("lora", ContinualPromptConfig(templates=[TEMPLATE_A], taskname_token_ids=TASKNAME_IDS))


# ---------------------------------------------------------------------------------------------- switches


def prompt_only_twin(model):
    """The same prompts without stacked adapters: a model whose encoder holds ``model``'s encoder weights."""
    twin = stacked_model(stacked=None)
    getattr(twin.base_model, ENCODER_ATTR)["default"].load_state_dict(model.prompt_encoder.state_dict())
    return twin.eval()


@pytest.mark.parametrize("stacked", [LORA, IA3], ids=["lora", "ia3"])
def test_switches_turn_each_part_off_and_back_on(stacked):
    model = stacked_model(stacked=stacked).eval()
    batch = make_batch(MIXED_ROWS)
    ids = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        both = model(**batch).logits
        with model.disable_stacked_adapters():
            assert torch.equal(model(**batch).logits, prompt_only_twin(model)(**batch).logits)
            with model.disable_adapter():  # nested: all off, then back to prompts only
                assert torch.equal(model(**batch).logits, tiny_model()(**ids).logits)
            assert torch.equal(model(**batch).logits, prompt_only_twin(model)(**batch).logits)
        with model.disable_prompts():
            assert torch.equal(model(**batch).logits, model.get_base_model()(**ids).logits)
        with model.disable_adapter():
            assert torch.equal(model(**batch).logits, tiny_model()(**ids).logits)
        assert torch.equal(model(**batch).logits, both)


def test_switches_keep_requires_grad():
    """PEFT's own layer switch turns ``requires_grad`` on when it enables layers; staged training must not thaw."""
    model = stacked_model()
    model.set_requires_grad("lora", False)
    with model.disable_stacked_adapters():
        pass
    with model.disable_adapter():
        pass
    assert trainable_kinds(model) == {"encoder"}


def test_unloading_inside_disable_stacked_adapters_leaves_the_prompts_on_the_plain_base():
    model = stacked_model().eval()
    batch = make_batch(MIXED_ROWS)
    with model.disable_stacked_adapters():
        prompts_only = model(**batch).logits
        model.unload()
    assert torch.equal(model(**batch).logits, prompts_only)  # leaving the block switches nothing back on


def test_disable_stacked_adapters_needs_stacked_adapters():
    with pytest.raises(ConfigError, match="disable_stacked_adapters\\(\\) needs stacked adapters"):  # noqa: SIM117
        with stacked_model(stacked=None).disable_stacked_adapters():
            pass


# ---------------------------------------------------------------------------------------------- merge / unload


def test_merge_and_unload_keeps_the_prompt_table_working(tmp_path):
    model = stacked_model().eval()
    model.freeze_tasks()
    batch = make_batch(MIXED_ROWS)
    with torch.no_grad():
        before = model(**batch).logits
        merged = model.merge_and_unload()
        after = model(**batch).logits
    assert merged is model.get_base_model() and not model.stacked_adapter_names
    assert not [name for name, _ in merged.named_modules() if "lora" in name]
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert keys and all(f".{TABLE_ATTR}." in key for key in keys), "only the table is left to save"
    merged.save_pretrained(tmp_path / "merged-base")
    from transformers import AutoModelForCausalLM

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "merged-base"), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, after)


def test_unload_drops_the_lora_and_leaves_the_prompt_only_model():
    model = stacked_model().eval()
    batch = make_batch(MIXED_ROWS)
    with torch.no_grad(), model.disable_stacked_adapters():
        prompts_only = model(**batch).logits
    model.unload()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, prompts_only)
    assert model.peft_config["default"].stacked_adapters == {}


def test_delete_adapter_unloads_its_stacked_layers():
    model = stacked_model()
    model.add_adapter("other", ContinualPromptConfig(templates=[TEMPLATE_A], taskname_token_ids=TASKNAME_IDS))
    model.delete_adapter("default")
    assert model.stacked_tuner is None
    assert not [name for name, _ in model.named_modules() if "lora" in name]


# ---------------------------------------------------------------------------------------------- mixed batches


def test_mixed_task_batch_with_lora_equals_each_row_alone():
    model = stacked_model().eval()
    batch = make_batch(MIXED_ROWS)
    with torch.no_grad():
        logits = model(**batch).logits
        for row in range(len(MIXED_ROWS)):
            single = model(**alone(batch, row)).logits[0]
            torch.testing.assert_close(logits[row, : single.shape[0]], single, atol=1e-5, rtol=0)


ROW_ADAPTERS = ["formal", "casual", "__base__", "casual"]


def test_adapter_names_pick_one_lora_per_row_in_forward():
    model = stacked_model(stacked=TWO_LORAS).eval()
    batch = make_batch(MIXED_ROWS)
    with torch.no_grad():
        logits = model(**batch, adapter_names=ROW_ADAPTERS).logits
        for row, name in enumerate(ROW_ADAPTERS):
            single = alone(batch, row)
            if name == "__base__":
                with model.disable_stacked_adapters():
                    expected = model(**single).logits[0]
            else:
                model.set_stacked_adapter(name)
                expected = model(**single).logits[0]
            torch.testing.assert_close(logits[row, : expected.shape[0]], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_beams", [1, 2])
@pytest.mark.integration
def test_adapter_names_pick_one_lora_per_row_in_generate(num_beams):
    model = stacked_model(stacked=TWO_LORAS).eval()
    batch = make_batch(MIXED_ROWS, padding_side="left")
    batch.pop("labels")
    settings = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False, "num_beams": num_beams}
    out = model.generate(**batch, adapter_names=ROW_ADAPTERS, **settings)
    length = batch["input_ids"].shape[1]
    for row, name in enumerate(ROW_ADAPTERS):
        single = alone(batch, row)
        expected = model.generate(**single, adapter_names=[name], **settings)[0, single["input_ids"].shape[1] :]
        assert torch.equal(out[row, length:], expected), f"row {row} ({name})"


@pytest.mark.parametrize(
    ("stacked", "names", "message"),
    [
        pytest.param(TWO_LORAS, ["formal", "nope", "casual", "formal"], r"unknown adapter\(s\) \['nope'\]", id="name"),
        pytest.param(IA3, ["ia3"] * 4, r"adapter_names needs LoRA stacked adapters; \['ia3'\] are IA3", id="ia3"),
        pytest.param(IA3, ["nope"] * 4, r"needs LoRA stacked adapters; \['ia3'\] are IA3", id="ia3-any-name"),
        pytest.param(None, ["lora"] * 4, "adapter_names needs stacked adapters", id="none"),
    ],
)
def test_adapter_names_errors_name_the_adapters(stacked, names, message):
    model = stacked_model(stacked=stacked).eval()
    with pytest.raises(ConfigError, match=message):
        model(**make_batch(MIXED_ROWS), adapter_names=names)


def test_adapter_names_in_training_mode_are_refused_as_in_peft():
    with pytest.raises(ValueError, match="training mode"):
        stacked_model(stacked=TWO_LORAS).train()(**make_batch(MIXED_ROWS), adapter_names=["formal"] * 4)


def test_lora_weights_stay_float32_on_a_bfloat16_base():
    config = ContinualPromptConfig(templates=[TEMPLATE_A], taskname_token_ids=TASKNAME_IDS, stacked_adapters=LORA)
    model = get_peft_model(tiny_model().to(torch.bfloat16), config)
    assert {p.dtype for p in model.stacked_parameters()} == {torch.float32}, "PEFT's autocast of adapter weights"
