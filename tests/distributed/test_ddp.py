"""Data-parallel training on CPU (gloo): 2 processes at batch B/2 each give the table 1 process gives at batch B."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peft_continual.tuners.continual_prompt.safe_load import TABLE_KEY

SCRIPT = Path(__file__).with_name("train_tiny.py")
ROOT = SCRIPT.parents[2]


def run(command, output_dir):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return load_file(output_dir / "table" / "adapter_model.safetensors")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


LAUNCHERS = {
    # accelerate's --cpu starts one process; --multi_gpu on a machine without a GPU starts N processes on gloo
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "{port}"],
    "torchrun": ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "{port}"],
}  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_at_half_the_batch_give_the_table_of_one_process(tmp_path, launcher):
    """Data-parallel training (gloo on CPU). The rows' answers differ in length, so the two processes' halves of a
    batch hold different numbers of labelled tokens: the loss must be averaged over the whole batch's tokens
    (``average_tokens_across_devices``), not per process, to give the same gradients."""
    alone = run([sys.executable, str(SCRIPT), str(tmp_path / "one"), "4"], tmp_path / "one")
    port = str(free_port())
    command = [sys.executable, *(part.replace("{port}", port) for part in LAUNCHERS[launcher])]
    command += [str(SCRIPT), str(tmp_path / "two"), "2"]
    parallel = run(command, tmp_path / "two")
    untrained = load_file(tmp_path / "one" / "untrained.safetensors")  # task -> its prompt before training
    assert alone.keys() == parallel.keys() and len(alone) == len(untrained) == 2
    for key in alone:
        task = key.split(TABLE_KEY, 1)[1]
        assert not torch.allclose(alone[key], untrained[task], atol=1e-4)  # training moved the rows
        torch.testing.assert_close(parallel[key], alone[key], rtol=1e-4, atol=1e-5, msg=key)
    # one process wrote each file: the table once, no staging folder left by a second writer
    files = sorted(str(p.relative_to(tmp_path / "two")) for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert not [f for f in files if ".partial" in f]
    assert [f for f in files if f.startswith("table/")] == [
        "table/README.md",
        "table/adapter_config.json",
        "table/adapter_model.safetensors",
    ]
