"""Evaluation split between 2 processes (gloo, on the CPU) gives the answers and metrics of one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.distributed.test_ddp import LAUNCHERS, free_port

SCRIPT = Path(__file__).with_name("evaluate_tiny.py")
ROOT = SCRIPT.parents[2]


def run(command, output):
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(output.read_text())


@pytest.mark.integration
def test_two_processes_evaluate_each_record_once_and_agree_with_one(tmp_path, shared_data):
    alone = run([sys.executable, str(SCRIPT), str(tmp_path / "one.json"), str(shared_data)], tmp_path / "one.json")
    launcher = [part.replace("{port}", str(free_port())) for part in LAUNCHERS["accelerate"]]
    command = [sys.executable, *launcher, str(SCRIPT), str(tmp_path / "two.json"), str(shared_data)]
    shared = run(command, tmp_path / "two.json")
    assert not alone["distributed"] and shared["distributed"]
    assert [p["source"] for p in shared["predictions"]] == [p["source"] for p in alone["predictions"]]  # order kept
    assert len(alone["predictions"]) == 9
    assert shared["predictions"] == alone["predictions"]
    assert shared["metrics"] == alone["metrics"]
    generated = {path.name: int(path.read_text()) for path in tmp_path.glob("*.generated_by_*")}
    assert generated == {"one.generated_by_0": 9, "two.generated_by_0": 5, "two.generated_by_1": 4}
