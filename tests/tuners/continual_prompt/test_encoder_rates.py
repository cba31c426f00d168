"""The p-tuning config's two learning rates: the encoder slow enough that the virtual tokens move like prompt tuning's.

At SmolLM2's widths (D = 576, encoder width 256), on word embeddings at SmolLM2's scale (std 0.133: norm ~3.2), Adam
steps on a gradient that keeps its direction (``bench/encoder_step_size.py`` does the same on the real embeddings).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from peft_continual.tuners.continual_prompt.encoder import TaskPromptEncoder, text_start_rows

ROOT = Path(__file__).resolve().parents[3]
P_TUNING_CONFIG = ROOT / "recipes" / "configs" / "p_tuning" / "smollm2_135m.yaml"
ENCODER_CONFIGS = [P_TUNING_CONFIG, ROOT / "recipes" / "configs" / "p_tuning_lora" / "smollm2_135m.yaml"]
STEPS = 10


def distance_after(encoder_lr: float, rows_lr: float) -> float:
    """Mean distance of 20 virtual tokens from their start after ``STEPS`` Adam steps, in word-embedding norms."""
    torch.manual_seed(0)
    words = nn.Embedding(1000, 576)
    nn.init.normal_(words.weight, std=0.133)
    words.requires_grad_(False)
    start = text_start_rows(words, {"task": list(range(7))}, {"task": 20})
    encoder = TaskPromptEncoder(576, {"task": 20}, {"task": [5, 6]}, "lstm", hidden_size=256, start_rows=start,
                                input_std=0.133)  # fmt: skip
    rows = list(encoder.start_rows.parameters())
    rest = [p for p in encoder.parameters() if all(p is not row for row in rows)]
    optimizer = torch.optim.Adam([{"params": rows, "lr": rows_lr}, {"params": rest, "lr": encoder_lr}])
    direction = torch.randn(20, 576, generator=torch.Generator().manual_seed(1))
    for _ in range(STEPS):
        optimizer.zero_grad()
        (encoder(["task"], words)["task"] * direction).sum().backward()
        optimizer.step()
    with torch.no_grad():
        moved = (encoder(["task"], words)["task"] - start["task"]).norm(dim=-1).mean()
    return float(moved / words.weight.norm(dim=-1).mean())


@pytest.fixture(scope="module")
def prompt_tuning_distance() -> float:
    """The free rows alone (the encoder frozen at its zero start) at the config's start-row rate: prompt tuning."""
    rates = yaml.safe_load(P_TUNING_CONFIG.read_text())
    return distance_after(0.0, rates["start_rows_learning_rate"])


@pytest.mark.parametrize("config", ENCODER_CONFIGS, ids=lambda path: path.parent.name)
def test_the_configs_rates_move_the_tokens_like_prompt_tuning(prompt_tuning_distance, config):
    rates = yaml.safe_load(config.read_text())
    ours = distance_after(rates["learning_rate"], rates["start_rows_learning_rate"])
    assert prompt_tuning_distance <= ours < 1.5 * prompt_tuning_distance


def test_one_rate_of_1e_2_for_everything_carries_the_tokens_far_away(prompt_tuning_distance):
    assert distance_after(1e-2, 1e-2) > 100 * prompt_tuning_distance
