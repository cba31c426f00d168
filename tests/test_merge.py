"""Merging prompt tables trained apart on one base model: one table that serves every task with each source's
exact rows, and refusals that name what is wrong."""

import json

import pytest
import torch
from huggingface_hub import ModelCard
from peft import PeftModel
from safetensors.torch import load_file

from peft_continual.errors import AdapterFileError, ConfigError
from peft_continual.merge import main as merge_cli
from peft_continual.merge import merge_tables
from tests.tuners.continual_prompt.conftest import (
    TEMPLATE_A,
    TEMPLATE_B,
    TEMPLATE_C,
    make_batch,
    make_peft_model,
    tiny_model,
)

ROWS = [("sentiment", [4, [20, 21, 22]]), ("intent", [[30, 31], 3]), ("topic", [[40], 2, [41], 3, [42]])]


def save_table(path, templates, seed, base_seed=0, **config_kwargs):
    """Freeze and save a table of ``templates`` built on ``tiny_model(seed=base_seed)``."""
    from peft import get_peft_model

    from peft_continual import ContinualPromptConfig
    from tests.tuners.continual_prompt.conftest import TASKNAME_IDS

    config = ContinualPromptConfig(
        templates=list(templates),
        taskname_token_ids={t.taskname: TASKNAME_IDS[t.taskname] for t in templates},
        **config_kwargs,
    )
    torch.manual_seed(seed)
    model = get_peft_model(tiny_model(seed=base_seed), config)
    model.freeze_tasks()
    model.save_pretrained(path)
    return path


def logits(folder, rows):
    model = PeftModel.from_pretrained(tiny_model(), folder).eval()
    with torch.no_grad():
        batch = make_batch(rows)
        batch.pop("labels")
        return model(**batch).logits


@pytest.fixture
def two_tables(tmp_path):
    return (
        save_table(tmp_path / "team_a", [TEMPLATE_A, TEMPLATE_B], seed=1),
        save_table(tmp_path / "team_b", [TEMPLATE_C], seed=2),
    )


def test_the_merged_table_serves_every_task_as_its_source_did(tmp_path, two_tables):
    team_a, team_b = two_tables
    merged = merge_tables([team_a, team_b], tmp_path / "merged")
    weights, sources = load_file(merged / "adapter_model.safetensors"), {}
    for folder in two_tables:
        sources |= load_file(folder / "adapter_model.safetensors")
    assert weights.keys() == sources.keys()
    assert all(torch.equal(weights[key], sources[key]) for key in weights)  # bit for bit
    # alone: the same numbers as the source table; mixed in one batch: the same up to batching's rounding
    for folder, rows in ((team_a, [ROWS[0], ROWS[2]]), (team_b, [ROWS[1]])):
        assert torch.equal(logits(merged, rows), logits(folder, rows))
    mixed = logits(merged, ROWS)
    for index, folder in ((0, team_a), (1, team_b), (2, team_a)):
        alone = logits(folder, [ROWS[index]])[0]
        torch.testing.assert_close(mixed[index, : alone.shape[0]], alone, rtol=0, atol=1e-5)
    config = json.loads((merged / "adapter_config.json").read_text())
    assert config["frozen_tasks"] == {"sentiment": 4, "topic": 5, "intent": 3} and config["training_tasks"] == []
    card = ModelCard.load(merged / "README.md")
    tasks = card.data.to_dict()["peft_continual"]["tasks"]
    assert tasks["intent"]["source"] == str(team_b) and tasks["topic"]["source"] == str(team_a)
    assert f"| intent | 1 | 3 | frozen | `{{utterance}} <\\|VIRTUAL_PROMPT_0\\|>` | {team_b} |" in card.text


