"""``ContinualPromptModel`` inside a ``PeftModel``: mixed-task forward and generate, gradients, errors."""

from __future__ import annotations

import pytest
import torch

from peft_continual.errors import RecordError, UnknownTaskError
from tests.tuners.continual_prompt.conftest import (
    MIXED_ROWS,
    TASKNAME_IDS,
    TEMPLATE_A,
    TEMPLATE_B,
    TEMPLATE_C,
    make_batch,
    make_peft_model,
)

FAMILIES = ["llama", "qwen2", "gpt2"]
ROWS_ABC = [
    *MIXED_ROWS[:2],
    ("intent", [[70, 71, 72, 73, 74, 75], 3]),
    MIXED_ROWS[2],
    ("intent", [[76, 77], 3]),
    MIXED_ROWS[3],
]
"""Frozen tasks (sentiment: start, topic: middle in two groups) and a task in training (intent: end)."""


def frozen_and_training(family: str = "llama", encoder_type: str = "lstm"):
    """A model whose table holds sentiment and topic and whose encoder trains intent, in eval mode."""
    model = make_peft_model(family, encoder_type=encoder_type, taskname_token_ids=dict(TASKNAME_IDS))
    model.freeze_tasks()
    model.add_tasks([TEMPLATE_C])
    return model.eval()


def alone(batch: dict, row: int) -> dict:
    """Row ``row`` of a batch as a batch of one, padding removed."""
    keep = batch["attention_mask"][row].bool()
    keys = {"input_ids", "attention_mask", "labels", "virtual_token_mask"} & set(batch)
    single = {key: batch[key][row, keep].unsqueeze(0) for key in keys}
    return single | {"tasknames": [batch["tasknames"][row]]}


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_batch_forward_equals_each_row_alone(family):
    model = frozen_and_training(family)
    batch = make_batch(ROWS_ABC, padding_side="right")
    with torch.no_grad():
        logits = model(**batch).logits
        for row in range(len(ROWS_ABC)):
            single = model(**alone(batch, row)).logits[0]
            torch.testing.assert_close(logits[row, : single.shape[0]], single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "generation",
    [
        pytest.param({}, id="greedy"),
        pytest.param({"repetition_penalty": 1.3}, id="repetition_penalty"),
        pytest.param({"num_beams": 3}, id="beams"),
    ],
)
@pytest.mark.integration
def test_mixed_batch_generate_equals_each_row_alone(family, generation):
    model = frozen_and_training(family)
    batch = make_batch(ROWS_ABC, padding_side="left")
    batch.pop("labels")
    settings = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False, "use_cache": True, **generation}
    out = model.generate(**batch, **settings)
    prompt_length = batch["input_ids"].shape[1]
    assert torch.equal(out[:, :prompt_length], batch["input_ids"]), "the output starts with the prompt ids"
    for row in range(len(ROWS_ABC)):
        single = alone(batch, row)
        expected = model.generate(**single, **settings)[0, single["input_ids"].shape[1] :]
        assert torch.equal(out[row, prompt_length:], expected), f"row {row} ({batch['tasknames'][row]})"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.integration
def test_cached_generate_equals_greedy_decoding_without_cache(family):
    """The KV cache built from the injected prefill gives the tokens of full recomputation at every step."""
    model = frozen_and_training(family)
    batch = make_batch(ROWS_ABC, padding_side="left")
    batch.pop("labels")
    out = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    for row in range(len(ROWS_ABC)):
        single = alone(batch, row)
        ids, mask = single["input_ids"], single["virtual_token_mask"]
        with torch.no_grad():
            for _ in range(5):
                logits = model(
                    input_ids=ids, virtual_token_mask=mask, tasknames=single["tasknames"], use_cache=False
                ).logits
                ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
                mask = torch.cat([mask, torch.zeros(1, 1, dtype=torch.bool)], dim=1)
        assert torch.equal(out[row, -5:], ids[0, -5:]), f"row {row}"


def test_sampling_runs_on_a_mixed_batch():
    model = frozen_and_training()
    batch = make_batch(ROWS_ABC, padding_side="left")
    batch.pop("labels")
    torch.manual_seed(1)
    out = model.generate(**batch, max_new_tokens=4, do_sample=True, top_k=20, temperature=0.8)
    assert out.shape[0] == len(ROWS_ABC) and torch.equal(out[:, : batch["input_ids"].shape[1]], batch["input_ids"])


