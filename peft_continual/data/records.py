"""Records: the first stage of the data flow, from JSONL lines or dicts to checked ``TaskRecord`` objects.

Each record remembers where it came from (``train.jsonl:17``, ``records[3]``, ``dataset[42]``) so that every later
error (unknown task, missing field, record too long) can point the user at the exact line to fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_continual.data.templates import TaskTemplate
from peft_continual.errors import RecordError, UnknownTaskError, allowed

TASKNAME_FIELD = "taskname"


@dataclass(frozen=True)
class TaskRecord:
    """One example of one task: its task name, its fields (template fields and any metadata) and its origin."""

    taskname: str
    fields: Mapping[str, Any]
    source: str

    def values_for(self, template: TaskTemplate, include_answer: bool = True) -> dict[str, str]:
        """The text of each template slot, checked: every slot present, each a string (numbers are converted).

        Raises:
            RecordError: a slot's field is missing or holds something that is not text.
        """
        names = template.fields if include_answer else template.input_fields
        missing = [name for name in names if name not in self.fields]
        if missing:
            raise RecordError(
                f"{self.source}: task {self.taskname!r}: field(s) {missing} missing from the record; the template "
                f"needs {allowed(names)}; the record has {allowed(self.fields)}"
            )
        values = {}
        for name in names:
            value = self.fields[name]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str):
                raise RecordError(
                    f"{self.source}: task {self.taskname!r}: field {name!r} must be text, got "
                    f"{type(value).__name__} ({value!r})"
                )
            values[name] = value
        return values


def record_from_dict(data: Any, source: str) -> TaskRecord:
    """Turn one parsed JSON object (or dict) into a ``TaskRecord``, checking it has a task name."""
    if not isinstance(data, Mapping):
        raise RecordError(f"{source}: a record must be a JSON object, got {type(data).__name__}")
    taskname = data.get(TASKNAME_FIELD)
    if taskname is None:
        raise RecordError(f"{source}: no {TASKNAME_FIELD!r} field; the record has {allowed(data)}")
    if not isinstance(taskname, str) or not taskname:
        raise RecordError(f"{source}: {TASKNAME_FIELD!r} must be a non-empty string, got {taskname!r}")
    fields = {key: value for key, value in data.items() if key != TASKNAME_FIELD}
    return TaskRecord(taskname=taskname, fields=fields, source=source)


def iter_jsonl(path: str | Path) -> Iterator[TaskRecord]:
    """Stream records from a JSONL file, one per non-blank line; errors name ``file:line``.

    Raises:
        RecordError: the file cannot be opened, a line is not UTF-8 or not a JSON object, or the file has no record.
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as error:
        raise RecordError(f"{path}: cannot open: {error.strerror}") from None
    count = 0
    with handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise RecordError(
                    f"{where}: not UTF-8 (byte {raw[error.start]:#04x} at column {error.start + 1}); "
                    "save the file as UTF-8"
                ) from None
            if line_number == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                data = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as error:
                raise RecordError(f"{where}: broken JSON at column {error.colno}: {error.msg}") from None
            count += 1
            yield record_from_dict(data, where)
    if count == 0:
        raise RecordError(f"{path}: the file holds no records (it is empty or blank)")


def read_jsonl(path: str | Path) -> list[TaskRecord]:
    """Read every record of a JSONL file (see ``iter_jsonl``)."""
    return list(iter_jsonl(path))


def records_from_dicts(rows: Iterable[Mapping[str, Any]], name: str = "records") -> list[TaskRecord]:
    """Take in-memory dicts (or a ``datasets.Dataset``, which iterates as dicts); sources read ``name[i]``."""
    records = [record_from_dict(row, f"{name}[{index}]") for index, row in enumerate(rows)]
    if not records:
        raise RecordError(f"{name}: no records given")
    return records


def check_records(
    records: Iterable[TaskRecord], templates: Sequence[TaskTemplate], include_answer: bool = True
) -> None:
    """Check every record against its task's template before any tokenization starts.

    Raises:
        UnknownTaskError: a record's task has no template; the message lists the known tasks.
        RecordError: a template field is missing from a record or is not text.
    """
    by_name = {template.taskname: template for template in templates}
    for record in records:
        record.values_for(template_for(record, by_name), include_answer)


def template_for(record: TaskRecord, templates: Mapping[str, TaskTemplate]) -> TaskTemplate:
    """The template of a record's task, or an ``UnknownTaskError`` naming the record and the known tasks."""
    try:
        return templates[record.taskname]
    except KeyError:
        raise UnknownTaskError(
            f"{record.source}: unknown task {record.taskname!r}; known tasks: {allowed(templates)}"
        ) from None