def test_a_task_in_two_tables_needs_a_choice_or_a_new_name(tmp_path, two_tables):
    team_a, _ = two_tables
    team_c = save_table(tmp_path / "team_c", [TEMPLATE_A], seed=3)  # its own `sentiment`
    with pytest.raises(ConfigError, match=r"task 'sentiment' is in .*--prefer sentiment=<source>"):
        merge_tables([team_a, team_c], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    kept = merge_tables([team_a, team_c], tmp_path / "kept", prefer={"sentiment": str(team_c)})
    assert torch.equal(
        load_file(kept / "adapter_model.safetensors")["base_model.continual_prompt_table.task:sentiment"],
        load_file(team_c / "adapter_model.safetensors")["base_model.continual_prompt_table.task:sentiment"],
    )
    both = merge_tables([team_a, team_c], tmp_path / "both", renames={str(team_c): {"sentiment": "sentiment_c"}})
    served = logits(both, [("sentiment_c", [4, [20, 21, 22]])])
    assert torch.equal(served, logits(team_c, [ROWS[0]]))


def test_the_command_line_merges_and_names_its_mistakes(tmp_path, two_tables, capsys):
    team_a, _ = two_tables
    team_c = save_table(tmp_path / "team_c", [TEMPLATE_A], seed=3)
    assert merge_cli([str(tmp_path / "m"), str(team_a), str(team_c), "--rename", f"{team_c}:sentiment=s2"]) == 0
    assert set(json.loads((tmp_path / "m" / "adapter_config.json").read_text())["frozen_tasks"]) == {
        "sentiment", "topic", "s2"
    }  # fmt: skip
    assert merge_cli([str(tmp_path / "n"), str(team_a), str(team_c), "--prefer", "sentiment=elsewhere"]) == 2
    assert "that table does not hold 'sentiment'" in capsys.readouterr().err


def test_tables_of_another_base_model_are_refused_naming_both(tmp_path, two_tables):
    team_a, _ = two_tables
    foreign = save_table(tmp_path / "foreign", [TEMPLATE_C], seed=2, base_seed=7)
    with pytest.raises(ConfigError, match=r"team_a was trained on base model .* and .*foreign on .*embedding_sha256"):
        merge_tables([team_a, foreign], tmp_path / "merged")


def test_tables_of_another_prompt_depth_are_refused_and_deep_tables_merge(tmp_path, two_tables):
    team_a, _ = two_tables
    deep_c = save_table(tmp_path / "deep_c", [TEMPLATE_C], seed=2, prompt_depth=2)
    with pytest.raises(ConfigError, match=r"different prompt_depth \(.*team_a: 1, .*deep_c: 2\)"):
        merge_tables([team_a, deep_c], tmp_path / "merged")
    deep_a = save_table(tmp_path / "deep_a", [TEMPLATE_A], seed=1, prompt_depth=2)
    merged = merge_tables([deep_a, deep_c], tmp_path / "merged")
    rows = [ROWS[0], ROWS[1]]
    assert torch.equal(logits(merged, rows)[0], logits(deep_a, rows[:1])[0])


def test_open_rounds_stacked_adapters_and_foreign_files_are_refused(tmp_path, two_tables):
    team_a, _ = two_tables
    open_round = make_peft_model(templates=[TEMPLATE_C], seed=2)
    open_round.save_pretrained(tmp_path / "open")
    with pytest.raises(ConfigError, match="still in training"):
        merge_tables([team_a, tmp_path / "open"], tmp_path / "merged")
    from peft import LoraConfig

    stacked = make_peft_model(
        templates=[TEMPLATE_C], seed=2, stacked_adapters=LoraConfig(r=2, target_modules=["q_proj"])
    )
    stacked.freeze_tasks()
    stacked.save_pretrained(tmp_path / "stacked")
    with pytest.raises(ConfigError, match="carries stacked adapters"):
        merge_tables([team_a, tmp_path / "stacked"], tmp_path / "merged")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterFileError, match="no prompt table there"):
        merge_tables([team_a, tmp_path / "empty"], tmp_path / "merged")


def test_tables_on_the_hub_merge_by_repo_id_and_keep_their_results(tmp_path, two_tables, hub):
    from peft_continual.model_card import write_table_card
    from peft_continual.tuners.continual_prompt import ContinualPromptConfig

    team_a, team_b = two_tables
    config = ContinualPromptConfig.from_pretrained(str(team_b))
    row = type("Row", (), {"task": "intent", "stage": "round 1", "examples": 50, "generation": 0.8, "restricted": 0.9})
    write_table_card(team_b, config, results=[row])  # team b published its results with its table
    repos, _ = hub
    repos["team-b/intent-table"] = team_b
    merged = merge_tables([team_a, "team-b/intent-table"], tmp_path / "merged")
    assert torch.equal(logits(merged, [ROWS[1]]), logits(team_b, [ROWS[1]]))
    facts = ModelCard.load(merged / "README.md").data.to_dict()["peft_continual"]
    assert facts["tasks"]["intent"]["source"] == "team-b/intent-table"
    assert facts["results"]["intent"] == {"stage": "round 1", "examples": 50, "generation": 0.8, "restricted": 0.9}
    with pytest.raises(AdapterFileError, match="no prompt table there"):
        merge_tables([team_a, "team-b/missing"], tmp_path / "other")
