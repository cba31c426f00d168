"""``PromptTable``: frozen per-task rows as buffers; inspect, remove, rename; hashes prove bit-identity."""

from __future__ import annotations

import pytest
import torch

from peft_continual.errors import ConfigError, DuplicateTaskError, UnknownTaskError
from peft_continual.tuners.continual_prompt import PromptTable


@pytest.fixture
def table() -> PromptTable:
    table = PromptTable(token_dim=4)
    table.add("sentiment", torch.arange(12.0).reshape(3, 4))
    table.add("topic.v2", torch.ones(5, 4))
    return table


def test_inspect(table):
    assert table.tasks == ("sentiment", "topic.v2")
    assert len(table) == 2 and "sentiment" in table and "missing" not in table
    assert list(table) == ["sentiment", "topic.v2"]
    assert table.counts() == {"sentiment": 3, "topic.v2": 5}
    assert table.shapes() == {"sentiment": (3, 4), "topic.v2": (5, 4)}
    assert torch.equal(table["sentiment"], torch.arange(12.0).reshape(3, 4))
    assert "sentiment: (3, 4)" in repr(table)


def test_rows_are_persistent_buffers_never_parameters(table):
    assert list(table.parameters()) == []
    assert set(table.state_dict()) == {"task:sentiment", "task:topic%2Ev2"}
    assert all(not rows.requires_grad for rows in table.state_dict().values())


def test_add_stores_a_float32_copy():
    rows = torch.zeros(2, 4, dtype=torch.bfloat16, requires_grad=True)
    table = PromptTable(4)
    table.add("a", rows)
    with torch.no_grad():
        rows.add_(1)
    assert table["a"].dtype == torch.float32 and torch.equal(table["a"], torch.zeros(2, 4))


def test_rows_allocated_from_counts_cannot_be_read_until_loaded():
    table = PromptTable(4, {"a": 2, "b": 1})
    assert table.counts() == {"a": 2, "b": 1}
    table.load_state_dict({"task:a": torch.ones(2, 4)}, strict=False)
    assert torch.equal(table["a"], torch.ones(2, 4))
    with pytest.raises(ConfigError, match="rows of task 'b' were never loaded.*'task:b'"):
        table["b"]
    table.rename("b", "c")
    with pytest.raises(ConfigError, match="'c' were never loaded"):
        table["c"]


def test_remove(table):
    table.remove("sentiment")
    assert table.tasks == ("topic.v2",) and "task:sentiment" not in table.state_dict()


def test_rename_keeps_bytes_and_position(table):
    hashes = table.row_hashes()
    table.rename("sentiment", "sst2")
    assert table.tasks == ("sst2", "topic.v2")
    assert table.row_hashes() == {"sst2": hashes["sentiment"], "topic.v2": hashes["topic.v2"]}


def test_row_hashes_see_a_single_bit(table):
    before = table.row_hashes()
    rows = table["sentiment"]
    rows.view(torch.int32)[0, 0] ^= 1
    after = table.row_hashes()
    assert after["sentiment"] != before["sentiment"] and after["topic.v2"] == before["topic.v2"]


def test_task_names_that_are_module_attributes_are_fine():
    table = PromptTable(2)
    table.add("training", torch.zeros(1, 2))
    table.add("forward", torch.ones(1, 2))
    assert table.training is not None and callable(table.forward)
    assert table.tasks == ("training", "forward")


def test_errors_name_the_task(table):
    with pytest.raises(DuplicateTaskError, match="'sentiment'"):
        table.add("sentiment", torch.zeros(1, 4))
    with pytest.raises(UnknownTaskError, match="'nope'.*'sentiment', 'topic.v2'"):
        table["nope"]
    with pytest.raises(UnknownTaskError, match="'nope'"):
        table.remove("nope")
    with pytest.raises(DuplicateTaskError, match="'topic.v2'"):
        table.rename("sentiment", "topic.v2")
    with pytest.raises(ConfigError, match=r"shape \(n, 4\)"):
        table.add("wide", torch.zeros(2, 5))
    with pytest.raises(ConfigError, match="non-empty"):
        table.add("", torch.zeros(2, 4))


def test_a_listener_can_refuse_a_change(table):
    events = []

    def listener(event, task, new_name):
        events.append((event, task, new_name))
        if event == "remove":
            raise ConfigError("refused")

    table.add_listener(listener)
    table.rename("topic.v2", "topic")
    with pytest.raises(ConfigError):
        table.remove("sentiment")
    assert events == [("rename", "topic.v2", "topic"), ("remove", "sentiment", None)]
    assert table.tasks == ("sentiment", "topic")
