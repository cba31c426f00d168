"""Fuzzing the loaders (hypothesis): random bytes, truncations and mutations of a valid adapter folder's weights and
config, of a template file and of a JSONL file end in a correct load or in this library's error, never in another
exception and never in a hang. CI runs a fixed set of 40 examples per test within a per-example deadline;
``PEFT_CONTINUAL_FUZZ_EXAMPLES=2000`` hunts with 2000 new random ones. In the integration tier: 40 loads take 1-4 s
a test on a 2-core CPU, over the unit tier's second."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peft import PeftModel

from peft_continual.data.records import read_jsonl
from peft_continual.data.templates import load_templates
from peft_continual.errors import PeftContinualError
from tests.tuners.continual_prompt.conftest import make_peft_model, tiny_model

pytestmark = pytest.mark.integration
HUNT = int(os.environ.get("PEFT_CONTINUAL_FUZZ_EXAMPLES", 0))
FUZZ = settings(
    max_examples=HUNT or 40,
    derandomize=not HUNT,  # CI runs the same 40 examples each time; a hunt draws new ones
    deadline=timedelta(seconds=10),  # a hang fails the example instead of stalling CI
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def damaged_bytes(draw, original: bytes) -> bytes:
    """A cut, a few overwritten bytes, garbage appended, or random bytes instead of the file."""
    kind = draw(st.sampled_from(["cut", "flip", "append", "random"]))
    if kind == "cut":
        return original[: draw(st.integers(0, len(original) - 1))]
    if kind == "flip":
        data = bytearray(original)
        for _ in range(draw(st.integers(1, 8))):
            # mostly in the header (where a flip changes names, shapes and offsets), sometimes anywhere
            end = min(len(data), 200) if draw(st.booleans()) else len(data)
            data[draw(st.integers(0, end - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "append":
        return original + draw(st.binary(min_size=1, max_size=64))
    return draw(st.binary(max_size=512))


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A valid saved table (two frozen tasks) to damage, one copy per example."""
    model = make_peft_model()
    model.freeze_tasks()
    folder = tmp_path_factory.mktemp("fuzz") / "table"
    model.save_pretrained(folder)
    return folder


def load_damaged(adapter: Path, name: str, content: bytes) -> None:
    """Write ``content`` as the folder's file ``name`` in a copy of ``adapter`` and load it through PEFT."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "table"
        shutil.copytree(adapter, folder)
        (folder / name).write_bytes(content)
        try:
            model = PeftModel.from_pretrained(tiny_model(), folder)
        except PeftContinualError:
            return
        model.prompt_table.row_hashes()  # a load that succeeded serves its table


@FUZZ
@given(data=st.data())
def test_damaged_weights_load_or_raise_our_error(adapter, data):
    original = (adapter / "adapter_model.safetensors").read_bytes()
    load_damaged(adapter, "adapter_model.safetensors", data.draw(damaged_bytes(original)))


@FUZZ
@given(data=st.data())
def test_damaged_config_bytes_load_or_raise_our_error(adapter, data):
    original = (adapter / "adapter_config.json").read_bytes()
    load_damaged(adapter, "adapter_config.json", data.draw(damaged_bytes(original)))


@FUZZ
@given(data=st.data())
def test_configs_with_a_field_of_another_value_load_or_raise_our_error(adapter, data):
    config = json.loads((adapter / "adapter_config.json").read_text())
    field = data.draw(st.sampled_from(sorted(set(config) - {"peft_type"})))  # another peft_type is another method
    config[field] = data.draw(JSON_VALUES)
    load_damaged(adapter, "adapter_config.json", json.dumps(config).encode())


TEMPLATES = """task_templates:
  - taskname: sentiment
    prompt_template: "<|VIRTUAL_PROMPT_0|>{sentence}\\nSentiment: {label}"
    total_virtual_tokens: 4
    virtual_token_splits: [4]
    answer_field: label
"""
RECORDS = '{"taskname": "sentiment", "sentence": "Up 5%", "label": "positive"}\n' * 3


@FUZZ
@given(data=st.data())
def test_damaged_template_files_load_or_raise_our_error(tmp_path, data):
    for suffix, text in ((".yaml", TEMPLATES), (".json", json.dumps({"task_templates": [{"taskname": "a"}]}))):
        path = tmp_path / f"templates{suffix}"
        path.write_bytes(data.draw(damaged_bytes(text.encode())))
        with contextlib.suppress(PeftContinualError):
            load_templates(path)


@FUZZ
@given(data=st.data())
def test_damaged_jsonl_files_load_or_raise_our_error(tmp_path, data):
    path = tmp_path / "records.jsonl"
    path.write_bytes(data.draw(damaged_bytes(RECORDS.encode())))
    try:
        read_jsonl(path)
    except PeftContinualError as error:
        assert str(path) in str(error)