def test_rows_take_table_rows_or_encoder_rows_in_one_batch():
    model = frozen_and_training()
    batch = make_batch(ROWS_ABC)
    captured = {}
    embeddings = model.get_base_model().get_input_embeddings()
    hook = model.get_base_model().model.register_forward_pre_hook(
        lambda module, args, kwargs: captured.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.no_grad():
        model(**batch)
        intent_rows = model.prompt_encoder(["intent"], embeddings)["intent"]
    hook.remove()
    embeds, mask = captured["embeds"], batch["virtual_token_mask"]
    table = model.prompt_table
    assert torch.equal(embeds[0][mask[0]], table["sentiment"]) and torch.equal(embeds[1][mask[1]], table["topic"])
    assert torch.equal(embeds[2][mask[2]], intent_rows) and torch.equal(embeds[4][mask[4]], intent_rows)
    real = batch["attention_mask"].bool() & ~mask
    assert torch.equal(embeds[real], embeddings(batch["input_ids"])[real]), "real tokens keep their embeddings"


@pytest.mark.parametrize("encoder_type", ["lstm", "mlp", "embedding"])
def test_gradients_reach_every_encoder_parameter_and_nothing_else(encoder_type):
    """With ``prompt_init="text"`` the encoder's last layer starts at zero, so at the first step only it and the start
    rows get gradients (as LoRA's B matrix); after one optimizer step every parameter does."""
    model = make_peft_model(encoder_type=encoder_type).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**make_batch(MIXED_ROWS)).loss.backward()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".continual_prompt_encoder.default." in name for name in trainable)
    first = {name for name, p in trainable.items() if p.grad is not None and p.grad.abs().sum() > 0}
    if encoder_type == "embedding":  # plain prompt tuning: the rows are all there is
        assert first == set(trainable)
    else:
        last = f".head.{len(model.prompt_encoder.head) - 1}."
        assert first == {name for name in trainable if ".start_rows." in name or last in name}
    optimizer.step()
    optimizer.zero_grad()
    model(**make_batch(MIXED_ROWS)).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_table_rows_are_buffers_that_never_get_a_gradient():
    model = frozen_and_training().train()
    model(**make_batch(ROWS_ABC)).loss.backward()
    table_buffers = list(model.prompt_table.buffers())
    assert len(table_buffers) == 2
    assert not {id(b) for b in table_buffers} & {id(p) for p in model.parameters()}, "a table row is a Parameter"
    assert not any(b.requires_grad or b.grad is not None for b in table_buffers)


def test_the_encoder_runs_once_per_step_not_once_per_row():
    model = make_peft_model()  # sentiment (4 tokens) and topic (5 tokens) in training
    calls = []
    model.prompt_encoder.lstm.register_forward_hook(lambda module, args, output: calls.append(tuple(args[0].shape)))
    model(**make_batch(MIXED_ROWS * 2))  # 8 rows, 4 of each task
    assert sorted(calls) == [(1, 4, 32), (1, 5, 32)]


def test_trainable_parameter_count_is_the_encoder(capsys):
    model = make_peft_model(templates=(TEMPLATE_A, TEMPLATE_B))
    encoder_params = sum(p.numel() for p in model.prompt_encoder.parameters())
    base_params = sum(p.numel() for p in model.get_base_model().parameters())
    assert model.get_nb_trainable_parameters() == (encoder_params, encoder_params + base_params)
    model.print_trainable_parameters()
    assert (
        f"trainable params: {encoder_params:,d} || all params: {encoder_params + base_params:,d}"
        in capsys.readouterr().out
    )
    model.freeze_tasks()
    assert model.get_nb_trainable_parameters() == (0, base_params)


def test_batch_without_virtual_tokens_runs_the_plain_base_model():
    model = make_peft_model()
    ids = torch.tensor([[5, 6, 7]])
    assert torch.equal(model(input_ids=ids).logits, model.get_base_model()(input_ids=ids).logits)
    out = model.generate(input_ids=ids, max_new_tokens=2, do_sample=False)
    assert torch.equal(out, model.get_base_model().generate(input_ids=ids, max_new_tokens=2, do_sample=False))


def test_unknown_task_names_it_and_the_known_tasks():
    model = frozen_and_training()
    batch = make_batch([("sentiment", [4, [5]]), ("weather", [4, [6]])])
    with pytest.raises(UnknownTaskError, match=r"\['weather'\].*table: 'sentiment', 'topic'.*training: 'intent'"):
        model(**batch)
    with pytest.raises(UnknownTaskError, match="weather"):
        model.generate(**batch, max_new_tokens=1)


def test_wrong_number_of_virtual_positions_names_row_and_task():
    model = frozen_and_training()
    batch = make_batch([("sentiment", [4, [5]]), ("topic", [[6], 2, [7], 2])])
    with pytest.raises(RecordError, match=r"row 1 \(task 'topic'\) has 4 .* total_virtual_tokens=5"):
        model(**batch)


