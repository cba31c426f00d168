"""Locating ``../shared/data`` (the real labelled datasets) for tests; tests skip when it is absent."""

import functools
from pathlib import Path

import pytest

from peft_continual.data.records import TaskRecord, read_jsonl
from peft_continual.experiments.task_files import default_data_dir

SHARED_DATA = Path(default_data_dir(Path(__file__).resolve().parents[2]))


@functools.cache
def read_shared(folder: str, split: str) -> list[TaskRecord]:
    path = SHARED_DATA / folder / f"{split}.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is not here (set PEFT_CONTINUAL_DATA_DIR to the shared data folder)")
    return read_jsonl(path)
