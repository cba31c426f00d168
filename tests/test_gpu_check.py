"""``bench/gpu_check.sh`` runs every part on a machine without a GPU (on the CPU) and writes its report."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from peft_continual.machine import cpu_bf16_support

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_the_gpu_check_runs_its_parts_on_the_cpu_and_writes_a_report_naming_the_device(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("on a GPU the check is run by hand: bash bench/gpu_check.sh")
    environment = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path)], capture_output=True,
                          text=True, timeout=600, env=environment, cwd=ROOT)  # fmt: skip
    report = (tmp_path / "report.md").read_text()
    assert done.returncode == 0, report + done.stderr[-2000:]
    assert report.startswith("# GPU check: no GPU (CPU)")
    parts = [line.split(" | ")[:2] for line in report.splitlines() if line.startswith("| ") and " | " in line]
    statuses = {name.lstrip("| "): status for name, status in parts if name.lstrip("| ") not in ("part", "method")}
    assert statuses["gpu-marked tests"] == "ok"
    assert statuses["LoRA recipe, one GPU"] == statuses["continual recipe, FSDP config"] == "ok"
    assert statuses["continual recipe, 2 DDP processes"] == "skipped: 0 GPU(s)"
    assert (tmp_path / "gpu_step_fp32.json").is_file() and "PEFT P_TUNING (LSTM)" in report
    bf16 = statuses["train step and generation, bf16"]
    if cpu_bf16_support().onednn:
        assert bf16 == "ok" and (tmp_path / "gpu_step_bf16.json").is_file()
    else:  # emulated bf16 (an AMD EPYC with AVX2 only) would outlast the part's limit
        assert bf16 == "skipped: no bf16 in oneDNN on this CPU" and not (tmp_path / "gpu_step_bf16.json").exists()
