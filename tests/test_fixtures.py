"""The shared fixtures themselves: tiny models run on real tokenizer output and are the same on every build."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2", "tiny_gpt2"])
def test_tiny_model_runs_on_smollm2_tokens(request, smollm2_tokenizer, fixture):
    model = request.getfixturevalue(fixture)
    batch = smollm2_tokenizer(["Hello world", "What is the capital of France?"], padding=True, return_tensors="pt")
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (2, batch["input_ids"].shape[1], len(smollm2_tokenizer))
    out.loss.backward()
    assert model.get_input_embeddings().weight.grad is not None
    assert not model.training


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_tiny_model_is_reproducible_and_leaves_global_rng_alone(make_tiny_model, family):
    before = torch.get_rng_state()
    a, b = make_tiny_model(family), make_tiny_model(family)
    assert torch.equal(torch.get_rng_state(), before)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    c = make_tiny_model(family, seed=1)
    assert not torch.equal(a.get_input_embeddings().weight, c.get_input_embeddings().weight)
