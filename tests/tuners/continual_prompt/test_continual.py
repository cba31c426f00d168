"""Rounds of continual p-tuning: freeze, save, load, add tasks; old rows stay bit-identical; base-model guard."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from peft_continual.errors import ConfigError, DuplicateTaskError, TableMismatchError
from peft_continual.tuners.continual_prompt import ContinualPromptConfig
from tests.tuners.continual_prompt.conftest import (
    MIXED_ROWS,
    TASKNAME_IDS,
    TEMPLATE_A,
    TEMPLATE_B,
    TEMPLATE_C,
    make_batch,
    make_peft_model,
    tiny_model,
)

ROW_C = ("intent", [[70, 71], 3, [72, 73, 74]])


def train(model, rows, steps: int = 3, lr: float = 1e-2) -> None:
    """A few AdamW steps (weight decay on) on ``rows``; only trainable parameters reach the optimizer."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.1)
    batch = make_batch(rows)
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.eval()


def greedy(model, rows) -> torch.Tensor:
    batch = make_batch(rows, padding_side="left")
    batch.pop("labels")
    return model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)


@pytest.mark.integration
def test_freeze_moves_trained_tasks_into_the_table_and_drops_the_encoder():
    model = make_peft_model()
    train(model, MIXED_ROWS)
    model.eval()
    with torch.no_grad():
        before = model(**make_batch(MIXED_ROWS)).logits
        expected_rows = model.task_prompts(["sentiment", "topic"])
    model.freeze_tasks()
    config = model.peft_config["default"]
    assert model.prompt_encoder is None and config.training_tasks == []
    assert config.frozen_tasks == {"sentiment": 4, "topic": 5} == model.prompt_table.counts()
    assert all(torch.equal(model.prompt_table[name], rows) for name, rows in expected_rows.items())
    with torch.no_grad():
        assert torch.equal(model(**make_batch(MIXED_ROWS)).logits, before)
    with pytest.raises(ConfigError, match="no tasks in training"):
        model.freeze_tasks()


@pytest.mark.integration
def test_freeze_save_load_gives_identical_logits_and_only_the_table(tmp_path):
    model = make_peft_model("gpt2")
    train(model, MIXED_ROWS)
    model.freeze_tasks()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert all(".continual_prompt_table." in key for key in load_file(tmp_path / "adapter_model.safetensors"))
    loaded = PeftModel.from_pretrained(tiny_model("gpt2"), tmp_path)
    batch = make_batch(MIXED_ROWS)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    assert loaded.prompt_table.row_hashes() == model.prompt_table.row_hashes()
    assert loaded.get_nb_trainable_parameters()[0] == 0
    renamed = PeftModel.from_pretrained(tiny_model("gpt2"), tmp_path, adapter_name="round1")
    assert renamed.active_adapter == "round1" and renamed.prompt_table.row_hashes() == model.prompt_table.row_hashes()


def test_open_round_saves_the_encoder_and_resumes_with_is_trainable(tmp_path):
    model = make_peft_model(encoder_type="mlp")
    train(model, MIXED_ROWS)
    model.save_pretrained(tmp_path)
    assert any(".continual_prompt_encoder." in key for key in load_file(tmp_path / "adapter_model.safetensors"))
    resumed = PeftModel.from_pretrained(tiny_model(), tmp_path, is_trainable=True)
    assert resumed.peft_config["default"].to_dict() == model.peft_config["default"].to_dict()
    assert resumed.get_nb_trainable_parameters() == model.get_nb_trainable_parameters()
    for name, rows in model.task_prompts().items():
        assert torch.equal(resumed.task_prompts([name])[name], rows)
    frozen = PeftModel.from_pretrained(tiny_model(), tmp_path)  # is_trainable=False: inference only
    assert frozen.get_nb_trainable_parameters()[0] == 0 and not frozen.training


@pytest.mark.integration
def test_round_two_leaves_old_rows_bit_identical_and_trains_the_new_task(tmp_path):
    model = make_peft_model(taskname_token_ids=dict(TASKNAME_IDS))
    train(model, MIXED_ROWS)
    model.freeze_tasks()
    model.save_pretrained(tmp_path)
    hashes = model.prompt_table.row_hashes()
    old_outputs = greedy(model, MIXED_ROWS)

    round2 = PeftModel.from_pretrained(tiny_model(), tmp_path, is_trainable=True)
    round2.add_tasks([TEMPLATE_C])
    assert round2.peft_config["default"].training_tasks == ["intent"]
    c_before = round2.task_prompts(["intent"])["intent"].detach().clone()
    train(round2, [*MIXED_ROWS, ROW_C, ROW_C], steps=4)

    assert round2.prompt_table.row_hashes() == hashes
    assert torch.equal(greedy(round2, MIXED_ROWS), old_outputs)
    assert not torch.allclose(round2.task_prompts(["intent"])["intent"], c_before)
    round2.freeze_tasks()
    assert {k: v for k, v in round2.prompt_table.row_hashes().items() if k != "intent"} == hashes
    round2.save_pretrained(tmp_path / "round2")
    final = PeftModel.from_pretrained(tiny_model(), tmp_path / "round2")
    assert final.prompt_table.tasks == ("sentiment", "topic", "intent"), "tasks keep the order they were added in"
    assert final.prompt_table.row_hashes() == round2.prompt_table.row_hashes()


