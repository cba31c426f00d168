"""A table card's metadata, checked by the Hub's documented rules before a push (``peft_continual.card_metadata``)."""

import pytest

from peft_continual.card_metadata import HUB_LICENSES, check_card_metadata, metadata_problems
from peft_continual.errors import CardMetadataError
from peft_continual.experiments.results import ResultRow
from peft_continual.model_card import write_table_card
from peft_continual.tuners.continual_prompt._peft_compat_hub import upload_table_folder
from tests.tuners.continual_prompt.conftest import TASKNAME_IDS, make_peft_model

ROUND_1 = [
    ResultRow("sentiment", "round 1", 0.9, 0.91, None, 0, 226),
    ResultRow("topic", "round 1", 0.5, None, None, 0, 10),
]


def card_of_a_round(folder, **metadata):
    model = make_peft_model(taskname_token_ids=dict(TASKNAME_IDS))
    model.freeze_tasks()
    model.save_pretrained(folder)
    return write_table_card(folder, model.peft_config["default"], results=ROUND_1, **metadata)


def test_a_tables_card_with_results_and_the_owners_metadata_is_valid(tmp_path):
    card = card_of_a_round(tmp_path / "table", license="apache-2.0", datasets=["takala/financial_phrasebank"],
                           languages=["en", "nb"], base_model="HuggingFaceTB/SmolLM2-135M-Instruct")  # fmt: skip
    data = card.data.to_dict()
    results = data["model-index"][0]["results"]
    assert [len(result["metrics"]) for result in results] == [2, 1]  # sentiment: generated and restricted; topic
    assert metadata_problems(data) == []
    check_card_metadata(tmp_path / "table" / "README.md")  # no error


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("license", "MIT", "license: 'MIT' is not a Hub licence identifier"),
        ("license", "other", "license: 'other' needs license_name"),
        ("datasets", ["../data/financial_phrasebank"], "datasets: '../data/financial_phrasebank' is not a Hub dataset"),
        ("base_model", "../models/smollm2-135m-instruct", "a local path means nothing on the Hub"),
        ("language", ["english"], "language: 'english' is not an ISO 639 code"),
        ("tags", "p-tuning", None),  # one string is allowed
        ("tags", [1, 2], "tags: [1, 2] is not a string or a list of strings"),
        ("model-index", [{"name": "t", "results": [{"task": {}, "dataset": {"type": "d"}, "metrics": [{"value": 1}]}]}],
         "model-index[0].results[0].task.type: required"),
    ],
)  # fmt: skip
def test_each_field_the_hub_refuses_is_named(field, value, expected):
    problems = metadata_problems({field: value})
    assert (problems == []) if expected is None else any(expected in problem for problem in problems), problems


def test_the_model_index_names_every_missing_field():
    index = [{"name": "t", "results": [{"task": {"type": "text-generation"}, "dataset": {"type": "d"}, "metrics": []}]}]
    assert metadata_problems({"model-index": index}) == [
        "model-index[0].results[0].dataset.name: required",
        "model-index[0].results[0].metrics: a non-empty list of {type, value} is required",
    ]
    assert metadata_problems({"model-index": {"name": "t"}}) == [
        "model-index: must be a list of {name, results}, got dict"
    ]


def test_the_licence_list_has_the_common_identifiers():
    assert {"apache-2.0", "mit", "cc-by-4.0", "cc-by-nc-sa-3.0", "llama3.1", "other", "unknown"} <= HUB_LICENSES


def test_a_push_with_a_licence_the_hub_refuses_stops_before_any_request(tmp_path, monkeypatch):
    card_of_a_round(tmp_path / "table")
    readme = tmp_path / "table" / "README.md"
    readme.write_text(readme.read_text().replace("library_name: peft", "library_name: peft\nlicense: Apache 2.0", 1))

    def no_hub(*_args, **_kwargs):
        raise AssertionError("the Hub was contacted")

    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", no_hub)
    with pytest.raises(CardMetadataError) as refused:
        upload_table_folder(tmp_path / "table", "team/table")
    message = str(refused.value)
    assert str(readme) in message and "license: 'Apache 2.0' is not a Hub licence identifier" in message


def test_yaml_that_does_not_parse_is_named(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: [unclosed\n---\n# a card\n")
    with pytest.raises(CardMetadataError, match=r"README.md: the card's metadata does not parse"):
        check_card_metadata(tmp_path / "README.md")
