"""The acceptance matrix of stacking: {p-tuning, p-tuning + LoRA, p-tuning + IA3} x {fp32, bf16, int8, nf4, nf4-dq-bf16}.

For each cell, on the tiny base of ``tests/stacking_cases.py``: a few training steps lower the loss; save -> load
gives the same logits (within the precision's tolerance); a mixed-task greedy generate equals generating each row
alone; switching the LoRA/IA3 off gives exactly the prompt-only model's outputs (and switching the prompts off
gives the base with the adapter layers). Quantized bases are loaded with bitsandbytes and prepared with PEFT's
``prepare_model_for_kbit_training`` (gradient checkpointing on). The ``cuda`` copies run where a GPU is present
(``gpu`` marker; skipped otherwise, never faked).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from peft import PeftModel

from peft_continual.tuners.continual_prompt._peft_compat import ENCODER_ATTR
from tests.stacking_cases import TOLERANCE, alone, load_base, make_model, matrix, save_tiny_base, to_device, train
from tests.tuners.continual_prompt.conftest import MIXED_ROWS, make_batch

MATRIX = matrix("cpu") + matrix("cuda")

pytestmark = pytest.mark.filterwarnings(
    "ignore:MatMul8bitLt:UserWarning",  # int8 layers cast float32 inputs to float16, every forward
    "ignore:.*use_cache=True.*:UserWarning",
)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("stacking") / "tiny-llama-64")


@pytest.mark.parametrize(("device", "base", "method"), MATRIX)
@pytest.mark.integration
def test_a_few_steps_lower_the_loss(base_dir, device, base, method):
    model = make_model(base_dir, base, method, device)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any(f".{ENCODER_ATTR}." in name for name in trainable)
    assert any(".lora_" in name or ".ia3_" in name for name in trainable) == (method != "prompts")
    losses = train(model, to_device(make_batch(MIXED_ROWS), device))
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize(("device", "base", "method"), MATRIX)
@pytest.mark.integration
def test_save_then_load_gives_the_same_logits(base_dir, tmp_path, device, base, method):
    model = make_model(base_dir, base, method, device)
    batch = to_device(make_batch(MIXED_ROWS), device)
    train(model, batch, steps=2)
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(load_base(base_dir, base, device, training=False), tmp_path).eval()
    assert loaded.stacked_adapter_names == model.stacked_adapter_names
    with torch.no_grad():
        expected, got = model(**batch).logits.float(), loaded(**batch).logits.float()
    torch.testing.assert_close(got, expected, atol=TOLERANCE[base], rtol=0)


@pytest.mark.parametrize(("device", "base", "method"), MATRIX)
@pytest.mark.integration
def test_mixed_task_greedy_generate_equals_each_row_alone(base_dir, device, base, method):
    """On int8 with LLM.int8's outlier decomposition off: with it on, rows depend on each other in bitsandbytes
    itself (``test_int8_outlier_decomposition_makes_the_plain_base_batch_dependent``)."""
    quantization = {"int8_threshold": 0.0} if base == "int8" else None
    model = make_model(base_dir, base, method, device, quantization=quantization).eval()
    batch = to_device(make_batch(MIXED_ROWS, padding_side="left"), device)
    batch.pop("labels")
    settings = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # generation-config notes of the tiny model
        out = model.generate(**batch, **settings)
        length = batch["input_ids"].shape[1]
        for row in range(len(MIXED_ROWS)):
            single = alone(batch, row)
            expected = model.generate(**single, **settings)[0, single["input_ids"].shape[1] :]
            assert torch.equal(out[row, length:], expected), f"row {row} ({batch['tasknames'][row]})"


@pytest.mark.parametrize(("device", "base", "method"), MATRIX)
@pytest.mark.integration
def test_switching_the_adapter_off_gives_the_prompt_only_outputs_exactly(base_dir, device, base, method):
    model = make_model(base_dir, base, method, device).eval()
    batch = to_device(make_batch(MIXED_ROWS), device)
    if method == "prompts":
        with torch.no_grad(), model.disable_adapter():  # nothing stacked: off means the plain base model
            plain = model(**batch).logits
        base_logits = model.get_base_model()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        assert torch.equal(plain, base_logits.logits)
        return
    prompt_only = make_model(base_dir, base, "prompts", device).eval()
    encoders = getattr(prompt_only.base_model, ENCODER_ATTR)
    encoders["default"].load_state_dict(getattr(model.base_model, ENCODER_ATTR)["default"].state_dict())
    with torch.no_grad():
        both = model(**batch).logits
        with model.disable_stacked_adapters():
            without_adapter = model(**batch).logits
        with model.disable_prompts():
            without_prompts = model(**batch).logits
        expected = prompt_only(**batch).logits
        adapter_only = model.get_base_model()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        assert torch.equal(model(**batch).logits, both), "both are back after the blocks"
    assert torch.equal(without_adapter, expected)
    assert torch.equal(without_prompts, adapter_only.logits)
    assert not torch.equal(both, expected) and not torch.equal(both, without_prompts), "each part changes outputs"


@pytest.mark.bnb
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_int8_outlier_decomposition_makes_the_plain_base_batch_dependent(base_dir, device):
    """Why the int8 cell above turns the outlier threshold off: the base model alone, no PEFT, shows the effect."""
    batch = to_device(make_batch(MIXED_ROWS, padding_side="left"), device)
    gaps = {}
    for threshold in (6.0, 0.0):
        base = load_base(base_dir, "int8", device, training=False, int8_threshold=threshold)
        with torch.no_grad():
            together = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            single = alone(batch, 0)
            first = base(input_ids=single["input_ids"], attention_mask=single["attention_mask"]).logits[0]
        gaps[threshold] = (together[0, -first.shape[0] :] - first).abs().max().item()
    assert gaps[0.0] < 1e-3 < gaps[6.0], gaps  # exactly 0 on CPU
