"""``TaskPromptEncoder``: task-name conditioning, several token counts, one run per task, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peft_continual.tuners.continual_prompt import TaskPromptEncoder

D = 8
COUNTS = {"a": 3, "b": 5, "c": 3}
NAME_IDS = {"a": [1, 2], "b": [3], "c": [4, 5, 6, 7]}


@pytest.fixture
def words() -> nn.Embedding:
    return nn.Embedding(10, D).requires_grad_(False)


@pytest.mark.parametrize("encoder_type", ["lstm", "mlp", "embedding"])
def test_shapes_for_tasks_of_different_counts(encoder_type, words):
    encoder = TaskPromptEncoder(D, COUNTS, NAME_IDS, encoder_type, hidden_size=6, num_layers=2)
    out = encoder(["b", "a", "c"], words)
    assert {name: tuple(rows.shape) for name, rows in out.items()} == {"a": (3, D), "b": (5, D), "c": (3, D)}
    assert encoder.tasks == ("a", "b", "c")


def test_input_starts_with_the_frozen_word_embeddings_of_the_task_name(words):
    encoder = TaskPromptEncoder(D, COUNTS, NAME_IDS, "lstm")
    learned = encoder.input_embeddings.weight
    a = encoder._task_input("a", 3, words)
    assert torch.equal(a[:2], words.weight[[1, 2]]) and torch.equal(a[2:], learned[2:3])
    c = encoder._task_input("c", 3, words)  # a name longer than n_T fills all n_T rows
    assert torch.equal(c, words.weight[[4, 5, 6]])
    plain = TaskPromptEncoder(D, {"x": 2}, {}, "lstm")
    assert torch.equal(plain._task_input("x", 2, words), plain.input_embeddings.weight[:2])


def test_the_name_alone_separates_tasks_of_one_encoder(words):
    encoder = TaskPromptEncoder(D, {"a": 3, "c": 3}, {"a": [1], "c": [2]}, "lstm")
    out = encoder(["a", "c"], words)
    assert not torch.allclose(out["a"], out["c"])
    same = TaskPromptEncoder(D, {"a": 3, "c": 3}, {"a": [1], "c": [1]}, "lstm")
    out = same(["a", "c"], words)
    assert torch.equal(out["a"], out["c"])


def test_runs_once_per_token_count_not_per_row_or_task(words):
    encoder = TaskPromptEncoder(D, COUNTS, NAME_IDS, "lstm")
    calls = []
    encoder.lstm.register_forward_hook(lambda module, args, output: calls.append(args[0].shape))
    encoder(["a", "b", "c"], words)
    assert sorted(tuple(shape) for shape in calls) == [(1, 5, D), (2, 3, D)]


def test_grouped_and_single_runs_agree(words):
    encoder = TaskPromptEncoder(D, COUNTS, NAME_IDS, "mlp")
    together = encoder(["a", "c"], words)
    assert torch.allclose(together["a"], encoder(["a"], words)["a"], atol=1e-6)


@pytest.mark.parametrize("encoder_type", ["lstm", "mlp", "embedding"])
def test_gradient_reaches_every_encoder_parameter_and_not_the_word_embeddings(encoder_type, words):
    encoder = TaskPromptEncoder(D, COUNTS, NAME_IDS, encoder_type, hidden_size=6)
    out = encoder(list(COUNTS), words)
    sum(rows.square().sum() for rows in out.values()).backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert words.weight.grad is None


def test_mlp_layers_and_lstm_head_follow_nemo():
    lstm = TaskPromptEncoder(D, {"a": 2}, {}, "lstm", hidden_size=6, num_layers=3, dropout=0.1)
    assert lstm.lstm.bidirectional and lstm.lstm.num_layers == 3 and lstm.lstm.dropout == 0.1
    assert [type(m).__name__ for m in lstm.head] == ["Linear", "ReLU", "Linear"] and lstm.head[0].in_features == 12
    mlp = TaskPromptEncoder(D, {"a": 2}, {}, "mlp", hidden_size=6, num_layers=3)
    assert [(m.in_features, m.out_features) for m in mlp.head if isinstance(m, nn.Linear)] == [(D, 6), (6, 6), (6, D)]
    single = TaskPromptEncoder(D, {"a": 2}, {}, "mlp", num_layers=1)
    assert len(single.head) == 1


def test_embedding_type_is_one_matrix_per_task_initialised_from_given_rows():
    init = {"a": torch.full((3, D), 0.5)}
    encoder = TaskPromptEncoder(D, {"a": 3, "b.x": 2}, {}, "embedding", init_rows=init)
    assert torch.equal(encoder([*"a"], None)["a"], init["a"])
    assert sorted(name for name, _ in encoder.named_parameters()) == ["prompts.task:a", "prompts.task:b%2Ex"]


@pytest.mark.parametrize("encoder_type", ["lstm", "mlp", "embedding"])
@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16], ids=["fp32", "bf16-autocast"])
def test_the_encoder_runs_in_float32_inside_and_outside_cpu_autocast(encoder_type, autocast_dtype, words):
    """Training in bf16 autocasts the base model; the encoder must still run (an LSTM has no bf16 kernel on CPUs
    without bf16 hardware) and give exactly its float32 rows, with finite gradients."""
    encoder = TaskPromptEncoder(D, COUNTS, NAME_IDS, encoder_type, hidden_size=6)
    reference = encoder(["a", "b"], words)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_dtype is not None):
        out = encoder(["a", "b"], words)
        loss = sum(rows.sum() for rows in out.values())
    loss.backward()
    assert {rows.dtype for rows in out.values()} == {torch.float32}
    assert all(torch.equal(out[name], reference[name]) for name in out)
    grads = [p.grad for p in encoder.parameters() if p.grad is not None]
    assert grads and all(g.isfinite().all() for g in grads)
