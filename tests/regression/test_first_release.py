"""Adapters saved by the first release (before ``prompt_init``) load into this one and give the same prompts and
logits: a round in progress (its LSTM encoder), a frozen table, and prompt tuning with an ``init_text``. The files
were written by ``make_first_release_adapters.py`` at commit 9f574af."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from peft_continual.tuners.continual_prompt import PromptInit
from tests.tuners.continual_prompt.conftest import MIXED_ROWS, make_batch, tiny_model

FOLDER = Path(__file__).parent / "first_release"


@pytest.mark.parametrize(
    ("name", "trainable", "prompt_init"),
    [("open_round", True, "random"), ("frozen", False, "random"), ("prompt_tuning", True, "text")],
)
def test_an_adapter_of_the_first_release_gives_the_same_prompts_and_logits(name, trainable, prompt_init):
    expected = load_file(FOLDER / name / "expected.safetensors")
    model = PeftModel.from_pretrained(tiny_model(), FOLDER / name, is_trainable=trainable).eval()
    assert model.peft_config["default"].prompt_init is PromptInit(prompt_init)
    with torch.no_grad():
        prompts = model.task_prompts()
        logits = model(**make_batch(MIXED_ROWS)).logits
    assert {f"prompt.{task}" for task in prompts} == {key for key in expected if key.startswith("prompt.")}
    assert all(torch.equal(rows, expected[f"prompt.{task}"]) for task, rows in prompts.items())
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-6)
