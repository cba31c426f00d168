"""A CPU without bf16 hardware, on any x86-64 machine: oneDNN's documented ``ONEDNN_MAX_CPU_ISA=AVX2`` caps the
instruction set oneDNN dispatches to, so a CPU with AVX512-BF16 or AMX behaves like an AVX2-only one (an AMD EPYC
of the Zen 2/3 generations, most laptops and CI runners). The variable is read once, when oneDNN starts, so each
check runs in a fresh interpreter.

On such a CPU ``torch.nn.LSTM`` under bf16 autocast raises "could not create a primitive descriptor for the LSTM
forward propagation primitive": the demo died on it at its first training step. These tests reproduce that and pin
what this library does instead.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.skipif(
        platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available(),
        reason="ONEDNN_MAX_CPU_ISA caps oneDNN's x86-64 instruction sets; this is not an x86-64 torch build with oneDNN",
    ),
    pytest.mark.integration,  # every test reads the probe of one capped subprocess (seconds)
]

PROBE = textwrap.dedent(
    """
    import json, torch
    from torch import nn
    from peft_continual.errors import PrecisionError
    from peft_continual.machine import cpu_bf16_support
    from peft_continual.precision import choose_precision
    from peft_continual.tuners.continual_prompt import TaskPromptEncoder

    found = {"onednn_bf16": cpu_bf16_support().onednn, "auto": choose_precision("auto", "cpu").precision.value}
    try:
        choose_precision("bf16", "cpu")
        found["bf16_refused"] = None
    except PrecisionError as error:
        found["bf16_refused"] = str(error)
    lstm = nn.LSTM(16, 8, batch_first=True, bidirectional=True)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.randn(2, 5, 16))
        found["plain_lstm_under_bf16_autocast"] = "ran"
    except RuntimeError as error:
        found["plain_lstm_under_bf16_autocast"] = str(error).splitlines()[0]
    words = nn.Embedding(10, 16).requires_grad_(False)
    found["encoder"] = {}
    for encoder_type in ("lstm", "mlp", "embedding"):
        encoder = TaskPromptEncoder(16, {"a": 3, "b": 4}, {"a": [1], "b": [2, 3]}, encoder_type, hidden_size=8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = encoder(["a", "b"], words)
            loss = sum(rows.float().pow(2).sum() for rows in out.values())
        loss.backward()
        found["encoder"][encoder_type] = {
            "dtypes": sorted({str(rows.dtype) for rows in out.values()}),
            "finite_grads": all(bool(p.grad.isfinite().all()) for p in encoder.parameters() if p.grad is not None),
        }
    print("FOUND" + json.dumps(found))
    """
)


@pytest.fixture(scope="module")
def capped() -> dict:
    """What a fresh interpreter with ``ONEDNN_MAX_CPU_ISA=AVX2`` finds."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("FOUND")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("FOUND"))


def test_the_cap_reproduces_a_cpu_without_bf16_and_its_lstm_crash(capped):
    """The premise of the next test. If torch ever gains a bf16 LSTM kernel for such CPUs, the second assertion
    fails: then the note in ``peft_continual/tuners/continual_prompt/encoder.py`` can say it is no longer needed there."""
    assert capped["onednn_bf16"] is False
    assert "could not create a primitive descriptor for the LSTM" in capped["plain_lstm_under_bf16_autocast"]


def test_every_encoder_runs_under_bf16_autocast_on_a_cpu_without_bf16(capped):
    expected = {"dtypes": ["torch.float32"], "finite_grads": True}
    assert capped["encoder"] == {"lstm": expected, "mlp": expected, "embedding": expected}


def test_auto_trains_in_fp32_there_and_bf16_asked_for_is_refused_with_the_cause(capped):
    assert capped["auto"] == "fp32"
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in capped["bf16_refused"] and "--precision fp32" in capped["bf16_refused"]
