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
    """Run ``command``; the table it saved in ``output_dir`` (None when it stopped before saving one)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = output_dir / "table" / "adapter_model.safetensors"
    return load_file(table) if table.exists() else None


def in_processes(count, *arguments):
    """The command that runs ``train_tiny.py`` with ``arguments`` in ``count`` processes (accelerate launch)."""
    if count == 1:
        return [sys.executable, str(SCRIPT), *map(str, arguments)]
    launcher = [part.replace("{port}", str(free_port())) for part in LAUNCHERS["accelerate"]]
    launcher[launcher.index("--num_processes") + 1] = str(count)
    return [sys.executable, *launcher, str(SCRIPT), *map(str, arguments)]


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


@pytest.mark.integration
@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)])
def test_a_run_stopped_in_some_processes_resumes_in_another_count_and_ends_with_the_same_table(tmp_path, first, then):
    """The global batch stays 4 (4 per process alone, 2 each in two): a run checkpointed at step 2 in ``first``
    processes and resumed in ``then`` ends with the table of a run that was never stopped."""
    straight = run(in_processes(1, tmp_path / "straight", 4), tmp_path / "straight")
    resumed = tmp_path / "resumed"
    assert run(in_processes(first, resumed, 4 // first, 2), resumed) is None  # stopped after step 2
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["checkpoint-2"]
    first_half = resumed / "checkpoints" / "checkpoint-2" / "optimizer.pt"
    saved_at = first_half.stat().st_mtime_ns
    table = run(in_processes(then, resumed, 4 // then), resumed)
    assert first_half.stat().st_mtime_ns == saved_at  # resumed from step 2, not trained again from step 0
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert table.keys() == straight.keys()
    for key in straight:
        torch.testing.assert_close(table[key], straight[key], rtol=1e-4, atol=1e-5, msg=key)
