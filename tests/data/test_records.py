"""Reading records: JSONL errors name file:line; template checks name the task and the field."""

import datasets
import pytest

from peft_continual.data.records import check_records, read_jsonl, records_from_dicts
from peft_continual.data.templates import TaskTemplate
from peft_continual.errors import RecordError, UnknownTaskError

TEMPLATE = TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 4, [4], "label")


def write(tmp_path, data: bytes, name="train.jsonl"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_reads_records_with_sources_and_keeps_metadata(tmp_path):
    path = write(
        tmp_path,
        b'\xef\xbb\xbf{"taskname": "sentiment", "sentence": "Up", "label": "positive", "id": 7}\n\n'
        b'{"taskname": "sentiment", "sentence": "Down", "label": "negative"}\n',
    )
    records = read_jsonl(path)
    assert [r.source for r in records] == [f"{path}:1", f"{path}:3"]
    assert records[0].fields == {"sentence": "Up", "label": "positive", "id": 7}
    check_records(records, [TEMPLATE])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            b'{"taskname": "sentiment"}\n{"taskname": "sentiment", "sentence": "caf\xe9"}\n',
            r":2: not UTF-8 \(byte 0xe9",
        ),
        (b'{"taskname": "sentiment"}\n{"taskname": "sentiment", \n', r":2: broken JSON at column 27"),
        (b'{"taskname": "sentiment"}\n["sentiment"]\n', r":2: a record must be a JSON object, got list"),
        (b'{"sentence": "x", "label": "y"}\n', r":1: no 'taskname' field; the record has 'label', 'sentence'"),
        (b'{"taskname": 3}\n', r":1: 'taskname' must be a non-empty string"),
        (b"", r"train\.jsonl: the file holds no records"),
        (b"\n  \n", r"train\.jsonl: the file holds no records"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(RecordError, match=message):
        read_jsonl(path)


def test_missing_file_is_a_record_error(tmp_path):
    with pytest.raises(RecordError, match=r"nope\.jsonl: cannot open"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_unknown_task_names_the_line_and_the_known_tasks(tmp_path):
    path = write(tmp_path, b'{"taskname": "sentiment", "sentence": "a", "label": "b"}\n{"taskname": "sentimnet"}\n')
    with pytest.raises(UnknownTaskError, match=rf"{path.name}:2: unknown task 'sentimnet'; known tasks: 'sentiment'"):
        check_records(read_jsonl(path), [TEMPLATE])


def test_missing_field_names_task_field_and_line(tmp_path):
    path = write(tmp_path, b'{"taskname": "sentiment", "text": "a", "label": "b"}\n')
    with pytest.raises(
        RecordError, match=r":1: task 'sentiment': field\(s\) \['sentence'\] missing.*needs 'label', 'sentence'"
    ):
        check_records(read_jsonl(path), [TEMPLATE])


def test_answer_is_only_required_when_it_is_rendered():
    records = records_from_dicts([{"taskname": "sentiment", "sentence": "a"}])
    check_records(records, [TEMPLATE], include_answer=False)
    with pytest.raises(RecordError, match=r"records\[0\]: task 'sentiment': field\(s\) \['label'\] missing"):
        check_records(records, [TEMPLATE])


def test_non_text_values_are_refused_and_numbers_converted():
    records = records_from_dicts([{"taskname": "sentiment", "sentence": 3.5, "label": None}])
    assert records[0].values_for(TEMPLATE, include_answer=False) == {"sentence": "3.5"}
    with pytest.raises(RecordError, match=r"records\[0\]: task 'sentiment': field 'label' must be text, got NoneType"):
        check_records(records, [TEMPLATE])


def test_takes_a_datasets_dataset_and_rejects_empty_input():
    dataset = datasets.Dataset.from_list([{"taskname": "sentiment", "sentence": "a", "label": "b"}])
    records = records_from_dicts(dataset, name="train")
    assert records[0].source == "train[0]"
    with pytest.raises(RecordError, match="no records given"):
        records_from_dicts([])