def test_add_tasks_refuses_an_open_round_and_known_names():
    model = make_peft_model(taskname_token_ids=dict(TASKNAME_IDS))
    with pytest.raises(ConfigError, match=r"\['sentiment', 'topic'\] are still in training; call freeze_tasks"):
        model.add_tasks([TEMPLATE_C])
    model.freeze_tasks()
    with pytest.raises(DuplicateTaskError, match="'topic'"):
        model.add_tasks([TEMPLATE_B])
    assert model.peft_config["default"].training_tasks == [] and model.prompt_encoder is None


def test_add_tasks_without_token_ids_or_tokenizer_rolls_back():
    model = make_peft_model()
    model.freeze_tasks()
    with pytest.raises(ConfigError, match=r"\['intent'\].*tokenize_tasknames"):
        model.add_tasks([TEMPLATE_C])
    config = model.peft_config["default"]
    assert config.training_tasks == [] and [t["taskname"] for t in config.templates] == ["sentiment", "topic"]


def test_add_tasks_with_the_base_tokenizer(smollm2_tokenizer, tiny_llama):
    from peft import get_peft_model

    config = ContinualPromptConfig(templates=[TEMPLATE_A]).tokenize_tasknames(smollm2_tokenizer)
    model = get_peft_model(tiny_llama, config)
    model.freeze_tasks()
    model.add_tasks([TEMPLATE_C], tokenizer=smollm2_tokenizer)
    assert config.taskname_token_ids["intent"] == smollm2_tokenizer("intent", add_special_tokens=False)["input_ids"]
    assert model.prompt_encoder.tasks == ("intent",)


def test_rename_and_remove_keep_config_and_saved_file_in_step(tmp_path):
    model = make_peft_model()
    model.freeze_tasks()
    hashes = model.prompt_table.row_hashes()
    model.prompt_table.rename("topic", "news_topic")
    model.prompt_table.remove("sentiment")
    config = model.peft_config["default"]
    assert config.frozen_tasks == {"news_topic": 5}
    assert [t["taskname"] for t in config.templates] == ["news_topic"]
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model(), tmp_path)
    assert loaded.prompt_table.row_hashes() == {"news_topic": hashes["topic"]}
    with pytest.raises(DuplicateTaskError):
        model.prompt_table.add("news_topic", torch.zeros(5, 32))
    with pytest.raises(ConfigError, match="no template"):
        model.prompt_table.add("unknown", torch.zeros(5, 32))
    assert model.prompt_table.tasks == ("news_topic",)


@pytest.mark.parametrize(
    ("other", "name"),
    [
        pytest.param(lambda: tiny_model(seed=1), "LlamaForCausalLM", id="same-shape-other-weights"),
        pytest.param(lambda: tiny_model("gpt2"), "GPT2LMHeadModel", id="other-family"),
    ],
)
def test_loading_into_another_base_model_names_both(tmp_path, other, name):
    model = make_peft_model()
    model.freeze_tasks()
    model.save_pretrained(tmp_path)
    trained_on = model.peft_config["default"].base_model_fingerprint["embedding_sha256"][:12]
    message = (
        rf"trained on base model '<LlamaForCausalLM built from a config>' \(.*sha256 {trained_on}\.\.\.\) "
        rf"but is being loaded into '<{name} built from a config>'.*differ in embedding_sha256"
    )
    with pytest.raises(TableMismatchError, match=message):
        PeftModel.from_pretrained(other(), tmp_path)


def test_mismatch_names_models_by_path(tmp_path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    tiny_model().save_pretrained(tmp_path / "base-a")
    tiny_model(seed=1).save_pretrained(tmp_path / "base-b")
    config = ContinualPromptConfig(templates=[TEMPLATE_A], taskname_token_ids=dict(TASKNAME_IDS))
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base-a"), config)
    model.freeze_tasks()
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(TableMismatchError, match=r"base model '[^']*base-a' .* loaded into '[^']*base-b'"):
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base-b"), tmp_path / "adapter")


def test_hidden_size_mismatch_is_refused_before_shapes_are_compared(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    model = make_peft_model()
    model.freeze_tasks()
    model.save_pretrained(tmp_path)
    wide = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    with pytest.raises(TableMismatchError, match="hidden_size=32.*hidden_size=64.*hidden_size, embedding_sha256"):
        PeftModel.from_pretrained(wide, tmp_path)


def test_fingerprint_ignores_float32_versus_bfloat16(tmp_path):
    model = make_peft_model()
    model.freeze_tasks()
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_model().to(torch.bfloat16), tmp_path)
    batch = make_batch(MIXED_ROWS)
    assert loaded(**batch).logits.dtype == torch.bfloat16
