"""Locating ``../shared/data`` (the real labelled datasets) for tests; tests skip when it is absent."""

import functools
import os
from pathlib import Path

import pytest

from peft_continual.data.records import TaskRecord, read_jsonl

SHARED_DATA = Path(os.environ.get("PEFT_CONTINUAL_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))


@functools.cache
def read_shared(folder: str, split: str) -> list[TaskRecord]:
    path = SHARED_DATA / folder / f"{split}.jsonl"
    if not path.exists():
        pytest.skip(f"{path} is not here (set PEFT_CONTINUAL_DATA_DIR to the shared data folder)")
    return read_jsonl(path)
