"""Deep prompts (``prompt_depth > 1``, P-tuning v2): the slices reach the layers they name, start where the init text's
layer inputs are, mix tasks per row, generate, save, load and freeze like shallow prompts."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from peft_continual.errors import ConfigError
from peft_continual.tuners.continual_prompt import ContinualPromptConfig
from peft_continual.tuners.continual_prompt.deep_prompts import decoder_layers, layer_input_scales
from tests.tuners.continual_prompt.conftest import (
    HIDDEN,
    MIXED_ROWS,
    TASKNAME_IDS,
    TEMPLATE_A,
    TEMPLATE_B,
    VOCAB_SIZE,
    make_batch,
    make_peft_model,
)

LAYERS = 3
INIT_IDS = {"sentiment": [70, 71, 72, 73], "topic": [80, 81]}


def three_layer_model(seed: int = 0) -> LlamaForCausalLM:
    """A tiny random Llama with 3 decoder layers (the shared fixture has 2), so depth 2 leaves one layer alone."""
    config = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2, pad_token_id=0,
                         bos_token_id=1, eos_token_id=1)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).eval()


def deep_model(depth: int = 2, templates=(TEMPLATE_A, TEMPLATE_B), seed: int = 0, **kwargs):
    config = ContinualPromptConfig(
        templates=list(templates),
        taskname_token_ids={t.taskname: TASKNAME_IDS[t.taskname] for t in templates},
        init_token_ids={t.taskname: INIT_IDS[t.taskname] for t in templates},
        prompt_depth=depth,
        **kwargs,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(three_layer_model(seed), config)


def layer_inputs(model, batch) -> list[torch.Tensor]:
    """The hidden states at the input of every decoder layer, ``(B, L, D)`` each, after the deep prompts' hooks."""
    seen = []
    handles = [
        layer.register_forward_pre_hook(
            lambda m, a, k: seen.append(k.get("hidden_states", a[0] if a else None)), with_kwargs=True
        )  # fmt: skip
        for layer in decoder_layers(model.get_base_model())
    ]
    try:
        with torch.no_grad():
            model(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_old_configs_and_depth_one_are_shallow():
    config = ContinualPromptConfig(templates=[TEMPLATE_A])
    assert config.prompt_depth == 1
    model = make_peft_model()
    assert model.base_model._deep_hooks is None
    assert model.task_prompts(["sentiment"])["sentiment"].shape == (4, HIDDEN)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_prompt_depth_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError, match="prompt_depth"):
        ContinualPromptConfig(templates=[TEMPLATE_A], prompt_depth=bad)


def test_depth_past_the_layer_count_is_refused():
    with pytest.raises(ConfigError, match="prompt_depth=4 but the base model has 3 decoder layers"):
        deep_model(depth=4)


@pytest.mark.parametrize("encoder_type", ["lstm", "mlp", "embedding"])
def test_prompts_and_table_rows_are_one_slice_per_layer(encoder_type):
    model = deep_model(depth=3, encoder_type=encoder_type)
    prompts = model.task_prompts()
    assert {name: tuple(rows.shape) for name, rows in prompts.items()} == {
        "sentiment": (4, 3 * HIDDEN),
        "topic": (5, 3 * HIDDEN),
    }
    model.freeze_tasks()
    assert model.prompt_table.shapes() == {"sentiment": (4, 3 * HIDDEN), "topic": (5, 3 * HIDDEN)}


@pytest.mark.parametrize("encoder_type", ["lstm", "embedding"])
def test_a_deep_prompt_starts_as_the_shallow_one(encoder_type):
    """Slice 0 is the init text's embeddings exactly, the deeper slices are zero: same logits as depth 1."""
    model = deep_model(depth=3, encoder_type=encoder_type)
    embeddings = model.get_base_model().get_input_embeddings().weight
    prompt = model.task_prompts(["sentiment"])["sentiment"].detach()
    assert torch.equal(prompt[:, :HIDDEN], embeddings[[70, 71, 72, 73]])
    assert not prompt[:, HIDDEN:].any()
    batch = {k: v for k, v in make_batch(MIXED_ROWS).items() if k != "labels"}
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, deep_model(depth=1, encoder_type=encoder_type)(**batch).logits)


