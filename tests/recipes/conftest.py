"""Fixtures of the recipe tests: a tiny random model saved with SmolLM2's tokenizer, the shared data folder."""

import pytest
from transformers import AutoTokenizer

from tests.conftest import SMOLLM2_TOKENIZER_DIR
from tests.data.shared_data import SHARED_DATA


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_llama):
    """A tiny Llama saved like a Hub model, with the real tokenizer (the recipes tokenize real records)."""
    path = tmp_path / "tiny-model"
    tiny_llama.save_pretrained(path)
    AutoTokenizer.from_pretrained(SMOLLM2_TOKENIZER_DIR).save_pretrained(path)
    return path


@pytest.fixture
def shared_data():
    """The ``../shared/data`` folder; the recipe tests are skipped where it is absent."""
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is not here")
    return SHARED_DATA
