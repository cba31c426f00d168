"""The method with its model sharded by FSDP2 (torch's ``fully_shard``, gloo on the CPU) trains the table DDP trains.

accelerate (1.15) turns FSDP on only for GPU-type setups: ``accelerate launch --use_fsdp`` on a machine without a
GPU runs DDP (checked below, with this library's warning), so the sharded case is driven by torch directly here; on a
GPU, ``bench/gpu_check.sh`` runs the recipes with ``recipes/configs/accelerate/fsdp.yaml``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.distributed.test_ddp import free_port

SCRIPT = Path(__file__).with_name("fsdp_tiny.py")
ROOT = SCRIPT.parents[2]


def torchrun(*arguments):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), *map(str, arguments)]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.integration
def test_fsdp2_sharding_trains_the_table_ddp_trains_when_each_process_sees_one_task(tmp_path):
    """The tasks alternate in the rows, so each process's micro-batch holds one task: the other task's parameters
    must still get a (zero) gradient in it, or FSDP2 reduces the gradients of different parameters together."""
    torchrun(SCRIPT, tmp_path / "ddp", "ddp")
    torchrun(SCRIPT, tmp_path / "fsdp", "fsdp")
    assert (tmp_path / "fsdp" / "encoder_was_sharded").read_text() == "True"
    assert (tmp_path / "ddp" / "encoder_was_sharded").read_text() == "False"
    replicated = load_file(tmp_path / "ddp" / "table" / "adapter_model.safetensors")
    sharded = load_file(tmp_path / "fsdp" / "table" / "adapter_model.safetensors")
    assert sharded.keys() == replicated.keys() and len(sharded) == 2
    for key in sharded:
        torch.testing.assert_close(sharded[key], replicated[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.integration
def test_accelerate_fsdp_on_a_machine_without_a_gpu_runs_ddp_and_says_so(tmp_path):
    config = ROOT / "recipes" / "configs" / "accelerate" / "fsdp.yaml"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--main_process_port", str(free_port()), str(SCRIPT.with_name("train_tiny.py")), str(tmp_path), "2"]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FSDP runs on GPUs only" in done.stdout + done.stderr
    assert (tmp_path / "table" / "adapter_model.safetensors").is_file()
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["epoch"] == 0.5  # 4 steps of 2 processes x 2 rows over 32 rows: the processes trained as one