def test_each_layer_input_gets_its_slice_added_at_the_virtual_positions_only():
    model = deep_model(depth=2, encoder_type="embedding")
    with torch.no_grad():
        for parameter in model.prompt_encoder.parameters():
            parameter.normal_()
    model.freeze_tasks()
    batch = make_batch(MIXED_ROWS)
    mask = batch["virtual_token_mask"]
    layers = decoder_layers(model.get_base_model())
    outputs = []
    handles = [layer.register_forward_hook(lambda m, a, out: outputs.append(out[0] if isinstance(out, tuple) else out))
               for layer in layers]  # fmt: skip
    try:
        inputs = layer_inputs(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    prompts = model.task_prompts()
    added = inputs[1] - outputs[0]  # (B, L, D): what the hook added before layer 1
    assert not added[~mask].any()
    for row, name in enumerate(batch["tasknames"]):
        assert torch.equal(inputs[0][row][mask[row]], prompts[name][:, :HIDDEN])
        torch.testing.assert_close(added[row][mask[row]], prompts[name][:, HIDDEN:])
    assert torch.equal(inputs[2], outputs[1])  # layer 2 is past the depth


def test_layer_scales_are_the_rms_of_each_layers_input_relative_to_the_embeddings():
    base = three_layer_model()
    scales = layer_input_scales(base, INIT_IDS, 3)
    squares, count = torch.zeros(3), 0
    for ids in INIT_IDS.values():
        with torch.no_grad():
            hidden = base(input_ids=torch.tensor([ids + ids]), output_hidden_states=True).hidden_states
        squares += torch.stack([hidden[j][0, len(ids) :].pow(2).mean(-1).sum() for j in range(3)])
        count += len(ids)
    expected = (squares / count).sqrt()
    torch.testing.assert_close(scales, expected / expected[0])
    assert scales[0] == 1


def test_deep_slices_are_learned_in_units_of_their_layers_scale():
    model = deep_model(depth=3, encoder_type="embedding")
    scales = model.prompt_encoder.column_scales.reshape(3, HIDDEN)[:, 0]
    with torch.no_grad():
        for parameter in model.prompt_encoder.parameters():
            parameter.fill_(1.0)
    prompt = model.task_prompts(["sentiment"])["sentiment"]
    torch.testing.assert_close(prompt.reshape(4, 3, HIDDEN)[0, :, 0], scales)


def test_rows_of_several_tasks_in_one_batch_match_each_row_alone():
    model = deep_model(depth=3)
    model.freeze_tasks()
    batch = make_batch(MIXED_ROWS)
    with torch.no_grad():
        together = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        for i, row in enumerate(MIXED_ROWS):
            alone = make_batch([row])
            length = alone["input_ids"].shape[1]
            logits = model(**{k: v for k, v in alone.items() if k != "labels"}).logits
            torch.testing.assert_close(together[i, :length], logits[0], rtol=1e-4, atol=1e-4)


def test_every_slice_gets_a_gradient():
    model = deep_model(depth=3, encoder_type="embedding")
    batch = make_batch(MIXED_ROWS)
    model(**batch).loss.backward()
    for parameter in model.prompt_encoder.parameters():
        per_layer = parameter.grad.abs().reshape(parameter.shape[0], 3, HIDDEN).sum(dim=(0, 2))
        assert (per_layer > 0).all()


def test_gradient_checkpointing_gives_the_same_gradients():
    def gradients(checkpointing: bool) -> torch.Tensor:
        model = deep_model(depth=3, encoder_type="embedding")
        base = model.get_base_model()
        if checkpointing:
            if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x; the older name warns there
                base.activation_checkpointing_enable({"use_reentrant": False})
            else:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert decoder_layers(base)[1].gradient_checkpointing
        model.train()
        model(**make_batch(MIXED_ROWS)).loss.backward()
        return torch.cat([p.grad.flatten() for p in model.prompt_encoder.parameters()])

    torch.testing.assert_close(gradients(True), gradients(False))


@pytest.mark.parametrize("beams", [1, 2])
def test_generate_writes_the_prefill_and_keeps_rows_apart(beams):
    model = deep_model(depth=3)
    model.freeze_tasks()
    rows = [("sentiment", [4, [20, 21, 22]]), ("topic", [[40, 41], 2, [50], 3, [60]])]
    options = {
        "max_new_tokens": 4,
        "do_sample": False,
        "num_beams": beams,
        "num_return_sequences": beams,
        "pad_token_id": 0,
    }

    def generate(batch):
        return model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              virtual_token_mask=batch["virtual_token_mask"], tasknames=batch["tasknames"], **options)  # fmt: skip

    together = generate(make_batch(rows, padding_side="left"))
    for i, row in enumerate(rows):
        alone = generate(make_batch([row], padding_side="left"))
        assert together[i * beams : (i + 1) * beams, -4:].tolist() == alone[:, -4:].tolist()
    if beams == 1:  # greedy decoding with the cache equals step-by-step argmax of full forwards
        batch = make_batch([rows[0]])
        ids, mask = batch["input_ids"], batch["virtual_token_mask"]
        with torch.no_grad():
            for _ in range(4):
                logits = model(input_ids=ids, virtual_token_mask=mask, tasknames=["sentiment"]).logits
                ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
                mask = torch.cat([mask, torch.zeros(1, 1, dtype=torch.bool)], dim=1)
        assert together[0, -4:].tolist() == ids[0, -4:].tolist()


