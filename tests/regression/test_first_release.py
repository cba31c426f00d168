"""Adapters saved by the first release (before ``prompt_init``) load into this one and give the same prompts and
logits: a round in progress (its LSTM encoder), a frozen table, and prompt tuning with an ``init_text``. The files
were written by ``make_first_release_adapters.py`` at commit 9f574af, on an Intel Xeon.

Prompts read from the file (a frozen table, prompt tuning's embedding) must come back bit for bit on any CPU. What is
computed (the LSTM encoder's prompts, the logits) is compared within float32 tolerance: another CPU's oneDNN kernels
sum in another order (on an AMD EPYC without AVX512 the logits differ by up to 3e-6), and a wrong placement, a lost
row or a changed init moves them by orders of magnitude more."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from peft_continual.tuners.continual_prompt import PromptInit
from tests.tuners.continual_prompt.conftest import MIXED_ROWS, make_batch, tiny_model

FOLDER = Path(__file__).parent / "first_release"


LOGITS_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


@pytest.mark.parametrize(
    ("name", "trainable", "prompt_init", "prompts_are_stored"),
    [
        ("open_round", True, "random", False),
        ("frozen", False, "random", True),
        ("prompt_tuning", True, "text", True),
    ],
)
def test_an_adapter_of_the_first_release_gives_the_same_prompts_and_logits(
    name, trainable, prompt_init, prompts_are_stored
):
    expected = load_file(FOLDER / name / "expected.safetensors")
    model = PeftModel.from_pretrained(tiny_model(), FOLDER / name, is_trainable=trainable).eval()
    assert model.peft_config["default"].prompt_init is PromptInit(prompt_init)
    with torch.no_grad():
        prompts = model.task_prompts()
        logits = model(**make_batch(MIXED_ROWS)).logits
    assert {f"prompt.{task}" for task in prompts} == {key for key in expected if key.startswith("prompt.")}
    for task, rows in prompts.items():
        if prompts_are_stored:
            assert torch.equal(rows, expected[f"prompt.{task}"]), task
        else:
            torch.testing.assert_close(rows, expected[f"prompt.{task}"])
    torch.testing.assert_close(logits, expected["logits"], **LOGITS_TOLERANCE)
