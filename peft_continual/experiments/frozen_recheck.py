"""After a later round: are the earlier rounds' tasks untouched? Their rows by sha256, their answers on a sample.

A finished task's rows are bit-identical after later rounds and the base model is frozen, so its answers are not
expected to change (only the mix and padding of its evaluation batches differ): re-generating all of its test records
after every round repeats the evaluation of the round that trained it (in the demo, a third of the round-2
evaluation). A run may re-generate only the first ``recheck_records`` of them: when its rows have the same sha256 and
those answers equal the earlier ones, the task's full result of the round that trained it is carried into the later
round's table (``examples`` stays the full count, ``carried_from`` names the round); otherwise the sample's own row
(``n`` = the sample) stays, and ``frozen_check`` reports it. ``recheck_records=None`` re-evaluates every record.

Files read: ``round_<k>/evaluation.json`` (``save_rows``) and ``round_<k>/predictions.json`` (task -> one
``[generated, restricted]`` pair per test record, in test order) of the round ``k`` that trained the task.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from peft_continual.errors import ConfigError
from peft_continual.experiments.results import ResultRow


def records_to_evaluate(
    tests: Mapping[str, Sequence[Any]], trained_in: Mapping[str, int], number: int, recheck_records: int | None
) -> list[Any]:
    """Test records of every task served after round ``number``: all of this round's tasks' records, the first
    ``recheck_records`` of earlier rounds' tasks (all when ``None``).

    Raises:
        ConfigError: ``recheck_records`` is not None and not a positive integer.
    """
    if recheck_records is not None and (not isinstance(recheck_records, int) or recheck_records < 1):
        raise ConfigError(
            f"recheck_records must be a positive number of records or None (all), got {recheck_records!r}"
        )
    chosen = []
    for name, records in tests.items():
        if trained_in[name] <= number:
            chosen += records if trained_in[name] == number or recheck_records is None else records[:recheck_records]
    return chosen


def carry_over(
    output_dir: Path,
    rows: Sequence[ResultRow],
    predictions: Mapping[str, list],
    trained_in: Mapping[str, int],
    hashes: Mapping[int, Mapping[str, str]],
    number: int,
) -> list[ResultRow]:
    """``rows`` of round ``number`` with each earlier task's sampled row replaced by its full row of the round that
    trained it, where the task's rows have the same sha256 in both rounds (``hashes``: round -> task -> digest) and
    the sample's predictions equal that round's first ones."""
    carried = []
    for row in rows:
        earlier = trained_in[row.task]
        if (
            earlier < number
            and hashes[earlier][row.task] == hashes[number][row.task]
            and _same_answers(output_dir, earlier, row.task, predictions[row.task])
        ):
            full = json.loads((output_dir / f"round_{earlier}" / "evaluation.json").read_text())["rows"]
            (before,) = [ResultRow(**r) for r in full if r["task"] == row.task]
            row = replace(
                before, stage=row.stage, trainable_parameters=row.trainable_parameters, carried_from=before.stage
            )
        carried.append(row)
    return carried


def _same_answers(output_dir: Path, round_number: int, task: str, answers: list) -> bool:
    earlier = json.loads((output_dir / f"round_{round_number}" / "predictions.json").read_text())[task]
    return earlier[: len(answers)] == json.loads(json.dumps(answers))  # as written: pairs become lists


def frozen_check(output_dir: Path, hashes: Mapping[int, Mapping[str, str]], last: int) -> dict[str, dict]:
    """Were round 1's tasks untouched by later rounds? Their table rows (sha256), first vs last round, and their
    predictions on the records the last round re-generated (``predictions_rechecked`` of them)."""
    final = json.loads((output_dir / f"round_{last}" / "predictions.json").read_text())
    return {
        name: {
            "rows_identical": hashes[last][name] == digest,
            "predictions_identical": _same_answers(output_dir, 1, name, final[name]),
            "predictions_rechecked": len(final[name]),
            "sha256": digest,
        }
        for name, digest in hashes[1].items()
    }
