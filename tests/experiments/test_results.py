"""Saved result rows are read back only for the very inputs they were measured on."""

import json

from peft_continual import TaskRecord
from peft_continual.evaluation.metrics import classification_metrics
from peft_continual.experiments.results import ResultRow, evaluation_key, markdown_table, read_saved_rows, save_rows

RECORDS = [
    TaskRecord("sentiment", {"sentence": "Up.", "label": "positive"}, "a/test.jsonl:1"),
    TaskRecord("sentiment", {"sentence": "Down.", "label": "negative"}, "a/test.jsonl:2"),
]
ROW = ResultRow("sentiment", "round 1", 0.5, 0.75, None, 1, 2, 10, 20, 1000)


def test_the_key_follows_the_records_content_and_order_and_the_other_inputs_but_not_where_records_were_read():
    key = evaluation_key(RECORDS, {"sentiment": "ab12"})
    moved = [TaskRecord(r.taskname, r.fields, r.source.replace("a/", "b/")) for r in RECORDS]
    assert evaluation_key(moved, {"sentiment": "ab12"}) == key
    assert evaluation_key(RECORDS[::-1], {"sentiment": "ab12"}) != key
    assert evaluation_key(RECORDS[:1], {"sentiment": "ab12"}) != key
    relabelled = [RECORDS[0], TaskRecord("sentiment", {"sentence": "Down.", "label": "neutral"}, "a/test.jsonl:2")]
    assert evaluation_key(relabelled, {"sentiment": "ab12"}) != key
    assert evaluation_key(RECORDS, {"sentiment": "ab13"}) != key
    assert evaluation_key(RECORDS) != key


def test_saved_rows_are_read_back_under_their_key_only(tmp_path):
    path = tmp_path / "round_1" / "evaluation.json"
    assert read_saved_rows(path, "k1") is None
    save_rows(path, "k1", [ROW])
    assert read_saved_rows(path, "k1") == [ROW]
    assert read_saved_rows(path, "k2") is None
    assert [p.name for p in path.parent.iterdir()] == ["evaluation.json"]  # no temporary file left behind


def test_a_rows_file_without_a_key_is_not_trusted(tmp_path):
    path = tmp_path / "fewshot.json"
    path.write_text(json.dumps([vars(ROW)]))  # the format before rows carried their evaluation key
    assert read_saved_rows(path, evaluation_key(RECORDS)) is None


def test_the_markdown_table_gives_percentages_and_the_share_of_the_base_model():
    line = markdown_table([ROW]).splitlines()[-1]
    assert line == "| sentiment | round 1 | 50.0 ± 35.4 | 75.0 ± 30.6 | - | 1 | 2 | 10 | 20 | 2.0000 |"  # s.e. on 2


LABELS = ["positive", "negative", "neutral"]


def test_the_classes_of_a_classification_row_show_a_collapse_onto_one_class(tmp_path):
    from peft_continual.evaluation.report import TaskResult
    from peft_continual.evaluation.tasks import TaskKind
    from peft_continual.experiments.results import per_class_table, result_row, write_results

    generation = classification_metrics(["neutral"] * 4, ["neutral", "neutral", "negative", "positive"], LABELS)
    result = TaskResult("sentiment_no", TaskKind.CLASSIFICATION, {"generation": generation})
    row = result_row("round 2", result)
    assert row.per_class["negative"] == {"gold": 1, "predicted": 0, "recall": 0.0}
    assert row.per_class["neutral"] == {"gold": 2, "predicted": 4, "recall": 1.0}
    assert "| sentiment_no | round 2 | neutral | 2 | 4 | 100.0 |" in per_class_table([row]).splitlines()
    write_results(tmp_path, [row], {}, "t")
    assert "Per class (generated answers)" in (tmp_path / "results.md").read_text()
    save_rows(tmp_path / "rows.json", "k", [row])
    assert read_saved_rows(tmp_path / "rows.json", "k") == [row]


def test_a_calibrated_row_shows_its_accuracy_and_classes_beside_the_restricted_ones_in_both_tables(tmp_path):
    from peft_continual.evaluation.report import TaskResult
    from peft_continual.evaluation.tasks import TaskKind
    from peft_continual.experiments.results import per_class_table, result_row

    gold = ["neutral", "neutral", "negative", "positive"]
    metrics = {
        "generation": classification_metrics(["neutral"] * 4, gold, LABELS),
        "restricted": classification_metrics(["neutral"] * 4, gold, LABELS),
        "calibrated": classification_metrics(["neutral", "positive", "negative", "positive"], gold, LABELS),
    }
    calibrated = result_row("round 2", TaskResult("sentiment_no", TaskKind.CLASSIFICATION, metrics))
    plain = result_row(
        "round 1", TaskResult("sentiment", TaskKind.CLASSIFICATION, {"generation": metrics["generation"]})
    )
    assert (calibrated.restricted, calibrated.calibrated, plain.calibrated) == (0.5, 0.75, None)
    assert calibrated.per_class["negative"] == {
        "gold": 1, "predicted": 0, "recall": 0.0, "calibrated_predicted": 1, "calibrated_recall": 1.0,
    }  # fmt: skip
    table = markdown_table([plain, calibrated]).splitlines()
    assert "| restricted acc. % (± s.e.) | calibrated acc. % (± s.e.) |" in table[0]
    assert table[3].startswith("| sentiment_no | round 2 | 50.0 ± 25.0 | 50.0 ± 25.0 | 75.0 ± 21.7 | - |")
    assert table[2].startswith("| sentiment | round 1 | 50.0 ± 25.0 | - | - | - |")
    assert {len(line.split("|")) for line in table} == {len(table[0].split("|"))}
    classes = per_class_table([plain, calibrated]).splitlines()
    assert "| sentiment_no | round 2 | negative | 1 | 0 | 0.0 | 1 | 100.0 |" in classes
    assert "| sentiment | round 1 | negative | 1 | 0 | 0.0 | - | - |" in classes
    assert "calibrated" not in markdown_table([plain]) + per_class_table([plain])


def test_the_markdown_names_the_machine_in_one_line_as_the_json_records_it(tmp_path):
    from peft_continual.experiments.results import write_results
    from peft_continual.machine import machine_facts

    facts = machine_facts() | {"cpu": "AMD EPYC 7B13", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    write_results(tmp_path, [ROW], {"minutes": 1.5, "machine": facts}, "t")
    notes = (tmp_path / "results.md").read_text().splitlines()
    machine = next(line for line in notes if line.startswith("- **machine**: "))
    assert machine.startswith("- **machine**: AMD EPYC 7B13 (") and "ONEDNN_MAX_CPU_ISA=AVX2" in machine
    assert f"torch {facts['torch']}" in machine and f"peft {facts['peft']}" in machine
    assert "- **minutes**: 1.5" in notes
    assert json.loads((tmp_path / "results.json").read_text())["machine"] == facts