def test_saved_table_loads_with_the_same_outputs_and_a_wrong_width_is_refused(tmp_path):
    model = deep_model(depth=3)
    model.freeze_tasks()
    model.save_pretrained(tmp_path / "table")
    loaded = PeftModel.from_pretrained(three_layer_model(), tmp_path / "table")
    assert loaded.peft_config["default"].prompt_depth == 3
    batch = {k: v for k, v in make_batch(MIXED_ROWS).items() if k != "labels"}
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
    config_file = tmp_path / "table" / "adapter_config.json"
    config_file.write_text(config_file.read_text().replace('"prompt_depth": 3', '"prompt_depth": 2'))
    with pytest.raises(Exception, match=r"width 64"):
        PeftModel.from_pretrained(three_layer_model(), tmp_path / "table")


def test_a_later_round_leaves_the_frozen_deep_rows_bit_identical():
    model = deep_model(depth=3, templates=[TEMPLATE_A])
    model.freeze_tasks()
    before = model.prompt_table.row_hashes()
    config = model.peft_config["default"]
    config.taskname_token_ids["topic"], config.init_token_ids["topic"] = TASKNAME_IDS["topic"], INIT_IDS["topic"]
    model.add_tasks([TEMPLATE_B])
    assert model.task_prompts(["topic"])["topic"].shape == (5, 3 * HIDDEN)
    optimizer = torch.optim.Adam(model.prompt_encoder.parameters(), lr=0.1)
    for _ in range(2):
        model(**make_batch(MIXED_ROWS)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.freeze_tasks()
    assert {k: v for k, v in model.prompt_table.row_hashes().items() if k in before} == before


def test_scales_without_init_texts_come_from_random_tokens():
    scales = layer_input_scales(three_layer_model(), {}, 2)
    assert scales.shape == (2,) and scales[0] == 1 and torch.isfinite(scales).all()


def test_deep_prompts_train_and_load_with_lora_stacked_under_them(tmp_path):
    from peft import LoraConfig

    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = deep_model(depth=3, stacked_adapters=lora)
    model(**make_batch(MIXED_ROWS)).loss.backward()
    assert all(p.grad is not None for p in model.prompt_encoder.parameters())
    assert all(p.grad is not None for p in model.base_model.stacked_parameters())
    model.freeze_tasks()
    model.save_pretrained(tmp_path / "table")
    loaded = PeftModel.from_pretrained(three_layer_model(), tmp_path / "table")
    batch = {k: v for k, v in make_batch(MIXED_ROWS).items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, loaded(**batch).logits)
