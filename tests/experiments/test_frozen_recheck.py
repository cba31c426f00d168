"""``frozen_recheck``: a sample of an earlier task's records re-generated; equal answers carry its full row over."""

import json
from dataclasses import asdict, replace

import pytest

from peft_continual.errors import ConfigError
from peft_continual.experiments.frozen_recheck import carry_over, frozen_check, records_to_evaluate
from peft_continual.experiments.results import ResultRow, markdown_table

ROUND_1 = ResultRow("sentiment", "round 1", 0.9, 0.91, None, 0, 226, 1000, 40, 10**6)
ANSWERS = [["positive", "positive"], ["neutral", "negative"], ["negative", "negative"]]


def write_round_1(output_dir):
    folder = output_dir / "round_1"
    folder.mkdir(parents=True)
    (folder / "evaluation.json").write_text(json.dumps({"evaluation_key": "k", "rows": [asdict(ROUND_1)]}))
    (folder / "predictions.json").write_text(json.dumps({"sentiment": ANSWERS}))


def test_records_of_this_round_in_full_and_of_earlier_rounds_sampled():
    tests = {"sentiment": [1, 2, 3, 4], "sentiment_no": [5, 6, 7], "later": [8]}
    trained_in = {"sentiment": 1, "sentiment_no": 2, "later": 3}
    assert records_to_evaluate(tests, trained_in, 2, 2) == [1, 2, 5, 6, 7]
    assert records_to_evaluate(tests, trained_in, 2, None) == [1, 2, 3, 4, 5, 6, 7]
    assert records_to_evaluate(tests, trained_in, 1, 2) == [1, 2, 3, 4]


def test_equal_answers_carry_the_full_row_over(tmp_path):
    write_round_1(tmp_path)
    sampled = ResultRow("sentiment", "round 2", 1.0, 0.5, None, 0, 2, 0, 40, 10**6)
    new = ResultRow("sentiment_no", "round 2", 0.6, 0.6, None, 0, 200, 500, 40, 10**6)
    answers = {"sentiment": [("positive", "positive"), ("neutral", "negative")], "sentiment_no": []}
    hashes = {1: {"sentiment": "abc"}, 2: {"sentiment": "abc", "sentiment_no": "def"}}
    rows = carry_over(tmp_path, [sampled, new], answers, {"sentiment": 1, "sentiment_no": 2}, hashes, 2)
    assert rows == [replace(ROUND_1, stage="round 2", trainable_parameters=0, carried_from="round 1"), new]
    assert "| sentiment | round 2 (= round 1) |" in markdown_table(rows)


def test_rows_whose_hash_changed_are_not_carried_over_even_with_equal_answers(tmp_path):
    write_round_1(tmp_path)
    sampled = ResultRow("sentiment", "round 2", 1.0, 0.5, None, 0, 2, 0, 40, 10**6)
    answers = {"sentiment": [("positive", "positive"), ("neutral", "negative")]}
    hashes = {1: {"sentiment": "abc"}, 2: {"sentiment": "changed"}}
    assert carry_over(tmp_path, [sampled], answers, {"sentiment": 1}, hashes, 2) == [sampled]


@pytest.mark.parametrize("count", [0, -3, 2.5])
def test_a_recheck_of_no_records_is_refused(count):
    with pytest.raises(ConfigError, match="recheck_records must be a positive number"):
        records_to_evaluate({"a": [1, 2]}, {"a": 1}, 2, count)


def test_changed_answers_keep_the_sample_row_and_the_check_says_so(tmp_path):
    write_round_1(tmp_path)
    sampled = ResultRow("sentiment", "round 2", 0.5, 0.5, None, 0, 2, 0, 40, 10**6)
    answers = {"sentiment": [("positive", "positive"), ("positive", "negative")]}
    hashes = {1: {"sentiment": "abc"}, 2: {"sentiment": "abc"}}
    assert carry_over(tmp_path, [sampled], answers, {"sentiment": 1}, hashes, 2) == [sampled]
    (tmp_path / "round_2").mkdir()
    (tmp_path / "round_2" / "predictions.json").write_text(json.dumps(answers))
    check = frozen_check(tmp_path, {1: {"sentiment": "abc"}, 2: {"sentiment": "abc"}}, 2)
    assert check == {
        "sentiment": {
            "rows_identical": True,
            "predictions_identical": False,
            "predictions_rechecked": 2,
            "sha256": "abc",
        }
    }
