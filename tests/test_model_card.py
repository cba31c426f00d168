"""The model card of a prompt table: huggingface_hub's ModelCard with metadata and a body a person reads, written by
``save_pretrained`` and updated, never blindly replaced, when later rounds add tasks. The golden file
(``tests/assets/model_card_golden.md``) names the library's version: regenerate it when the version changes."""

import json
import re
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from peft_continual.experiments.results import ResultRow
from peft_continual.model_card import base_model_id, write_table_card
from peft_continual.models.embedded import DERIVED_FROM, PROVENANCE_KEY
from tests.tuners.continual_prompt.conftest import TASKNAME_IDS, TEMPLATE_C, make_peft_model

GOLDEN = Path(__file__).parent / "assets" / "model_card_golden.md"


def saved_table(folder):
    model = make_peft_model(taskname_token_ids=dict(TASKNAME_IDS))  # the ids of a third task too, for round 2
    model.freeze_tasks()
    model.save_pretrained(folder)
    return model


def test_save_pretrained_writes_a_card_that_parses_with_the_tasks_and_metadata(tmp_path):
    saved_table(tmp_path / "sentiment-table")
    card = ModelCard.load(tmp_path / "sentiment-table" / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "peft" and data["pipeline_tag"] == "text-generation"
    assert {"peft-continual", "p-tuning"} <= set(data["tags"])
    assert data["peft_continual"]["tasks"]["topic"] == {
        "template": "{text} <|VIRTUAL_PROMPT_0|> topic <|VIRTUAL_PROMPT_1|> answer: {label}",
        "virtual_tokens": 5,
        "round": 1,
        "state": "frozen",
    }
    assert "More Information Needed" not in card.text  # not PEFT's blank template
    assert without_hash(card.text) == without_hash(GOLDEN.read_text())  # the whole body, golden file


def without_hash(text):
    """The card's text without the embedding hash, which depends on the tiny model's random weights."""
    return re.sub(r"embedding sha256 `[0-9a-f]+\.\.\.`", "embedding sha256 `...`", text).strip()


def test_a_later_round_keeps_earlier_tasks_with_their_round_and_results(tmp_path):
    folder = tmp_path / "table"
    model = saved_table(folder)
    round_1 = [
        ResultRow("sentiment", "round 1", 0.9, 0.91, None, 0, 226),
        ResultRow("topic", "round 1", 0.5, None, None, 0, 10),
    ]
    write_table_card(folder, model.peft_config["default"], results=round_1, training={"learning_rate": 0.01})
    model.add_tasks([TEMPLATE_C])
    model.freeze_tasks()
    model.save_pretrained(folder)  # round 2: the card is updated from the one in the folder
    round_2 = [ResultRow("intent", "round 2", 0.7, 0.8, None, 0, 50)]
    card = write_table_card(folder, model.peft_config["default"], results=round_2)
    facts = card.data.to_dict()["peft_continual"]
    assert {name: task["round"] for name, task in facts["tasks"].items()} == {"sentiment": 1, "topic": 1, "intent": 2}
    assert facts["results"]["sentiment"] == {"stage": "round 1", "examples": 226, "generation": 0.9, "restricted": 0.91}
    assert facts["results"]["intent"]["stage"] == "round 2" and facts["training"] == {"learning_rate": 0.01}
    assert "| sentiment | round 1 | 226 | 90.0 | 91.0 |" in card.text
    assert "| intent | round 2 | 50 | 70.0 | 80.0 |" in card.text
    index = {(r.task_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert index[("sentiment", "accuracy (restricted choice)")] == 0.91 and len(index) == 5


@pytest.mark.parametrize(
    ("name_or_path", "expected"),
    [("HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"), (None, None), ("gpt2", None)],
)
def test_the_base_model_is_named_by_a_hub_id_never_a_local_path(name_or_path, expected, tmp_path):
    assert base_model_id(name_or_path) == expected
    assert base_model_id(str(tmp_path)) is None  # a local folder means nothing on another machine
    embedded = tmp_path / "smollm2-135m-instruct"
    embedded.mkdir()
    assert base_model_id(str(embedded)) is None  # the folder's name proves nothing
    (embedded / "config.json").write_text(json.dumps({PROVENANCE_KEY: {"name": "embedded"}}))
    assert base_model_id(str(embedded)) == base_model_id("embedded") == DERIVED_FROM


def test_the_users_own_text_and_metadata_stay_through_repeated_saves(tmp_path):
    (tmp_path / "README.md").write_text(
        "---\nlicense: mit\nwidget: []\n---\n# Sentiment prompts\n\nTrained by the NLU team.\n"
    )
    model = saved_table(tmp_path)
    model.save_pretrained(tmp_path)  # twice: one section of ours, the user's text once
    text = (tmp_path / "README.md").read_text()
    assert text.count("Trained by the NLU team.") == 1 and text.count("<!-- peft-continual: begin -->") == 1
    data = ModelCard.load(tmp_path / "README.md").data.to_dict()
    assert data["license"] == "mit" and data["widget"] == [] and "peft-continual" in data["tags"]