def test_half_a_contract_is_refused():
    model = make_peft_model()
    batch = make_batch([("sentiment", [4, [5]])])
    with pytest.raises(RecordError, match="virtual_token_mask but not tasknames"):
        model(input_ids=batch["input_ids"], virtual_token_mask=batch["virtual_token_mask"])
    with pytest.raises(RecordError, match="needs input_ids"):
        model.generate(virtual_token_mask=batch["virtual_token_mask"], tasknames=["sentiment"], max_new_tokens=1)


def test_inputs_embeds_instead_of_input_ids():
    model = frozen_and_training()
    batch = make_batch(ROWS_ABC)
    embeds = model.get_base_model().get_input_embeddings()(batch.pop("input_ids"))
    with torch.no_grad():
        expected = model(**make_batch(ROWS_ABC)).logits
        assert torch.equal(model(inputs_embeds=embeds, **batch).logits, expected)


def test_disable_adapter_context_runs_the_plain_base_model_then_the_prompts_are_back():
    model = frozen_and_training()  # table rows and encoder rows in one batch
    batch = make_batch(ROWS_ABC)
    prompts = make_batch(ROWS_ABC, padding_side="left")
    prompts.pop("labels")
    settings = {"max_new_tokens": 3, "min_new_tokens": 3, "do_sample": False}
    base = model.get_base_model()
    with torch.no_grad():
        with_prompts = model(**batch).logits
        with model.disable_adapter():
            assert not model.has_active_enabled_adapter
            disabled = model(**batch).logits
            generated = model.generate(**prompts, **settings)
        assert torch.equal(model(**batch).logits, with_prompts), "the prompts are back after the block"
        plain = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        plain_generated = base.generate(
            input_ids=prompts["input_ids"], attention_mask=prompts["attention_mask"], **settings
        )
    assert torch.equal(disabled, plain), "placeholder ids are embedded as ordinary tokens"
    assert torch.equal(generated, plain_generated)
    assert model.has_active_enabled_adapter


def test_disable_adapter_context_keeps_adapters_that_were_already_disabled():
    model = frozen_and_training()
    batch = make_batch(ROWS_ABC)
    model.disable_adapter_layers()
    with torch.no_grad():
        disabled = model(**batch).logits
        with model.disable_adapter():
            pass
        assert torch.equal(model(**batch).logits, disabled)
    model.enable_adapter_layers()
    with pytest.raises(RuntimeError, match="inside"), model.disable_adapter():
        raise RuntimeError("inside")
    assert model.has_active_enabled_adapter and model.base_model._adapters_enabled


@pytest.mark.parametrize("encoder_type", ["lstm", "mlp", "embedding"])
def test_at_initialisation_the_virtual_tokens_are_the_init_texts_embeddings(encoder_type):
    """Where prompt tuning starts: each task's rows are its init text's token embeddings, repeated to fill them (the
    ``sentiment`` init text has 3 tokens for 4 rows; ``topic`` starts from its name's ids)."""
    model = make_peft_model(encoder_type=encoder_type, init_token_ids={"sentiment": [30, 31, 32]})
    words = model.get_base_model().get_input_embeddings().weight
    with torch.no_grad():
        prompts = model.task_prompts()
    assert torch.equal(prompts["sentiment"], words[[30, 31, 32, 30]])
    assert torch.equal(prompts["topic"], words[[12] * 5])  # TASKNAME_IDS["topic"]


def test_the_encoders_learned_inputs_start_at_the_word_embeddings_scale():
    model = make_peft_model(encoder_type="lstm")
    words = model.get_base_model().get_input_embeddings().weight
    inputs = model.prompt_encoder.input_embeddings.weight
    assert inputs.std().item() == pytest.approx(words.std().item(), rel=0.2)
    old = make_peft_model(encoder_type="lstm", prompt_init="random").prompt_encoder
    assert old.start_rows is None and old.input_embeddings.weight.std().item() == pytest.approx(1.0, rel=0.2)


def test_tasknames_given_as_one_string_are_refused_with_the_fix():
    model = make_peft_model("llama", taskname_token_ids=dict(TASKNAME_IDS)).eval()
    batch = make_batch([MIXED_ROWS[0]])
    batch.pop("labels", None)
    with pytest.raises(RecordError, match=r"got 'sentiment'; for one task in every row write \['sentiment'\]"):
        model.generate(**{**batch, "tasknames": "sentiment"}, max_new_tokens=1)
    with pytest.raises(RecordError, match="tasknames must be a list of task names"):
        model(**{**batch, "tasknames": [7]})
